#!/usr/bin/env python3
"""The HTTP floor: CherryPy answering a trivial JSON route, nothing else.

    .venv/bin/python bench/floor.py --port 8099 [--one-cpu | --bare]

The benchmark's own server, not the product's: the same cheroot settings as the service
(``CHERRYPY_DEFAULTS``: thread pool, queues, keep-alive limit), the same path as the
predict route, and a handler that reads the request body and answers a small JSON object.
What the service costs above this is what its own code costs. ``--one-cpu`` runs all its
threads on one CPU, as the service runs its interpreter threads (service/cpu_placement.py):
CherryPy as people run it is the yardstick; this says what that placement alone is worth.
``--bare`` answers the predict path with a plain WSGI callable grafted on the same
``cherrypy.tree`` and server: cheroot and the tree without CherryPy's request layer (Request
and Response objects, dispatch, config namespaces, tools and hooks) -- what that layer costs
of the floor. A measurement, not a way to serve: the service keeps CherryPy's request layer.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import cherrypy
from cherrypy._cpwsgi_server import CPWSGIServer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.config import CHERRYPY_DEFAULTS  # noqa: E402  (after the path; a leaf module)


def answer(body: bytes) -> dict:
    """The floor's answer to any request, by either path."""
    return {"class": 7, "probability": 1.0, "bytes": len(body)}


class Floor:
    @cherrypy.expose
    @cherrypy.tools.json_out()
    def default(self, *_args, **_params):
        request = cherrypy.request
        # A GET (the benchmark's readiness probe) has no body to read: cheroot 11's
        # KnownLengthRFile no longer takes the arguments CherryPy's read() passes it then.
        body = request.body.read() if request.process_request_body else b""
        return answer(body)


def bare(environ: dict, start_response) -> list[bytes]:
    """``Floor.default`` as a WSGI callable: the same answer, below CherryPy's request layer."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    out = json.dumps(answer(environ["wsgi.input"].read(length) if length else b"")).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(out)))])
    return [out]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--one-cpu", action="store_true", help="every thread on one CPU")
    mode.add_argument("--bare", action="store_true",
                      help="the predict path answered by a WSGI callable: no request layer")
    args = parser.parse_args()
    if args.one_cpu:  # before any thread starts: they all inherit it
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    settings = {k: v for k, v in CHERRYPY_DEFAULTS.items() if k != "server.keep_alive_conn_limit"}
    cherrypy.config.update({**settings, "server.socket_port": args.port,
                            "log.screen": False, "log.access_file": "",
                            "checker.on": False, "environment": "production"})
    cherrypy.tree.mount(Floor(), "/")
    if args.bare:
        cherrypy.tree.graft(bare, "/v1/models")
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
