"""Running the service: daemon mode, graceful stop with requests in flight, degraded start-up."""
from __future__ import annotations

import base64
import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading

import requests
from PIL import Image

from service.models import datasets
from support import FIXTURES, REPO, ServerProcess, free_port, listening, read_by_server, wait_for

PNG7 = (FIXTURES / "digit7_28.png").read_bytes()
ONLY_CNN = '[service]\nmodels = ["digits-cnn"]\n'


def answers(url: str) -> bool:
    try:
        return requests.get(url + "/readyz", timeout=1).status_code == 200
    except requests.ConnectionError:
        return False


def test_daemon_round_trip(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    pidfile = tmp_path / "service.pid"
    (tmp_path / "service.conf").write_text(
        ONLY_CNN + f'[global]\nlog.error_file = "{tmp_path / "error.log"}"\n'
        f'[inputlog]\ndir = "{tmp_path / "inputlog"}"\n')
    launcher = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--config", str(tmp_path / "service.conf"),
         "--port", str(port), "--daemon", "--pidfile", str(pidfile)],
        cwd=REPO, capture_output=True, text=True, timeout=60)
    assert launcher.returncode == 0, launcher.stderr  # the launcher returns once detached
    try:
        wait_for(lambda: answers(url), 90, interval=0.2,
                 what=lambda: (tmp_path / "error.log").read_text())
        pid = int(pidfile.read_text())
        assert os.getsid(pid) != os.getsid(0)  # detached into its own session
        r = requests.post(url + "/v1/models/digits-cnn/predict", data=PNG7,
                          headers={"Content-Type": "image/png"})
        assert r.status_code == 200 and r.json()["predictions"][0]["class"] == 7
        # files the daemon creates are not world-writable (CherryPy's Daemonizer sets umask 0)
        made = tmp_path / "inputlog"  # the input log's directory, made by the daemon
        assert made.is_dir() and made.stat().st_mode & 0o002 == 0
    finally:
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGTERM)
    wait_for(lambda: not pidfile.exists(), 30, interval=0.2)
    assert not answers(url)
    assert "loaded in" in (tmp_path / "error.log").read_text()


def batch_body(count: int = 256) -> dict:
    images, _ = datasets.load_mnist("test")
    instances = []
    for image in images[:count]:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        instances.append({"b64": base64.b64encode(buffer.getvalue()).decode()})
    return {"instances": instances}


def test_sigterm_finishes_requests_in_flight(tmp_path):
    server = ServerProcess(tmp_path, ONLY_CNN).start()
    body = json.dumps(batch_body()).encode()
    statuses: list[int] = []
    ports: list[int] = []
    stopping = threading.Event()

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        try:
            conn.request("GET", "/healthz")  # connection open before the signal
            conn.getresponse().read()
            conn.putrequest("POST", "/v1/models/digits-cnn/predict")
            conn.putheader("Content-Type", "application/json")
            conn.putheader("Content-Length", str(len(body)))
            conn.endheaders()
            conn.send(body[:-1])  # in flight, by construction, until its last byte comes
            ports.append(conn.sock.getsockname()[1])
            stopping.wait(60)
            conn.send(body[-1:])
            r = conn.getresponse()
            answer = json.loads(r.read())
            statuses.append(r.status if len(answer.get("predictions", [])) == 256 else -1)
        finally:
            conn.close()

    threads = [threading.Thread(target=client) for _ in range(8)]
    for t in threads:
        t.start()
    # Every request has been read up to its last byte: each holds a worker, none can finish.
    wait_for(lambda: len(ports) == 8 and all(read_by_server(server.port, p) for p in ports), 60)
    server.proc.send_signal(signal.SIGTERM)
    # The server is stopping (it has closed its listening socket) with all eight in flight.
    wait_for(lambda: not listening(server.port), 30)
    stopping.set()
    for t in threads:
        t.join(60)
    code = server.proc.wait(30)
    assert statuses == [200] * 8, server.log()
    assert code == 0
    log = server.log()
    assert "loaded in" in log and "stopping model pools" in log


def test_sigterm_answers_a_request_still_arriving(tmp_path):
    """A connection whose request head is still arriving waits in cheroot's selector, not a
    thread; a stopping server stops accepting, then answers it once its head is in."""
    server = ServerProcess(tmp_path, ONLY_CNN).start()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # accepted and read: its head is arriving
        port = sock.getsockname()[1]
        wait_for(lambda: read_by_server(server.port, port), 30)
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "still sending their request" in server.log(), 30,
                 what=server.log)  # stopping, with this connection in its hands
        sock.sendall(b"Host: x\r\n\r\n")
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    assert server.proc.wait(30) == 0


def test_a_failed_model_degrades_but_others_serve(tmp_path):
    config = '[service]\nmodels = ["digits-cnn", "digits-lost"]\n'
    server = ServerProcess(tmp_path, config).start(wait_ready=False)
    try:
        r = requests.get(server.url + "/readyz")
        assert r.status_code == 503 and r.headers["Retry-After"]
        assert r.json()["error"]["code"] == "not_ready"
        status = requests.get(server.url + "/status").json()
        assert status["status"] == "degraded"
        assert status["models"]["digits-lost"]["state"] == "FAILED"
        assert "no versions" in status["models"]["digits-lost"]["error"]
        lost = requests.post(server.url + "/v1/models/digits-lost/predict", data=PNG7,
                             headers={"Content-Type": "image/png"})
        assert lost.status_code == 503 and lost.headers["Retry-After"]
        ok = requests.post(server.url + "/v1/predict", data=PNG7, headers={"Content-Type": "image/png"})
        assert set(ok.json()["results"]) == {"digits-cnn"}
    finally:
        server.stop()


def test_full_queue_is_503_with_retry_after(tmp_path):
    # Each session.run takes 3 s by construction: of 8 one-image requests sent within those
    # seconds, at most 3 are held (one running, one carried, one in the queue of size 1).
    config = ONLY_CNN + ("[model:digits-cnn]\nqueue_size = 1\nmax_batch_size = 1\n"
                         "inject_run_delay_s = 3.0\nworker_timeout_s = 60.0\n")
    server = ServerProcess(tmp_path, config).start()
    body = batch_body(1)
    responses: list[requests.Response] = []
    try:
        threads = [threading.Thread(target=lambda: responses.append(requests.post(
            server.url + "/v1/models/digits-cnn/predict", json=body, timeout=60))) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        server.stop()
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(503) >= 5 and 200 in statuses, statuses
    overloaded = next(r for r in responses if r.status_code == 503)
    assert overloaded.json()["error"]["code"] == "overloaded"
    assert int(overloaded.headers["Retry-After"]) >= 1


def test_past_the_deadline_is_504(tmp_path):
    # The run takes 3 s by construction; the deadline is a tenth of that.
    config = ONLY_CNN.replace("[service]\n", "[service]\nrequest_timeout_s = 0.3\n") + (
        "[model:digits-cnn]\ninject_run_delay_s = 3.0\nworker_timeout_s = 60.0\n")
    server = ServerProcess(tmp_path, config).start()
    try:
        r = requests.post(server.url + "/v1/models/digits-cnn/predict", json=batch_body(1))
    finally:
        server.stop()
    assert r.status_code == 504 and r.json()["error"]["code"] == "deadline_exceeded"
