"""The protocol-neutral data plane: images (bytes) and options in, predictions out.

It knows neither HTTP nor TensorFlow: it decodes and preprocesses with Pillow/numpy, hands
numpy batches to the model registry's session pools and shapes what comes back.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Callable, NamedTuple, Protocol

import numpy as np

from .errors import DeadlineExceeded, InvalidInput, NotFound, PayloadTooLarge
from .models import explain as occlusion
from .models import preprocess
from .models.preprocess import PreprocessSpec, batch, preview
from .models.loader import ServedModel
from .models.registry import ModelRegistry


@dataclass(frozen=True)
class Instance:
    """One image to classify, with an optional crop around (x, y)."""

    data: bytes
    x: float | None = None
    y: float | None = None
    crop: float | None = None


class TensorRow:
    """An :class:`Instance` for a row that came preprocessed: its bytes are the row as a PNG,
    encoded only when a sink reads them -- on the input log's writer thread, not the
    request's (a 256-row batch would otherwise pay 256 encodes before its answer)."""

    __slots__ = ("row", "_png")
    x = y = crop = None

    def __init__(self, row: np.ndarray):
        self.row = row  # the request's own array: nobody changes it once predicted
        self._png: bytes | None = None

    @property
    def data(self) -> bytes:
        if self._png is None:
            self._png = preview.to_png(self.row, scale=1)
        return self._png


class Prediction(NamedTuple):
    """One image's answer from one model (a tuple: a batch builds hundreds of them)."""

    class_id: int
    label: str
    probability: float
    top_k: list[tuple[int, str, float]]
    probabilities: np.ndarray  # the full softmax row


@dataclass
class ModelResult:
    model: str
    version: int
    predictions: list[Prediction]
    inputs: np.ndarray  # the preprocessed batch, as the model saw it
    timing_ms: dict[str, float] = field(default_factory=dict)
    explanations: list[dict] | None = None  # per image, with explain=True (models/explain.py)

    @property
    def probabilities(self) -> np.ndarray:
        """The softmax rows of the batch, (N, classes)."""
        return np.stack([p.probabilities for p in self.predictions])


@dataclass(frozen=True)
class RequestContext:
    """Who asked, and through which route: what the input log records beside each prediction."""

    request_id: str = field(default_factory=lambda: new_request_id())
    route: str = ""
    client: str = ""
    api_key_id: str | None = None


class PredictionSink(Protocol):
    """Receives every successful prediction (e.g. the input log). Must not block."""

    def record(self, context: RequestContext, instances: list[Instance],
               results: dict[str, "ModelResult"]) -> None: ...


class PredictionObserver(Protocol):
    """Receives per-model timings (e.g. metrics). Must be cheap."""

    def observed(self, result: "ModelResult", batch_size: int) -> None: ...


# Called with each request's context and image count before any work; raises to refuse.
Admission = Callable[[RequestContext, int], None]


def new_request_id() -> str:
    return uuid.uuid4().hex


class DataPlane:
    def __init__(self, registry: ModelRegistry, *, max_pixels: int = 25_000_000,
                 max_frames: int = preprocess.DEFAULT_MAX_FRAMES,
                 max_batch_size: int = 256, timeout_s: float = 10.0,
                 sinks: list[PredictionSink] | None = None,
                 observers: list[PredictionObserver] | None = None,
                 admission: Admission | None = None):
        self.registry = registry
        self.admission = admission
        self.sinks = list(sinks or [])
        self.observers = list(observers or [])
        self.max_pixels = max_pixels
        self.max_frames = max_frames
        self.max_batch_size = max_batch_size
        self.timeout_s = timeout_s
        self.preparer = batch.Preparer()  # its threads stop with the engine (web/app.py)
        preprocess.warm_up()

    def predict(self, model_names: list[str] | None, instances: list[Instance],
                top_k: int | None = None, context: RequestContext | None = None,
                version: int | None = None, explain: bool = False) -> dict[str, ModelResult]:
        """Run each named model (default: every available one) on the same instances;
        ``version``: only if that version serves (one model), else NotFound; ``explain``:
        each image's occlusion maps for its two best classes too.

        All models' batches are queued before waiting on any, so the models run concurrently.
        Each model is leased for the whole call, so a version swap never closes it under us.
        """
        started = time.monotonic()
        if explain and len(instances) > occlusion.MAX_IMAGES:
            raise InvalidInput(f"explain=true takes at most {occlusion.MAX_IMAGES} images a "
                               f"request (each costs {occlusion.COPIES} more model runs); got "
                               f"{len(instances)}.", "bad_parameter")
        self._admit(len(instances), context)
        with self.registry.lease(model_names) as models:
            if not models:
                self.registry.get(self.registry.names()[0])  # raises the reason nothing is served
            _check_version(models, version)
            results = self._run(models, instances, top_k, started)
            if explain:
                self._explain(models, results, started + self.timeout_s)
        self._report(context, instances, results)
        return results

    def _explain(self, models: list[ServedModel], results: dict[str, ModelResult],
                 deadline: float) -> None:
        """Every image's occluded copies, one batch per image, all queued before any wait."""
        for model in models:
            result, began = results[model.name], time.monotonic()
            pending = [model.submit(occlusion.occluded(image), deadline) for image in result.inputs]
            result.explanations = []
            for image, prediction, reply in zip(result.inputs, result.predictions, pending):
                occluded, _ = self._wait(model, reply, deadline)
                best = np.argsort(-prediction.probabilities, kind="stable")[:2].tolist()
                first, second = occlusion.class_maps(image, prediction.probabilities, occluded,
                                                   best)
                result.explanations.append({**first.to_dict(image), "method": "occlusion",
                                            "second": second.to_dict(image)})
            result.timing_ms["explain"] = round((time.monotonic() - began) * 1000, 3)

    def predict_tensor(self, model_name: str, inputs: np.ndarray, top_k: int | None = None,
                       context: RequestContext | None = None,
                       version: int | None = None) -> ModelResult:
        """Run one model on inputs already shaped like its input (N, *input shape): no
        decoding, no preprocessing. The input log keeps each row as a PNG (:class:`TensorRow`)."""
        started = time.monotonic()
        self._admit(len(inputs), context)
        with self.registry.lease([model_name]) as models:
            model = models[0] if models else self.registry.get(model_name)  # raises why not
            _check_version([model], version)
            shaped = _check_tensor(inputs, model.input_shape)
            ready = batch.Prepared(shaped, 0.0, 0.0)
            deadline = started + self.timeout_s
            reply = model.submit(ready.inputs, deadline)
            result = self._result(model, _check_top_k(top_k, len(model.labels)), ready, reply,
                                  started, deadline)
        instances = [TensorRow(row) for row in shaped]
        self._report(context, instances, {model.name: result})
        return result

    def _admit(self, count: int, context: RequestContext | None) -> None:
        if count < 1:
            raise InvalidInput("The request holds no images.", "missing_image")
        if count > self.max_batch_size:
            raise PayloadTooLarge(f"The request holds {count} images; at most "
                                  f"{self.max_batch_size} are allowed.", "batch_too_large")
        if self.admission is not None:  # e.g. an images-per-second limit, before any decoding
            self.admission(context or RequestContext(), count)

    def _report(self, context: RequestContext | None, instances: list[Instance],
                results: dict[str, ModelResult]) -> None:
        for observer in self.observers:
            for result in results.values():
                observer.observed(result, len(instances))
        for sink in self.sinks:
            sink.record(context or RequestContext(), instances, results)

    def _run(self, models: list[ServedModel], instances: list[Instance], top_k: int | None,
             started: float) -> dict[str, ModelResult]:
        deadline = started + self.timeout_s
        pending = []
        prepared: dict[PreprocessSpec, batch.Prepared] = {}  # models sharing a spec share it
        for model in models:
            k = _check_top_k(top_k, len(model.labels))
            spec = model.manifest.preprocess
            if spec not in prepared:
                prepared[spec] = self.preparer.prepare(instances, spec,
                                                       max_pixels=self.max_pixels,
                                                       max_frames=self.max_frames)
            ready = prepared[spec]
            pending.append((model, k, ready, model.submit(ready.inputs, deadline)))
        return {model.name: self._result(model, k, ready, reply, started, deadline)
                for model, k, ready, reply in pending}

    def _result(self, model: ServedModel, k: int, ready: batch.Prepared, reply,
                started: float, deadline: float) -> ModelResult:
        probabilities, run = self._wait(model, reply, deadline)
        total = time.monotonic() - started
        timing = {"decode": round(ready.decode_s * 1000, 3),
                  "preprocess": round(ready.preprocess_s * 1000, 3),
                  "queue": round(run.queue * 1000, 3),
                  "inference": round(run.inference * 1000, 3),
                  "total": round(total * 1000, 3)}
        return ModelResult(model.name, model.version,
                           predictions(probabilities, model.labels, k), ready.inputs, timing)

    def _wait(self, model: ServedModel, future, deadline: float):
        try:
            return future.result(max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            future.cancel()
            raise DeadlineExceeded(f"Model {model.name} did not answer within "
                                   f"{self.timeout_s:g} s.") from None


def _check_version(models: list[ServedModel], version: int | None) -> None:
    if version is not None and any(m.version != version for m in models):
        serving = ", ".join(f"{m.name} v{m.version}" for m in models)
        raise NotFound(f"Version {version} is not loaded (serving: {serving}).",
                       "model_not_found")


def _check_tensor(inputs: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``inputs`` as a contiguous float32 (N, *shape) array of finite values."""
    if tuple(inputs.shape[1:]) != tuple(shape):
        raise InvalidInput(f"The input has shape {list(inputs.shape)}; this model takes "
                           f"[N, {', '.join(map(str, shape))}].", "bad_instance")
    array = np.ascontiguousarray(inputs, dtype=np.float32)
    if not np.all(np.isfinite(array)):
        raise InvalidInput("The input holds values that are not finite.", "bad_instance")
    return array


def _check_top_k(top_k: int | None, num_labels: int) -> int:
    if top_k is None:
        return min(5, num_labels)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= num_labels:
        raise InvalidInput(f"top_k must be an integer from 1 to {num_labels}, got {top_k!r}.",
                           "bad_parameter")
    return top_k


def predictions(probabilities: np.ndarray, labels: list[str], k: int) -> list[Prediction]:
    """Each row's top ``k`` (ties in class order), from one sort of the whole batch."""
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k].tolist()
    return [Prediction(classes[0], labels[classes[0]], scores[classes[0]],
                       [(c, labels[c], scores[c]) for c in classes], row)
            for classes, scores, row in zip(order, probabilities.tolist(), probabilities)]
