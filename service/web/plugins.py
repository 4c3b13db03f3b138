"""CherryPy engine plugins: the registry's, the input log's and the log writer's lives follow
the engine's."""
from __future__ import annotations

import logging

from cherrypy.process.plugins import SimplePlugin

log = logging.getLogger("service.web")


class LifecyclePlugin(SimplePlugin):
    """Starts a long-lived part (the model registry, the input log's writer) after the
    Daemonizer forks (65) and before the HTTP server binds (75) -- TensorFlow sessions and
    threads do not survive a fork, so TensorFlow is first imported here, in the process that
    will serve -- and stops it after the HTTP server's stop (25), so requests in flight
    finish on live pools and everything they queued is written before exit."""

    def __init__(self, bus, part, stopping: str):
        super().__init__(bus)
        self.part = part
        self.stopping = stopping  # what the log says at stop

    def start(self) -> None:
        self.part.start()

    start.priority = 72

    def stop(self) -> None:
        log.info(self.stopping)
        self.part.stop()

    stop.priority = 50


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
