"""Export the input log as an MNIST-format IDX dataset, for ``train --extra-data``.

Each logged image is preprocessed exactly as its model saw it (the model version's manifest
spec, and the crop the client asked for), as 28x28 uint8. One sample per distinct input
(image sha256 + crop options); its label is the latest feedback on any of its records.

By default only images with feedback are exported: an unconfirmed prediction is not ground
truth, and training on the model's own answers would only teach it its own mistakes.
``include_unlabelled`` adds the rest, labelled with the model's prediction (a pseudo-label),
marked ``prediction`` in the index's ``label_source`` column so they can be filtered out.
"""
from __future__ import annotations

import csv
import functools
import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

import numpy as np

from ..blobstore import BlobStore, BlobStoreError
from ..errors import DatasetError, InvalidInput, ServiceError
from ..models import datasets
from ..models.manifest import read_manifest
from ..models.preprocess import PreprocessSpec, preprocess
from .database import SqliteDatabase, open_database
from .records import export_rows

log = logging.getLogger("service.export")

PREFIX = "inputlog"
INDEX_NAME = "index.csv"
INDEX_COLUMNS = ("index", "sha256", "label", "class", "label_source", "request_id", "time",
                 "model", "version")
SIDE = 28  # the IDX dataset is MNIST-shaped


@dataclass(frozen=True)
class ExportOptions:
    out_dir: Path
    inputlog_dir: Path
    store: BlobStore
    graphs_dir: Path
    since: str | None = None          # ISO date or datetime (UTC unless it says otherwise)
    model: str | None = None
    include_unlabelled: bool = False
    progress: bool = True
    database_url: str | None = None   # the records in PostgreSQL; None: SQLite in inputlog_dir


@dataclass
class ExportResult:
    exported: int = 0
    labelled: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> samples
    files: list[Path] = field(default_factory=list)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


@dataclass(frozen=True)
class Sample:
    sha256: str
    image_key: str
    stored: bool
    x: float | None
    y: float | None
    crop: float | None
    class_id: int
    label: str
    source: str                        # "feedback" or "prediction"
    request_id: str
    time: str
    model: str
    version: int


def parse_since(text: str | None) -> str | None:
    """A date or datetime -> the UTC ISO text the log's ``time`` column sorts against."""
    if not text:
        return None
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInput(f"--since must be an ISO date or datetime (e.g. 2026-01-31), "
                           f"got {text!r}.", "bad_parameter") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).isoformat(timespec="microseconds")


def export(options: ExportOptions) -> ExportResult:
    """Write ``inputlog-{images,labels}`` IDX files, their SHA256SUMS and ``index.csv``."""
    database = open_database(options.inputlog_dir, options.database_url)
    if isinstance(database, SqliteDatabase) and not database.path.exists():
        raise DatasetError(f"There is no input log in {options.inputlog_dir} "
                           f"({database.path.name} is missing).")
    try:
        with database.borrow() as conn:
            rows = export_rows(conn, parse_since(options.since), options.model,
                               labelled_only=not options.include_unlabelled)
            samples = select_samples(rows)
    finally:
        database.close()
    result = ExportResult()
    images, kept = _preprocess_all(samples, options, result)
    labels = np.array([s.class_id for s in kept], dtype=np.uint8)
    stacked = np.stack(images) if images else np.zeros((0, SIDE, SIDE), np.uint8)
    result.files = list(datasets.write_idx(stacked, labels, options.out_dir, PREFIX))
    result.files.append(_write_index(options.out_dir / INDEX_NAME, kept))
    result.exported = len(kept)
    result.labelled = sum(s.source == "feedback" for s in kept)
    return result


def select_samples(rows: Iterable) -> list[Sample]:
    """One sample per distinct input; feedback beats a prediction, later beats earlier."""
    chosen: dict[tuple, Sample] = {}
    for row in rows:  # oldest first
        key = (row["image_sha256"], row["x"], row["y"], row["crop"])
        labelled = row["feedback_class"] is not None
        if not labelled and key in chosen:
            continue  # keep the first prediction, or the feedback already found
        chosen[key] = Sample(
            row["image_sha256"], row["image_key"], bool(row["image_stored"]), row["x"],
            row["y"], row["crop"],
            row["feedback_class"] if labelled else row["class_id"],
            row["feedback_label"] if labelled else row["label"],
            "feedback" if labelled else "prediction", row["request_id"], row["time"],
            row["model"], row["version"])
    return list(chosen.values())


def _preprocess_all(samples: list[Sample], options: ExportOptions,
                    result: ExportResult) -> tuple[list[np.ndarray], list[Sample]]:
    from tqdm import tqdm

    spec_for = functools.lru_cache(maxsize=None)(
        lambda model, version: _spec(options.graphs_dir, model, version))
    images, kept = [], []
    for sample in tqdm(samples, desc="export", unit="img", disable=not options.progress or None,
                       leave=False):
        if not sample.stored:
            result.skip("image_not_stored")  # metadata_only, or pruned
            continue
        array = _model_input(sample, options.store, spec_for(sample.model, sample.version),
                             result)
        if array is not None:
            images.append(array)
            kept.append(sample)
    return images, kept


def _model_input(sample: Sample, store: BlobStore, spec: PreprocessSpec,
                 result: ExportResult) -> np.ndarray | None:
    try:
        data = store.get(sample.image_key)
        array = preprocess(data, spec, x=sample.x, y=sample.y, crop=sample.crop)
    except BlobStoreError as exc:
        log.warning("image %s skipped: %s", sample.sha256, exc.message)
        result.skip("image_missing")
        return None
    except ServiceError as exc:
        log.warning("image %s skipped: %s", sample.sha256, exc.message)
        result.skip("preprocess_failed")
        return None
    if array.shape != (SIDE, SIDE):  # e.g. an RGB or non-28x28 model: not MNIST-shaped
        result.skip("not_28x28_gray")
        return None
    return np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)


def _spec(graphs_dir: Path, model: str, version: int) -> PreprocessSpec:
    """The spec the model version was served with; MNIST's default if its manifest is gone."""
    try:
        return read_manifest(Path(graphs_dir) / model / str(version)).preprocess
    except ValueError as exc:
        log.warning("using the default MNIST preprocessing for %s v%d: %s", model, version, exc)
        return PreprocessSpec()


def _write_index(path: Path, samples: list[Sample]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(INDEX_COLUMNS)
        for index, s in enumerate(samples):
            writer.writerow((index, s.sha256, s.label, s.class_id, s.source, s.request_id,
                             s.time, s.model, s.version))
    return path
