"""Model versions over HTTP: what ``GET /v1/models/<name>`` says about them, and the admin-only
``POST /v1/models/<name>/reload`` (newest version, or ``{"version": N}`` to pin N — a rollback).

Who may call it (an admin key, or the admin token without keys) is ``tools.access``'s
business (access.py), checked before this runs.
"""
from __future__ import annotations

from typing import Any

import cherrypy

from ..errors import InvalidInput
from ..models.registry import ModelStatus
from . import fields
from .bodies import parse_json, read_body

MAX_ADMIN_BODY = 4096  # {"version": N} is all a reload body holds


def allow_bodiless_post() -> None:
    """on_start_resource: a request with neither Content-Length nor Transfer-Encoding has an
    empty body (RFC 9112 6.3), so ``curl -X POST .../reload`` means "reload the newest" --
    CherryPy would otherwise answer 411 before the handler runs."""
    headers = cherrypy.request.headers
    if "Content-Length" not in headers and "Transfer-Encoding" not in headers:
        cherrypy.request.process_request_body = False


cherrypy.tools.bodiless_post = cherrypy.Tool("on_start_resource", allow_bodiless_post)


def version_info(status: ModelStatus, versions: list[int]) -> dict[str, Any]:
    """The version lifecycle part of a model's details."""
    failure = status.last_failure
    return {"serving": status.version if status.model is not None else None,
            "policy": status.policy, "pinned": status.pinned, "versions": versions,
            "previous_version": status.previous_version,
            "last_reload_failure": failure.to_dict() if failure else None}


def reload(app: Any, /, name: str, **params: Any) -> dict[str, Any]:
    """POST /v1/models/<name>/reload: 200 with the new summary, or 409 ``reload_failed``."""
    asked = requested_version(params)
    status = app.registry.reload(name, asked)
    answer = {"name": status.name, "version": status.version, "state": status.state.value,
              "previous_version": status.previous_version, "policy": status.policy,
              "pinned": status.pinned}
    if app.member is not None:  # every other worker follows; answer once they all serve it
        answer["workers"] = app.member.broadcast_reload(name, asked, status.version)
    return answer


def requested_version(params: dict[str, Any]) -> int | None:
    """``{"version": N}`` in a JSON body (or ``?version=N``); nothing or ``{}``: the newest."""
    data = read_body(MAX_ADMIN_BODY) if cherrypy.request.process_request_body else b""
    value = params.get("version")
    if data.strip():
        payload = parse_json(data)
        if not isinstance(payload, dict):
            raise InvalidInput("The JSON body must be an object.", "invalid_json")
        value = payload.get("version")
    return fields.integer(value, "'version'", low=1)
