"""The writer thread: one record per prediction, each image stored once, and whatever cannot
be written (queue full, database or store failing) dropped and counted, never blocking."""
from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path

from inputlog_support import (DIGIT2, DIGIT7, integrity, labels_for, query, record, sha, started,
                              stored_files)
from service.blobstore import LocalBlobStore
from service.config import InputLogSettings, S3Settings
from service.inputlog import InputLog
from support import free_port


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
    assert json.loads(first["top_k"])[0] == [7, "7", 0.91]
    assert first["time"].endswith("+00:00") and first["feedback_label"] is None
    assert log.stats() == {"written": 5, "images_written": 2, "images_pruned": 0,
                           "dropped_by_reason": {}, "queue_depth": 0, "database_errors": 0,
                           "bytes_on_disk": len(DIGIT7) + len(DIGIT2)}
    assert integrity(settings.dir) == "ok"


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
