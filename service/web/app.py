"""Build the CherryPy application and run it in the foreground or as a daemon."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import cherrypy
from cherrypy.process.plugins import Daemonizer, PIDFile

from .. import logs
from ..config import REPO_ROOT, Settings, load_settings
from ..dataplane import DataPlane
from ..inputlog import InputLog
from ..models.registry import ModelRegistry
from ..models.store import open_store
from .access import Access
from .api import HealthRoutes, Predictor, V1
from .bodies import BodyLimits
from . import connection_guard, limits  # noqa: F401  (limits registers tools.body_limit)
from .compat import CompatRoutes
from .observability import ObservabilityRoutes, take_over_access_log, tool_config
from .plugins import InputLogPlugin, LogWriterPlugin, ModelPlugin
from .responses import error_page, unexpected_error
from .ui import UiRoutes, form_error


class Root(HealthRoutes, CompatRoutes, UiRoutes, ObservabilityRoutes):
    """``/``: the form, health, metrics and the seed-compatible routes; ``/v1``: the API."""

    def __init__(self, settings: Settings, registry: ModelRegistry,
                 inputlog: InputLog | None = None):
        service = settings.service
        self.settings = settings
        self.registry = registry
        self.access = Access(settings.auth, settings.ratelimit, service.max_batch_size,
                             service.admin_token)
        self.access.form_error = lambda exc: form_error(self, exc)
        self.plane = DataPlane(registry, max_pixels=service.max_pixels,
                               max_frames=service.max_frames,
                               max_batch_size=service.max_batch_size,
                               timeout_s=service.request_timeout_s,
                               sinks=[inputlog] if inputlog else [],
                               admission=self.access.charge_images)
        self.start_observing(self.plane)  # metrics and prediction logs
        self.predictor = Predictor(self.plane, BodyLimits(
            service.images_root, service.max_body_bytes, service.max_image_bytes,
            service.max_json_depth, service.max_batch_size))
        self.default_model = service.default_model
        self.mnist_dir = service.mnist_dir
        self.inputlog = inputlog
        self.v1 = V1(self.predictor, inputlog)


def app_config(max_body_bytes: int) -> dict[str, Any]:
    return {
        "/": {
            "tools.body_limit.on": True,
            "tools.body_limit.limit": max_body_bytes,
            "request.body.maxbytes": max_body_bytes,
            "error_page.default": error_page,
            "request.error_response": unexpected_error,
            "tools.encode.on": False,
            "tools.trailing_slash.on": False,
        },
        "/static": {
            "tools.staticdir.on": True,
            "tools.staticdir.dir": str(REPO_ROOT / "static"),
            "tools.expires.on": True,
            "tools.expires.secs": 3600,
        },
    }


def mount(settings: Settings) -> ModelRegistry:
    """Configure CherryPy from ``settings`` and mount the app; models load at engine start."""
    service = settings.service
    # cheroot's own limit answers in plain text; ours (limits.py) answers in JSON.
    # CherryPy's screen handlers are replaced by logs.configure's (one format, stderr).
    cherrypy.config.update({**settings.cherrypy, "server.max_request_body_size": 0,
                            "log.screen": False})
    writer = logs.configure(settings.logging, screen=bool(settings.cherrypy.get("log.screen", True)))
    LogWriterPlugin(cherrypy.engine, writer).subscribe()
    registry = ModelRegistry(settings.models, open_store(settings),
                             poll_interval_s=settings.store.poll_interval_s)
    inputlog = make_inputlog(settings, registry)
    root = Root(settings, registry, inputlog)
    # Below CherryPy: slow clients are cut, and a full accept queue answers 503 at once.
    connection_guard.install(service.client_timeout_s, root.service_metrics)
    config = app_config(service.max_body_bytes)
    config["/"].update(tool_config(root.service_metrics))
    config["/"].update({"tools.access.on": True, "tools.access.access": root.access})
    take_over_access_log(cherrypy.tree.mount(root, "/", config))
    ModelPlugin(cherrypy.engine, registry).subscribe()
    if inputlog is not None:
        InputLogPlugin(cherrypy.engine, inputlog).subscribe()
    return registry


def make_inputlog(settings: Settings, registry: ModelRegistry) -> InputLog | None:
    """The input log sink, or None when ``[inputlog] enabled = False``."""
    if not settings.inputlog.enabled:
        return None
    return InputLog(settings.inputlog, settings.s3,
                    labels_for=lambda name: registry.get(name).labels)


def serve(config_path: Path | None, host: str | None = None, port: int | None = None,
          daemon: bool = False, pidfile: Path | None = None) -> int:
    settings = load_settings(config_path)
    overrides = {k: v for k, v in (("server.socket_host", host), ("server.socket_port", port))
                 if v is not None}
    settings.cherrypy.update(overrides)
    if daemon:
        settings.cherrypy["log.screen"] = False
    mount(settings)
    engine = cherrypy.engine
    if daemon:
        Daemonizer(engine).subscribe()
    if pidfile:
        PIDFile(engine, str(pidfile)).subscribe()
    if hasattr(engine, "signal_handler"):
        engine.signal_handler.subscribe()
    engine.start()
    if engine.state != engine.states.STARTED:
        return 1
    engine.block()
    return 0 if engine.state == engine.states.EXITING or engine.state == engine.states.STOPPED else 1
