"""The values every protocol's body holds, checked one way: JSON within a nesting limit,
base64 images within a size limit, batch sizes. No HTTP here: the native bodies
(``web/bodies.py``) and the protocol codecs (``v2.py``, ``tfserving.py``) all call these.
"""
from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..config import ServiceSettings
from ..errors import InvalidInput, PayloadTooLarge

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
