"""Who the client is, when a trusted proxy (nginx) stands between it and the service.

``tools.proxies`` runs first of the request's tools (``on_start_resource``, priority 5), so
everything after it -- access (rate limits keyed by client address), the access log, the
metrics and the input log's ``client`` -- reads the rewritten ``request.remote.ip``:

- only when the peer that connected (``request.remote.ip``) is one of ``[service]
  trusted_proxies``: from anyone else ``X-Forwarded-For`` and ``X-Forwarded-Proto`` are
  ignored, since anyone can send them;
- the client is the right-most ``X-Forwarded-For`` address that is not itself a trusted
  proxy (each proxy appends the address it saw; what is left of the last trusted hop was
  written by the client and may be forged). All hops trusted: the left-most. A malformed
  header (an element that is not a bare IPv4 or IPv6 address, met before the client was
  found) leaves the peer as the client; it never fails the request;
- ``X-Forwarded-Proto: http|https`` sets ``request.scheme`` and ``request.base``;
- a sane ``X-Request-ID`` (1-128 of ``[A-Za-z0-9._-]``) is echoed in the response and is a
  prediction's request id (the input log's key, which feedback names), so the proxy's log,
  ours and the input log name the request alike.

A Unix-socket peer has no address: cheroot reports ``""`` for it. The entry ``"unix"`` in
``trusted_proxies`` trusts such peers -- any process that may connect to the socket, so
keep the socket directory private to the service and nginx (``make cluster`` does).
"""
from __future__ import annotations

import ipaddress
import re
from typing import Iterable

import cherrypy
from cherrypy.lib import httputil

from ..config import UNIX_PEER

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
PRIORITY = 5  # after tools.observe's start (1), before body_limit (50) and every other tool


def parse_address(text: str) -> Address | None:
    """A bare IPv4 or IPv6 address (an IPv4-mapped IPv6 address as IPv4), else None."""
    text = text.strip()
    if not text or len(text) > 64:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


class TrustedProxies:
    """``[service] trusted_proxies``, as already checked by config.py."""

    def __init__(self, entries: Iterable[str]):
        entries = tuple(entries)
        self.unix = UNIX_PEER in entries
        self.networks = tuple(ipaddress.ip_network(e, strict=False)
                              for e in entries if e != UNIX_PEER)

    def __bool__(self) -> bool:
        return self.unix or bool(self.networks)

    def trusts(self, peer: str | None) -> bool:
        """``peer`` is ``request.remote.ip``: "" (or None) for a Unix-socket peer."""
        if not peer:
            return self.unix
        address = parse_address(peer)
        return address is not None and self._trusted(address)

    def _trusted(self, address: Address) -> bool:
        return any(address.version == n.version and address in n for n in self.networks)

    def client(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The client's address: ``peer``, unless it is trusted and ``forwarded_for`` names
        one (see the module docstring)."""
        if forwarded_for is None or not self.trusts(peer):
            return peer
        farthest = None
        for hop in reversed(forwarded_for.split(",")):
            address = parse_address(hop)
            if address is None:
                return peer
            if not self._trusted(address):
                return str(address)
            farthest = address
        return str(farthest) if farthest is not None else peer


def forwarded_scheme(value: str | None) -> str | None:
    """``X-Forwarded-Proto``'s scheme when it is one value, http or https."""
    if value is None:
        return None
    scheme = value.strip().lower()
    return scheme if scheme in ("http", "https") else None


def apply(trusted: TrustedProxies) -> None:
    """on_start_resource: rewrite the request as its trusted proxy saw it."""
    request = cherrypy.serving.request
    peer = request.remote.ip
    if not trusted.trusts(peer):
        return
    request.proxy_peer = peer or UNIX_PEER
    headers = request.headers
    client = trusted.client(peer, headers.get("X-Forwarded-For"))
    if client != peer:
        request.remote = httputil.Host(client, -1, "")
    scheme = forwarded_scheme(headers.get("X-Forwarded-Proto"))
    if scheme is not None and scheme != request.scheme:
        request.scheme = scheme
        request.base = f"{scheme}://{request.base.partition('://')[2]}"
    request_id = headers.get("X-Request-ID")
    if request_id is not None and REQUEST_ID.fullmatch(request_id):
        request.proxy_request_id = request_id  # a prediction's id (api.request_context)
        cherrypy.serving.response.headers["X-Request-ID"] = request_id


cherrypy.tools.proxies = cherrypy.Tool("on_start_resource", apply, name="proxies",
                                       priority=PRIORITY)


def tool_config(entries: Iterable[str]) -> dict:
    """The app-wide ("/") config for ``[service] trusted_proxies``: off when it is empty."""
    trusted = TrustedProxies(entries)
    return {"tools.proxies.on": True, "tools.proxies.trusted": trusted} if trusted else {}
