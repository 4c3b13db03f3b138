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

from .errors import DeadlineExceeded, InvalidInput, PayloadTooLarge
from .models import preprocess
from .models.preprocess import PreprocessSpec, batch
from .models.loader import ServedModel
from .models.registry import ModelRegistry


@dataclass(frozen=True)
class Instance:
    """One image to classify, with an optional crop around (x, y)."""

    data: bytes
    x: float | None = None
    y: float | None = None
    crop: float | None = None


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
                top_k: int | None = None,
                context: RequestContext | None = None) -> dict[str, ModelResult]:
        """Run each named model (default: every available one) on the same instances.

        All models' batches are queued before waiting on any, so the models run concurrently.
        Each model is leased for the whole call, so a version swap never closes it under us.
        """
        started = time.monotonic()
        self._check_batch(instances)
        if self.admission is not None:  # e.g. an images-per-second limit, before any decoding
            self.admission(context or RequestContext(), len(instances))
        with self.registry.lease(model_names) as models:
            if not models:
                self.registry.get(self.registry.names()[0])  # raises the reason nothing is served
            results = self._run(models, instances, top_k, started)
        for observer in self.observers:
            for result in results.values():
                observer.observed(result, len(instances))
        for sink in self.sinks:
            sink.record(context or RequestContext(), instances, results)
        return results

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
        results = {}
        for model, k, ready, reply in pending:
            probabilities, run = self._wait(model, reply, deadline)
            total = time.monotonic() - started
            timing = {"decode": round(ready.decode_s * 1000, 3),
                      "preprocess": round(ready.preprocess_s * 1000, 3),
                      "queue": round(run.queue * 1000, 3),
                      "inference": round(run.inference * 1000, 3),
                      "total": round(total * 1000, 3)}
            results[model.name] = ModelResult(model.name, model.version,
                                              predictions(probabilities, model.labels, k),
                                              ready.inputs, timing)
        return results

    def _check_batch(self, instances: list[Instance]) -> None:
        if not instances:
            raise InvalidInput("The request holds no images.", "missing_image")
        if len(instances) > self.max_batch_size:
            raise PayloadTooLarge(f"The request holds {len(instances)} images; at most "
                                  f"{self.max_batch_size} are allowed.", "batch_too_large")

    def _wait(self, model: ServedModel, future, deadline: float):
        try:
            return future.result(max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            future.cancel()
            raise DeadlineExceeded(f"Model {model.name} did not answer within "
                                   f"{self.timeout_s:g} s.") from None


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
