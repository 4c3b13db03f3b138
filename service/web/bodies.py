"""Turn a predict request (raw image, multipart form or JSON) into instances and options.

Adding a body kind means adding one parser to ``PARSERS``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import cherrypy
from cherrypy import _cpreqbody

from ..dataplane import Instance
from ..errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType
# parse_json and check_image_bytes are the other web modules' way to them, too.
from ..protocols.values import (BodyLimits, check_batch_size, check_image_bytes,  # noqa: F401
                               decode_base64, parse_json)
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


@dataclass(frozen=True)
class PredictBody:
    instances: list[Instance]
    top_k: int | None = None
    explain: bool = False  # occlusion maps per image (models/explain.py)


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
    return PredictBody([instance_from_options(data, params)], **options(params, params))


def _multipart_body(params: dict[str, Any], limits: BodyLimits) -> PredictBody:
    part = params.get("image")
    if part is None or not hasattr(part, "file") or part.file is None:
        raise InvalidInput("The form has no file field named 'image'.", "missing_image")
    data = part.file.read()
    if not data:
        raise InvalidInput("The uploaded file 'image' is empty.", "missing_image")
    check_image_bytes(data, limits.max_image_bytes, "The uploaded file 'image'")
    return PredictBody([instance_from_options(data, params)], **options(params, params))


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
        data = decode_base64(payload["image"], max_bytes=limits.max_image_bytes)
        return PredictBody([instance_from_options(data, payload)], **options(payload, params))
    else:
        raise InvalidInput("The JSON body needs 'instances' (a list) or 'image' (base64).",
                           "missing_image")
    check_batch_size(len(items), limits.max_batch_size)  # before any base64 is decoded
    return PredictBody([_json_instance(item, i, limits) for i, item in enumerate(items)],
                       **options(payload, params))


PARSERS: dict[str, Callable[[dict[str, Any], BodyLimits], PredictBody]] = {
    "multipart/form-data": _multipart_body,
    "application/json": _json_body,
}


def read_json_body(limits: BodyLimits) -> Any:
    """The request's JSON body, within the body size and nesting limits."""
    return parse_json(read_body(limits.max_body_bytes), limits.max_json_depth)


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


def options(fields_: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The body's options, ``top_k`` and ``explain``: from ``fields_`` (a JSON body's), else
    from the query string."""
    explain = fields.boolean(fields_.get("explain", params.get("explain")), "explain")
    return {"top_k": parse_top_k(fields_.get("top_k", params.get("top_k"))),
            "explain": bool(explain)}


def parse_top_k(value: Any) -> int | None:
    """None means the default; the range is checked where the label count is known."""
    return fields.integer(value, "top_k")
