"""The Open Inference Protocol (KServe V2) REST routes: an adapter over the data plane.

DRAFT (issue 14, branch wip/issue-14): not in routes.py yet, not tested against a server.

Handlers read the path and body, call the same ``DataPlane`` as ``/v1/models/{m}/predict``
(same limits, access checks, rate limits, input log, metrics) and answer in V2's shapes;
errors are V2's ``{"error": "<message>"}`` with the service's status (``V2_ANSWER``).
"""
from __future__ import annotations

from typing import Any

import cherrypy
import numpy as np
import orjson

from .. import __version__
from ..dataplane import Instance
from ..errors import InvalidInput, NotFound, ServiceError, Unavailable
from ..protocols import v2
from .api import model_status, request_context
from .bodies import read_body
from .dispatch import Answer
from .responses import error_page, log_server_error, note_error, to_json

EXTENSIONS = ["binary_tensor_data", "classification"]
PLATFORM = "tensorflow_graphdef"


def render_error(exc: ServiceError) -> bytes:
    note_error(exc.code)
    cherrypy.response.status = exc.status
    cherrypy.response.headers.update(exc.headers)
    cherrypy.response.headers["Content-Type"] = "application/json"
    log_server_error(exc.status, exc.code, exc.message)
    return to_json({"error": exc.message})


def v2_error_page(status: str, message: str, traceback: str, version: str) -> str:
    """CherryPy's own errors (405, 413...) in V2's shape."""
    body = error_page(status, message, traceback, version)
    return to_json({"error": orjson.loads(body)["error"]["message"]}).decode()


V2_ANSWER = Answer(render_error, v2_error_page)


def server_metadata(app: Any, /, **_: Any) -> dict[str, Any]:
    return {"name": "digits", "version": __version__, "extensions": EXTENSIONS}


def live(app: Any, /, **_: Any) -> dict[str, Any]:
    return {"live": True}


def ready(app: Any, /, **_: Any) -> dict[str, Any]:
    if not app.registry.ready():
        raise Unavailable("Not every model is loaded yet.", "not_ready")
    return {"ready": True}


def model_metadata(app: Any, /, name: str, version: str | None = None, **_: Any
                   ) -> dict[str, Any]:
    model = _served(app, name, version)
    tensor = model.manifest.input
    return {
        "name": model.name, "versions": [str(v) for v in app.registry.versions(name)],
        "platform": PLATFORM,
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": [-1]},
                   {"name": tensor.name.split(":")[0], "datatype": "FP32",
                    "shape": [-1 if d is None else d for d in tensor.shape]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32",
                     "shape": [-1, len(model.labels)]},
                    {"name": "class", "datatype": "INT64", "shape": [-1]}],
    }


def model_ready(app: Any, /, name: str, version: str | None = None, **_: Any
                ) -> dict[str, Any]:
    model = _served(app, name, version)
    return {"name": model.name, "ready": True}


def infer(app: Any, /, name: str, version: str | None = None, **_: Any) -> bytes:
    pinned = _version(version)
    model_status(app.registry, name)
    request = v2.decode(read_body(app.predictor.limits.max_body_bytes),
                        cherrypy.request.headers.get(v2.HEADER_LENGTH))
    tensor = _one_input(request)
    context = request_context()
    if tensor.datatype == "BYTES":
        images = [Instance(data) for data in tensor.value]
        result = app.plane.predict([name], images, None, context, pinned)[name]
    else:
        result = app.plane.predict_tensor(name, tensor.value, None, context, pinned)
    probabilities = np.stack([p.probabilities for p in result.predictions])
    labels = app.registry.get(name).labels
    payload, headers = v2.encode(result.model, result.version, request, probabilities, labels)
    response = cherrypy.response
    response.headers["Content-Type"] = ("application/octet-stream" if headers
                                        else "application/json")
    response.headers.update(headers)
    return payload


def _one_input(request: v2.Request) -> v2.Tensor:
    if len(request.inputs) != 1:
        raise InvalidInput("Send one input: \"image\" (BYTES, encoded images) or the model's "
                           "FP32 input tensor.", "bad_instance")
    return request.inputs[0]


def _version(version: str | None) -> int | None:
    if version is None:
        return None
    if not version.isdigit() or int(version) < 1:
        raise InvalidInput(f"A version is a positive integer; got {version!r}.", "bad_parameter")
    return int(version)


def _served(app: Any, name: str, version: str | None):
    model = model_status(app.registry, name).model
    pinned = _version(version)
    if model is None:
        raise NotFound(f"Model {name} is not serving.", "model_not_found")
    if pinned is not None and model.version != pinned:
        raise NotFound(f"Version {pinned} of {name} is not loaded (serving "
                       f"{model.version}).", "model_not_found")
    return model
