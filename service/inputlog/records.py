"""The input log's records: the SQLite schema, inserts, feedback updates and export queries.

One row per image (content-addressed by sha256) and one per prediction (instance x model).
WAL mode lets the request threads read (feedback, stats) while the writer thread writes.
"""
from __future__ import annotations

import json
import sqlite3
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from ..errors import Unavailable

DB_NAME = "inputlog.sqlite3"
BUSY_TIMEOUT_MS = 5000

SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    sha256      TEXT PRIMARY KEY,
    key         TEXT NOT NULL,        -- where the bytes are (or were) in the blob store
    format      TEXT,
    width       INTEGER,
    height      INTEGER,
    bytes       INTEGER NOT NULL,
    first_seen  TEXT NOT NULL,
    stored      INTEGER NOT NULL,     -- 1 while the bytes are in the store
    stored_at   TEXT,
    pruned_at   TEXT
);
CREATE INDEX IF NOT EXISTS images_by_age ON images (stored, stored_at);
CREATE TABLE IF NOT EXISTS models (
    model   TEXT NOT NULL,
    version INTEGER NOT NULL,
    labels  TEXT NOT NULL,            -- JSON list; index = class id
    PRIMARY KEY (model, version)
);
CREATE TABLE IF NOT EXISTS predictions (
    id              INTEGER PRIMARY KEY,
    request_id      TEXT NOT NULL,
    instance        INTEGER NOT NULL,
    time            TEXT NOT NULL,    -- UTC, ISO 8601 with microseconds: sorts as text
    route           TEXT NOT NULL,
    client          TEXT NOT NULL,
    api_key_id      TEXT,
    model           TEXT NOT NULL,
    version         INTEGER NOT NULL,
    class_id        INTEGER NOT NULL,
    label           TEXT NOT NULL,
    probability     REAL NOT NULL,
    top_k           TEXT NOT NULL,    -- JSON [[class, label, probability], ...]
    image_sha256    TEXT NOT NULL,
    image_format    TEXT,
    image_width     INTEGER,
    image_height    INTEGER,
    image_bytes     INTEGER NOT NULL,
    x               REAL,
    y               REAL,
    crop            REAL,
    latency_ms      REAL,
    feedback_label  TEXT,
    feedback_class  INTEGER,
    feedback_time   TEXT
);
CREATE INDEX IF NOT EXISTS predictions_by_request ON predictions (request_id);
CREATE INDEX IF NOT EXISTS predictions_by_time ON predictions (time);
CREATE INDEX IF NOT EXISTS predictions_by_model ON predictions (model, version);
"""


class ImageRow(NamedTuple):  # a tuple: sqlite3 inserts it as it is
    sha256: str
    key: str
    format: str | None
    width: int | None
    height: int | None
    bytes: int
    first_seen: str
    stored: int
    stored_at: str | None
    pruned_at: str | None = None


class PredictionRow(NamedTuple):
    request_id: str
    instance: int
    time: str
    route: str
    client: str
    api_key_id: str | None
    model: str
    version: int
    class_id: int
    label: str
    probability: float
    top_k: str
    image_sha256: str
    image_format: str | None
    image_width: int | None
    image_height: int | None
    image_bytes: int
    x: float | None
    y: float | None
    crop: float | None
    latency_ms: float | None


def utc_now() -> str:
    return utc_time(time.time())


def utc_time(seconds: float) -> str:
    """A ``time.time()`` instant as the log's timestamps are written."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="microseconds")


def connect(directory: Path) -> sqlite3.Connection:
    """Open (creating if needed) the database in ``directory``, in WAL mode."""
    directory.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(directory / DB_NAME, timeout=BUSY_TIMEOUT_MS / 1000,
                           isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints, never corrupt
    conn.executescript(SCHEMA)
    return conn


def open_log(directory: Path) -> sqlite3.Connection:
    """:func:`connect`, or Unavailable (503) naming the directory."""
    try:
        return connect(directory)
    except (OSError, sqlite3.Error) as exc:
        raise Unavailable(f"The input log database in {directory} cannot be opened: {exc}",
                          "inputlog_unavailable") from exc


def _insert_sql(table: str, cls: type, verb: str = "INSERT") -> str:
    names = cls._fields
    return f"{verb} INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"


INSERT_IMAGE = _insert_sql("images", ImageRow, "INSERT OR REPLACE")
INSERT_PREDICTION = _insert_sql("predictions", PredictionRow)


def write_batch(conn: sqlite3.Connection, images: list[ImageRow],
                predictions: list[PredictionRow]) -> None:
    """All rows of a batch in one transaction: all of them land, or none."""
    with transaction(conn):
        conn.executemany(INSERT_IMAGE, images)
        conn.executemany(INSERT_PREDICTION, predictions)


class transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on error) on an autocommit connection."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, kind, value, traceback) -> None:
        self.conn.execute("ROLLBACK" if kind else "COMMIT")


def known_image(conn: sqlite3.Connection, sha256: str) -> sqlite3.Row | None:
    return conn.execute("SELECT * FROM images WHERE sha256 = ?", (sha256,)).fetchone()


def has_labels(conn: sqlite3.Connection, model: str, version: int) -> bool:
    return conn.execute("SELECT 1 FROM models WHERE model = ? AND version = ?",
                        (model, version)).fetchone() is not None


def save_labels(conn: sqlite3.Connection, model: str, version: int, labels: list[str]) -> None:
    conn.execute("INSERT OR IGNORE INTO models (model, version, labels) VALUES (?, ?, ?)",
                 (model, version, json.dumps(labels)))


def labels(conn: sqlite3.Connection, model: str, version: int) -> list[str] | None:
    row = conn.execute("SELECT labels FROM models WHERE model = ? AND version = ?",
                       (model, version)).fetchone()
    return json.loads(row["labels"]) if row else None


def bytes_stored(conn: sqlite3.Connection) -> int:
    return conn.execute("SELECT COALESCE(SUM(bytes), 0) FROM images WHERE stored = 1").fetchone()[0]


def oldest_stored(conn: sqlite3.Connection, limit: int = 100) -> list[sqlite3.Row]:
    return conn.execute("SELECT sha256, key, bytes FROM images WHERE stored = 1 "
                        "ORDER BY stored_at, sha256 LIMIT ?", (limit,)).fetchall()


def mark_pruned(conn: sqlite3.Connection, sha256s: list[str]) -> None:
    now = utc_now()
    with transaction(conn):
        conn.executemany("UPDATE images SET stored = 0, pruned_at = ? WHERE sha256 = ?",
                         [(now, sha) for sha in sha256s])


def request_records(conn: sqlite3.Connection, request_id: str) -> list[sqlite3.Row]:
    return conn.execute("SELECT id, instance, model, version, api_key_id FROM predictions "
                        "WHERE request_id = ?", (request_id,)).fetchall()


def set_feedback(conn: sqlite3.Connection, ids: list[int], label: str, class_id: int) -> int:
    now = utc_now()
    with transaction(conn):
        conn.executemany("UPDATE predictions SET feedback_label = ?, feedback_class = ?, "
                         "feedback_time = ? WHERE id = ?",
                         [(label, class_id, now, row_id) for row_id in ids])
    return len(ids)


def feedback_summary(conn: sqlite3.Connection, model: str, confusions: int = 5
                     ) -> list[dict[str, Any]]:
    """Per version of ``model``: predictions logged, how many got a feedback label, how many
    of those the model had right, and its ``confusions`` most frequent (true, read) pairs."""
    totals = conn.execute(
        "SELECT version, COUNT(*) AS logged, COUNT(feedback_class) AS labelled, "
        "SUM(feedback_class IS NOT NULL AND feedback_class = class_id) AS correct "
        "FROM predictions WHERE model = ? GROUP BY version ORDER BY version", (model,))
    summary = {row["version"]: {"version": row["version"], "logged": row["logged"],
                                "labelled": row["labelled"], "correct": row["correct"] or 0,
                                "accuracy": (row["correct"] or 0) / row["labelled"]
                                if row["labelled"] else None, "confused": []}
               for row in totals}
    pairs = conn.execute(
        "SELECT version, feedback_class AS true_class, class_id AS read_as, COUNT(*) AS count "
        "FROM predictions WHERE model = ? AND feedback_class IS NOT NULL "
        "AND feedback_class != class_id GROUP BY version, feedback_class, class_id "
        "ORDER BY version, count DESC, feedback_class, class_id", (model,))
    for row in pairs:
        confused = summary[row["version"]]["confused"]
        if len(confused) < confusions:
            confused.append({"true": row["true_class"], "read_as": row["read_as"],
                             "count": row["count"]})
    return list(summary.values())


def export_rows(conn: sqlite3.Connection, since: str | None, model: str | None,
                labelled_only: bool) -> Iterator[sqlite3.Row]:
    """Prediction rows joined with their image, oldest first."""
    sql = ["SELECT p.*, i.key AS image_key, i.stored AS image_stored FROM predictions p "
           "JOIN images i ON i.sha256 = p.image_sha256 WHERE 1 = 1"]
    args: list = []
    if since:
        sql.append("AND p.time >= ?")
        args.append(since)
    if model:
        sql.append("AND p.model = ?")
        args.append(model)
    if labelled_only:
        sql.append("AND p.feedback_class IS NOT NULL")
    sql.append("ORDER BY p.time, p.id")
    return conn.execute(" ".join(sql), args)
