"""TensorFlow Serving's REST API codec: predict (row and columnar), classify, model status and
metadata bodies, to and from the data plane's inputs. No HTTP and no TensorFlow here.

The served model looks to a TF Serving client like a SavedModel with two predict signatures:
``serving_default`` takes encoded images (``image_bytes``, DT_STRING, ``{"b64": ...}`` in
JSON) and ``tensor`` takes the model's input already preprocessed (DT_FLOAT [-1, 28, 28, 1]
for the CNN); both answer ``probabilities`` (DT_FLOAT [-1, classes]). Which one a request
means is told by its values -- ``{"b64"}`` objects or numbers -- so ``signature_name`` is
optional, and checked when given.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InvalidInput
from ..models.registry import ModelState, ModelStatus
from .values import BodyLimits, check_batch_size, decode_base64

IMAGES, TENSOR = "serving_default", "tensor"  # the signatures
IMAGE_INPUT, OUTPUT = "image_bytes", "probabilities"
PREDICT_METHOD = "tensorflow/serving/predict"
STATES = {ModelState.LOADING: "LOADING", ModelState.AVAILABLE: "AVAILABLE",
          ModelState.FAILED: "END"}


@dataclass(frozen=True)
class ModelInput:
    """What a model takes, as the codec needs it."""

    name: str                  # the graph's input tensor, e.g. "x" (``x:0`` in metadata)
    shape: tuple[int, ...]     # one example's shape, e.g. (28, 28, 1)


@dataclass
class PredictRequest:
    inputs: list[bytes] | np.ndarray  # encoded images, or a float32 (N, *shape) batch
    columnar: bool                     # "inputs" (answer "outputs") or "instances"


def decode_predict(payload: Any, model: ModelInput, limits: BodyLimits) -> PredictRequest:
    """``{"instances": [...]}`` or ``{"inputs": ...}``, optionally with ``signature_name``."""
    if not isinstance(payload, dict):
        raise InvalidInput("The body must be a JSON object with \"instances\" or \"inputs\".",
                           "invalid_json")
    if ("instances" in payload) == ("inputs" in payload):
        raise InvalidInput("Send either \"instances\" (row format) or \"inputs\" (columnar "
                           "format), not both and not neither.", "missing_image")
    columnar = "inputs" in payload
    values = _unnamed(payload["inputs" if columnar else "instances"], model, columnar)
    inputs = _values(values, model, limits)
    _check_signature(payload.get("signature_name"), inputs)
    return PredictRequest(inputs, columnar)


def decode_classify(payload: Any, model: ModelInput, limits: BodyLimits
                    ) -> list[bytes] | np.ndarray:
    """``{"examples": [{"<feature>": {"b64": ...} | numbers}, ...]}``: one feature each."""
    if not isinstance(payload, dict) or not isinstance(payload.get("examples"), list) \
            or not payload["examples"]:
        raise InvalidInput("The body must be a JSON object with a non-empty \"examples\" "
                           "list.", "missing_image")
    if payload.get("context"):
        raise InvalidInput("\"context\" features are not supported: this model has one "
                           "feature, the image.", "bad_parameter")
    examples = payload["examples"]
    check_batch_size(len(examples), limits.max_batch_size)
    values = []
    for index, example in enumerate(examples):
        if not isinstance(example, dict) or len(example) != 1:
            raise InvalidInput(f"examples[{index}] must be an object with one feature: "
                               f"\"{IMAGE_INPUT}\" ({{\"b64\": ...}}) or \"{model.name}\" "
                               "(numbers).", "bad_instance")
        values.append(next(iter(example.values())))
    inputs = _values(values, model, limits)
    _check_signature(payload.get("signature_name"), inputs)
    return inputs


def _unnamed(value: Any, model: ModelInput, columnar: bool) -> list:
    """The list of per-example values, with the input's name (if any) taken off."""
    names = (IMAGE_INPUT, model.name)
    if columnar and isinstance(value, dict) and "b64" not in value:
        if len(value) != 1 or next(iter(value)) not in names:
            raise InvalidInput(f"\"inputs\" names one input: \"{IMAGE_INPUT}\" or "
                               f"\"{model.name}\".", "bad_instance")
        value = next(iter(value.values()))
    if not isinstance(value, list) or not value:
        raise InvalidInput("The examples must be a non-empty list.", "missing_image")
    if not columnar and all(isinstance(v, dict) and "b64" not in v for v in value):
        if not all(len(v) == 1 and next(iter(v)) in names for v in value):
            raise InvalidInput(f"Each instance names one input: \"{IMAGE_INPUT}\" or "
                               f"\"{model.name}\".", "bad_instance")
        value = [next(iter(v.values())) for v in value]
    return value


def _values(values: list, model: ModelInput, limits: BodyLimits) -> list[bytes] | np.ndarray:
    """Encoded images (every value ``{"b64": ...}``) or one float32 batch (every value numbers)."""
    check_batch_size(len(values), limits.max_batch_size)  # before any base64 is decoded
    if all(isinstance(v, dict) for v in values):
        return [decode_base64(v.get("b64"), f"[{i}].b64", limits.max_image_bytes)
                for i, v in enumerate(values)]
    if any(isinstance(v, (dict, str)) for v in values):
        raise InvalidInput("Send every example as {\"b64\": <encoded image>} or every one as "
                           "numbers shaped like the model's input, not a mix; strings must be "
                           "wrapped as {\"b64\": ...}.", "bad_instance")
    try:
        array = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError, OverflowError):
        raise InvalidInput("The examples are not numbers of one shape.", "bad_instance") from None
    size = int(np.prod(model.shape))
    if array.size != len(values) * size:
        raise InvalidInput(f"Each example must hold {size} numbers (shape "
                           f"{list(model.shape)}); got shape {list(array.shape)}.",
                           "bad_instance")
    return array.reshape((len(values), *model.shape))


def _check_signature(name: Any, inputs: list[bytes] | np.ndarray) -> None:
    wanted = TENSOR if isinstance(inputs, np.ndarray) else IMAGES
    if name in (None, "", wanted):
        return
    if name in (IMAGES, TENSOR):
        takes = "numbers" if name == TENSOR else "encoded images as {\"b64\": ...}"
        raise InvalidInput(f"Signature {name!r} takes {takes}; these inputs are for "
                           f"{wanted!r}.", "bad_instance")
    raise InvalidInput(f"Unknown signature_name {name!r}; this model has {IMAGES!r} (encoded "
                       f"images) and {TENSOR!r} (preprocessed numbers).", "bad_parameter")


def encode_predict(probabilities: np.ndarray, columnar: bool) -> dict[str, Any]:
    """One output, so no names: ``{"predictions": [[p0..], ...]}`` or ``{"outputs": ...}``."""
    return {"outputs" if columnar else "predictions": probabilities.tolist()}


def encode_classify(probabilities: np.ndarray, labels: list[str]) -> dict[str, Any]:
    """``{"result": [[[label, score], ...], ...]}``, each example's classes best first."""
    order = np.argsort(-probabilities, axis=1, kind="stable").tolist()
    rows = probabilities.tolist()
    return {"result": [[[labels[c], row[c]] for c in classes]
                       for classes, row in zip(order, rows)]}


def version_status(status: ModelStatus, versions: list[int]) -> dict[str, Any]:
    """``GetModelStatusResponse``: the version the registry serves (or loads, or failed to
    load) in its state, every other one in ``versions`` END (TF Serving's word for a version
    that is not loaded)."""
    def entry(version: int) -> dict[str, Any]:
        current = version == status.version
        failed = current and bool(status.error)
        return {"version": str(version), "state": STATES[status.state] if current else "END",
                "status": {"error_code": "UNKNOWN" if failed else "OK",
                           "error_message": status.error if failed else ""}}
    known = set(versions) | ({status.version} if status.version is not None else set())
    return {"model_version_status": [entry(v) for v in sorted(known, reverse=True)]}


def metadata(name: str, version: int, model: ModelInput, classes: int) -> dict[str, Any]:
    """``GetModelMetadataResponse`` with the two signatures."""
    probabilities = _tensor_info(f"{OUTPUT}:0", "DT_FLOAT", (-1, classes))
    signature = {
        IMAGES: {"inputs": {IMAGE_INPUT: _tensor_info(f"{IMAGE_INPUT}:0", "DT_STRING", (-1,))},
                 "outputs": {OUTPUT: probabilities}, "method_name": PREDICT_METHOD},
        TENSOR: {"inputs": {model.name: _tensor_info(f"{model.name}:0", "DT_FLOAT",
                                                     (-1, *model.shape))},
                 "outputs": {OUTPUT: probabilities}, "method_name": PREDICT_METHOD},
    }
    return {"model_spec": {"name": name, "signature_name": "", "version": str(version)},
            "metadata": {"signature_def": {"signature_def": signature}}}


def _tensor_info(name: str, dtype: str, shape: tuple[int, ...]) -> dict[str, Any]:
    return {"dtype": dtype, "name": name, "tensor_shape": {
        "dim": [{"size": str(d), "name": ""} for d in shape], "unknown_rank": False}}
