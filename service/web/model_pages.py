"""The tester's models page: ``GET /models`` and each model's confusion matrix picture.

For every configured model: its architecture, test accuracy and per-class accuracy (bars),
the confusion matrix ``evaluate`` wrote beside the serving version, the versions in the store
with the one serving marked, and the live accuracy from testers' feedback per version (the
input log's ``feedback_summary``, as ``GET /v1/models/<m>/feedback-summary`` answers it).
"""
from __future__ import annotations

from typing import Any

import cherrypy

from ..errors import NotFound
from ..models.registry import ModelStatus
from .api import model_status
from .ui import TEMPLATES, page_context

CONFUSION_FILE = "confusion.png"


def models(app: Any, /, **_: Any) -> bytes:
    """GET /models: every configured model, as the testers' page."""
    cards = [_card(app, status) for status in app.registry.statuses()]
    cherrypy.response.headers["Content-Type"] = "text/html; charset=utf-8"
    cherrypy.response.headers["Cache-Control"] = "no-store"  # live accuracy moves
    html = TEMPLATES.get_template("models.html").render(**page_context(app), cards=cards)
    return html.encode("utf-8")


def confusion_png(app: Any, /, name: str, **_: Any) -> bytes:
    """GET /models/<name>/confusion.png: the serving version's confusion matrix."""
    path = _confusion_path(model_status(app.registry, name))
    if path is None:
        raise NotFound(f"Model {name} has no confusion matrix picture.", "not_found")
    cherrypy.response.headers["Content-Type"] = "image/png"
    return path.read_bytes()


def _card(app: Any, status: ModelStatus) -> dict[str, Any]:
    model = status.model
    manifest = model.manifest if model is not None else None
    labels = model.labels if model is not None else []
    admins_only = app.access.auth.feedback_summary == "admin"  # the page is not for admins
    live = (app.inputlog.feedback_summary(status.name)
            if app.inputlog is not None and not admins_only else None)
    return {
        "name": status.name, "state": status.state.value, "version": status.version,
        "error": status.error,
        "architecture": manifest.architecture if manifest else None,
        "accuracy": manifest.accuracy if manifest else None,
        "per_class": list(zip(labels, manifest.per_class_accuracy)) if manifest else [],
        "versions": app.registry.versions(status.name),
        "confusion": _confusion_path(status) is not None,
        "live": live,
        "live_admins_only": admins_only,
    }


def _confusion_path(status: ModelStatus):
    model = status.model
    if model is None or model.directory is None:
        return None
    path = model.directory / CONFUSION_FILE
    return path if path.is_file() else None
