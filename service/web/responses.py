"""The one place where errors become HTTP responses, and where JSON is written."""
from __future__ import annotations

import functools
import json
import logging
from typing import Any, Callable

import cherrypy
import cherrypy._cperror


from ..errors import ServiceError

log = logging.getLogger("service.web")

# Codes for the errors CherryPy raises itself (unknown route, wrong method, body too large...).
HTTP_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 408: "request_timeout", 411: "length_required",
    413: "body_too_large", 414: "uri_too_long", 415: "unsupported_media_type",
    500: "internal_error", 501: "not_implemented", 503: "unavailable",
    505: "http_version_not_supported",
}
MESSAGES = {
    404: "There is nothing at this URL.",
    413: "The request body is larger than the server accepts.",
    500: "The server hit an unexpected error; it has been logged.",
}


# CherryPy pads short error pages with spaces for old Internet Explorer; that would leave
# trailing junk after our JSON error bodies.
cherrypy._cperror._be_ie_unfriendly = lambda status: None


def json_bytes(payload: Any, status: int = 200) -> bytes:
    cherrypy.response.status = status
    cherrypy.response.headers["Content-Type"] = "application/json"
    return json.dumps(payload, separators=(",", ":")).encode()


def error_payload(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def json_endpoint(handler: Callable) -> Callable:
    """Serialise the handler's dict as JSON; turn a ServiceError into its status and body."""

    @functools.wraps(handler)
    def wrapper(*args, **kwargs):
        try:
            return json_bytes(handler(*args, **kwargs))
        except ServiceError as exc:
            return service_error_response(exc)

    return wrapper


def note_error(code: str) -> None:
    """Remember the error code of this response, for the metrics and the access log."""
    cherrypy.serving.request.error_code = code


def service_error_response(exc: ServiceError) -> bytes:
    note_error(exc.code)
    cherrypy.response.headers.update(exc.headers)
    if exc.status >= 500:
        log.warning("%s %s -> %d %s: %s", cherrypy.request.method, cherrypy.request.path_info,
                    exc.status, exc.code, exc.message)
    return json_bytes(exc.to_dict(), exc.status)


def error_page(status: str, message: str, traceback: str, version: str) -> str:
    """CherryPy's own HTTP errors (404, 405, 413...) as our JSON error shape."""
    code = int(str(status).split()[0])
    cherrypy.response.headers["Content-Type"] = "application/json"
    text = str(message) if code == 413 else MESSAGES.get(code) or str(message)
    note_error(HTTP_CODES.get(code, f"http_{code}"))
    return json.dumps(error_payload(HTTP_CODES.get(code, f"http_{code}"), text))


def unexpected_error() -> None:
    """request.error_response: log the traceback, answer a bare 500 with no details."""
    log.error("unhandled error on %s %s", cherrypy.request.method, cherrypy.request.path_info,
              exc_info=True)
    note_error("internal_error")
    response = cherrypy.response
    response.status = 500
    response.headers["Content-Type"] = "application/json"
    response.body = json.dumps(error_payload("internal_error", MESSAGES[500])).encode()
    response.headers.pop("Content-Length", None)


def require_method(*allowed: str) -> None:
    """405 with ``Allow`` unless the request uses one of ``allowed`` (HEAD rides on GET)."""
    method = cherrypy.request.method
    if method in allowed or (method == "HEAD" and "GET" in allowed):
        return
    cherrypy.response.headers["Allow"] = ", ".join(allowed)
    raise cherrypy.HTTPError(405, f"Use {' or '.join(allowed)} for this URL.")
