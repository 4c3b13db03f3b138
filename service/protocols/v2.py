"""The Open Inference Protocol (KServe V2) REST codec: requests to the data plane's inputs,
results to V2 responses. No HTTP and no TensorFlow here: the web layer hands in the body and
the ``Inference-Header-Content-Length`` header, and sends back what ``encode`` returns.

Supported: JSON tensors and the binary tensor data extension (inputs and outputs), inputs
``BYTES`` (encoded images, shape [N]) or ``FP32`` (already shaped like the model's input),
requested outputs (``probabilities`` FP32 [N, C], ``class`` INT64 [N]) with
``binary_data`` and ``classification`` (BYTES "score:index:label", [N, k]).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from ..errors import InvalidInput
from .values import (BodyLimits, check_batch_size, check_image_bytes, decode_base64,
                     parse_json)

HEADER_LENGTH = "Inference-Header-Content-Length"
IMAGE_INPUT = "image_bytes"  # the BYTES input's name in metadata; any name is taken
OUTPUTS = ("probabilities", "class")
DTYPES = {"FP32": np.float32}  # numbers the data plane takes (predict_tensor: float32)


@dataclass
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    value: np.ndarray | list[bytes]  # numbers as an array; BYTES as a list of bytes


@dataclass
class RequestedOutput:
    name: str
    binary: bool = False
    classification: int = 0


@dataclass
class Request:
    id: str | None
    inputs: list[Tensor]
    outputs: list[RequestedOutput] = field(default_factory=list)
    binary_default: bool = False  # parameters.binary_data_output


def decode(body: bytes, header_length: str | None, limits: BodyLimits) -> Request:
    """Parse a V2 infer request (``header_length``: the binary extension's header); 400 for
    anything malformed, 413 for more images or bigger ones than ``limits`` allow."""
    json_part, binary = _split(body, header_length)
    header = parse_json(json_part, limits.max_json_depth)
    if not isinstance(header, dict) or not isinstance(header.get("inputs"), list) \
            or not header["inputs"]:
        raise InvalidInput("A V2 infer request needs a non-empty \"inputs\" list.",
                           "missing_image")
    offset = 0
    inputs = []
    for item in header["inputs"]:
        tensor, offset = _input(item, binary, offset, limits)
        inputs.append(tensor)
    if offset != len(binary):
        raise InvalidInput(f"The binary data holds {len(binary) - offset} bytes no input "
                           "claims.", "bad_instance")
    params = header.get("parameters") or {}
    return Request(_request_id(header.get("id")), inputs, _outputs(header.get("outputs")),
                   bool(_parameters(params).get("binary_data_output", False)))


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        length = int(header_length)
    except ValueError:
        length = -1
    if not 0 <= length <= len(body):
        raise InvalidInput(f"{HEADER_LENGTH} must be a byte count within the body "
                           f"({len(body)} bytes); got {header_length!r}.", "bad_parameter")
    return body[:length], body[length:]


def _request_id(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise InvalidInput("\"id\" must be a string.", "bad_parameter")


def _parameters(value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput("\"parameters\" must be an object.", "bad_parameter")
    return value


def _input(item: Any, binary: bytes, offset: int, limits: BodyLimits) -> tuple[Tensor, int]:
    if not isinstance(item, dict):
        raise InvalidInput("Each input must be an object.", "bad_instance")
    name, datatype, shape = item.get("name"), item.get("datatype"), item.get("shape")
    if not isinstance(name, str) or not isinstance(datatype, str):
        raise InvalidInput("Each input needs a \"name\" and a \"datatype\".", "bad_instance")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool)
                                              and d >= 0 for d in shape):
        raise InvalidInput(f"Input {name!r}: \"shape\" must be a list of non-negative "
                           "integers.", "bad_instance")
    size = _parameters(item.get("parameters")).get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or isinstance(size, bool) or not \
                0 <= size <= len(binary) - offset:
            raise InvalidInput(f"Input {name!r}: binary_data_size {size!r} is past the "
                               "binary data.", "bad_instance")
        raw, offset = binary[offset:offset + size], offset + size
        value = _from_binary(name, datatype, shape, raw, limits)
        return Tensor(name, datatype, shape, value), offset
    if "data" not in item:
        raise InvalidInput(f"Input {name!r} has no \"data\" (nor binary_data_size).",
                           "missing_image")
    value = _from_json(name, datatype, shape, item["data"], limits)
    return Tensor(name, datatype, shape, value), offset


def _count(shape: list[int]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def _from_binary(name: str, datatype: str, shape: list[int], raw: bytes,
                 limits: BodyLimits) -> np.ndarray | list[bytes]:
    if datatype == "BYTES":
        items, pos = [], 0
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise InvalidInput(f"Input {name!r}: a BYTES element's length is cut off.",
                                   "bad_instance")
            (length,) = struct.unpack_from("<I", raw, pos)
            if pos + 4 + length > len(raw):
                raise InvalidInput(f"Input {name!r}: a BYTES element runs past its data.",
                                   "bad_instance")
            check_batch_size(len(items) + 1, limits.max_batch_size)
            items.append(raw[pos + 4:pos + 4 + length])
            check_image_bytes(items[-1], limits.max_image_bytes, f"{name}[{len(items) - 1}]")
            pos += 4 + length
        return _checked_bytes(name, shape, items)
    dtype = _dtype(name, datatype)
    if len(raw) != _count(shape) * np.dtype(dtype).itemsize:
        raise InvalidInput(f"Input {name!r}: {len(raw)} bytes do not hold shape {shape} of "
                           f"{datatype}.", "bad_instance")
    return np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)


def _from_json(name: str, datatype: str, shape: list[int], data: Any,
               limits: BodyLimits) -> np.ndarray | list[bytes]:
    if datatype == "BYTES":
        flat = _flatten(data)
        if not all(isinstance(v, str) for v in flat):
            raise InvalidInput(f"Input {name!r}: BYTES data must be strings (base64 of the "
                               "encoded images).", "bad_instance")
        check_batch_size(len(flat), limits.max_batch_size)  # before any base64 is decoded
        _checked_bytes(name, shape, flat)
        return [decode_base64(v, f"{name}[{i}]", limits.max_image_bytes)
                for i, v in enumerate(flat)]
    dtype = _dtype(name, datatype)
    try:
        array = np.asarray(data, dtype=dtype)
    except (TypeError, ValueError, OverflowError):
        raise InvalidInput(f"Input {name!r}: data must be numbers of {datatype}.",
                           "bad_instance") from None
    if array.size != _count(shape):
        raise InvalidInput(f"Input {name!r}: {array.size} values do not fill shape {shape}.",
                           "bad_instance")
    if not np.all(np.isfinite(array)):
        raise InvalidInput(f"Input {name!r}: data must be finite numbers.", "bad_instance")
    return array.reshape(shape)


def _flatten(data: Any) -> list:
    if isinstance(data, list):
        return [v for item in data for v in _flatten(item)] if data and \
            isinstance(data[0], list) else data
    return [data]


def _checked_bytes(name: str, shape: list[int], items: list[bytes]) -> list[bytes]:
    if len(items) != _count(shape):
        raise InvalidInput(f"Input {name!r}: {len(items)} elements do not fill shape {shape}.",
                           "bad_instance")
    return items


def _dtype(name: str, datatype: str) -> type:
    if datatype not in DTYPES:
        raise InvalidInput(f"Input {name!r}: datatype {datatype!r} is not supported (BYTES of "
                           f"encoded images, or {', '.join(DTYPES)}).", "bad_instance")
    return DTYPES[datatype]


def _outputs(value: Any) -> list[RequestedOutput]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise InvalidInput("\"outputs\" must be a list.", "bad_parameter")
    wanted = []
    for item in value:
        name = item.get("name") if isinstance(item, dict) else None
        if name not in OUTPUTS:
            raise InvalidInput(f"Unknown output {name!r}; this model has "
                               f"{', '.join(OUTPUTS)}.", "bad_parameter")
        params = _parameters(item.get("parameters"))
        k = params.get("classification", 0)
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            raise InvalidInput("parameters.classification must be a non-negative integer.",
                               "bad_parameter")
        wanted.append(RequestedOutput(name, bool(params.get("binary_data", False)), k))
    return wanted


def encode(model: str, version: int, request: Request, probabilities: np.ndarray,
           labels: list[str]) -> tuple[bytes, dict[str, str]]:
    """The V2 response body and its extra headers (the binary extension's length)."""
    wanted = request.outputs or [RequestedOutput(n, request.binary_default) for n in OUTPUTS]
    outputs, blobs = [], []
    for want in wanted:
        name, datatype, array = _output(want, probabilities, labels)
        entry: dict[str, Any] = {"name": name, "datatype": datatype,
                                 "shape": list(np.shape(array))}
        if want.binary:
            blob = _to_binary(datatype, array)
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = (np.asarray(array).ravel().tolist() if datatype != "BYTES"
                             else [s.decode() for s in np.ravel(array)])
        outputs.append(entry)
    header = {"model_name": model, "model_version": str(version), "outputs": outputs}
    if request.id is not None:
        header["id"] = request.id
    body = orjson.dumps(header, option=orjson.OPT_SERIALIZE_NUMPY)
    if not blobs:
        return body, {}
    return body + b"".join(blobs), {HEADER_LENGTH: str(len(body))}


def _output(want: RequestedOutput, probabilities: np.ndarray, labels: list[str]
            ) -> tuple[str, str, np.ndarray]:
    if want.classification:
        k = min(want.classification, probabilities.shape[1])
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
        strings = [[f"{row[c]:f}:{c}:{labels[c]}".encode() for c in classes]
                   for row, classes in zip(probabilities, order)]
        return want.name, "BYTES", np.array(strings, dtype=object)
    if want.name == "class":
        return "class", "INT64", probabilities.argmax(axis=1).astype(np.int64)
    return "probabilities", "FP32", probabilities.astype(np.float32)


def _to_binary(datatype: str, array: np.ndarray) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(s)) + s for s in np.ravel(array))
    return np.ascontiguousarray(array, dtype=np.dtype(array.dtype).newbyteorder("<")).tobytes()
