#!/usr/bin/env python3
"""The HTTP floor: CherryPy answering a trivial JSON route, nothing else.

    .venv/bin/python bench/floor.py --port 8099 [--one-cpu]

The benchmark's own server, not the product's: the same cheroot settings as the service
(``CHERRYPY_DEFAULTS``: thread pool, queues, keep-alive limit), the same path as the
predict route, and a handler that reads the request body and answers a small JSON object.
What the service costs above this is what its own code costs. ``--one-cpu`` runs all its
threads on one CPU, as the service runs its interpreter threads (service/cpu_placement.py):
CherryPy as people run it is the yardstick; this says what that placement alone is worth.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import cherrypy
from cherrypy._cpwsgi_server import CPWSGIServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.config import CHERRYPY_DEFAULTS  # noqa: E402  (after the path; a leaf module)


class Floor:
    @cherrypy.expose
    @cherrypy.tools.json_out()
    def default(self, *_args, **_params):
        request = cherrypy.request
        # A GET (the benchmark's readiness probe) has no body to read: cheroot 11's
        # KnownLengthRFile no longer takes the arguments CherryPy's read() passes it then.
        body = request.body.read() if request.process_request_body else b""
        return {"class": 7, "probability": 1.0, "bytes": len(body)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--one-cpu", action="store_true", help="every thread on one CPU")
    args = parser.parse_args()
    if args.one_cpu:  # before any thread starts: they all inherit it
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    settings = {k: v for k, v in CHERRYPY_DEFAULTS.items() if k != "server.keep_alive_conn_limit"}
    cherrypy.config.update({**settings, "server.socket_port": args.port,
                            "log.screen": False, "log.access_file": "",
                            "checker.on": False, "environment": "production"})
    cherrypy.tree.mount(Floor(), "/")
    # CherryPy has no config key for cheroot's keep-alive limit (default 10): set it as the
    # service does, or beyond 10 idle connections the floor would close keep-alive ones.
    server = CPWSGIServer(cherrypy.server)
    server.keep_alive_conn_limit = CHERRYPY_DEFAULTS["server.keep_alive_conn_limit"]
    cherrypy.server.instance = server
    cherrypy.engine.signals.subscribe()
    cherrypy.engine.start()
    cherrypy.engine.block()


if __name__ == "__main__":
    main()
