"""Build the CherryPy application and run it in the foreground or as a daemon."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import cherrypy
from cherrypy.process.plugins import Daemonizer, PIDFile

from ..config import REPO_ROOT, Settings, load_settings
from ..dataplane import DataPlane
from ..models.registry import ModelRegistry
from .api import HealthRoutes, Predictor, V1
from .bodies import BodyLimits
from . import limits  # noqa: F401  (registers tools.body_limit)
from .compat import CompatRoutes
from .plugins import ModelPlugin
from .responses import error_page, unexpected_error
from .ui import UiRoutes


class Root(HealthRoutes, CompatRoutes, UiRoutes):
    """``/``: the form, health routes and the seed-compatible routes; ``/v1``: the API."""

    def __init__(self, settings: Settings, registry: ModelRegistry):
        service = settings.service
        self.settings = settings
        self.registry = registry
        self.plane = DataPlane(registry, max_pixels=service.max_pixels,
                               max_batch_size=service.max_batch_size,
                               timeout_s=service.request_timeout_s)
        self.predictor = Predictor(self.plane, BodyLimits(service.images_root,
                                                          service.max_body_bytes))
        self.default_model = service.default_model
        self.mnist_dir = service.mnist_dir
        self.v1 = V1(self.predictor)


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
    cherrypy.config.update({**settings.cherrypy, "server.max_request_body_size": 0})
    _route_service_logs()
    registry = ModelRegistry(settings.models, service.graphs_dir)
    cherrypy.tree.mount(Root(settings, registry), "/", app_config(service.max_body_bytes))
    ModelPlugin(cherrypy.engine, registry).subscribe()
    return registry


def _route_service_logs() -> None:
    """Send this package's log records wherever CherryPy's error log goes (screen, file)."""
    logger = logging.getLogger("service")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.handlers = list(cherrypy.log.error_log.handlers)
    for handler in logger.handlers:
        handler.setFormatter(logging.Formatter("[%(asctime)s] %(name)s %(levelname)s %(message)s"))


def serve(config_path: Path | None, host: str | None = None, port: int | None = None,
          daemon: bool = False, pidfile: Path | None = None) -> int:
    settings = load_settings(config_path if config_path and Path(config_path).exists() else None)
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
