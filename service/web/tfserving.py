"""TensorFlow Serving's REST API routes: an adapter over the data plane.

``:predict`` and ``:classify`` go through the same data plane as ``/v1/models/{m}/predict``
(same limits, access checks, rate limits, input log, metrics); model status and metadata
are read from the registry. Errors are TF Serving's ``{"error": "<message>"}``
(``dispatch.MESSAGE_ANSWER``). ``GET /v1/models/{m}`` itself is the native route, which
adds ``model_version_status`` to its own fields.
"""
from __future__ import annotations

from typing import Any

from ..errors import NotFound
from ..models.loader import ServedModel
from ..protocols import tfserving
from .api import model_status, path_version, served_model
from .bodies import read_json_body

STABLE = "stable"  # the one version label: whichever version serves


def get_status(app: Any, /, name: str, version: str | None = None, label: str | None = None,
               **_: Any) -> dict[str, Any]:
    status = model_status(app.registry, name)
    wanted = _pinned(app, name, version, label)
    answer = tfserving.version_status(status, app.registry.versions(name))
    if wanted is not None:
        answer["model_version_status"] = [
            s for s in answer["model_version_status"] if s["version"] == str(wanted)]
        if not answer["model_version_status"]:
            raise NotFound(f"Model {name} has no version {wanted}.", "model_not_found")
    return answer


def get_metadata(app: Any, /, name: str, version: str | None = None,
                 label: str | None = None, **_: Any) -> dict[str, Any]:
    model = served_model(app.registry, name, _pinned(app, name, version, label))
    return tfserving.metadata(model.name, model.version, _model_input(model),
                              len(model.labels))


def predict(app: Any, /, name: str, version: str | None = None, label: str | None = None,
            **_: Any) -> dict[str, Any]:
    pinned = _pinned(app, name, version, label)
    model = served_model(app.registry, name, pinned)
    limits = app.predictor.limits
    request = tfserving.decode_predict(read_json_body(limits), _model_input(model), limits)
    result = app.predictor.run(name, request.inputs, pinned)
    return tfserving.encode_predict(result.probabilities, request.columnar)


def classify(app: Any, /, name: str, version: str | None = None, label: str | None = None,
             **_: Any) -> dict[str, Any]:
    pinned = _pinned(app, name, version, label)
    model = served_model(app.registry, name, pinned)
    limits = app.predictor.limits
    inputs = tfserving.decode_classify(read_json_body(limits), _model_input(model), limits)
    result = app.predictor.run(name, inputs, pinned)
    return tfserving.encode_classify(result.probabilities, model.labels)


def _pinned(app: Any, name: str, version: str | None, label: str | None) -> int | None:
    """The version a ``/versions/{v}`` or ``/labels/{l}`` path asks for (None: any)."""
    if label is None:
        return path_version(version)
    if label != STABLE:
        raise NotFound(f"Model {name} has no version label {label!r}; the one label is "
                       f"{STABLE!r} (the serving version).", "model_not_found")
    return served_model(app.registry, name).version


def _model_input(model: ServedModel) -> tfserving.ModelInput:
    return tfserving.ModelInput(model.manifest.input.op_name, model.input_shape)
