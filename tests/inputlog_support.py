"""Helpers for the input log tests: predictions as the data plane hands them to a sink."""
from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import numpy as np

from service.config import InputLogSettings
from service.dataplane import Instance, ModelResult, Prediction, RequestContext
from service.inputlog import InputLog
from service.inputlog.database import DB_NAME
from support import FIXTURES

LABELS = [str(i) for i in range(10)]
DIGIT7 = (FIXTURES / "digit7_28.png").read_bytes()
DIGIT2 = (FIXTURES / "digit2_112.gif").read_bytes()
PHOTO = (FIXTURES / "photo_digit.jpg").read_bytes()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def labels_for(model: str) -> list[str]:
    return LABELS


def model_result(model: str = "digits-cnn", count: int = 1, class_id: int = 7) -> ModelResult:
    """What a model answered for ``count`` instances (every one read as ``class_id``)."""
    row = np.full(10, 0.01)
    row[class_id] = 0.91
    top = [(class_id, LABELS[class_id], 0.91), ((class_id + 1) % 10, LABELS[(class_id + 1) % 10], 0.01)]
    predictions = [Prediction(class_id, LABELS[class_id], 0.91, top, row) for _ in range(count)]
    return ModelResult(model, 1, predictions, np.zeros((count, 28, 28), np.float32),
                       {"total": 2.5})


def started(settings: InputLogSettings, **kwargs) -> InputLog:
    log = InputLog(settings, labels_for=labels_for, **kwargs)
    log.start()
    return log


def record(log, images: list[bytes], request_id: str, class_id: int = 7,
           models: tuple[str, ...] = ("digits-cnn",)) -> RequestContext:
    context = RequestContext(request_id=request_id, route="/test", client="127.0.0.1")
    results = {m: model_result(m, len(images), class_id) for m in models}
    log.record(context, [Instance(data) for data in images], results)
    return context


def query(directory: Path, sql: str, args: tuple = ()) -> list[sqlite3.Row]:
    conn = sqlite3.connect(Path(directory) / DB_NAME)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def stored_files(directory: Path) -> list[Path]:
    """Every file under ``images/``, temp files included."""
    root = Path(directory) / "images"
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def integrity(directory: Path) -> str:
    return query(directory, "PRAGMA integrity_check")[0][0]
