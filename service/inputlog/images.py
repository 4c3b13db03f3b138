"""The input log's images: each stored once, content-addressed, in a local directory or S3.

An image's key is the sha256 of its original bytes, so a repeated image costs no write. The
oldest images are pruned beyond ``max_disk_bytes``; their records stay.
"""
from __future__ import annotations

import hashlib
import io
import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..blobstore import BlobStore, BlobStoreError, LocalBlobStore, S3BlobStore, make_s3_client
from ..config import InputLogSettings, S3Settings
from .records import (Connection, ImageRow, known_image, mark_pruned, oldest_stored,
                      utc_now)

log = logging.getLogger("service.inputlog")

EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "GIF": "gif", "BMP": "bmp", "TIFF": "tiff",
              "WEBP": "webp", "MPO": "jpg"}
STORED_CACHE = 50_000      # image rows remembered (about 10 MB)


@dataclass(frozen=True)
class StoredImage:
    row: ImageRow
    new: bool  # True when this batch (re)stored the bytes


def image_key(sha256: str, fmt: str | None) -> str:
    return f"images/{sha256[:2]}/{sha256}.{EXTENSIONS.get(fmt or '', 'bin')}"


def sniff(data: bytes) -> tuple[str | None, int | None, int | None]:
    """(format, width, height) from the header; (None, None, None) if Pillow cannot tell."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.format, img.width, img.height
    except Exception:  # the image was decoded for the prediction; this is only metadata
        return None, None, None


def make_store(settings: InputLogSettings, s3: S3Settings) -> BlobStore:
    if settings.backend == "s3":
        # Few quick retries: the writer thread must not stall for minutes on a dead endpoint.
        client = make_s3_client(s3, retries={"max_attempts": 2, "mode": "standard"},
                                connect_timeout=3, read_timeout=10)
        return S3BlobStore(client, settings.bucket or "", settings.prefix)
    return LocalBlobStore(settings.dir)


class Images:
    """Stores and prunes the images of the writer thread (and only of it: no lock)."""

    def __init__(self, settings: InputLogSettings, store: BlobStore):
        self.settings = settings
        self.store = store
        # What the database already holds, so a busy server's repeated images cost no query
        # (most recent last).
        self._stored: OrderedDict[str, ImageRow] = OrderedDict()

    def remove_stale_temp_files(self) -> None:
        if isinstance(self.store, LocalBlobStore):
            removed = self.store.remove_stale_temp_files()
            if removed:
                log.warning("removed %d temp file(s) left by an interrupted write", removed)

    def describe(self) -> str:
        """Where the images go, for the start-up log line."""
        if self.settings.metadata_only:
            return "not kept (metadata_only)"
        if isinstance(self.store, S3BlobStore):
            return f"s3://{self.store.bucket}/{self.store.prefix}"
        return str(Path(self.settings.dir) / "images")

    def store_image(self, conn: Connection, seen: dict[str, StoredImage],
                    data: bytes) -> StoredImage:
        """The image row of ``data``, storing the bytes unless the database has them already.

        ``seen`` holds this batch's images; a new row is only remembered once committed
        (:meth:`remember`).
        """
        sha = hashlib.sha256(data).hexdigest()
        if sha in seen:
            return StoredImage(seen[sha].row, seen[sha].new)
        cached = self._stored.get(sha)
        if cached is not None:
            self._stored.move_to_end(sha)
            return StoredImage(cached, False)
        known = known_image(conn, sha)
        if known is not None and (known["stored"] or self.settings.metadata_only):
            row = ImageRow(*(known[k] for k in ImageRow._fields))
            self.remember(row)
            return StoredImage(row, False)
        fmt, width, height = sniff(data)
        now = utc_now()
        key = image_key(sha, fmt)
        stored = 0
        if not self.settings.metadata_only:
            self.store.put_if_absent(key, data)
            stored = 1
        first_seen = known["first_seen"] if known is not None else now
        row = ImageRow(sha, key, fmt, width, height, len(data), first_seen, stored,
                       now if stored else None)
        return StoredImage(row, True)

    def remember(self, row: ImageRow) -> None:
        self._stored[row.sha256] = row
        if len(self._stored) > STORED_CACHE:
            self._stored.popitem(last=False)

    def forget(self) -> None:
        """After a database error: what the database holds is no longer known."""
        self._stored.clear()

    def prune_oldest(self, conn: Connection, excess: int) -> list[Any]:
        """Delete the oldest stored images, at least ``excess`` bytes; the rows pruned."""
        victims = []
        for row in oldest_stored(conn):
            victims.append(row)
            excess -= row["bytes"]
            if excess <= 0:
                break
        if not victims:
            return victims
        # Marked first: a crash before the delete leaves an orphan file, never a record
        # that points at bytes that are gone.
        mark_pruned(conn, [v["sha256"] for v in victims])
        for victim in victims:
            self._stored.pop(victim["sha256"], None)
        for victim in victims:
            try:
                self.store.delete(victim["key"])
            except BlobStoreError as exc:
                log.warning("pruned image %s not deleted: %s", victim["sha256"], exc)
        return victims
