"""Hot reload, rejection and rollback through a real server: local graphs dir and S3 bucket.

The tests in each server's group run in file order and share that server's state.
"""
from __future__ import annotations

import http.client
import json
import threading
import time
import uuid

import pytest
import requests

from model_versions import NAME, build_version, publish_local, publish_s3
from support import FIXTURES, ServerProcess, wait_for

TOKEN = "t0ps3cret"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
IMAGE = (FIXTURES / "digit7_28.png").read_bytes()
REASONS = {"corrupt_pb": "bad graph", "checksum": "does not match", "qa_gate": "QA gate"}


def server_config(extra: str) -> str:
    return (f'[service]\nmodels = ["{NAME}"]\nadmin_token = "{TOKEN}"\n\n'
            f'[model:{NAME}]\nmin_accuracy = 0.99\n\n{extra}')


@pytest.fixture(scope="module")
def local(tmp_path_factory):
    """A server polling a private graphs dir (version 1 to start) every 0.5 s."""
    tmp = tmp_path_factory.mktemp("reload-local")
    graphs = tmp / "graphs"
    build_version(graphs, 1)
    proc = ServerProcess(tmp, server_config(f'[store]\npoll_interval_s = 0.5\n')
                         .replace("[service]\n", f'[service]\ngraphs_dir = "{graphs}"\n'))
    proc.start()
    proc.graphs = graphs
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def remote(tmp_path_factory, s3_server):
    """A server polling s3://<bucket>/releases/ (version 1 published with the CLI) every 0.5 s."""
    tmp = tmp_path_factory.mktemp("reload-s3")
    bucket = f"models-{uuid.uuid4().hex[:8]}"
    s3_server.client().create_bucket(Bucket=bucket)
    publisher_config = tmp / "publisher.conf"
    publisher_config.write_text(s3_server.config_section())
    to = f"s3://{bucket}/releases"
    publish_s3(tmp, 1, to, publisher_config)
    store = (f'[store]\nkind = "s3"\nbucket = "{bucket}"\nprefix = "releases"\n'
             f'cache_dir = "{tmp / "cache"}"\npoll_interval_s = 0.5\n\n')
    proc = ServerProcess(tmp, server_config(store + s3_server.config_section())).start()
    proc.publish = lambda version, kind="good": publish_s3(tmp, version, to, publisher_config, kind)
    proc.bucket, proc.cache = bucket, tmp / "cache"
    yield proc
    proc.stop()


def details(url: str) -> dict:
    response = requests.get(f"{url}/v1/models/{NAME}", timeout=10)
    assert response.status_code == 200
    return response.json()


def predict_version(url: str) -> int:
    response = requests.post(f"{url}/v1/models/{NAME}/predict", data=IMAGE,
                             headers={"Content-Type": "image/png"}, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["version"]


def hot_reload_under_load(url: str, publish_version_2) -> None:
    """8 clients predict non-stop while version 2 is published: none fails, all move to 2."""
    stop = threading.Event()
    seen: list[list[int]] = [[] for _ in range(8)]
    failures: list[str] = []

    def client(log: list[int]) -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    r = session.post(f"{url}/v1/models/{NAME}/predict", data=IMAGE,
                                     headers={"Content-Type": "image/png"}, timeout=10)
                except requests.RequestException as exc:
                    failures.append(repr(exc))
                    continue
                if r.status_code != 200:
                    failures.append(f"{r.status_code} {r.text}")
                    continue
                assert r.json()["predictions"][0]["class"] == 7
                log.append(r.json()["version"])

    threads = [threading.Thread(target=client, args=(log,)) for log in seen]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: all(seen) or failures, interval=0.05)  # each served by version 1
        publish_version_2()
        wait_for(lambda: details(url)["serving"] == 2, interval=0.1)
        # ... and by version 2 since
        wait_for(lambda: all(log[-1] == 2 for log in seen) or failures, interval=0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
    assert failures == []
    for log in seen:
        assert log[0] == 1 and log[-1] == 2, log
        switch = log.index(2)
        assert set(log[:switch]) == {1} and set(log[switch:]) == {2}  # one switch, never back
    info = details(url)
    assert (info["serving"], info["previous_version"], info["policy"]) == (2, 1, "latest")
    assert info["versions"] == [1, 2] and info["last_reload_failure"] is None


def rejected_by_poller(url: str, version: int, kind: str, publish) -> None:
    """A bad newer version is rejected; the serving one stays and the failure is shown."""
    serving = details(url)["serving"]
    publish(version, kind)
    wait_for(lambda: (details(url)["last_reload_failure"] or {}).get("version") == version,
             interval=0.1)
    info = details(url)
    assert info["serving"] == serving and info["state"] == "AVAILABLE"
    assert REASONS[kind] in info["last_reload_failure"]["reason"]
    assert version in info["versions"]
    assert predict_version(url) == serving


# -- local graphs dir ------------------------------------------------------------------------

def test_local_hot_reload_under_load(local):
    hot_reload_under_load(local.url, lambda: publish_local(local.graphs, 2))


@pytest.mark.parametrize("version, kind", [(3, "corrupt_pb"), (4, "checksum"), (5, "qa_gate")])
def test_local_bad_versions_are_rejected(local, version, kind):
    rejected_by_poller(local.url, version, kind,
                       lambda v, k: publish_local(local.graphs, v, k))
    # an explicit reload of the newest tries again, and fails the same way
    response = requests.post(f"{local.url}/v1/models/{NAME}/reload", headers=ADMIN, timeout=60)
    assert response.status_code == 409
    error = response.json()["error"]
    assert error["code"] == "reload_failed" and REASONS[kind] in error["message"]
    assert "version 2 keeps serving" in error["message"]


def test_rollback_by_pinning(local):
    reload = f"{local.url}/v1/models/{NAME}/reload"
    response = requests.post(reload, json={"version": 1}, headers=ADMIN, timeout=60)
    assert response.status_code == 200, response.text
    assert response.json() == {"name": NAME, "version": 1, "state": "AVAILABLE",
                               "previous_version": 2, "policy": "pinned", "pinned": 1}
    assert predict_version(local.url) == 1
    publish_local(local.graphs, 6)
    time.sleep(1.2)  # two polls: a pinned model does not follow the newest
    info = details(local.url)
    assert (info["serving"], info["policy"], info["pinned"]) == (1, "pinned", 1)

    response = requests.post(reload, data=b"{}", headers={"X-Admin-Token": TOKEN,
                                                          "Content-Type": "application/json"},
                             timeout=60)
    assert response.status_code == 200, response.text  # back to the newest: version 6
    assert response.json()["version"] == 6 and response.json()["policy"] == "latest"
    assert predict_version(local.url) == 6


def test_a_bare_post_reloads_without_content_length(local):
    """``curl -X POST`` sends no Content-Length: an empty body, not a 411."""
    def bare_post(path: str) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", local.port, timeout=60)
        try:
            conn.putrequest("POST", path)
            conn.putheader("Authorization", f"Bearer {TOKEN}")
            conn.endheaders()
            response = conn.getresponse()
            return response.status, json.loads(response.read())
        finally:
            conn.close()

    status, body = bare_post(f"/v1/models/{NAME}/reload?version=1")
    assert (status, body["version"], body["pinned"]) == (200, 1, 1)
    status, body = bare_post(f"/v1/models/{NAME}/reload")
    assert (status, body["version"], body["policy"]) == (200, 6, "latest")


@pytest.mark.parametrize("headers, body, status, code", [
    ({}, None, 401, "unauthorized"),
    ({"Authorization": "Bearer wrong"}, None, 401, "unauthorized"),
    ({"X-Admin-Token": TOKEN[:-1]}, None, 401, "unauthorized"),
    (ADMIN, b'{"version": "two"}', 400, "bad_parameter"),
    (ADMIN, b'{"version": 0}', 400, "bad_parameter"),
    (ADMIN, b"[1", 400, "invalid_json"),
    (ADMIN, b'{"version": 99}', 409, "reload_failed"),
])
def test_reload_refusals(local, headers, body, status, code):
    response = requests.post(f"{local.url}/v1/models/{NAME}/reload", data=body,
                             headers={**headers, "Content-Type": "application/json"}, timeout=60)
    assert response.status_code == status, response.text
    assert response.json()["error"]["code"] == code
    if status == 401:
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert details(local.url)["serving"] == 6


def test_reload_unknown_model_and_wrong_method(local):
    response = requests.post(f"{local.url}/v1/models/nope/reload", headers=ADMIN, timeout=10)
    assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found"
    response = requests.get(f"{local.url}/v1/models/{NAME}/reload", headers=ADMIN, timeout=10)
    assert response.status_code == 405 and response.headers["Allow"] == "POST"


def test_reload_is_disabled_without_an_admin_token(server):
    response = requests.post(f"{server}/v1/models/{NAME}/reload", headers=ADMIN, timeout=10)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "admin_disabled"


# -- S3 bucket -------------------------------------------------------------------------------

def test_s3_hot_reload_under_load(remote):
    hot_reload_under_load(remote.url, lambda: remote.publish(2))
    assert sorted(p.name for p in (remote.cache / NAME).iterdir()) == ["1", "2"]


@pytest.mark.parametrize("version, kind", [(3, "corrupt_pb"), (4, "qa_gate")])
def test_s3_bad_versions_are_rejected(remote, version, kind):
    rejected_by_poller(remote.url, version, kind, remote.publish)


def test_s3_checksum_mismatch_is_rejected_and_not_cached(remote, s3_server, tmp_path):
    # the publish CLI refuses such a version, so put the objects up by hand
    bad = build_version(tmp_path, 5, "checksum")
    client = s3_server.client()

    def upload(version: int, kind: str) -> None:
        for filename in ("model.pb", "manifest.json"):
            client.put_object(Bucket=remote.bucket, Key=f"releases/{NAME}/{version}/{filename}",
                              Body=(bad / filename).read_bytes())

    rejected_by_poller(remote.url, 5, "checksum", upload)
    assert not (remote.cache / NAME / "5").exists()
    response = requests.post(f"{remote.url}/v1/models/{NAME}/reload", json={"version": 1},
                             headers=ADMIN, timeout=60)
    assert response.status_code == 200 and response.json()["version"] == 1
    assert predict_version(remote.url) == 1
