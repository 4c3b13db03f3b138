"""POST /v1/feedback: the true label of an earlier prediction, for the input log."""
from __future__ import annotations

from typing import Any

from ..errors import InvalidInput, NotFound, UnsupportedMediaType
from ..inputlog import InputLog
from ..inputlog.feedback import Caller
from .access import current_key
from .api import model_status
from . import fields
from .bodies import media_type, parse_json, read_body

MAX_FEEDBACK_BYTES = 4096  # a request id, a label and an index: nothing big
MAX_REQUEST_ID_CHARS = 128  # ours are 32 hex digits
MAX_LABEL_CHARS = 64


def feedback_fields(payload: Any) -> dict[str, Any]:
    """``{"request_id", "label"}`` or ``{"request_id", "class"}`` (+ optional ``instance``),
    checked, as keyword arguments of :meth:`InputLog.feedback` (which checks them against the
    logged request: its labels and its image count)."""
    if not isinstance(payload, dict):
        raise InvalidInput("The JSON body must be an object with 'request_id' and 'label' "
                           "or 'class'.", "invalid_json")
    request_id = fields.text(payload.get("request_id"), "'request_id'", MAX_REQUEST_ID_CHARS)
    if request_id is None:
        raise InvalidInput("The JSON body needs 'request_id'.", "bad_parameter")
    label = fields.text(payload.get("label"), "'label'", MAX_LABEL_CHARS, code="bad_label")
    class_id = fields.integer(payload.get("class"), "'class'", decimal_text=False)
    if (label is None) == (class_id is None):
        raise InvalidInput("Give exactly one of 'label' (a string) or 'class' (an integer).",
                           "bad_parameter")
    instance = fields.integer(payload.get("instance"), "'instance'", low=0, decimal_text=False)
    return {"request_id": request_id, "label": label, "class_id": class_id,
            "instance": instance}


def require_inputlog(inputlog: InputLog | None) -> InputLog:
    if inputlog is None:
        raise NotFound("Feedback is off: the input log is disabled on this server.",
                       "feedback_disabled")
    return inputlog


def feedback(app: Any, /, **_: Any) -> dict[str, Any]:
    """POST /v1/feedback: the true label of an earlier prediction (JSON)."""
    if media_type() != "application/json":
        raise UnsupportedMediaType("Send feedback as application/json.")
    payload = parse_json(read_body(MAX_FEEDBACK_BYTES))
    return require_inputlog(app.inputlog).feedback(**feedback_fields(payload),
                                                   caller=current_caller())


def feedback_summary(app: Any, /, name: str, **_: Any) -> dict[str, Any]:
    """GET /v1/models/<name>/feedback-summary: live accuracy from feedback, per version."""
    model_status(app.registry, name)
    versions = require_inputlog(app.inputlog).feedback_summary(name)
    return {"name": name, "versions": versions}


def current_caller() -> Caller | None:
    """The request's API key as the input log's feedback check sees it (None: no keys)."""
    key = current_key()
    return Caller(key.id, key.admin) if key else None
