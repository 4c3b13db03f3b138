"""The input log as the data plane's ``PredictionSink``: every predicted image and its
records, kept for the next training run (see the package docstring for the parts)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ..blobstore import BlobStore
from ..cluster.progress import WriterProgress
from ..config import InputLogSettings, S3Settings
from ..dataplane import Instance, ModelResult, RequestContext
from .feedback import Caller, give_feedback
from .images import Images, make_store
from .database import open_database
from .records import feedback_summary
from .writer import FLUSH_WAIT_S, LabelsFor, Writer

log = logging.getLogger("service.inputlog")


class InputLog:
    """Implements ``PredictionSink``; ``start()`` before the first request, ``stop()`` after the last."""

    def __init__(self, settings: InputLogSettings, s3: S3Settings | None = None,
                 labels_for: LabelsFor | None = None, store: BlobStore | None = None,
                 progress: WriterProgress | None = None):
        self.settings = settings
        self.dir = Path(settings.dir)
        self.labels_for = labels_for
        self.images = Images(settings, store or make_store(settings, s3 or S3Settings()))
        self.db = open_database(self.dir, settings.database_url)
        self.writer = Writer(settings, self.images, self.db, labels_for, progress)

    def start(self) -> None:
        self.images.remove_stale_temp_files()
        self.writer.start()
        log.info("input log records in %s (images: %s)", self.db.describe(),
                 self.images.describe())
        if self.db.shared and self.settings.backend == "local" and not self.settings.metadata_only:
            log.warning("the input log's records are shared ([inputlog] database_url) but its "
                        "images stay on this machine: other replicas' exports will miss them "
                        "(set backend = \"s3\")")

    def stop(self, timeout: float = 30.0) -> None:
        """Write everything still queued (up to ``timeout``), then stop the writer."""
        self.writer.stop(timeout)
        self.db.close()

    def flush(self, timeout: float = FLUSH_WAIT_S) -> bool:
        """Wait until every record queued so far is written (or dropped); False on timeout."""
        return self.writer.flush(timeout)

    def record(self, context: RequestContext, instances: list[Instance],
               results: dict[str, ModelResult]) -> None:
        """Enqueue one successful predict call; never waits (a full queue drops and counts)."""
        self.writer.put(context, instances, results)

    def stats(self) -> dict[str, Any]:
        """written, images_written, images_pruned, dropped_by_reason, queue_depth, bytes_on_disk."""
        return self.writer.stats()

    def feedback_summary(self, model: str) -> list[dict[str, Any]]:
        """Live accuracy from feedback, per version of ``model`` (records.feedback_summary)."""
        with self.db.borrow() as conn:
            return feedback_summary(conn, model)

    def feedback(self, request_id: str, label: str | None = None, class_id: int | None = None,
                 instance: int | None = None, caller: Caller | None = None) -> dict[str, Any]:
        """Record the true label of every record of ``request_id`` (or of one ``instance``);
        see :func:`~service.inputlog.feedback.give_feedback`."""
        return give_feedback(self.writer, self.labels_for, request_id, label, class_id,
                             instance, caller)
