"""The input log's records in PostgreSQL (a real server): the same tables as SQLite, migrated
once, shared by two logs (two replicas), exported from, and a database that goes down for a
while costs no record within the queue's bound."""
from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import replace

import psycopg
import pytest
from psycopg.rows import dict_row

from inputlog_support import DIGIT2, DIGIT7, labels_for, query, record, sha, started
from service.config import InputLogSettings
from service.errors import Unavailable
from service.inputlog import InputLog
from service.inputlog.database import PostgresDatabase
from service.replicas.servers import PostgresServer
from support import REPO, require_server, wait_for


@pytest.fixture
def database_url(postgres_server) -> str:
    return postgres_server.new_database()


@pytest.fixture
def pg_settings(tmp_path, database_url) -> InputLogSettings:
    return InputLogSettings(dir=tmp_path / "pg-inputlog", queue_size=100,
                            database_url=database_url)


def pg(url: str, sql: str, args: tuple = ()) -> list[dict]:
    with psycopg.connect(url, row_factory=dict_row) as conn:
        return conn.execute(sql, args).fetchall()


def columns_sqlite(directory) -> dict[str, list[str]]:
    return {table: [r["name"] for r in query(directory, f"PRAGMA table_info({table})")]
            for table in ("images", "models", "predictions", "schema_version")}


def columns_pg(url: str) -> dict[str, list[str]]:
    rows = pg(url, "SELECT table_name, column_name FROM information_schema.columns "
                   "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position")
    tables: dict[str, list[str]] = {}
    for row in rows:
        tables.setdefault(row["table_name"], []).append(row["column_name"])
    return tables


def test_records_land_in_postgresql_in_the_same_tables_as_sqlite(pg_settings, settings):
    for each in (pg_settings, settings):
        log = started(each)
        record(log, [DIGIT7, DIGIT2], "r1", models=("digits-cnn", "digits-rnn"))
        log.stop()
    url = pg_settings.database_url
    assert columns_pg(url) == columns_sqlite(settings.dir)
    rows = pg(url, "SELECT * FROM predictions ORDER BY id")
    assert [(r["request_id"], r["instance"], r["model"]) for r in rows] == [
        ("r1", 0, "digits-cnn"), ("r1", 1, "digits-cnn"), ("r1", 0, "digits-rnn"),
        ("r1", 1, "digits-rnn")]
    lite = query(settings.dir, "SELECT * FROM predictions ORDER BY id")
    skip = {"id", "time"}
    assert [{k: r[k] for k in r if k not in skip} for r in rows] == \
        [{k: r[k] for k in r.keys() if k not in skip} for r in lite]
    assert {r["sha256"] for r in pg(url, "SELECT sha256 FROM images")} == {sha(DIGIT7), sha(DIGIT2)}
    assert pg(url, "SELECT version FROM schema_version") == [{"version": 1}]
    assert not list(pg_settings.dir.glob("*.sqlite3"))  # the records are not in a file too


def test_replicas_starting_together_migrate_the_schema_once(database_url):
    errors: list[BaseException] = []

    def connect() -> None:
        try:
            PostgresDatabase(database_url).connect().close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=connect) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    assert pg(database_url, "SELECT version FROM schema_version") == [{"version": 1}]


def test_feedback_on_one_log_finds_a_prediction_another_logged(pg_settings, tmp_path):
    first = started(pg_settings)
    second = started(replace(pg_settings, dir=tmp_path / "second"))
    record(first, [DIGIT7], "made-on-a", class_id=3)
    assert first.flush()
    answer = second.feedback("made-on-a", label="7")
    assert answer == {"request_id": "made-on-a", "label": "7", "class": 7, "updated": 1}
    summary = second.feedback_summary("digits-cnn")
    assert summary[0]["labelled"] == 1 and summary[0]["correct"] == 0
    assert summary[0]["confused"] == [{"true": 7, "read_as": 3, "count": 1}]
    first.stop()
    second.stop()
    assert pg(pg_settings.database_url, "SELECT feedback_class FROM predictions") == \
        [{"feedback_class": 7}]


def test_export_reads_the_records_from_postgresql(pg_settings, tmp_path):
    log = started(pg_settings)
    record(log, [DIGIT7], "a", class_id=7)
    record(log, [DIGIT2], "b", class_id=3)
    log.feedback("a", label="7")
    log.feedback("b", label="2")
    log.stop()
    config = tmp_path / "export.conf"
    config.write_text(f'[inputlog]\ndir = "{pg_settings.dir}"\n'
                      f'database_url = "{pg_settings.database_url}"\n')
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "service", "export", "--config", str(config),
                           "--out", str(out), "--no-progress"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "exported 2 images (2 with feedback)" in done.stdout


def test_a_database_down_for_a_while_loses_no_record_within_the_bound(tmp_path, caplog):
    server = require_server(PostgresServer).start()
    try:
        settings = InputLogSettings(dir=tmp_path / "inputlog", queue_size=50,
                                    database_url=server.url)
        log = started(settings)
        record(log, [DIGIT7], "before")
        assert log.flush()
        server.stop()
        record(log, [DIGIT2], "during-0")
        assert wait_for(lambda: log.stats()["database_errors"] >= 1, timeout=30)
        for index in range(1, 20):  # never waits: each only enqueues
            record(log, [DIGIT2], f"during-{index}")
        stats = log.stats()
        assert stats["written"] == 1 and stats["queue_depth"] == 20
        with pytest.raises(Unavailable) as refused:  # a request reading it: 503, not 500
            log.feedback("before", label="7")
        assert refused.value.status == 503
        assert "unavailable" in caplog.text and "wait in the queue" in caplog.text
        server.start()
        assert wait_for(lambda: log.stats()["written"] == 21, timeout=30)
        assert log.stats()["dropped_by_reason"] == {}
        assert log.feedback("before", label="7")["updated"] == 1  # and it reconnects
        log.stop()
        ids = {r["request_id"] for r in pg(server.url, "SELECT request_id FROM predictions")}
        assert ids == {"before", *(f"during-{i}" for i in range(20))}
    finally:
        server.cleanup()


def test_beyond_the_queue_bound_records_are_dropped_and_counted(tmp_path):
    server = require_server(PostgresServer).start()
    try:
        log = started(InputLogSettings(dir=tmp_path / "inputlog", queue_size=5,
                                       database_url=server.url))
        server.stop()
        record(log, [DIGIT7], "r0")
        assert wait_for(lambda: log.stats()["database_errors"] >= 1, timeout=30)  # r0 in hand
        for index in range(1, 12):
            record(log, [DIGIT7], f"r{index}")
        assert log.stats()["dropped_by_reason"] == {"queue_full": 6}  # r1-r5 queued
        server.start()
        assert wait_for(lambda: log.stats()["written"] == 6, timeout=30)
        log.stop()
        ids = [r["request_id"] for r in pg(server.url, "SELECT request_id FROM predictions "
                                                       "ORDER BY id")]
        assert ids == [f"r{i}" for i in range(6)]
    finally:
        server.cleanup()


def test_a_bad_database_url_is_refused_at_start_up_naming_the_key(tmp_path):
    from service.config import load_settings
    from service.errors import ConfigError

    config = tmp_path / "bad.conf"
    config.write_text('[inputlog]\ndatabase_url = "mysql://x@y/z"\n')
    with pytest.raises(ConfigError, match=r"\[inputlog\].*database_url"):
        load_settings(config)


def test_sqlite_is_still_the_default_and_names_its_file(settings):
    log = InputLog(settings, labels_for=labels_for)
    assert log.db.describe().endswith("inputlog.sqlite3")
