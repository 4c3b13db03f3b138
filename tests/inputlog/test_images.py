"""The input log's images: never a partial write, stale temp files removed, metadata only on
request, the oldest pruned beyond the limit (their records kept)."""
from __future__ import annotations

import os
from dataclasses import replace

from inputlog_support import DIGIT2, DIGIT7, PHOTO, integrity, query, record, sha, started, stored_files


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
