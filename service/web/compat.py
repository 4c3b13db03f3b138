"""Routes of the earlier digit services, as thin adapters over the canonical predict path."""
from __future__ import annotations

import io
from typing import Any

import cherrypy
import numpy as np

from ..dataplane import Instance
from ..errors import InvalidInput, NotFound, ServiceError
from ..models import datasets
from .api import Predictor
from .bodies import PredictBody, body_from_json, media_type, read_json_body
from .responses import json_bytes, json_endpoint, require_method, service_error_response


def _probabilities_by_class(prediction: dict[str, Any]) -> list[float]:
    """Canonical top_k holding every label -> probabilities indexed by class id."""
    ranked = prediction["top_k"]
    probabilities = [0.0] * len(ranked)
    for entry in ranked:
        probabilities[entry["class"]] = entry["probability"]
    return probabilities


class CompatRoutes:
    """POST /recognize and the /mnist/... routes, mixed into the root object."""

    predictor: Predictor
    default_model: str
    mnist_dir: Any

    @cherrypy.expose
    @json_endpoint
    def recognize(self, **params):
        """{"image": b64} -> {"digit", "probability"}."""
        require_method("POST")
        canonical = self.predictor.one(self.default_model, self.predictor.parse(params))
        best = canonical["predictions"][0]
        return {"digit": best["class"], "probability": best["probability"]}

    @cherrypy.expose
    def mnist(self, *path, **params):
        routes = {"image": self._mnist_image, "label": self._mnist_label,
                  "classify": self._mnist_classify}
        handler = routes.get(path[0]) if path else None
        if handler is None:
            raise cherrypy.NotFound()
        try:
            result = handler(path[1:], params)
        except ServiceError as exc:
            return service_error_response(exc)
        return result if isinstance(result, bytes) else json_bytes(result)

    # -- /mnist/classify ------------------------------------------------------------------------
    def _mnist_classify(self, rest: tuple, params: dict[str, Any]):
        if rest:  # GET /mnist/classify/<idx>
            require_method("GET")
            image = self._test_image(rest)
            return self._classify_one(PredictBody([Instance(_png(image))]))
        require_method("POST")
        if media_type() != "application/json":
            return self._classify_one(self.predictor.parse(params))
        payload = read_json_body(self.predictor.limits)
        if not isinstance(payload, dict) or not isinstance(payload.get("requests"), list):
            raise InvalidInput("The JSON body needs 'requests': [{\"image\": base64}, ...].",
                               "missing_image")
        instances = [{"b64": r.get("image") if isinstance(r, dict) else None}
                     for r in payload["requests"]]
        body = body_from_json({"instances": instances}, params, self.predictor.limits)
        canonical = self.predictor.one(self.default_model, body)
        return {"responses": [{"class": p["class"], "probability": p["probability"]}
                              for p in canonical["predictions"]]}

    def _classify_one(self, body: PredictBody) -> dict[str, Any]:
        labels = self.predictor.plane.registry.get(self.default_model).labels
        body = PredictBody(body.instances, top_k=len(labels))
        canonical = self.predictor.one(self.default_model, body)
        best = canonical["predictions"][0]
        return {"prediction": best["class"], "elapsed_time_ms": canonical["timing_ms"]["total"],
                "debug": {"probabilities": _probabilities_by_class(best)}}

    # -- /mnist/image/<idx>, /mnist/label/<idx> --------------------------------------------
    def _mnist_image(self, rest: tuple, params: dict[str, Any]) -> bytes:
        require_method("GET")
        image = self._test_image(rest)
        fmt = str(params.get("format", "jpeg")).lower()
        if fmt not in ("jpeg", "jpg", "png"):
            raise InvalidInput(f"format must be jpeg or png, got {fmt!r}.", "bad_parameter")
        if fmt == "png":
            cherrypy.response.headers["Content-Type"] = "image/png"
            return _png(image)
        cherrypy.response.headers["Content-Type"] = "image/jpeg"
        return _encode(image, "JPEG", quality=95)

    def _mnist_label(self, rest: tuple, params: dict[str, Any]):
        require_method("GET")
        images, labels = datasets.load_mnist("test", self.mnist_dir)
        return {"label": int(labels[self._index(rest, len(labels))])}

    def _test_image(self, rest: tuple) -> np.ndarray:
        images, _ = datasets.load_mnist("test", self.mnist_dir)
        return images[self._index(rest, len(images))]

    @staticmethod
    def _index(rest: tuple, count: int) -> int:
        text = rest[0] if len(rest) == 1 else ""
        # at most 9 digits: int() of thousands of them would raise, not say "not found"
        if not (text.isascii() and text.isdigit() and len(text) <= 9) or int(text) >= count:
            raise NotFound(f"MNIST test image index must be an integer from 0 to {count - 1}.",
                           "index_not_found")
        return int(text)


def _png(image: np.ndarray) -> bytes:
    return _encode(image, "PNG")


def _encode(image: np.ndarray, fmt: str, **options) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt, **options)
    return buffer.getvalue()
