"""The Open Inference Protocol (KServe V2) REST routes: an adapter over the data plane.

Handlers read the path and body, call the same data plane as ``/v1/models/{m}/predict``
(same limits, access checks, rate limits, input log, metrics) and answer in V2's shapes;
errors are the protocol's ``{"error": "<message>"}`` (``dispatch.MESSAGE_ANSWER``).
"""
from __future__ import annotations

from typing import Any

import cherrypy
import numpy as np

from .. import __version__
from ..errors import InvalidInput, Unavailable
from ..models.loader import ServedModel
from ..protocols import v2
from .api import path_version, served_model
from .bodies import read_body

SERVER_NAME = "digits"
EXTENSIONS = ["binary_tensor_data", "classification"]
PLATFORM = "tensorflow_graphdef"


def server_metadata(app: Any, /, **_: Any) -> dict[str, Any]:
    return {"name": SERVER_NAME, "version": __version__, "extensions": EXTENSIONS}


def server_live(app: Any, /, **_: Any) -> dict[str, Any]:
    return {"live": True}


def server_ready(app: Any, /, **_: Any) -> dict[str, Any]:
    if not app.registry.ready():
        raise Unavailable("Not ready: a model is still loading.", "not_ready", retry_after=5)
    return {"ready": True}


def model_metadata(app: Any, /, name: str, version: str | None = None, **_: Any
                   ) -> dict[str, Any]:
    model = served_model(app.registry, name, path_version(version))
    tensor = model.manifest.input
    return {
        "name": model.name, "versions": [str(v) for v in app.registry.versions(name)],
        "platform": PLATFORM,
        "inputs": [{"name": v2.IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]},
                   {"name": tensor.op_name, "datatype": "FP32",
                    "shape": [-1, *model.input_shape]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32",
                     "shape": [-1, len(model.labels)]},
                    {"name": "class", "datatype": "INT64", "shape": [-1]}],
    }


def model_ready(app: Any, /, name: str, version: str | None = None, **_: Any
                ) -> dict[str, Any]:
    model = served_model(app.registry, name, path_version(version))
    return {"name": model.name, "ready": True}


def infer(app: Any, /, name: str, version: str | None = None, **_: Any) -> bytes:
    pinned = path_version(version)
    model = served_model(app.registry, name, pinned)
    limits = app.predictor.limits
    request = v2.decode(read_body(limits.max_body_bytes),
                        cherrypy.request.headers.get(v2.HEADER_LENGTH), limits)
    result = app.predictor.run(name, _input(request, model), pinned)
    payload, headers = v2.encode(result.model, result.version, request, result.probabilities,
                                 model.labels)
    response = cherrypy.response
    response.headers["Content-Type"] = ("application/octet-stream" if headers
                                        else "application/json")
    response.headers.update(headers)
    return payload


def _input(request: v2.Request, model: ServedModel) -> list[bytes] | np.ndarray:
    """The request's one input: encoded images (BYTES), or the model's own FP32 tensor."""
    if len(request.inputs) != 1:
        raise InvalidInput(f"Send one input: {v2.IMAGE_INPUT!r} (BYTES, encoded images) or "
                           f"{model.manifest.input.op_name!r} (FP32, shaped like the model's "
                           "input).", "bad_instance")
    return request.inputs[0].value  # the codec took only BYTES or FP32
