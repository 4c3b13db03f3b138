"""The one place where handler results and errors become HTTP responses.

``tools.answer`` wraps every handler once (before_handler): a dict result is written as
JSON, bytes as they are; a ``ServiceError`` -- from the handler, or from a refusal that
``tools.access`` put in the handler's place -- is rendered in the route's own format (its
``Answer``: JSON for the API, the HTML page for the form), and so is any unexpected
exception, logged with its traceback and answered 500 ``internal_error`` without details.
CherryPy's own HTTP errors go to the route's ``error_page`` instead.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import cherrypy
import cherrypy._cperror
import orjson

from ..errors import ServiceError, http_code

log = logging.getLogger("service.web")

MESSAGES = {
    404: "There is nothing at this URL.",
    413: "The request body is larger than the server accepts.",
    500: "The server hit an unexpected error; it has been logged.",
}
INTERNAL_ERROR = ServiceError(MESSAGES[500], "internal_error")

# CherryPy pads short error pages with spaces for old Internet Explorer; that would leave
# trailing junk after our JSON error bodies.
cherrypy._cperror._be_ie_unfriendly = lambda status: None


def to_json(payload: Any) -> bytes:
    """Compact UTF-8 JSON; dict keys that are not strings become strings, as in ``json``."""
    return orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS)


def json_bytes(payload: Any, status: int = 200) -> bytes:
    cherrypy.response.status = status
    cherrypy.response.headers["Content-Type"] = "application/json"
    return to_json(payload)


def error_payload(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def note_error(code: str) -> None:
    """Remember the error code of this response, for the metrics and the access log."""
    cherrypy.serving.request.error_code = code


def log_server_error(status: int, code: str, message: str) -> None:
    """Our 5xx answers are logged (a client's 4xx is the access log's business)."""
    if status >= 500:
        log.warning("%s %s -> %d %s: %s", cherrypy.request.method, cherrypy.request.path_info,
                    status, code, message)


def service_error_response(exc: ServiceError) -> bytes:
    """The JSON answer to ``exc``: its status, headers and ``{"error": {code, message}}``."""
    return _error_response(exc, exc.to_dict())


def message_error_response(exc: ServiceError) -> bytes:
    """The standard protocols' answer (V2, TF Serving): ``{"error": "<message>"}``."""
    return _error_response(exc, {"error": exc.message})


def _error_response(exc: ServiceError, payload: dict) -> bytes:
    note_error(exc.code)
    cherrypy.response.headers.update(exc.headers)
    log_server_error(exc.status, exc.code, exc.message)
    return json_bytes(payload, exc.status)


def answer(handler: Callable[[], Any]) -> Any:
    """Call ``handler``; its result or its error, as the route answers (see the docstring)."""
    try:
        result = handler()
    except ServiceError as exc:
        return cherrypy.serving.request.answer.render_error(exc)
    except (cherrypy.HTTPError, cherrypy.HTTPRedirect, cherrypy.NotFound):
        raise
    except Exception:
        log.error("unhandled error on %s %s", cherrypy.request.method,
                  cherrypy.request.path_info, exc_info=True)
        return cherrypy.serving.request.answer.render_error(INTERNAL_ERROR)
    return result if isinstance(result, (bytes, str)) or result is None else json_bytes(result)


class AnswerTool(cherrypy.Tool):
    """``tools.answer``: wraps the request's handler, whichever put it there, in ``answer``.

    Priority 40: after ``tools.access``'s form-key check (30), which may replace the handler
    by a refusal, and before staticdir (50), which serves a file in the handler's place.
    """

    def __init__(self) -> None:
        super().__init__("before_handler", self._wrap, name="answer", priority=40)

    @staticmethod
    def _wrap() -> None:
        request = cherrypy.serving.request
        handler = request.handler
        if handler is not None:
            request.handler = lambda: answer(handler)


cherrypy.tools.answer = AnswerTool()


def raising(exc: ServiceError) -> Callable[[], Any]:
    """A handler that raises ``exc``: a refusal answered like any handler's error."""
    def refuse() -> Any:
        raise exc
    return refuse


def error_page(status: str, message: str, traceback: str, version: str) -> str:
    """CherryPy's own HTTP errors (404, 405, 413...) as our JSON error shape."""
    code, text = _page_error(status, message)
    return to_json(error_payload(code, text)).decode()


def message_error_page(status: str, message: str, traceback: str, version: str) -> str:
    """CherryPy's own HTTP errors in the standard protocols' shape."""
    return to_json({"error": _page_error(status, message)[1]}).decode()


def _page_error(status: str, message: str) -> tuple[str, str]:
    """The error code and message of CherryPy's error ``status``, noted for the metrics."""
    status_code = int(str(status).split()[0])
    cherrypy.response.headers["Content-Type"] = "application/json"
    note_error(http_code(status_code))
    text = str(message) if status_code == 413 else MESSAGES.get(status_code) or str(message)
    return http_code(status_code), text


def unexpected_error() -> None:
    """request.error_response, outside any handler (a hook failed): a bare 500, logged."""
    log.error("unhandled error on %s %s", cherrypy.request.method, cherrypy.request.path_info,
              exc_info=True)
    note_error("internal_error")
    response = cherrypy.response
    response.status = 500
    response.headers["Content-Type"] = "application/json"
    response.body = to_json(error_payload("internal_error", MESSAGES[500]))
    response.headers.pop("Content-Length", None)
