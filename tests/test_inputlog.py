"""The input log: images stored once by content, one record per prediction, never a partial
write, and predictions unaffected (but losses counted) when the store fails.

The first tests drive ``InputLog`` in-process with predictions shaped as the data plane hands
them over; the rest run a real server over HTTP (and a real moto S3 server) and read its
SQLite database afterwards.
"""
from __future__ import annotations

import base64
import hashlib
import os
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import requests

from inputlog_support import labels_for, query, record, stored_files
from service.blobstore import LocalBlobStore
from service.config import InputLogSettings, S3Settings
from service.errors import InvalidInput, NotFound
from service.inputlog import InputLog
from support import FIXTURES, ServerProcess, free_port

DIGIT7 = (FIXTURES / "digit7_28.png").read_bytes()
DIGIT2 = (FIXTURES / "digit2_112.gif").read_bytes()
PHOTO = (FIXTURES / "photo_digit.jpg").read_bytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def settings(tmp_path) -> InputLogSettings:
    return InputLogSettings(dir=tmp_path / "inputlog", queue_size=100)


def started(settings: InputLogSettings, **kwargs) -> InputLog:
    log = InputLog(settings, labels_for=labels_for, **kwargs)
    log.start()
    return log


def integrity(directory: Path) -> str:
    return query(directory, "PRAGMA integrity_check")[0][0]


# -- in-process ---------------------------------------------------------------------------------

def test_images_are_stored_once_by_content_with_a_record_per_prediction(settings):
    log = started(settings)
    record(log, [DIGIT7, DIGIT2], "r1", models=("digits-cnn", "digits-rnn"))
    record(log, [DIGIT7], "r2")
    log.stop()

    files = stored_files(settings.dir)
    assert [f.name for f in files] == sorted([f"{sha(DIGIT7)}.png", f"{sha(DIGIT2)}.gif"])
    by_name = {f.name: f for f in files}
    assert by_name[f"{sha(DIGIT7)}.png"].read_bytes() == DIGIT7  # the original bytes
    assert by_name[f"{sha(DIGIT7)}.png"].parent.name == sha(DIGIT7)[:2]
    rows = query(settings.dir, "SELECT * FROM predictions ORDER BY id")
    assert [(r["request_id"], r["instance"], r["model"]) for r in rows] == [
        ("r1", 0, "digits-cnn"), ("r1", 1, "digits-cnn"), ("r1", 0, "digits-rnn"),
        ("r1", 1, "digits-rnn"), ("r2", 0, "digits-cnn")]
    first = rows[0]
    assert (first["image_sha256"], first["image_format"], first["image_width"],
            first["image_height"], first["image_bytes"]) == (sha(DIGIT7), "PNG", 28, 28, len(DIGIT7))
    assert (first["class_id"], first["label"], first["latency_ms"]) == (7, "7", 2.5)
    assert first["top_k"].startswith("[[7, \"7\", 0.91]")
    assert first["time"].endswith("+00:00") and first["feedback_label"] is None
    assert log.stats() == {"written": 5, "images_written": 2, "images_pruned": 0,
                           "dropped_by_reason": {}, "queue_depth": 0,
                           "bytes_on_disk": len(DIGIT7) + len(DIGIT2)}
    assert integrity(settings.dir) == "ok"


def test_feedback_labels_every_record_of_a_request_even_while_queued(settings):
    log = started(settings)
    record(log, [DIGIT7], "r1", models=("digits-cnn", "digits-rnn"))
    # No flush: feedback itself waits for the writer when the id is not in the database yet.
    assert log.feedback("r1", label="1") == {"request_id": "r1", "label": "1", "class": 1,
                                             "updated": 2}
    assert log.feedback("r1", class_id=7)["label"] == "7"
    with pytest.raises(NotFound) as missing:
        log.feedback("nope", label="7")
    assert missing.value.code == "request_not_found"
    for bad in ({"label": "x"}, {"class_id": 10}):
        with pytest.raises(InvalidInput) as error:
            log.feedback("r1", **bad)
        assert error.value.code == "bad_label"
    log.stop()
    rows = query(settings.dir, "SELECT feedback_label, feedback_class, feedback_time FROM predictions")
    assert [(r[0], r[1]) for r in rows] == [("7", 7), ("7", 7)] and all(r[2] for r in rows)


def test_a_crash_between_temp_write_and_rename_leaves_the_store_consistent(settings, monkeypatch):
    real_replace = os.replace
    calls = []

    def crash_once(src, dst):
        calls.append(dst)
        if len(calls) == 1:
            raise OSError("simulated crash before the rename")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash_once)
    log = started(settings)
    record(log, [DIGIT7], "lost")
    assert log.flush()
    record(log, [DIGIT2], "kept")
    log.stop()

    assert [f.name for f in stored_files(settings.dir)] == [f"{sha(DIGIT2)}.gif"]  # no temp file
    rows = query(settings.dir, "SELECT request_id FROM predictions")
    assert [r[0] for r in rows] == ["kept"]  # no record for the image that never landed
    assert [r[0] for r in query(settings.dir, "SELECT sha256 FROM images")] == [sha(DIGIT2)]
    assert log.stats()["dropped_by_reason"] == {"store_error": 1}
    assert integrity(settings.dir) == "ok"


def test_temp_files_of_a_killed_writer_are_removed_at_start(settings):
    stale = settings.dir / "images" / "ab" / ".abc.png.x1y2.tmp"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half an image")
    started(settings).stop()
    assert not stale.exists()


def test_metadata_only_keeps_records_without_image_bytes(settings):
    log = started(replace(settings, metadata_only=True))
    record(log, [DIGIT7], "r1")
    log.stop()
    assert stored_files(settings.dir) == []
    assert query(settings.dir, "SELECT image_sha256 FROM predictions")[0][0] == sha(DIGIT7)
    assert query(settings.dir, "SELECT stored FROM images")[0][0] == 0


def test_oldest_images_are_pruned_beyond_max_disk_bytes_and_records_kept(settings):
    log = started(replace(settings, max_disk_bytes=len(DIGIT2) + len(PHOTO)))
    for index, data in enumerate((DIGIT7, DIGIT2, PHOTO)):
        record(log, [data], f"r{index}")
        assert log.flush()
    log.stop()
    assert [f.name.split(".")[0] for f in stored_files(settings.dir)] == sorted(
        [sha(DIGIT2), sha(PHOTO)])
    pruned = query(settings.dir, "SELECT sha256 FROM images WHERE stored = 0 AND pruned_at IS NOT NULL")
    assert [r[0] for r in pruned] == [sha(DIGIT7)]
    assert len(query(settings.dir, "SELECT id FROM predictions")) == 3
    assert log.stats()["images_pruned"] == 1
    assert log.stats()["bytes_on_disk"] == len(DIGIT2) + len(PHOTO)


class GatedStore(LocalBlobStore):
    """A real local store whose writes wait for a gate: a store slower than the requests."""

    def __init__(self, root: Path):
        super().__init__(root)
        self.gate = threading.Event()

    def put_if_absent(self, key: str, data: bytes) -> bool:
        self.gate.wait(10)
        return super().put_if_absent(key, data)


def test_a_full_queue_drops_and_counts_instead_of_blocking(settings):
    store = GatedStore(settings.dir)
    log = started(replace(settings, queue_size=1), store=store)
    for index in range(4):  # one in the writer's hands, one queued, two dropped
        record(log, [DIGIT7], f"r{index}")
    dropped = log.stats()["dropped_by_reason"]
    store.gate.set()
    log.stop()
    assert dropped.get("queue_full", 0) >= 2
    written = len(query(settings.dir, "SELECT id FROM predictions"))
    assert written + dropped["queue_full"] == 4 and log.stats()["written"] == written


def test_an_unusable_directory_drops_and_counts_without_raising(tmp_path, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the database directory should be")
    log = started(InputLogSettings(dir=blocker / "inputlog"))
    record(log, [DIGIT7], "r1")
    assert log.flush()
    log.stop()
    assert log.stats()["dropped_by_reason"] == {"db_error": 1}
    assert "dropped 1 record(s) (db_error" in caplog.text


def test_an_unreachable_s3_endpoint_drops_and_counts(settings, caplog):
    s3 = S3Settings(endpoint_url=f"http://127.0.0.1:{free_port()}", region="us-east-1",
                    access_key_id="testing", secret_access_key="testing")
    log = InputLog(replace(settings, backend="s3", bucket="nowhere"), s3, labels_for=labels_for)
    log.start()
    record(log, [DIGIT7], "r1")
    assert log.flush(timeout=30)
    log.stop()
    assert log.stats()["dropped_by_reason"] == {"store_error": 1}
    assert query(settings.dir, "SELECT id FROM predictions") == []
    assert "store_error" in caplog.text


# -- a real server: every predict route and body kind --------------------------------------------

def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def every_route(url: str) -> dict[str, tuple[str, int]]:
    """One request per route and body kind -> {request id: (route, records expected)}."""
    png = {"Content-Type": "image/png"}
    calls = {
        "raw": (requests.post, "/v1/models/digits-cnn/predict", {"data": DIGIT7, "headers": png}, 1),
        "multipart": (requests.post, "/v1/models/digits-rnn/predict",
                      {"files": {"image": ("d.gif", DIGIT2)}}, 1),
        "json-b64": (requests.post, "/v1/models/digits-cnn/predict",
                     {"json": {"instances": [{"b64": b64(DIGIT7)},
                                             {"b64": b64(DIGIT2), "x": 56, "y": 56, "crop": 0.9}]}}, 2),
        "json-path": (requests.post, "/v1/models/digits-cnn/predict",
                      {"json": {"instances": [{"path": "photo_digit.jpg"}]}}, 1),
        "multi-model": (requests.post, "/v1/predict", {"data": DIGIT7, "headers": png}, 2),
        "recognize": (requests.post, "/recognize", {"json": {"image": b64(DIGIT7)}}, 1),
        "classify-raw": (requests.post, "/mnist/classify", {"data": DIGIT7, "headers": png}, 1),
        "classify-json": (requests.post, "/mnist/classify",
                          {"json": {"requests": [{"image": b64(DIGIT7)}, {"image": b64(DIGIT2)}]}}, 2),
        "classify-idx": (requests.get, "/mnist/classify/42", {}, 1),
        "html": (requests.post, "/result", {"files": {"image": ("d.png", DIGIT7)}}, 2),
    }
    seen = {}
    for name, (method, route, kwargs, records) in calls.items():
        response = method(url + route, timeout=30, **kwargs)
        assert response.status_code == 200, (name, response.text[:300])
        seen[response.headers["X-Request-ID"]] = (route, records)
    return seen


@pytest.fixture(scope="module")
def logged_server(tmp_path_factory):
    """A server whose every predict route was called once, then stopped (flushing its log)."""
    tmp = tmp_path_factory.mktemp("inputlog-server")
    (tmp / "images").mkdir()
    (tmp / "images" / "photo_digit.jpg").write_bytes(PHOTO)
    logdir = tmp / "log"
    proc = ServerProcess(tmp, f'[service]\nimages_root = "{tmp / "images"}"\n'
                              f'[inputlog]\ndir = "{logdir}"\n').start()
    try:
        expected = every_route(proc.url)
    finally:
        code = proc.stop()
    return logdir, expected, code, proc.log()


def test_every_predict_route_and_body_kind_is_logged(logged_server):
    logdir, expected, code, server_log = logged_server
    assert code == 0 and "flushing the input log" in server_log
    rows = query(logdir, "SELECT request_id, route, client, COUNT(*) AS n FROM predictions "
                         "GROUP BY request_id")
    assert {r["request_id"]: (r["route"], r["n"]) for r in rows} == expected
    assert {r["client"] for r in rows} == {"127.0.0.1"}
    html = next(rid for rid, (route, _) in expected.items() if route == "/result")
    models = query(logdir, "SELECT model FROM predictions WHERE request_id = ?", (html,))
    assert sorted(r[0] for r in models) == ["digits-cnn", "digits-rnn"]
    assert integrity(logdir) == "ok"


def test_the_server_stores_each_distinct_image_once(logged_server):
    logdir = logged_server[0]
    shas = {r[0] for r in query(logdir, "SELECT image_sha256 FROM predictions")}
    files = stored_files(logdir)
    assert len(files) == len(shas) == len(query(logdir, "SELECT sha256 FROM images"))
    for path in files:
        assert sha(path.read_bytes()) == path.name.split(".")[0]
    assert sha(DIGIT7) in shas and sha(DIGIT2) in shas and sha(PHOTO) in shas
    crop = query(logdir, "SELECT x, y, crop FROM predictions WHERE crop IS NOT NULL")
    assert [tuple(r) for r in crop] == [(56.0, 56.0, 0.9)]


# -- S3 -----------------------------------------------------------------------------------------

def test_images_go_to_an_s3_bucket_under_the_prefix(s3_server, tmp_path):
    s3_server.client().create_bucket(Bucket="inputlog-test")
    logdir = tmp_path / "log"
    proc = ServerProcess(tmp_path, s3_server.config_section() +
                         f'[inputlog]\ndir = "{logdir}"\nbackend = "s3"\n'
                         'bucket = "inputlog-test"\nprefix = "logged/"\n'
                         '[service]\nmodels = ["digits-cnn"]\n').start()
    try:
        response = requests.post(proc.url + "/v1/models/digits-cnn/predict", data=DIGIT7,
                                 headers={"Content-Type": "image/png"}, timeout=30)
        assert response.status_code == 200
    finally:
        assert proc.stop() == 0
    key = f"logged/images/{sha(DIGIT7)[:2]}/{sha(DIGIT7)}.png"
    body = s3_server.client().get_object(Bucket="inputlog-test", Key=key)["Body"].read()
    assert body == DIGIT7
    assert len(query(logdir, "SELECT id FROM predictions")) == 1
    assert not (logdir / "images").exists()  # the database stays local; images do not


def test_predictions_succeed_when_the_image_store_is_down(tmp_path):
    logdir = tmp_path / "log"
    proc = ServerProcess(tmp_path, f'[s3]\nendpoint_url = "http://127.0.0.1:{free_port()}"\n'
                                   'region = "us-east-1"\naccess_key_id = "x"\n'
                                   'secret_access_key = "x"\n'
                                   f'[inputlog]\ndir = "{logdir}"\nbackend = "s3"\n'
                                   'bucket = "gone"\n[service]\nmodels = ["digits-cnn"]\n').start()
    try:
        for _ in range(3):
            response = requests.post(proc.url + "/v1/models/digits-cnn/predict", data=DIGIT7,
                                     headers={"Content-Type": "image/png"}, timeout=30)
            assert response.status_code == 200
    finally:
        assert proc.stop() == 0
    assert "input log dropped" in proc.log() and "store_error" in proc.log()
    assert query(logdir, "SELECT id FROM predictions") == []
