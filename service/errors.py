"""Every error the service can report: a short code, a human message and an HTTP status.

This module is the one place where an error kind is tied to its status; the web layer
only reads ``status``/``code``/``message`` (and ``headers``) off the exception.
"""
from __future__ import annotations


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
