"""Dispatch by the route table: each request finds its one ``Route``, or none.

``TableDispatcher`` is CherryPy's ``request.dispatch``: it matches the path against the
table's templates, merges the app's config for the path (as CherryPy's own dispatchers do,
so ``/static``'s staticdir section applies) and the route's own config, and sets the handler:
the route's function called with the app, the path's parameters and the request's. A method
the route does not take gets a handler that answers 405 with ``Allow`` -- in the handler's
slot, so that access checks come first as for any other request.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import cherrypy
from cherrypy._cpdispatch import LateParamPageHandler

from .responses import (error_page, message_error_page, message_error_response,
                        service_error_response)

UNMATCHED = "unmatched"  # the route template of a path no route matches (probes, typos)
_PARAM = re.compile(r"\{(\w+)(?::([^}]+))?\}")  # {name} or {name:regex}


@dataclass(frozen=True)
class Answer:
    """How a route answers errors: its ``ServiceError`` renderer, and CherryPy's error page
    for the errors CherryPy raises itself (405, 413, a malformed body...)."""

    render_error: Callable[[Any], bytes]
    error_page: Callable[..., str]
    error_schema: str = "Error"  # its OpenAPI schema (components.schemas)


JSON_ANSWER = Answer(service_error_response, error_page)  # the API's: errors in JSON
MESSAGE_ANSWER = Answer(message_error_response, message_error_page, "MessageError")  # V2, TF


@dataclass(frozen=True)
class Route:
    """One row of the route table: everything about a route, declared once."""

    path: str                          # template: /v1/models/{name}/predict, /static/{file:.+}
    methods: tuple[str, ...]
    handler: Callable[..., Any]        # handler(app, /, **path_params, **request_params)
    policy: str                        # access policy (service/web/access.py)
    operation: Mapping[str, Any]       # its OpenAPI operation object
    answer: Answer = JSON_ANSWER
    config: Mapping[str, Any] = field(default_factory=dict)  # CherryPy config of the route
    protocol: str = "native"           # the metrics' label: native, v2, tfserving, seed, html

    @functools.cached_property
    def template(self) -> str:
        """The path as OpenAPI and the metrics name it: ``{file:.+}`` -> ``{file}``."""
        return _PARAM.sub(r"{\1}", self.path)

    @functools.cached_property
    def pattern(self) -> re.Pattern:
        parts, last = [], 0
        for match in _PARAM.finditer(self.path):
            parts += [re.escape(self.path[last:match.start()]),
                      f"(?P<{match[1]}>{match[2] or '[^/]+'})"]
            last = match.end()
        return re.compile("".join(parts) + re.escape(self.path[last:]))

    @functools.cached_property
    def params(self) -> list[str]:
        return [match[1] for match in _PARAM.finditer(self.path)]


class RouteTable:
    """The routes, matched exact paths first (a dict lookup), then by pattern."""

    def __init__(self, routes: Iterable[Route]):
        self.routes = tuple(routes)
        self._exact = {r.path: r for r in self.routes if not r.params}
        self._patterns = [r for r in self.routes if r.params]

    def match(self, path: str) -> tuple[Route, dict[str, str]] | None:
        path = path.rstrip("/") or "/"
        route = self._exact.get(path)
        if route is not None:
            return route, {}
        for route in self._patterns:
            found = route.pattern.fullmatch(path)
            if found:
                return route, found.groupdict()
        return None

    def template(self, path: str) -> str:
        """The route template of ``path`` (one metrics label per route), or ``unmatched``."""
        matched = self.match(path)
        return matched[0].template if matched else UNMATCHED


class TableDispatcher:
    """``request.dispatch``: the handler and config of the path's route, for ``app``."""

    def __init__(self, table: RouteTable, app: Any, unmatched: Answer = JSON_ANSWER):
        self.table = table
        self.app = app
        self.unmatched = unmatched  # how a path no route matches answers (its 404)

    def __call__(self, path_info: str) -> None:
        request = cherrypy.serving.request
        matched = self.table.match(path_info)
        route, params = matched if matched else (None, {})
        request.route = route
        request.route_template = route.template if route else UNMATCHED
        request.answer = route.answer if route else self.unmatched
        request.config = self._config(request.app, path_info, route, request.answer)
        request.handler = self._handler(route, params, request.method)

    def _handler(self, route: Route | None, params: dict[str, str], method: str) -> Any:
        if route is None:
            return cherrypy.NotFound()
        if method in route.methods or (method == "HEAD" and "GET" in route.methods):
            return LateParamPageHandler(functools.partial(route.handler, self.app), **params)
        return functools.partial(method_not_allowed, route.methods)

    def _config(self, app: cherrypy.Application, path: str, route: Route | None,
                answer: Answer) -> dict:
        """CherryPy's config, the app's sections along ``path``, then the route's own."""
        config = cherrypy.config.copy()
        section = ""

        def merge(values: Mapping[str, Any]) -> None:
            if "tools.staticdir.dir" in values:
                values = {**values, "tools.staticdir.section": section or "/"}
            config.update(values)

        merge(app.config.get("/", {}))
        for atom in [a for a in path.split("/") if a]:
            section += "/" + atom
            merge(app.config.get(section, {}))
        config["error_page.default"] = answer.error_page
        if route is not None:
            merge(route.config)
        return config


def method_not_allowed(allowed: tuple[str, ...]) -> None:
    """405 with ``Allow`` (HEAD rides on GET, as CherryPy serves it)."""
    cherrypy.serving.response.headers["Allow"] = ", ".join(allowed)
    raise cherrypy.HTTPError(405, f"Use {' or '.join(allowed)} for this URL.")
