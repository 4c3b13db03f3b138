"""tools.proxies: X-Forwarded-For / X-Forwarded-Proto believed only from trusted proxies."""
from __future__ import annotations

import http.client
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from service.cluster.front import UnixHTTPConnection
from service.config import load_settings
from service.errors import ConfigError
from service.web.proxies import TrustedProxies, forwarded_scheme, parse_address
from support import REPO, free_port, wait_for

NGINX = TrustedProxies(["unix"])
CHAIN = TrustedProxies(["unix", "10.0.0.0/8", "127.0.0.2", "2001:db8::/32"])


# -- parsing --------------------------------------------------------------------------------
@pytest.mark.parametrize("text, expected", [
    ("203.0.113.7", "203.0.113.7"), (" 203.0.113.7 ", "203.0.113.7"),
    ("2001:db8::1", "2001:db8::1"), ("::ffff:198.51.100.1", "198.51.100.1"),
    ("", None), ("unknown", None), ("203.0.113.7:5000", None), ("[2001:db8::1]", None),
    ("203.0.113.300", None), ("1" * 100, None), ("_hidden", None),
])
def test_parse_address(text, expected):
    parsed = parse_address(text)
    assert (str(parsed) if parsed is not None else None) == expected


def test_who_is_trusted():
    assert NGINX.trusts("") and NGINX.trusts(None)  # a Unix-socket peer has no address
    assert not NGINX.trusts("127.0.0.1")
    assert CHAIN.trusts("10.1.2.3") and CHAIN.trusts("127.0.0.2") and CHAIN.trusts("2001:db8::5")
    assert CHAIN.trusts("::ffff:10.0.0.1")  # IPv4-mapped, as a dual-stack socket reports it
    assert not CHAIN.trusts("127.0.0.1") and not CHAIN.trusts("11.0.0.1")
    assert not CHAIN.trusts("garbage")
    assert not TrustedProxies([]).trusts("") and not TrustedProxies([])
    assert not TrustedProxies(["127.0.0.1"]).trusts("")  # "unix" must be said


@pytest.mark.parametrize("peer, header, client", [
    # nginx (Unix socket) appended the address it saw
    ("", "198.51.100.1", "198.51.100.1"),
    # the client's own claim, left of nginx's hop, is not believed
    ("", "203.0.113.7, 198.51.100.1", "198.51.100.1"),
    # through a trusted load balancer (10.x) and nginx: the hop before the balancer
    ("", "203.0.113.7, 10.0.0.5", "203.0.113.7"),
    ("", "192.0.2.1, 203.0.113.7, 10.0.0.5, 10.0.0.6", "203.0.113.7"),
    ("10.0.0.9", "203.0.113.7", "203.0.113.7"),
    ("", "2001:db8:1::1, 2001:db8::7", "2001:db8:1::1"),  # 2001:db8::/32 holds both
    ("", "2001:dead::1", "2001:dead::1"),
    # every hop trusted: the farthest one is the client
    ("", "10.0.0.1, 10.0.0.2", "10.0.0.1"),
    # repeated headers arrive joined by ", "; blanks around the commas are fine
    ("", "203.0.113.7 ,10.0.0.5", "203.0.113.7"),
    # malformed before the client is found: the peer stays the client
    ("", "", ""), ("", " ", ""), ("", "203.0.113.7, , 10.0.0.5", ""),
    ("", "unknown", ""), ("", "203.0.113.7:443", ""), ("", "x" * 5000, ""),
    ("", "203.0.113.7, 10.0.0.5:80", ""),
    # malformed only left of the client: not needed, so not a problem
    ("", "garbage, 203.0.113.7, 10.0.0.5", "203.0.113.7"),
    # no header: the peer
    ("", None, ""),
    # an untrusted peer: its header is ignored
    ("127.0.0.1", "203.0.113.7", "127.0.0.1"), ("11.0.0.1", "10.0.0.5", "11.0.0.1"),
])
def test_the_client_is_the_right_most_untrusted_hop(peer, header, client):
    assert CHAIN.client(peer, header) == client


def test_only_unix_trusted_takes_nginx_hop():
    assert NGINX.client("", "203.0.113.7, 127.0.0.1") == "127.0.0.1"
    assert NGINX.client("127.0.0.1", "203.0.113.7") == "127.0.0.1"


@pytest.mark.parametrize("value, scheme", [
    ("https", "https"), ("HTTP", "http"), (" https ", "https"), (None, None), ("", None),
    ("ftp", None), ("https, http", None), ("javascript", None),
])
def test_forwarded_scheme(value, scheme):
    assert forwarded_scheme(value) == scheme


# -- configuration ------------------------------------------------------------------------
def _settings(tmp_path: Path, value: str):
    path = tmp_path / "service.conf"
    path.write_text(f"[service]\ntrusted_proxies = {value}\n")
    return load_settings(path)


def test_config_normalises_entries(tmp_path):
    settings = _settings(tmp_path, '["unix", "127.0.0.1", "10.1.0.0/16", "::1", "10.2.3.4/8"]')
    assert settings.service.trusted_proxies == (
        "unix", "127.0.0.1/32", "10.1.0.0/16", "::1/128", "10.0.0.0/8")
    assert load_settings(None).service.trusted_proxies == ()


@pytest.mark.parametrize("value", ['"unix"', '["localhost"]', '["10.0.0.300"]', "[3]",
                                   '["10.0.0.0/33"]', "{}"])
def test_config_refuses_bad_entries_naming_the_key(tmp_path, value):
    with pytest.raises(ConfigError, match=r"\[service\]:? trusted_proxies"):
        _settings(tmp_path, value)


# -- the tool in a real CherryPy server (no TensorFlow: a tiny app echoing what it sees) ----
ECHO_APP = textwrap.dedent("""
    import json, sys
    import cherrypy
    from service.web import proxies

    class Root:
        @cherrypy.expose
        def index(self):
            request = cherrypy.request
            return json.dumps({"ip": request.remote.ip, "base": request.base,
                               "scheme": request.scheme,
                               "peer": getattr(request, "proxy_peer", None)})

    bind, trusted = sys.argv[1], json.loads(sys.argv[2])
    where = ({"server.socket_file": bind} if bind.startswith("/") else
             {"server.socket_host": "127.0.0.1", "server.socket_port": int(bind)})
    cherrypy.config.update({**where, "log.screen": False, "engine.autoreload.on": False,
                            "checker.on": False})
    cherrypy.tree.mount(Root(), "/", {"/": proxies.tool_config(trusted)})
    cherrypy.engine.start()
    cherrypy.engine.block()
""")


@pytest.fixture(scope="module")
def echo(tmp_path_factory):
    """Two echo servers trusting ["unix", "127.0.0.2"]: one on TCP, one on a Unix socket."""
    tmp = tmp_path_factory.mktemp("proxies")
    trusted = json.dumps(["unix", "127.0.0.2"])
    port, sock = free_port(), tmp / "echo.sock"
    procs = [subprocess.Popen([sys.executable, "-c", ECHO_APP, bind, trusted], cwd=REPO,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
             for bind in (str(port), str(sock))]
    try:
        def up():
            try:
                for conn in (http.client.HTTPConnection("127.0.0.1", port, timeout=1),
                             UnixHTTPConnection(sock, timeout=10)):
                    conn.request("GET", "/")
                    conn.getresponse().read()
                return True
            except OSError:
                assert all(p.poll() is None for p in procs), "an echo server died"
                return False

        wait_for(up, timeout=30, interval=0.05, what="echo servers answering")
        yield port, sock
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)


def _ask(conn: http.client.HTTPConnection, headers: dict[str, str]) -> tuple[dict, Any]:
    conn.request("GET", "/", headers=headers)
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    return body, response.headers  # case-insensitive


FORWARDED = {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https",
             "X-Request-ID": "front-42"}


def test_unix_socket_peer_is_trusted_as_unix(echo):
    _, sock = echo
    body, headers = _ask(UnixHTTPConnection(sock, timeout=10), FORWARDED)
    assert body == {"ip": "203.0.113.7", "base": "https://localhost", "scheme": "https",
                    "peer": "unix"}
    assert headers["X-Request-ID"] == "front-42"
    body, _ = _ask(UnixHTTPConnection(sock, timeout=10), {})
    assert body["ip"] == "" and body["peer"] == "unix" and body["scheme"] == "http"


def test_tcp_peer_trusted_by_address(echo):
    port, _ = echo
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10,
                                      source_address=("127.0.0.2", 0))
    body, _ = _ask(conn, FORWARDED)
    assert body["ip"] == "203.0.113.7" and body["peer"] == "127.0.0.2"
    assert body["base"] == f"https://127.0.0.1:{port}"


def test_direct_untrusted_client_headers_ignored(echo):
    port, _ = echo
    body, headers = _ask(http.client.HTTPConnection("127.0.0.1", port, timeout=10), FORWARDED)
    assert body == {"ip": "127.0.0.1", "base": f"http://127.0.0.1:{port}", "scheme": "http",
                    "peer": None}
    assert "X-Request-ID" not in headers


def test_malformed_forwarding_never_fails(echo):
    _, sock = echo
    for value in ("", "nonsense", "203.0.113.7,,", "1.2.3.4:5", "\u00e9"):
        body, _ = _ask(UnixHTTPConnection(sock, timeout=10), {"X-Forwarded-For": value,
                                                  "X-Forwarded-Proto": "gopher",
                                                  "X-Request-ID": "bad id\u00e9"})
        assert body["ip"] == "" and body["scheme"] == "http"
