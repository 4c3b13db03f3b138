"""The canonical API: /v1/models, /v1/models/<name>[/predict], /v1/predict, health routes."""
from __future__ import annotations

from typing import Any

import cherrypy
import numpy as np

from ..dataplane import DataPlane, Instance, ModelResult, RequestContext, new_request_id
from ..errors import InvalidInput, NotFound, Unavailable
from ..models.loader import ServedModel
from ..models.registry import ModelState, ModelStatus
from ..protocols import tfserving
from .access import current_key
from .admin import version_info
from .bodies import BodyLimits, PredictBody, parse_predict_body


def prediction_json(result: ModelResult, request_id: str) -> dict[str, Any]:
    predictions = [
        {"class": p.class_id, "label": p.label, "probability": p.probability,
         "top_k": [{"class": c, "label": label, "probability": prob}
                   for c, label, prob in p.top_k]}
        for p in result.predictions
    ]
    for prediction, explanation in zip(predictions, result.explanations or ()):
        prediction["explanation"] = explanation
    return {"model": result.model, "version": result.version, "request_id": request_id,
            "predictions": predictions, "timing_ms": result.timing_ms}


def model_summary(status: ModelStatus) -> dict[str, Any]:
    model = status.model
    summary: dict[str, Any] = {"name": status.name, "version": status.version,
                               "state": status.state.value}
    if model is not None:
        summary.update(input=_input_json(model), labels=model.labels,
                       accuracy=model.manifest.accuracy)
    if status.error:
        summary["error"] = status.error
    return summary


def model_details(status: ModelStatus) -> dict[str, Any]:
    details = model_summary(status)
    model = status.model
    if model is not None:
        m = model.manifest
        details.update(
            architecture=m.architecture, created=m.created, outputs=m.outputs,
            preprocess=m.preprocess.to_dict(), per_class_accuracy=m.per_class_accuracy,
            sha256=m.sha256, tf_version=m.tf_version, training=m.training,
            load_seconds=round(model.load_seconds, 3), layers=model.layers,
            pool={"pool_size": model.pool.settings.pool_size,
                  "max_batch_size": model.pool.settings.max_batch_size,
                  "batch_timeout_ms": model.pool.settings.batch_timeout_ms,
                  "queue_size": model.pool.settings.queue_size})
    return details


def _input_json(model: ServedModel) -> dict[str, Any]:
    tensor = model.manifest.input
    return {"name": tensor.name, "shape": tensor.shape, "dtype": tensor.dtype,
            "preprocess": model.manifest.preprocess.describe()}


class Predictor:
    """Runs a parsed predict body against named models; shared by every predict route."""

    def __init__(self, plane: DataPlane, limits: BodyLimits):
        self.plane = plane
        self.limits = limits

    def parse(self, params: dict[str, Any]) -> PredictBody:
        return parse_predict_body(params, self.limits)

    def one(self, name: str, body: PredictBody) -> dict[str, Any]:
        context = request_context()
        result = self.plane.predict([name], body.instances, body.top_k, context,
                                    explain=body.explain)[name]
        return prediction_json(result, context.request_id)

    def run(self, name: str, inputs: list[bytes] | np.ndarray, version: int | None = None
            ) -> ModelResult:
        """Encoded images, or a batch already shaped like the model's input, through one model
        (``version``: only if it serves): the protocol adapters' way into the data plane."""
        context = request_context()
        if isinstance(inputs, np.ndarray):
            return self.plane.predict_tensor(name, inputs, None, context, version)
        instances = [Instance(data) for data in inputs]
        return self.plane.predict([name], instances, None, context, version)[name]

    def many(self, names: list[str] | None, body: PredictBody) -> dict[str, Any]:
        context = request_context()
        results = self.plane.predict(names, body.instances, body.top_k, context,
                                     explain=body.explain)
        return {"request_id": context.request_id,
                "results": {n: prediction_json(r, context.request_id) for n, r in results.items()}}


def request_context() -> RequestContext:
    """The current HTTP request as the data plane sees it. Its id -- a trusted proxy's
    X-Request-ID, else a new one -- is echoed in X-Request-ID."""
    request = cherrypy.request
    key = current_key()
    context = RequestContext(getattr(request, "proxy_request_id", None) or new_request_id(),
                             route=request.path_info, client=request.remote.ip or "",
                             api_key_id=key.id if key else None)
    cherrypy.response.headers["X-Request-ID"] = context.request_id
    return context


# -- handlers (routes.py says which path and method each serves) -------------------------
def list_models(app: Any, /, **_: Any) -> dict[str, Any]:
    return {"models": [model_summary(s) for s in app.registry.statuses()]}


def get_model(app: Any, /, name: str, **_: Any) -> dict[str, Any]:
    """The model's details; ``model_version_status`` is TF Serving's model status answer;
    ``served_by`` names the replica (and worker) that answered, as X-Served-By does."""
    status = model_status(app.registry, name)
    versions = app.registry.versions(name)
    return {**model_details(status), **version_info(status, versions),
            **tfserving.version_status(status, versions), "served_by": app.served_by()}


def predict_one(app: Any, /, name: str, **params: Any) -> dict[str, Any]:
    model_status(app.registry, name)
    return app.predictor.one(name, app.predictor.parse(params))


def predict_many(app: Any, /, models: str | None = None, **params: Any) -> dict[str, Any]:
    """POST /v1/predict: every available model, or ?models=a,b, on the same images."""
    names = [n.strip() for n in models.split(",") if n.strip()] if models else None
    if models is not None and not names:
        raise InvalidInput("'models' must name at least one model.", "bad_parameter")
    return app.predictor.many(names, app.predictor.parse(params))


def model_status(registry: Any, name: str) -> ModelStatus:
    for status in registry.statuses():
        if status.name == name:
            return status
    raise NotFound(f"There is no model named {name!r}.", "model_not_found")


def path_version(text: str | None) -> int | None:
    """A version from the path (``/versions/3``): a positive integer, or None if absent."""
    if text is None:
        return None
    if not text.isascii() or not text.isdigit() or int(text) < 1:
        raise InvalidInput(f"A version is a positive integer; got {text!r}.", "bad_parameter")
    return int(text)


def served_model(registry: Any, name: str, version: int | None = None) -> ServedModel:
    """The model serving under ``name`` -- ``version`` of it, if given -- else 404 (or 503
    while it loads)."""
    model = registry.get(name)
    if version is not None and model.version != version:
        raise NotFound(f"Version {version} of {name} is not loaded (serving "
                       f"{model.version}).", "model_not_found")
    return model


def service_status(app: Any, /, **_: Any) -> dict[str, Any]:
    statuses = app.registry.statuses()
    degraded = any(s.state is ModelState.FAILED for s in statuses)
    answer = {"status": "degraded" if degraded else "ok",
              "models": {s.name: _status_json(s) for s in statuses}}
    if app.member is not None:  # a cluster: this worker's models above, every worker here
        workers = app.member.workers()
        answer.update(worker=app.member.worker.name, workers=workers)
        if not all(w["ready"] for w in workers):
            answer["status"] = "degraded"
    return answer


def healthz(app: Any, /, **_: Any) -> dict[str, Any]:
    return {"status": "alive"}


def readyz(app: Any, /, **_: Any) -> dict[str, Any]:
    statuses = app.registry.statuses()
    waiting = [s.name for s in statuses if s.state is not ModelState.AVAILABLE]
    if waiting:
        raise Unavailable(f"Not ready: waiting for model(s) {', '.join(waiting)}.",
                          "not_ready", retry_after=5)
    # The HTTP server answers a moment before the engine has finished starting.
    if cherrypy.engine.state is not cherrypy.engine.states.STARTED:
        raise Unavailable("Not ready: the server is still starting.", "not_ready",
                          retry_after=1)
    if app.member is not None:
        others = app.member.not_ready()
        if others:
            raise Unavailable(f"Not ready: waiting for worker(s) {', '.join(others)}.",
                              "not_ready", retry_after=1)
    return {"status": "ready"}


def _status_json(status: ModelStatus) -> dict[str, Any]:
    data: dict[str, Any] = {"state": status.state.value, "version": status.version}
    if status.error:
        data["error"] = status.error
    if status.model is not None:
        pool = status.model.pool
        data.update(queue_depth=pool.queue_depth, busy_workers=pool.busy,
                    batches=sum(pool.stats.batch_sizes.values()),
                    worker_restarts=dict(pool.stats.restarts),
                    load_seconds=round(status.model.load_seconds, 3))
    return data
