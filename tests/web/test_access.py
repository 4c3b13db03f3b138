"""API keys, admin keys, the HTML form's key and rate limits, through real servers.

One server with keys (metrics protected, form needs a key); one with keys where health is
protected and the form is open; one without keys, limited per client address.
"""
from __future__ import annotations

import base64
import socket
import sqlite3
import subprocess
import sys

import pytest
import requests

from service.access.keys import add_key, revoke_key
from support import FIXTURES, REPO, ServerProcess, read_by_server, wait_for

IMAGE = (FIXTURES / "digit7_28.png").read_bytes()
PNG = {"Content-Type": "image/png"}
PREDICT = "/v1/models/digits-cnn/predict"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def batch(n: int) -> dict:
    b64 = base64.b64encode(IMAGE).decode()
    return {"instances": [{"b64": b64}] * n}


def keyed_server(tmp, extra: str = "") -> tuple[ServerProcess, dict[str, str]]:
    path = tmp / "keys.json"
    keys = {
        "user": add_key(path, "user")[1],
        "admin": add_key(path, "admin", admin=True)[1],
        "slow": add_key(path, "slow", limits={"requests_per_s": 1, "requests_burst": 2})[1],
        "few": add_key(path, "few", limits={"images_per_s": 0.5, "images_burst": 4})[1],
        "one": add_key(path, "one", limits={"max_in_flight": 1})[1],
        "protocols": add_key(path, "protocols", limits={"images_per_s": 0.1,
                                                        "images_burst": 4})[1],
    }
    config = (f'[service]\nmodels = ["digits-cnn"]\n[auth]\nkeys_file = "{path}"\n{extra}')
    proc = ServerProcess(tmp, config, ready_headers=bearer(keys["user"])).start()
    proc.keys_file = path
    return proc, keys


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    proc, keys = keyed_server(tmp_path_factory.mktemp("keyed"), "protect_metrics = True\n")
    yield proc, keys
    proc.stop()


# -- who may call what ----------------------------------------------------------------------
@pytest.mark.parametrize("method,path", [
    ("GET", "/v1/models"), ("GET", "/v1/models/digits-cnn"), ("POST", PREDICT),
    ("POST", "/v1/predict"), ("POST", "/v1/feedback"), ("GET", "/v1/nothing-here"),
    ("POST", "/recognize"), ("POST", "/mnist/classify"), ("GET", "/mnist/classify/0"),
    ("POST", "/v1/models/digits-cnn/reload"), ("GET", "/metrics"),
])
def test_protected_routes_need_a_key(keyed, method, path):
    proc, _ = keyed
    response = requests.request(method, proc.url + path, data=IMAGE, headers=PNG, timeout=10)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/status", "/openapi.json", "/",
                                  "/static/style.css", "/mnist/image/0", "/mnist/label/0"])
def test_open_routes_stay_open(keyed, path):
    proc, _ = keyed
    assert requests.get(proc.url + path, timeout=10).status_code == 200


@pytest.mark.parametrize("headers", [
    lambda k: {"Authorization": f"Bearer {k}"}, lambda k: {"Authorization": f"bearer  {k}"},
    lambda k: {"X-API-Key": k},
])
def test_a_key_in_either_header_is_accepted(keyed, headers):
    proc, keys = keyed
    response = requests.post(proc.url + PREDICT, data=IMAGE,
                             headers={**PNG, **headers(keys["user"])}, timeout=10)
    assert response.status_code == 200 and response.json()["predictions"][0]["class"] == 7


def test_wrong_keys_are_refused_and_the_connection_closed(keyed):
    proc, keys = keyed
    wrong = keys["user"][:-2] + ("xx" if not keys["user"].endswith("xx") else "yy")
    for key in (wrong, "not-a-key", keys["user"] + "x"):
        response = requests.post(proc.url + PREDICT, data=IMAGE, headers={**PNG, **bearer(key)},
                                 timeout=10)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"
        assert response.headers["Connection"] == "close"


def test_metrics_take_a_key_when_protected(keyed):
    proc, keys = keyed
    response = requests.get(proc.url + "/metrics", headers=bearer(keys["user"]), timeout=10)
    assert response.status_code == 200
    assert 'digits_http_rejected_requests_total{code="unauthorized",status="401"}' in response.text


def test_reload_needs_an_admin_key(keyed):
    proc, keys = keyed
    url = proc.url + "/v1/models/digits-cnn/reload"
    user = requests.post(url, headers=bearer(keys["user"]), timeout=30)
    assert user.status_code == 403 and user.json()["error"]["code"] == "admin_required"
    admin = requests.post(url, headers=bearer(keys["admin"]), timeout=60)
    assert admin.status_code == 200 and admin.json()["state"] == "AVAILABLE"


def test_a_revoked_key_stops_working_without_a_restart(keyed):
    proc, _ = keyed
    record, key = add_key(proc.keys_file, "short-lived")

    def status() -> int:
        return requests.get(proc.url + "/v1/models", headers=bearer(key), timeout=10).status_code
    wait_for(lambda: status() == 200, interval=0.1)  # the server re-reads the file within ~1 s
    revoke_key(proc.keys_file, record.id)
    wait_for(lambda: status() == 401, interval=0.1)


def test_predictions_are_logged_with_the_key_id(keyed):
    proc, keys = keyed
    response = requests.post(proc.url + PREDICT, data=IMAGE,
                             headers={**PNG, **bearer(keys["admin"])}, timeout=10)
    request_id = response.json()["request_id"]
    feedback = requests.post(proc.url + "/v1/feedback", json={"request_id": request_id,
                             "label": "7"}, headers=bearer(keys["admin"]), timeout=10)
    assert feedback.status_code == 200  # the record is written by now
    db = sqlite3.connect(proc.config_path.parent / "inputlog" / "inputlog.sqlite3")
    (key_id,) = db.execute("SELECT api_key_id FROM predictions WHERE request_id = ?",
                           (request_id,)).fetchone()
    assert keys["admin"].startswith(f"dk_{key_id}_")


def test_feedback_is_for_the_key_that_predicted_or_an_admin(keyed):
    proc, keys = keyed
    response = requests.post(proc.url + PREDICT, data=IMAGE,
                             headers={**PNG, **bearer(keys["user"])}, timeout=10)
    feedback = {"request_id": response.json()["request_id"], "label": "7"}
    other = requests.post(proc.url + "/v1/feedback", json=feedback,
                          headers=bearer(keys["few"]), timeout=10)
    assert other.status_code == 403 and other.json()["error"]["code"] == "feedback_forbidden"
    for key in ("user", "admin"):
        assert requests.post(proc.url + "/v1/feedback", json=feedback, headers=bearer(keys[key]),
                             timeout=10).status_code == 200


# -- the HTML form --------------------------------------------------------------------------
def test_the_form_asks_for_a_key_and_works_with_one(keyed):
    proc, keys = keyed
    page = requests.get(proc.url + "/", timeout=10).text
    assert 'name="api_key"' in page and 'type="password"' in page
    files = {"image": ("seven.png", IMAGE, "image/png")}
    refused = requests.post(proc.url + "/result", files=files, timeout=10)
    assert refused.status_code == 401 and refused.headers["Content-Type"].startswith("text/html")
    assert "API key" in refused.text
    wrong = requests.post(proc.url + "/result", files=files, data={"api_key": "nope"}, timeout=10)
    assert wrong.status_code == 401 and "not valid" in wrong.text
    ok = requests.post(proc.url + "/result", files=files, data={"api_key": keys["user"]},
                       timeout=10)
    assert ok.status_code == 200 and 'class="result' in ok.text
    assert f'name="api_key" value="{keys["user"]}"' in ok.text  # for the feedback form


# -- rate limits ----------------------------------------------------------------------------
def test_a_key_over_its_request_rate_gets_429_and_others_do_not(keyed):
    proc, keys = keyed
    statuses = [requests.post(proc.url + PREDICT, data=IMAGE,
                              headers={**PNG, **bearer(keys["slow"])}, timeout=10)
                for _ in range(4)]
    assert [r.status_code for r in statuses[:2]] == [200, 200]
    limited = [r for r in statuses if r.status_code == 429]
    assert limited, [r.status_code for r in statuses]
    assert limited[0].json()["error"]["code"] == "rate_limited"
    assert int(limited[0].headers["Retry-After"]) >= 1
    other = requests.post(proc.url + PREDICT, data=IMAGE, headers={**PNG, **bearer(keys["user"])},
                          timeout=10)
    assert other.status_code == 200


def test_images_are_limited_by_count(keyed):
    proc, keys = keyed
    headers = bearer(keys["few"])
    first = requests.post(proc.url + PREDICT, json=batch(3), headers=headers, timeout=10)
    assert first.status_code == 200
    second = requests.post(proc.url + PREDICT, json=batch(3), headers=headers, timeout=10)
    assert second.status_code == 429 and "images a second" in second.json()["error"]["message"]
    too_big = requests.post(proc.url + PREDICT, json=batch(5), headers=headers, timeout=10)
    assert too_big.status_code == 429 and "split" in too_big.json()["error"]["message"]


# -- the standard protocols: the same keys and limits, their own error shape -------------------
V2_INFER = "/v2/models/digits-cnn/infer"
TF_PREDICT = "/v1/models/digits-cnn:predict"


def v2_body(n: int) -> dict:
    b64 = base64.b64encode(IMAGE).decode()
    return {"inputs": [{"name": "image_bytes", "datatype": "BYTES", "shape": [n],
                        "data": [b64] * n}]}


@pytest.mark.parametrize("method,path", [
    ("POST", V2_INFER), ("GET", "/v2/models/digits-cnn"), ("GET", "/v2/models/digits-cnn/ready"),
    ("POST", TF_PREDICT), ("POST", "/v1/models/digits-cnn:classify"),
    ("GET", "/v1/models/digits-cnn/metadata"), ("GET", "/v1/models/digits-cnn/labels/stable"),
])
def test_the_protocols_need_a_key_and_say_so_in_their_shape(keyed, method, path):
    proc, _ = keyed
    response = requests.request(method, proc.url + path, json=v2_body(1), timeout=10)
    assert response.status_code == 401 and response.headers["WWW-Authenticate"] == "Bearer"
    assert list(response.json()) == ["error"] and "key" in response.json()["error"]


def test_the_protocols_health_stays_open_and_a_key_lets_them_through(keyed):
    proc, keys = keyed
    for path in ("/v2", "/v2/health/live", "/v2/health/ready"):
        assert requests.get(proc.url + path, timeout=10).status_code == 200
    v2 = requests.post(proc.url + V2_INFER, json=v2_body(1), headers=bearer(keys["user"]),
                       timeout=10)
    tf = requests.post(proc.url + TF_PREDICT, json=batch(1), headers=bearer(keys["user"]),
                       timeout=10)
    assert v2.status_code == 200 and v2.json()["outputs"][1]["data"] == [7]
    assert tf.status_code == 200 and len(tf.json()["predictions"]) == 1


def test_one_image_budget_is_shared_by_every_protocol(keyed):
    """4 images, refilled at one per 10 s: 3 through V2, then 3 more anywhere are refused."""
    proc, keys = keyed
    headers = bearer(keys["protocols"])
    first = requests.post(proc.url + V2_INFER, json=v2_body(3), headers=headers, timeout=10)
    assert first.status_code == 200
    for path, body in ((TF_PREDICT, batch(3)), (V2_INFER, v2_body(3)), (PREDICT, batch(3))):
        refused = requests.post(proc.url + path, json=body, headers=headers, timeout=10)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        error = refused.json()["error"]
        assert "images a second" in (error if isinstance(error, str) else error["message"])


def test_a_key_with_one_request_in_flight_gets_503_for_a_second(keyed):
    proc, keys = keyed
    head = (f"POST {PREDICT} HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            f"Authorization: Bearer {keys['one']}\r\nContent-Length: {len(IMAGE)}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", proc.port), timeout=10) as held:
        port = held.getsockname()[1]
        held.sendall(head.encode())
        wait_for(lambda: read_by_server(proc.port, port))  # the headers, and nothing more
        held.sendall(IMAGE[:10])  # in flight until the rest of the body comes
        # The body is read only once the request has been admitted (and counted) in flight.
        wait_for(lambda: read_by_server(proc.port, port))
        second = requests.post(proc.url + PREDICT, data=IMAGE,
                               headers={**PNG, **bearer(keys["one"])}, timeout=10)
        assert second.status_code == 503
        assert second.json()["error"]["code"] == "too_many_in_flight"
        assert "Retry-After" in second.headers
        held.sendall(IMAGE[10:])
        assert held.recv(64).startswith(b"HTTP/1.1 200")
    third = requests.post(proc.url + PREDICT, data=IMAGE, headers={**PNG, **bearer(keys["one"])},
                          timeout=10)
    assert third.status_code == 200


# -- other settings -------------------------------------------------------------------------
def test_health_can_be_protected_and_the_form_left_open(tmp_path):
    proc, keys = keyed_server(tmp_path, "protect_health = True\nform_open = True\n")
    try:
        for path in ("/healthz", "/readyz", "/status"):
            assert requests.get(proc.url + path, timeout=10).status_code == 401
            assert requests.get(proc.url + path, headers=bearer(keys["user"]),
                                timeout=10).status_code == 200
        assert requests.get(proc.url + "/metrics", timeout=10).status_code == 200
        assert 'name="api_key"' not in requests.get(proc.url + "/", timeout=10).text
        files = {"image": ("seven.png", IMAGE, "image/png")}
        assert requests.post(proc.url + "/result", files=files, timeout=10).status_code == 200
    finally:
        proc.stop()


def test_without_keys_clients_are_limited_by_address(tmp_path):
    proc = ServerProcess(tmp_path, '[service]\nmodels = ["digits-cnn"]\n'
                         '[ratelimit]\nrequests_per_s = 1.0\nrequests_burst = 3.0\n').start()
    try:
        statuses = [requests.post(proc.url + PREDICT, data=IMAGE, headers=PNG,
                                  timeout=10).status_code for _ in range(5)]
        assert statuses[:3] == [200, 200, 200] and 429 in statuses[3:]
        assert requests.get(proc.url + "/healthz", timeout=10).status_code == 200  # not limited
    finally:
        proc.stop()


def test_start_up_refuses_a_missing_key_file_and_a_token_beside_keys(tmp_path):
    def start(config: str) -> subprocess.CompletedProcess:
        path = tmp_path / "service.conf"
        path.write_text(config)
        return subprocess.run([sys.executable, "-m", "service", "serve", "--config", str(path),
                               "--port", "1"], cwd=REPO, capture_output=True, text=True,
                              timeout=120)

    missing = start(f'[auth]\nkeys_file = "{tmp_path / "nope.json"}"\n')
    assert missing.returncode != 0 and "keys_file" in missing.stderr and "keys add" in missing.stderr
    add_key(tmp_path / "keys.json", "a")
    both = start(f'[service]\nadmin_token = "x"\n[auth]\nkeys_file = "{tmp_path / "keys.json"}"\n')
    assert both.returncode != 0 and "admin_token" in both.stderr


# -- who reads live accuracy: [auth] feedback_summary ------------------------------------------
SUMMARY = "/v1/models/digits-cnn/feedback-summary"


def test_the_feedback_summary_takes_a_key_by_default(keyed):
    proc, keys = keyed
    assert requests.get(proc.url + SUMMARY, timeout=10).status_code == 401
    answer = requests.get(proc.url + SUMMARY, headers=bearer(keys["user"]), timeout=10)
    assert answer.status_code == 200 and answer.json()["name"] == "digits-cnn"


def test_the_feedback_summary_can_be_for_admins_only(tmp_path):
    proc, keys = keyed_server(tmp_path, 'feedback_summary = "admin"\nform_open = True\n')
    try:
        user = requests.get(proc.url + SUMMARY, headers=bearer(keys["user"]), timeout=10)
        assert user.status_code == 403 and user.json()["error"]["code"] == "admin_required"
        admin = requests.get(proc.url + SUMMARY, headers=bearer(keys["admin"]), timeout=10)
        assert admin.status_code == 200
        page = requests.get(proc.url + "/models", timeout=10)
        assert page.status_code == 200 and "live accuracy is for admins" in page.text
    finally:
        proc.stop()
