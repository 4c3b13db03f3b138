"""CherryPy engine plugins: the model registry's life follows the engine's."""
from __future__ import annotations

import logging

from cherrypy.process.plugins import SimplePlugin

from ..models.registry import ModelRegistry

log = logging.getLogger("service.web")


class ModelPlugin(SimplePlugin):
    """Loads the models after the Daemonizer forks (65) and before the HTTP server binds (75).

    TensorFlow is first imported here, in the process that will serve: TF sessions and
    their threads do not survive a fork. Stop runs after the HTTP server's (25), so requests
    in flight finish on live pools before the pools close.
    """

    def __init__(self, bus, registry: ModelRegistry):
        super().__init__(bus)
        self.registry = registry

    def start(self) -> None:
        self.registry.start()

    start.priority = 72

    def stop(self) -> None:
        log.info("stopping model pools")
        self.registry.stop()


class InputLogPlugin(SimplePlugin):
    """Starts the input log's writer before the HTTP server binds (75) -- after the daemon
    fork (65), as threads do not survive a fork -- and stops it after the HTTP server (25)
    has finished its requests, so everything they queued is written before exit."""

    def __init__(self, bus, inputlog):
        super().__init__(bus)
        self.inputlog = inputlog

    def start(self) -> None:
        self.inputlog.start()

    start.priority = 72

    def stop(self) -> None:
        log.info("flushing the input log")
        self.inputlog.stop()

    stop.priority = 50  # after the HTTP server's stop (25): no new predictions can arrive


class LogWriterPlugin(SimplePlugin):
    """Starts the background log writer after the daemon fork; stops it last, on exit."""

    def __init__(self, bus, writer):
        super().__init__(bus)
        self.writer = writer

    def start(self) -> None:
        self.writer.start()

    start.priority = 66  # after the Daemonizer (65), before anything that logs much

    def exit(self) -> None:
        self.writer.stop()

    exit.priority = 100
