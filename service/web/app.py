"""Build the CherryPy application and run it in the foreground or as a daemon."""
from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path
from typing import Any

import cherrypy
from cherrypy.process.plugins import Daemonizer, PIDFile

from .. import cpu_placement, logs, metrics
from ..access.redis_limits import in_flight_lease
from ..access.shared_limits import make_limiter
from ..config import (REPLICA_ENV, REPLICA_ID, REPO_ROOT, ServiceSettings, Settings,
                      load_settings)
from ..cluster.identity import Worker
from ..cluster.progress import WriterProgress
from ..dataplane import DataPlane
from ..errors import ConfigError
from ..inputlog import InputLog
from ..models.registry import ModelRegistry
from ..models.store import LocalStore, ModelStore, S3Store
from . import connection_guard, limits, openapi, proxies  # noqa: F401  (limits: tools.body_limit)
from .access import Access
from .api import Predictor
from .bodies import BodyLimits
from .cluster import ClusterMember, ClusterPlugin
from .dispatch import TableDispatcher
from .observability import observe, take_over_access_log, tool_config
from .plugins import LifecyclePlugin, LogWriterPlugin
from .responses import unexpected_error
from .routes import TABLE, openapi_document


DAEMON_UMASK = 0o022


class App:
    """What the route handlers share: settings, registry, data plane, input log, access, metrics.

    Every handler is ``handler(app, /, **params)`` (routes.py); CherryPy mounts this object as
    the application's root, dispatched by the route table.
    """

    def __init__(self, settings: Settings, registry: ModelRegistry,
                 inputlog: InputLog | None = None, member: ClusterMember | None = None):
        service = settings.service
        self.settings = settings
        self.registry = registry
        limiter = make_limiter(member.worker if member else None, settings.ratelimit,
                               lease_s=in_flight_lease(service))
        self.access = Access(settings.auth, settings.ratelimit, service.max_batch_size,
                             service.admin_token, limiter=limiter)
        self.plane = DataPlane(registry, max_pixels=service.max_pixels,
                               max_frames=service.max_frames,
                               max_batch_size=service.max_batch_size,
                               timeout_s=service.request_timeout_s,
                               sinks=[inputlog] if inputlog else [],
                               admission=self.access.charge_images)
        self.service_metrics = observe(self.plane)  # metrics and prediction logs
        self.member = member  # None: this process is the whole service
        if member is not None:
            member.metrics = self.service_metrics
            self.service_metrics.posted = member.families
        self.predictor = Predictor(self.plane, BodyLimits(
            service.images_root, service.max_body_bytes, service.max_image_bytes,
            service.max_json_depth, service.max_batch_size))
        self.default_model = service.default_model
        self.mnist_dir = service.mnist_dir
        self.inputlog = inputlog
        self.openapi_bytes = openapi.document_bytes(openapi_document())
        self.server: Any = None  # the HTTP server, once installed (its served_by)

    def served_by(self) -> str | None:
        """What X-Served-By says for this process."""
        named = getattr(self.server, "served_by", None)
        return named.decode() if named else None


def served_by(replica_id: str | None, worker: Worker | None) -> bytes | None:
    """X-Served-By: the replica, and the worker within it; None: the server says pid-<pid>."""
    replica = os.environ.get(REPLICA_ENV) or replica_id  # the pod's own name beats the file
    if replica and REPLICA_ID.fullmatch(replica) is None:
        raise ConfigError(f"${REPLICA_ENV}: {replica!r} is not a replica id (1-64 letters, "
                          "digits, '.', '_', '-')")
    names = [n for n in (replica, worker.name if worker else None) if n]
    return "/".join(names).encode() if names else None


def app_config(max_body_bytes: int, trusted_proxies: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "/": {
            **proxies.tool_config(trusted_proxies),  # first: who the client is
            "tools.body_limit.on": True,
            "tools.body_limit.limit": max_body_bytes,
            "request.body.maxbytes": max_body_bytes,
            "request.error_response": unexpected_error,
            "tools.answer.on": True,
            "tools.encode.on": False,
        },
        "/static": {
            "tools.staticdir.on": True,
            "tools.staticdir.dir": str(REPO_ROOT / "static"),
            "tools.expires.on": True,
            "tools.expires.secs": 3600,
        },
    }


def mount(settings: Settings, worker: Worker | None = None) -> App:
    """Configure CherryPy from ``settings`` and mount the app; models load at engine start.

    ``worker``: this process is one worker of a cluster (``serve --workers N``).
    """
    if worker is not None:
        settings = for_worker(settings, worker)
    service = settings.service
    # cheroot's own limit answers in plain text; ours (limits.py) answers in JSON.
    # CherryPy's screen handlers are replaced by logs.configure's (one format, stderr).
    cherrypy.config.update({**settings.cherrypy, "server.max_request_body_size": 0,
                            "log.screen": False})
    writer = logs.configure(settings.logging, screen=bool(settings.cherrypy.get("log.screen", True)))
    LogWriterPlugin(cherrypy.engine, writer).subscribe()
    registry = ModelRegistry(settings.models, open_store(settings),
                             poll_interval_s=settings.store.poll_interval_s)
    registry.on_load(metrics.model_loaded)
    inputlog = make_inputlog(settings, registry, worker)
    member = ClusterMember(worker, registry) if worker is not None else None
    app = App(settings, registry, inputlog, member)
    # Below CherryPy: slow clients are cut, and a full accept queue answers 503 at once.
    server = connection_guard.install(service.client_timeout_s, app.service_metrics,
                                      header_timeout_s=service.header_timeout_s)
    server.served_by = served_by(service.replica_id, worker)
    app.server = server
    config = app_config(service.max_body_bytes, service.trusted_proxies)
    config["/"].update(tool_config(app.service_metrics))
    config["/"].update({"tools.access.on": True, "tools.access.access": app.access,
                        "request.dispatch": TableDispatcher(TABLE, app)})
    take_over_access_log(cherrypy.tree.mount(app, "/", config))
    place_threads(service, worker)
    LifecyclePlugin(cherrypy.engine, registry, "stopping model pools").subscribe()
    LifecyclePlugin(cherrypy.engine, app.plane.preparer, "stopping preprocessing").subscribe()
    if inputlog is not None:
        LifecyclePlugin(cherrypy.engine, inputlog, "flushing the input log").subscribe()
    if member is not None:
        ClusterPlugin(cherrypy.engine, member).subscribe()
    return app


def place_threads(service: ServiceSettings, worker: Worker | None) -> None:
    """Pin the process's threads at engine start (``[service] pin_cpus``): after any daemon
    fork (65), before the model sessions start (72), whose threads move back onto them all."""
    if not service.pin_cpus:
        return
    slot, count = (worker.slot, worker.count) if worker is not None else (0, 1)
    placement = cpu_placement.plan_here(slot, count)
    if placement is not None:
        cherrypy.engine.subscribe("start", lambda: cpu_placement.apply(placement), priority=67)


def for_worker(settings: Settings, worker: Worker) -> Settings:
    """``settings`` as one of ``worker.count`` processes sharing the machine: sessions' threads
    split between the workers, and a log file of its own (rotation is per process)."""
    models = [dataclasses.replace(m, pool=m.pool.for_workers(worker.count))
              for m in settings.models]
    logging_ = settings.logging
    if logging_.file is not None:
        name = f"{logging_.file.stem}.worker-{worker.slot}{logging_.file.suffix}"
        logging_ = dataclasses.replace(logging_, file=logging_.file.with_name(name))
    return dataclasses.replace(settings, models=models, logging=logging_)


def make_inputlog(settings: Settings, registry: ModelRegistry,
                  worker: Worker | None = None) -> InputLog | None:
    """The input log sink, or None when ``[inputlog] enabled = False``."""
    if not settings.inputlog.enabled:
        return None
    progress = WriterProgress(worker.run_dir, worker.slot, worker.count) if worker else None
    return InputLog(settings.inputlog, settings.s3,
                    labels_for=lambda name: registry.get(name).labels, progress=progress)


def open_store(settings: Settings) -> ModelStore:
    """The model store ``[store]`` configures (local: ``[service] graphs_dir``)."""
    if settings.store.kind != "s3":
        return LocalStore(settings.service.graphs_dir)
    from ..blobstore import make_s3_client  # boto3 only when S3 is used

    client = make_s3_client(settings.s3, retries={"max_attempts": 3, "mode": "standard"},
                            connect_timeout=5, read_timeout=60)
    return S3Store(client, settings.store.bucket, settings.store.prefix, settings.store.cache_dir)


def serve(config_path: Path | None, host: str | None = None, port: int | None = None,
          daemon: bool = False, pidfile: Path | None = None) -> int:
    """The whole service in this one process (``--workers 1``), in the foreground or daemonized."""
    settings = _settings(config_path, host, port)
    if daemon:
        settings.cherrypy["log.screen"] = False
    mount(settings)
    engine = cherrypy.engine
    if daemon:
        Daemonizer(engine).subscribe()
        # The Daemonizer (65) sets umask 0, which would make every file created world-writable.
        engine.subscribe("start", lambda: os.umask(DAEMON_UMASK), priority=66)
    if pidfile:
        PIDFile(engine, str(pidfile)).subscribe()
    if hasattr(engine, "signal_handler"):
        engine.signal_handler.subscribe()
    return _run(engine)


def serve_worker(config_path: Path | None, worker: Worker, listener: socket.socket | None,
                 socket_path: Path | None, host: str | None = None,
                 port: int | None = None) -> int:
    """One worker of a cluster: serve on the parent's ``listener`` (or the Unix socket
    ``socket_path``) until the parent's SIGTERM; the parent handles Ctrl-C and SIGHUP."""
    settings = _settings(config_path, host, port)
    if socket_path is not None:
        settings.cherrypy["server.socket_file"] = str(socket_path)
    mount(settings, worker)
    if listener is not None:
        server = cherrypy.server.instance
        server.inherited_socket = listener
        cherrypy.server.httpserver = server
        # No port checks: the port is the parent's, held open by every worker.
        cherrypy.server.bind_addr = None
    engine = cherrypy.engine
    engine.signal_handler.handlers = {"SIGTERM": engine.exit}
    engine.signal_handler.subscribe()
    return _run(engine)


def _settings(config_path: Path | None, host: str | None, port: int | None) -> Settings:
    settings = load_settings(config_path)
    overrides = {k: v for k, v in (("server.socket_host", host), ("server.socket_port", port))
                 if v is not None}
    settings.cherrypy.update(overrides)
    return settings


def _run(engine: Any) -> int:
    engine.start()
    if engine.state != engine.states.STARTED:
        return 1
    engine.block()
    return 0 if engine.state in (engine.states.EXITING, engine.states.STOPPED) else 1
