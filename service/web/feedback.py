"""POST /v1/feedback: the true label of an earlier prediction, for the input log."""
from __future__ import annotations

from typing import Any

import cherrypy

from ..errors import InvalidInput, NotFound, UnsupportedMediaType
from ..inputlog import InputLog
from .access import current_key
from .bodies import media_type, parse_json, read_body
from .responses import json_endpoint, require_method

MAX_FEEDBACK_BYTES = 4096  # a request id, a label and an index: nothing big


def feedback_from_json(payload: Any) -> dict[str, Any]:
    """``{"request_id", "label"}`` or ``{"request_id", "class"}`` (+ optional ``instance``)
    as keyword arguments of :meth:`InputLog.feedback` (which checks the values)."""
    if not isinstance(payload, dict):
        raise InvalidInput("The JSON body must be an object with 'request_id' and 'label' "
                           "or 'class'.", "invalid_json")
    if "request_id" not in payload:
        raise InvalidInput("The JSON body needs 'request_id'.", "bad_parameter")
    return {"request_id": payload["request_id"], "label": payload.get("label"),
            "class_id": payload.get("class"), "instance": payload.get("instance")}


def require_inputlog(inputlog: InputLog | None) -> InputLog:
    if inputlog is None:
        raise NotFound("Feedback is off: the input log is disabled on this server.",
                       "feedback_disabled")
    return inputlog


class FeedbackRoutes:
    """``/v1/feedback``, mixed into ``V1``; the app sets ``inputlog`` when it is enabled."""

    inputlog: InputLog | None = None

    @cherrypy.expose
    @json_endpoint
    def feedback(self, **_):
        require_method("POST")
        if media_type() != "application/json":
            raise UnsupportedMediaType("Send feedback as application/json.")
        payload = parse_json(read_body(MAX_FEEDBACK_BYTES))
        return require_inputlog(self.inputlog).feedback(**feedback_from_json(payload),
                                                        caller=current_caller())


def current_caller() -> tuple[str, bool] | None:
    """The request's API key as the input log's feedback check sees it (None: no keys)."""
    key = current_key()
    return (key.id, key.admin) if key else None
