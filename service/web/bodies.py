"""Turn a predict request (raw image, multipart form or JSON) into instances and options.

Adding a body kind means adding one parser to ``PARSERS``.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cherrypy
from cherrypy import _cpreqbody
import numpy as np
import orjson

from ..config import ServiceSettings
from ..dataplane import Instance
from ..errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
from . import fields
from .remote_paths import read_image_path

RAW_IMAGE_TYPES = ("image/png", "image/jpeg", "image/gif", "image/bmp", "image/tiff",
                   "image/webp", "application/octet-stream")
FORM_URLENCODED = "application/x-www-form-urlencoded"
# curl --data-binary sends FORM_URLENCODED unless told otherwise: the commonest mistake.
CURL_HINT = (" (curl --data-binary sends application/x-www-form-urlencoded: add "
             "-H 'Content-Type: image/png', or the image's own type.)")
# What CherryPy parses before a predict handler runs: forms, but not FORM_URLENCODED, whose
# parser would refuse image bytes with a charset error before our 415 could name the fix.
# The rest as RequestBody sets them, its generic multipart one included (limits.py wraps
# the parser that one calls: a malformed multipart body stays the client's 400).
PREDICT_BODY_PROCESSORS = {**{k: v for k, v in _cpreqbody.Entity.processors.items()
                              if k != FORM_URLENCODED},
                           "multipart": _cpreqbody._old_process_multipart}
DATA_URL = re.compile(r"^data:[\w.+-]+/[\w.+-]+(;[\w=.+-]+)*;base64,", re.IGNORECASE)
BASE64_WHITESPACE = " \t\n\r\f\v"
DEFAULT_MAX_JSON_DEPTH = ServiceSettings.max_json_depth

# JSON depth is measured on the bytes, before parsing: only brackets and quotes matter.
_NOT_JSON_STRUCTURE = bytes(sorted(set(range(256)) - set(b'[]{}"')))
_DEPTH_STEP = np.zeros(256, np.int8)
_DEPTH_STEP[list(b"[{")] = 1
_DEPTH_STEP[list(b"]}")] = -1
_DEPTH_CHUNK = 1 << 18  # bytes per numpy pass: bounds the scan's memory to a few MB


@dataclass(frozen=True)
class BodyLimits:
    """What one request may hold; the defaults are ``ServiceSettings``'s."""

    images_root: Path | None
    max_body_bytes: int
    max_image_bytes: int = ServiceSettings.max_image_bytes
    max_json_depth: int = ServiceSettings.max_json_depth
    max_batch_size: int = ServiceSettings.max_batch_size


@dataclass(frozen=True)
class PredictBody:
    instances: list[Instance]
    top_k: int | None = None


def parse_predict_body(params: dict[str, Any], limits: BodyLimits) -> PredictBody:
    """Read the current request's body according to its Content-Type."""
    content_type = media_type()
    parser = _parser_for(content_type)
    if parser is None:
        accepted = ", ".join((*RAW_IMAGE_TYPES, "multipart/form-data", "application/json"))
        hint = CURL_HINT if content_type == FORM_URLENCODED else ""
        raise UnsupportedMediaType(f"Content-Type {content_type or '(none)'!r} is not accepted; "
                                   f"send one of: {accepted}.{hint}")
    return parser(params, limits)


def media_type() -> str:
    return cherrypy.request.headers.get("Content-Type", "").split(";")[0].strip().lower()


def _parser_for(content_type: str) -> Callable | None:
    if content_type in RAW_IMAGE_TYPES:
        return _raw_body
    return PARSERS.get(content_type)


def read_body(limit: int) -> bytes:
    """The unprocessed request body (CherryPy has already refused it if over ``limit``)."""
    if not cherrypy.request.process_request_body:
        return b""  # tools.bodiless_post: no Content-Length, no Transfer-Encoding: no body
    data = cherrypy.request.body.read()
    if len(data) > limit:  # no Content-Length (chunked): cheroot stops at the limit too
        raise PayloadTooLarge(f"The request body is larger than {limit} bytes.", "body_too_large")
    return data


def _raw_body(params: dict[str, Any], limits: BodyLimits) -> PredictBody:
    data = read_body(limits.max_body_bytes)
    if not data:
        raise InvalidInput("The request body is empty; send the image bytes.", "missing_image")
    check_image_bytes(data, limits.max_image_bytes, "The request body")
    return PredictBody([instance_from_options(data, params)], parse_top_k(params.get("top_k")))


def _multipart_body(params: dict[str, Any], limits: BodyLimits) -> PredictBody:
    part = params.get("image")
    if part is None or not hasattr(part, "file") or part.file is None:
        raise InvalidInput("The form has no file field named 'image'.", "missing_image")
    data = part.file.read()
    if not data:
        raise InvalidInput("The uploaded file 'image' is empty.", "missing_image")
    check_image_bytes(data, limits.max_image_bytes, "The uploaded file 'image'")
    return PredictBody([instance_from_options(data, params)], parse_top_k(params.get("top_k")))


def _json_body(params: dict[str, Any], limits: BodyLimits) -> PredictBody:
    payload = read_json_body(limits)
    return body_from_json(payload, params, limits)


def body_from_json(payload: Any, params: dict[str, Any], limits: BodyLimits) -> PredictBody:
    """``{"instances": [...], "top_k": k}`` or the one-image shorthand ``{"image": b64}``."""
    if not isinstance(payload, dict):
        raise InvalidInput("The JSON body must be an object.", "invalid_json")
    if "instances" in payload:
        items = payload["instances"]
        if not isinstance(items, list) or not items:
            raise InvalidInput("'instances' must be a non-empty list.", "missing_image")
    elif "image" in payload:
        top_k = parse_top_k(payload.get("top_k", params.get("top_k")))
        data = decode_base64(payload["image"], max_bytes=limits.max_image_bytes)
        return PredictBody([instance_from_options(data, payload)], top_k)
    else:
        raise InvalidInput("The JSON body needs 'instances' (a list) or 'image' (base64).",
                           "missing_image")
    check_batch_size(len(items), limits.max_batch_size)  # before any base64 is decoded
    top_k = parse_top_k(payload.get("top_k", params.get("top_k")))
    return PredictBody([_json_instance(item, i, limits) for i, item in enumerate(items)], top_k)


PARSERS: dict[str, Callable[[dict[str, Any], BodyLimits], PredictBody]] = {
    "multipart/form-data": _multipart_body,
    "application/json": _json_body,
}


def read_json_body(limits: BodyLimits) -> Any:
    """The request's JSON body, within the body size and nesting limits."""
    return parse_json(read_body(limits.max_body_bytes), limits.max_json_depth)


def parse_json(data: bytes, max_depth: int = DEFAULT_MAX_JSON_DEPTH) -> Any:
    """The JSON value of ``data``; nesting deeper than ``max_depth`` is refused unparsed.

    orjson parses; what it refuses goes through the standard parser, which says what is
    wrong in its own words and reads a number too big for a double (1e400) as infinite --
    left to the field checks, which answer that it is out of range.
    """
    if not data.strip():
        raise InvalidInput("The request body is empty; send a JSON object.", "invalid_json")
    if json_depth_exceeds(data, max_depth):
        raise _too_deep(max_depth)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(data, parse_constant=_refuse_constant)
    except RecursionError:  # only reachable if max_depth is above Python's recursion limit
        raise _too_deep(max_depth) from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidInput(f"The body is not valid JSON: {exc}.", "invalid_json") from None
    except ValueError:  # e.g. an integer longer than Python converts (sys.int_info)
        raise InvalidInput("The body is not valid JSON: a number in it is too long.",
                           "invalid_json") from None


def _refuse_constant(name: str) -> None:
    """NaN, Infinity and -Infinity are not JSON (Python's parser would take them)."""
    raise InvalidInput(f"The body is not valid JSON: {name} is not a JSON number.",
                       "invalid_json")


def json_depth_exceeds(data: bytes, limit: int) -> bool:
    """Whether brackets outside strings nest deeper than ``limit``: linear, C/numpy speed."""
    # Escaped backslashes pair up from the left, so once they are gone every backslash left
    # escapes the next character; of those only an escaped quote could fool the scan.
    unescaped = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    structure = unescaped.translate(None, _NOT_JSON_STRUCTURE)  # brackets and quotes only
    if len(structure) <= limit:
        return False
    depth, quotes = 0, 0
    for start in range(0, len(structure), _DEPTH_CHUNK):
        chunk = np.frombuffer(structure[start:start + _DEPTH_CHUNK], np.uint8)
        is_quote = chunk == ord('"')
        steps = _DEPTH_STEP[chunk]
        steps[(np.cumsum(is_quote, dtype=np.int64) + quotes) % 2 == 1] = 0  # inside a string
        levels = np.cumsum(steps, dtype=np.int64) + depth
        if int(levels.max()) > limit:
            return True
        depth, quotes = int(levels[-1]), quotes + int(is_quote.sum())
    return False


def _too_deep(max_depth: int) -> InvalidInput:
    return InvalidInput(f"The JSON body nests deeper than {max_depth} levels.", "json_too_deep")


def check_batch_size(count: int, max_batch_size: int) -> None:
    """413 for more images than one request may hold."""
    if count > max_batch_size:
        raise PayloadTooLarge(f"The request holds {count} images; at most {max_batch_size} "
                              "are allowed.", "batch_too_large")


def check_image_bytes(data: bytes, max_bytes: int, what: str = "The image") -> None:
    """413 for one image larger than ``max_bytes`` (``what`` names it in the message)."""
    if len(data) > max_bytes:
        raise image_bytes_too_large(what, max_bytes)


def image_bytes_too_large(what: str, max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"{what} is larger than {max_bytes} bytes, the most one image may "
                           "hold.", "image_bytes_too_large")


def _json_instance(item: Any, index: int, limits: BodyLimits) -> Instance:
    where = f"instances[{index}]"
    if not isinstance(item, dict):
        raise InvalidInput(f"{where} must be an object with 'b64' or 'path'.", "bad_instance")
    if "b64" in item:
        data = decode_base64(item["b64"], f"{where}.b64", limits.max_image_bytes)
    elif "path" in item:
        data = read_image_path(limits.images_root, item["path"], limits.max_image_bytes)
    else:
        raise InvalidInput(f"{where} needs 'b64' (base64 image) or 'path'.", "missing_image")
    return instance_from_options(data, item, where + ".")


def instance_from_options(data: bytes, options: dict[str, Any], where: str = "") -> Instance:
    """An instance with its ``x``, ``y``, ``crop`` options checked (``where`` prefixes names)."""
    x = fields.number(options.get("x"), where + "x")
    y = fields.number(options.get("y"), where + "y")
    crop = fields.number(options.get("crop"), where + "crop")
    if (x is None) != (y is None):
        raise InvalidInput(f"Give both {where}x and {where}y, or neither.", "bad_parameter")
    if crop is not None and not 0 < crop <= 1:
        raise InvalidInput(f"{where}crop must be a fraction in (0, 1], got {crop:g}.",
                           "bad_parameter")
    return Instance(data, x, y, crop)


def decode_base64(text: Any, where: str = "image", max_bytes: int | None = None) -> bytes:
    """Standard or URL-safe base64, padded or not, or a ``data:`` URL (at most ``max_bytes``)."""
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput(f"'{where}' must be a non-empty base64 string.", "missing_image")
    text = DATA_URL.sub("", text.strip(), count=1)
    if max_bytes is not None:
        _check_base64_size(text, where, max_bytes)
    try:  # what clients send: standard, padded, one line, decoded in one C call
        data = binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):
        data = _decode_lenient_base64(text, where)
    if not data:
        raise InvalidInput(f"'{where}' decodes to no bytes.", "missing_image")
    return data


def _decode_lenient_base64(text: str, where: str) -> bytes:
    """URL-safe letters, missing padding and line breaks too."""
    text = re.sub(r"\s+", "", text).replace("-", "+").replace("_", "/").rstrip("=")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidInput(f"'{where}' is not valid base64.", "bad_base64") from None


def _check_base64_size(text: str, where: str, max_bytes: int) -> None:
    """413 before decoding when ``text`` holds more base64 than ``max_bytes`` decode from."""
    if len(text) * 3 // 4 <= max_bytes:
        return  # cannot be over, whatever is whitespace
    # str.count runs in C and copies nothing: whitespace is dropped before decoding.
    chars = len(text) - sum(text.count(c) for c in BASE64_WHITESPACE) - text.count("=")
    if chars * 3 // 4 > max_bytes:
        raise image_bytes_too_large(f"'{where}'", max_bytes)


def parse_top_k(value: Any) -> int | None:
    """None means the default; the range is checked where the label count is known."""
    return fields.integer(value, "top_k")
