"""Who may call what, and how often: API keys, admin keys and rate limits, as one tool.

``tools.access`` runs before a request's body is read. It takes the route's policy (declared
with the route in ``routes.py``), checks the key (``Authorization: Bearer <key>`` or ``X-API-Key: <key>``) when
keys are configured -- without keys, admin routes take ``[service] admin_token`` -- and admits the request through the client's token bucket and
in-flight cap (the client is the key's id, or the address without keys). A refusal is
answered at once, with the body left unread. The image count of a prediction is charged
later by the data plane, through :meth:`Access.charge_images`.
"""
from __future__ import annotations

import dataclasses
import functools
import hmac
import random
import threading
import time
from typing import Any, Callable

import cherrypy

from ..access.keys import ApiKey, KeyRing
from ..access.rate_limit import Limiter, RateLimiter
from ..config import AuthSettings, RateLimits, RateLimitSettings
from ..dataplane import RequestContext
from ..errors import ConfigError, Forbidden, RateLimited, ServiceError, Unauthorized
from .responses import raising

# Each route's policy is declared with the route (routes.py); see the module docstring.
OPEN, KEY, ADMIN, HEALTH, METRICS, FORM = "open", "key", "admin", "health", "metrics", "form"
FEEDBACK_SUMMARY = "feedback_summary"  # OPEN, KEY or ADMIN, as [auth] feedback_summary says
RATE_LIMITED = frozenset({KEY, ADMIN, FORM})  # what costs work: predictions and reloads
FORM_KEY_FIELD = "api_key"


def unmatched_policy(path: str) -> str:
    """The policy of a path no route matches: under /v1 a key is needed even to hear 404."""
    return KEY if path == "/v1" or path.startswith("/v1/") else OPEN


def request_policy(request: Any) -> str:
    route = getattr(request, "route", None)  # set by the dispatcher
    return route.policy if route is not None else unmatched_policy(request.path_info)


def presented_key(headers: Any, header: str = "X-API-Key") -> str | None:
    """The credential of ``Authorization: Bearer <it>``, else of ``header``."""
    scheme, _, credentials = headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    return headers.get(header, "").strip() or None


def _refusing(check: Callable[["Access"], None]) -> Callable[["Access"], None]:
    """A hook whose ServiceError becomes the request's answer instead of its handler."""
    @functools.wraps(check)
    def hook(access: "Access") -> None:
        try:
            check(access)
        except ServiceError as exc:
            access._refuse(cherrypy.serving.request, exc)
    return hook


class Access:
    """The keys (None: no keys configured) and limiter behind ``tools.access``.

    ``limiter``: where the buckets and in-flight counts live -- this process's memory by
    default; ``access.shared_limits.make_limiter`` picks the one for a cluster's worker, or
    Redis for every replica (``[ratelimit] redis_url``).
    """

    def __init__(self, auth: AuthSettings, limits: RateLimitSettings, batch_max: int,
                 admin_token: str | None = None, limiter: Limiter | None = None):
        self.auth = auth
        self.admin_token = admin_token or None  # admin routes' credential without keys
        if auth.keys_file is not None and not auth.keys_file.exists():
            raise ConfigError(f"[auth] keys_file: {auth.keys_file} does not exist; create a "
                              "key with `python -m service keys add NAME`")
        self.keys = KeyRing(auth.keys_at()) if auth.keys_at() else None
        self.defaults = RateLimits(**{f.name: getattr(limits, f.name)
                                      for f in dataclasses.fields(RateLimits)})
        self.limiter: Limiter = limiter if limiter is not None else RateLimiter()
        self.tarpit_s = limits.tarpit_s
        self._tarpit = threading.BoundedSemaphore(limits.tarpit_slots) \
            if limits.tarpit_s and limits.tarpit_slots else None
        self.batch_max = batch_max

    def form_needs_key(self) -> bool:
        return self.keys is not None and not self.auth.form_open

    # -- the tool ------------------------------------------------------------------------------
    @_refusing
    def check(self) -> None:
        """before_request_body: authenticate, authorise and admit, or answer the refusal."""
        request = cherrypy.serving.request
        policy = request_policy(request)
        if policy == FEEDBACK_SUMMARY:
            policy = self.auth.feedback_summary  # "open", "key" or "admin": the same names
        key = self._authenticate(policy, request)
        request.api_key = key
        if policy in RATE_LIMITED:
            client = key.id if key else request.remote.ip or "-"
            if self.limiter.enter(client, self.limits_for(key)):  # counted in flight...
                request.access_client = client  # ...until release()

    def _slow_down(self) -> None:
        """Hold a refused request a moment, while a tarpit slot is free (see [ratelimit])."""
        if self._tarpit is not None and self._tarpit.acquire(blocking=False):
            try:
                # Jitter: held requests must not all come back at once, in one burst.
                time.sleep(self.tarpit_s * random.uniform(0.5, 1.5))
            finally:
                self._tarpit.release()

    def release(self) -> None:
        """The request no longer counts towards its client's in-flight cap: once its answer
        is ready (before_finalize, after_error_response), before a byte of it is sent, so a
        client that has its answer may send the next request; on_end_request at the latest.
        Once per request."""
        request = cherrypy.serving.request
        client = getattr(request, "access_client", None)
        if client is not None:
            request.access_client = None
            self.limiter.leave(client)

    def _authenticate(self, policy: str, request: Any) -> ApiKey | None:
        if self.keys is None and policy == ADMIN:
            self._check_admin_token(request.headers)
            return None
        if self.keys is None or policy == OPEN:
            return None
        if (policy == HEALTH and not self.auth.protect_health) or \
                (policy == METRICS and not self.auth.protect_metrics):
            return None
        presented = presented_key(request.headers)
        if presented is None and policy == FORM:
            # The key typed into the form is in the multipart body, not yet parsed.
            request.access_form_key_pending = self.form_needs_key()
            return None
        if presented is None:
            raise Unauthorized(_missing_message(policy), "unauthorized")
        key = self._verify(presented)
        if policy == ADMIN and not key.admin:
            raise Forbidden(f"The key {key.name!r} is not an admin key; this route needs one.",
                            "admin_required")
        return key

    def _check_admin_token(self, headers: Any) -> None:
        """Without API keys, admin routes take ``[service] admin_token`` (or are disabled)."""
        if self.admin_token is None:
            raise Forbidden("Admin routes are disabled: no [service] admin_token is configured.",
                            "admin_disabled")
        presented = presented_key(headers, "X-Admin-Token")
        if presented is None or not hmac.compare_digest(presented.encode(),
                                                        self.admin_token.encode()):
            raise Unauthorized("This route needs the admin token: send "
                               "'Authorization: Bearer <token>' or 'X-Admin-Token: <token>'.")

    @_refusing
    def check_form_key(self) -> None:
        """before_handler: the key typed into the HTML form, now that its body is parsed."""
        request = cherrypy.serving.request
        if not getattr(request, "access_form_key_pending", False):
            return
        value = request.params.pop(FORM_KEY_FIELD, None)
        value = value.strip() if isinstance(value, str) else ""
        if not value:
            raise Unauthorized("Enter your API key in the form: this server needs one.",
                               "unauthorized")
        request.api_key = self._verify(value)
        request.form_api_key = value  # to fill in the result page's forms again

    def _verify(self, presented: str) -> ApiKey:
        key = self.keys.verify(presented) if self.keys else None
        if key is None:
            raise Unauthorized("The API key is not valid (unknown, mistyped or revoked).",
                               "invalid_api_key")
        return key

    def _refuse(self, request: Any, exc: ServiceError) -> None:
        """Answer ``exc`` instead of calling the handler (tools.answer renders it as the
        route answers: the HTML page for the form, JSON elsewhere)."""
        if isinstance(exc, RateLimited):
            self._slow_down()
        # The body is never parsed. Refused credentials close the connection, so a large body
        # is not read either; a 429 keeps it open (cheroot drains the body) for the retry.
        request.process_request_body = False
        if exc.status in (401, 403) or "Transfer-Encoding" in request.headers:
            cherrypy.serving.response.headers["Connection"] = "close"
        request.handler = raising(exc)

    # -- limits --------------------------------------------------------------------------------
    def limits_for(self, key: ApiKey | None) -> RateLimits:
        return key.rate_limits(self.defaults) if key else self.defaults

    def charge_images(self, context: RequestContext, count: int) -> None:
        """The data plane's admission hook: take ``count`` image tokens or raise 429."""
        key = self.keys.get(context.api_key_id) if self.keys and context.api_key_id else None
        client = context.api_key_id or context.client or "-"
        self.limiter.charge_images(client, self.limits_for(key), count, self.batch_max)


def _missing_message(policy: str) -> str:
    if policy == ADMIN:
        return "This route needs an admin API key: send 'Authorization: Bearer <key>'."
    return ("This route needs an API key: send 'Authorization: Bearer <key>' or "
            "'X-API-Key: <key>'.")


def current_key() -> ApiKey | None:
    return getattr(cherrypy.serving.request, "api_key", None)


class AccessTool(cherrypy.Tool):
    """``tools.access`` (config: ``tools.access.access = Access(...)``)."""

    def __init__(self) -> None:
        super().__init__("before_request_body", Access.check, name="access")

    def _setup(self) -> None:
        access = self._merged_args()["access"]
        hooks = cherrypy.serving.request.hooks
        hooks.attach("before_request_body", access.check, priority=30)
        hooks.attach("before_handler", access.check_form_key, priority=30)
        for point in ("before_finalize", "after_error_response", "on_end_request"):
            hooks.attach(point, access.release, priority=80)


cherrypy.tools.access = AccessTool()
