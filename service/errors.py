"""Every error the service can report: a short code, a human message and an HTTP status.

This module is the one place where an error kind is tied to its status, and where every
code a client can be answered with is declared (``CODES``); the web layer only reads
``status``/``code``/``message`` (and ``headers``) off the exception, and the OpenAPI
document lists the codes from here.
"""
from __future__ import annotations

# Every code a client can get, by HTTP status (tests/test_errors.py checks each code raised
# in service/ is here, under its exception's status).
CODES: dict[int, tuple[str, ...]] = {
    400: ("invalid_json", "json_too_deep", "missing_image", "bad_instance", "bad_base64",
          "invalid_image", "blank_image", "bad_parameter", "invalid_input", "bad_request",
          "bad_path", "not_a_file", "bad_label"),
    401: ("unauthorized", "invalid_api_key"),
    403: ("remote_path_disabled", "path_forbidden", "forbidden", "admin_disabled",
          "admin_required", "feedback_forbidden"),
    404: ("not_found", "model_not_found", "index_not_found", "image_not_found",
          "request_not_found", "feedback_disabled"),
    405: ("method_not_allowed",),
    408: ("request_timeout", "slow_client"),
    409: ("conflict", "reload_failed"),
    411: ("length_required",),
    413: ("body_too_large", "image_too_large", "batch_too_large", "image_bytes_too_large",
          "too_many_frames", "too_many_blocks", "payload_too_large"),
    414: ("uri_too_long",),
    415: ("unsupported_media_type", "unsupported_image_format"),
    422: ("several_digits",),
    429: ("rate_limited",),
    500: ("internal_error",),
    501: ("not_implemented",),
    503: ("model_unavailable", "overloaded", "not_ready", "unavailable", "too_many_in_flight",
          "worker_restarted", "feedback_pending", "labels_unavailable", "inputlog_unavailable",
          "ratelimit_unavailable"),
    502: ("bad_gateway",),          # the nginx front (deploy/nginx.conf): no worker answered
    504: ("deadline_exceeded", "gateway_timeout"),  # gateway_timeout: the nginx front's
    505: ("http_version_not_supported",),
}
# What the HTTP layer's own refusals (CherryPy's and cheroot's) are called, by status.
HTTP_CODES: dict[int, str] = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 408: "request_timeout", 411: "length_required",
    413: "body_too_large", 414: "uri_too_long", 415: "unsupported_media_type",
    500: "internal_error", 501: "not_implemented", 503: "unavailable",
    505: "http_version_not_supported",
}


def http_code(status: int) -> str:
    return HTTP_CODES.get(status, f"http_{status}")


class ServiceError(Exception):
    """Base class: ``code`` is snake_case, ``message`` a sentence a person can act on."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message = message
        if code:
            self.code = code
        self.headers = dict(headers or {})

    def to_dict(self) -> dict:
        return {"error": {"code": self.code, "message": self.message}}


class InvalidInput(ServiceError):
    """The client sent something we cannot use (bad JSON, base64, parameter...)."""

    status = 400
    code = "invalid_input"


class InvalidImage(InvalidInput):
    """The bytes are not a decodable image, or are truncated."""

    code = "invalid_image"


class BlankImage(InvalidInput):
    """The image decodes but holds no ink to classify."""

    code = "blank_image"


class SeveralDigits(InvalidInput):
    """More than one digit-sized group of ink, well apart: the caller picks one with x, y.

    ``boxes`` are [left, top, width, height] in the upright image's pixels (or, if its size
    is unknown, as shares of it), left to right."""

    status = 422
    code = "several_digits"

    def __init__(self, message: str, boxes: list[list[float]]):
        super().__init__(message)
        self.boxes = boxes

    def to_dict(self) -> dict:
        body = super().to_dict()
        body["error"]["boxes"] = self.boxes
        return body


class Unauthorized(ServiceError):
    """No or wrong credentials; ``WWW-Authenticate`` says which scheme to use."""

    status = 401
    code = "unauthorized"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message, code, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ServiceError):
    status = 403
    code = "forbidden"


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class PayloadTooLarge(ServiceError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(ServiceError):
    status = 415
    code = "unsupported_media_type"


class Unavailable(ServiceError):
    """The model cannot take the request now; the client may retry."""

    status = 503
    code = "model_unavailable"

    def __init__(self, message: str, code: str | None = None, retry_after: int = 1):
        super().__init__(message, code, headers={"Retry-After": str(retry_after)})


class Overloaded(Unavailable):
    """A bounded queue is full: rejected at once rather than queued forever."""

    code = "overloaded"


class RateLimited(ServiceError):
    """A key or client is over its rate limit; ``Retry-After`` says when a token is back."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int = 1, code: str | None = None):
        super().__init__(message, code, headers={"Retry-After": str(max(1, retry_after))})


class Conflict(ServiceError):
    """The request is valid but clashes with the current state."""

    status = 409
    code = "conflict"


class ReloadFailed(Conflict):
    """A model version was rejected (download, checksum, load, warm-up or QA gate); the
    previous version keeps serving."""

    code = "reload_failed"


class DeadlineExceeded(ServiceError):
    status = 504
    code = "deadline_exceeded"


class DatasetError(ServiceError):
    """A dataset file is missing, truncated, tampered with or malformed."""

    code = "dataset_error"


class ModelLoadError(ServiceError):
    """A model version could not be read, verified, imported, warmed or passed the QA gate."""

    code = "model_load_failed"


class PublishError(ServiceError):
    """A version could not be published: it fails verification, or the bucket refused it."""

    code = "publish_failed"


class ConfigError(ServiceError):
    """A configuration key has a bad value; the message names the key."""

    code = "config_error"
