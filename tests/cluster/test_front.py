"""``python -m service cluster`` (``make cluster``): real nginx in front of two workers on
their Unix sockets, on a loopback port, everything it writes under a tmp prefix.

One cluster for the module; the tests run in file order: the last ones kill a worker and
stop the cluster. nginx is the Debian package: without it these tests fail under CI=true
and are skipped elsewhere.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from service.cluster import front as front_module
from service.cluster.front import CannotStart, Front, UnixHTTPConnection, render, write_config
from service.config import load_settings
from service.errors import CODES
from support import (FIXTURES, REPO, ClusterProcess, free_port, listening, require_nginx,
                     wait_for)
from traffic import Traffic

MODEL = "digits-cnn"
MAX_BODY = 10 * 1024 * 1024
TRUSTED_HOP = "127.0.0.2"  # by config, a trusted proxy in front of nginx (a load balancer)
FORGED = "203.0.113.7"     # what a client claims in X-Forwarded-For
PNG = {"Content-Type": "image/png"}
DIGIT7 = (FIXTURES / "digit7_28.png").read_bytes()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    require_nginx()
    tmp = tmp_path_factory.mktemp("front")
    proc = ClusterProcess(tmp, f"""
[service]
models = ["{MODEL}"]
trusted_proxies = ["{TRUSTED_HOP}"]
[store]
poll_interval_s = 0.0
""", workers=2)
    proc.start()
    proc.inputlog = tmp / "inputlog"
    yield proc
    proc.stop(timeout=120)


def error_of(response: requests.Response) -> dict:
    assert response.headers["Content-Type"] == "application/json", response.text[:200]
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}, body
    return body["error"]


def raw_exchange(port: int, data: bytes, host: str = "127.0.0.1") -> tuple[int, dict, bytes]:
    """Send ``data`` as is; the status, headers and body of the one answer."""
    with socket.create_connection((host, port), timeout=15) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


# -- no cluster needed ----------------------------------------------------------------------
def test_missing_nginx_says_how_to_install():
    result = subprocess.run([sys.executable, "-m", "service", "cluster", "--nginx",
                             "/nonexistent/nginx", "--port", str(free_port())], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "sudo apt-get install nginx" in result.stderr


def test_template_renders_every_placeholder(tmp_path):
    front = Front(prefix=tmp_path, host="127.0.0.1", port=8080, workers=3, max_body=12345)
    text = render(front)
    assert "{{" not in text and text.startswith("# Generated from")
    assert text.count("server unix:") == 3 and f"{tmp_path}/sockets/worker-2.sock" in text
    assert "client_max_body_size 12345;" in text and "larger than 12345 bytes" in text
    assert f"alias {REPO / 'static'}/;" in text and f"pid {tmp_path}/nginx.pid;" in text
    with pytest.raises(CannotStart, match="unknown placeholder"):
        render(front, "events {}\n{{nope}}\n")


def test_no_worker_answering_is_a_json_502(tmp_path):
    """nginx alone, its workers' sockets absent: the service's error shape, status 502."""
    nginx = require_nginx()
    front = Front(prefix=tmp_path, host="127.0.0.1", port=free_port(), workers=2,
                  max_body=MAX_BODY)
    conf = write_config(front)
    proc = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off;"],
                            stderr=subprocess.PIPE)
    try:
        wait_for(lambda: listening(front.port) or proc.poll() is not None, timeout=30,
                 what="nginx listening")
        assert proc.poll() is None, proc.stderr.read().decode()
        response = requests.get(f"http://127.0.0.1:{front.port}/v1/models", timeout=10)
        assert response.status_code == 502
        assert error_of(response)["code"] == "bad_gateway"
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])
    finally:
        proc.send_signal(signal.SIGQUIT)
        proc.wait(15)


# -- the cluster ----------------------------------------------------------------------------
def test_launcher_writes_both_configs_and_imports_no_tensorflow(cluster):
    conf = (cluster.prefix / "nginx.conf").read_text()
    assert "{{" not in conf
    for slot in range(cluster.workers):
        assert f"server unix:{cluster.prefix}/sockets/worker-{slot}.sock" in conf
    assert f"client_max_body_size {MAX_BODY};" in conf
    # nginx is the workers' peer on their Unix sockets: the service's copy of its config
    # trusts "unix" beside what the config said; the socket directory is private.
    settings = load_settings(cluster.prefix / "service.conf")
    assert settings.service.trusted_proxies == (f"{TRUSTED_HOP}/32", "unix")
    assert (cluster.prefix / "sockets").stat().st_mode & 0o777 == 0o700
    maps = Path(f"/proc/{cluster.proc.pid}/maps").read_text()
    assert "tensorflow" not in maps  # the launcher; the service child imports it


def test_predictions_through_nginx(cluster):
    response = requests.post(f"{cluster.url}/v1/models/{MODEL}/predict?top_k=3", data=DIGIT7,
                             headers=PNG, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["predictions"][0]["class"] == 7 and len(body["predictions"][0]["top_k"]) == 3
    assert response.headers["Server"] == "nginx"
    assert re.fullmatch(r"worker-[01]\.\d+", response.headers["X-Served-By"])
    # the id of the input-log record, the one feedback needs, in the header and the body
    assert response.headers["X-Request-ID"] == body["request_id"]

    with open(FIXTURES / "photo_digit.jpg", "rb") as image:
        response = requests.post(f"{cluster.url}/v1/models/{MODEL}/predict",
                                 files={"image": image}, data={"top_k": "2"}, timeout=30)
    assert response.status_code == 200, response.text
    assert response.json()["predictions"][0]["class"] == 3

    response = requests.post(f"{cluster.url}/recognize", timeout=30,
                             json={"image": base64.b64encode(DIGIT7).decode()})
    assert response.status_code == 200 and response.json()["digit"] == 7


def test_static_files_served_by_nginx(cluster):
    response = requests.get(f"{cluster.url}/static/style.css", timeout=10)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/css"
    assert response.content == (REPO / "static" / "style.css").read_bytes()
    assert "X-Served-By" not in response.headers  # no worker was asked
    missing = requests.get(f"{cluster.url}/static/nope.css", timeout=10)
    assert missing.status_code == 404 and error_of(missing)["code"] == "not_found"


def test_request_id_passed_through_or_generated(cluster):
    sent = requests.get(f"{cluster.url}/healthz", headers={"X-Request-ID": "client-abc.1"},
                        timeout=10)
    assert sent.status_code == 200 and sent.headers["X-Request-ID"] == "client-abc.1"
    generated = requests.get(f"{cluster.url}/healthz", timeout=10)
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["X-Request-ID"])
    insane = requests.get(f"{cluster.url}/healthz", headers={"X-Request-ID": "a b;c"},
                          timeout=10)
    assert re.fullmatch(r"[0-9a-f]{32}", insane.headers["X-Request-ID"])
    # the worker's own error answers pass through untouched, with the request's id
    lost = requests.get(f"{cluster.url}/v1/models/nope", headers={"X-Request-ID": "r-2"},
                        timeout=10)
    assert lost.status_code == 404 and error_of(lost)["code"] == "model_not_found"
    assert lost.headers["X-Request-ID"] == "r-2" and "X-Served-By" in lost.headers
    # a prediction takes the proxy's id: nginx's log, the answer and the input log agree
    named = requests.post(f"{cluster.url}/v1/models/{MODEL}/predict", data=DIGIT7,
                          headers={**PNG, "X-Request-ID": "client-abc.2"}, timeout=30)
    assert named.status_code == 200 and named.json()["request_id"] == "client-abc.2"
    assert named.headers["X-Request-ID"] == "client-abc.2"
    assert _client_of(cluster, "client-abc.2") == "127.0.0.1"


def test_30_mb_body_refused_by_nginx_in_the_service_shape(cluster):
    response = requests.post(f"{cluster.url}/v1/models/{MODEL}/predict",
                             data=b"\0" * (30 * 1024 * 1024), headers=PNG, timeout=60)
    assert response.status_code == 413
    error = error_of(response)
    assert "X-Served-By" not in response.headers  # no worker read a byte of it
    # exactly what a worker itself answers for a body past [service] max_body_bytes
    conn = UnixHTTPConnection(cluster.prefix / "sockets" / "worker-0.sock", timeout=30)
    conn.putrequest("POST", f"/v1/models/{MODEL}/predict")
    conn.putheader("Content-Type", "image/png")
    conn.putheader("Content-Length", str(MAX_BODY + 1))
    conn.endheaders()  # no body: the worker refuses from the headers
    direct = conn.getresponse()
    assert direct.status == 413 and json.loads(direct.read()) == {"error": error}
    conn.close()
    assert error["code"] in CODES[413]
    assert error["message"] == f"The request body is larger than {MAX_BODY} bytes."


def test_nginx_refusals_in_the_service_shape(cluster):
    status, headers, body = raw_exchange(cluster.port, b"NONSENSE\r\n\r\n")
    assert status == 400 and headers["content-type"] == "application/json"
    assert json.loads(body)["error"]["code"] == "bad_request"
    status, headers, body = raw_exchange(
        cluster.port, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 414 and json.loads(body)["error"]["code"] == "uri_too_long"
    for status, code in ((400, "bad_request"), (414, "uri_too_long")):
        assert code in CODES[status]


def _client_of(cluster, request_id: str) -> str:
    db = cluster.inputlog / "inputlog.sqlite3"

    def row():
        if not db.exists():
            return None
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT client FROM predictions WHERE request_id = ?",
                                (request_id,)).fetchone()

    return wait_for(row, timeout=30, interval=0.05, what=f"input-log record {request_id}")[0]


def _predict_from(cluster, source: str, headers: dict[str, str]) -> str:
    """A prediction through nginx from the loopback address ``source``; its request id."""
    conn = http.client.HTTPConnection("127.0.0.1", cluster.port, timeout=30,
                                      source_address=(source, 0))
    conn.request("POST", f"/v1/models/{MODEL}/predict", body=DIGIT7,
                 headers={**PNG, **headers})
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    assert response.status == 200, body
    return body["request_id"]


def test_forwarded_for_honoured_from_a_trusted_proxy(cluster):
    # 127.0.0.2 is a trusted hop in front of nginx: the address it forwards is the client's
    request_id = _predict_from(cluster, TRUSTED_HOP, {"X-Forwarded-For": FORGED})
    assert _client_of(cluster, request_id) == FORGED


def test_forwarded_for_ignored_from_anyone_else(cluster):
    # 127.0.0.1 is not trusted: what it claims is ignored; nginx's own hop says who it is
    request_id = _predict_from(cluster, "127.0.0.1", {"X-Forwarded-For": FORGED})
    assert _client_of(cluster, request_id) == "127.0.0.1"
    request_id = _predict_from(cluster, "127.0.0.1", {})
    assert _client_of(cluster, request_id) == "127.0.0.1"


def _workers(cluster) -> dict[int, dict]:
    response = requests.get(f"{cluster.url}/status", timeout=10)
    assert response.status_code == 200, response.text
    return {int(w["name"].split("-")[1].split(".")[0]): w for w in response.json()["workers"]}


def test_worker_killed_behind_nginx_costs_no_request(cluster):
    with Traffic(cluster.url, clients=4) as traffic:
        traffic.wait_answers(40)
        victim = _workers(cluster)[0]
        os.kill(victim["pid"], signal.SIGKILL)

        def replaced():
            worker = _workers(cluster).get(0)
            return worker if worker and worker["pid"] != victim["pid"] and worker["ready"] \
                and worker["state"] == "serving" else None

        replacement = wait_for(replaced, timeout=60, interval=0.2, what="worker 0 replaced")
        # nginx takes the replacement back (its socket answers again) under the same load
        wait_for(lambda: traffic.served_by[replacement["name"]] > 0, timeout=30,
                 interval=0.05, what=f"answers from {replacement['name']}")
        traffic.wait_answers(40)
    seen = f"answered {traffic.answered}, by {dict(traffic.served_by)}; {traffic.failures[:5]}"
    assert traffic.failures == [], seen
    assert traffic.retried == 0, seen  # through nginx no client ever saw a connection fail
    survivor = _workers(cluster)[1]["name"]
    assert traffic.served_by[victim["name"]] > 0 and traffic.served_by[survivor] > 0, seen


def test_sigterm_stops_nginx_and_workers(cluster):
    pids = [cluster.proc.pid, cluster.pid("nginx"), cluster.pid("service"),
            *(w["pid"] for w in _workers(cluster).values())]
    assert None not in pids
    assert cluster.stop(timeout=120) == 0

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(lambda: all(gone(pid) for pid in pids), timeout=30, what="every process gone")
    assert not listening(cluster.port)


def test_front_module_has_no_web_imports():
    """The launcher loads neither CherryPy nor TensorFlow (it only starts them)."""
    code = ("import sys, service.cluster.front; "
            "print(sorted(m for m in ('cherrypy', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert out.strip() == "[]"
    assert front_module.TEMPLATE.exists()
