"""How the bulk client puts a batch of image files on the wire, one class per protocol.

``native``: ``POST /v1/models/{m}/predict`` with JSON and base64 (the server ranks top_k).
``v2``: ``POST /v2/models/{m}/infer``, the Open Inference Protocol with its binary tensor
data extension -- the images' own bytes, no base64 -- answered as JSON probabilities that
are ranked here. Each gives, per file, (class, probability, top_k) and the answer's model,
version and request id.
"""
from __future__ import annotations

import base64
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import requests


@dataclass
class Answer:
    """One request's answer, per file: (class, probability, [[class, probability], ...])."""

    predictions: list[tuple[int, float, list[list]]]
    model: str
    version: int | None
    request_id: str


class Native:
    def __init__(self, url: str, model: str, top_k: int):
        self.url = f"{url.rstrip('/')}/v1/models/{model}/predict"
        self.top_k = top_k

    def request(self, files: list[Path]) -> dict[str, Any]:
        """``requests.post`` keyword arguments for ``files``."""
        body = {"instances": [{"b64": base64.b64encode(f.read_bytes()).decode("ascii")}
                              for f in files], "top_k": self.top_k}
        return {"url": self.url, "json": body}

    @staticmethod
    def answer(response: requests.Response) -> Answer:
        data = response.json()
        return Answer([(p["class"], p["probability"],
                        [[c["class"], c["probability"]] for c in p["top_k"]])
                       for p in data["predictions"]],
                      data["model"], data["version"], data["request_id"])


class V2:
    HEADER_LENGTH = "Inference-Header-Content-Length"

    def __init__(self, url: str, model: str, top_k: int):
        self.url = f"{url.rstrip('/')}/v2/models/{model}/infer"
        self.top_k = top_k

    def request(self, files: list[Path]) -> dict[str, Any]:
        images = [f.read_bytes() for f in files]
        tensor = b"".join(struct.pack("<I", len(i)) + i for i in images)
        header = json.dumps({
            "inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [len(images)],
                        "parameters": {"binary_data_size": len(tensor)}}],
            "outputs": [{"name": "probabilities"}]}).encode()
        return {"url": self.url, "data": header + tensor,
                "headers": {"Content-Type": "application/octet-stream",
                            self.HEADER_LENGTH: str(len(header))}}

    def answer(self, response: requests.Response) -> Answer:
        data = response.json()
        output = next(o for o in data["outputs"] if o["name"] == "probabilities")
        rows = np.asarray(output["data"], dtype=np.float64).reshape(output["shape"])
        order = np.argsort(-rows, axis=1, kind="stable")[:, :self.top_k]
        predictions = [(int(best[0]), float(row[best[0]]),
                        [[int(c), float(row[c])] for c in best])
                       for row, best in zip(rows, order)]
        return Answer(predictions, data["model_name"], int(data["model_version"]),
                      response.headers.get("X-Request-ID", ""))


WIRES = {"native": Native, "v2": V2}
