"""Read and write MNIST-style IDX datasets, verified against a ``SHA256SUMS`` file.

A dataset directory holds ``<prefix>-images-idx3-ubyte.gz``, ``<prefix>-labels-idx1-ubyte.gz``
and a ``SHA256SUMS`` (``sha256sum`` format) covering them. Every problem with those files
is reported as one :class:`DatasetError` naming the file.
"""
from __future__ import annotations

import functools
import gzip
import hashlib
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from service.errors import DatasetError

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "data" / "mnist"
CHECKSUMS_NAME = "SHA256SUMS"
# Split name -> file prefix; MNIST calls its test split "t10k".
SPLITS = {"train": "train", "test": "t10k"}
IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
NUM_CLASSES = 10


def idx_names(prefix: str, compressed: bool = True) -> tuple[str, str]:
    """File names of the (images, labels) pair for ``prefix``."""
    suffix = ".gz" if compressed else ""
    return f"{prefix}-images-idx3-ubyte{suffix}", f"{prefix}-labels-idx1-ubyte{suffix}"


def load_mnist(split: str = "test", data_dir: Path | str = DEFAULT_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Return read-only ``(images uint8 (N, 28, 28), labels uint8 (N,))`` for ``split``.

    Results are cached per (directory, split); copy the arrays before modifying them.
    """
    if split not in SPLITS:
        raise DatasetError(f"Unknown dataset split {split!r}; expected one of {sorted(SPLITS)}.")
    return _load_split(Path(data_dir).resolve(), split)


def clear_cache() -> None:
    """Forget every dataset loaded so far (e.g. after the files were replaced)."""
    _load_split.cache_clear()


# Small maxsize: the train split alone is ~47 MB, and only a handful of directories are used.
@functools.lru_cache(maxsize=4)
def _load_split(data_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    return _load_pair(data_dir, SPLITS[split])


def load_idx_dir(data_dir: Path | str, prefix: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The verified ``(images, labels)`` pair named ``prefix`` in ``data_dir`` (e.g. an input
    log export); without ``prefix``, the directory must hold exactly one pair."""
    data_dir = Path(data_dir)
    if prefix is None:
        suffix = idx_names("")[0]  # "-images-idx3-ubyte.gz"
        found = sorted(p.name[: -len(suffix)] for p in data_dir.glob(f"*{suffix}"))
        if len(found) != 1:
            raise DatasetError(f"{data_dir} must hold exactly one *{suffix} file to pick a "
                               f"dataset, found {len(found)}: {found}.")
        prefix = found[0]
    return _load_pair(data_dir, prefix)


def _load_pair(data_dir: Path, prefix: str) -> tuple[np.ndarray, np.ndarray]:
    images_path, labels_path = (data_dir / name for name in idx_names(prefix))
    sums = read_checksums(data_dir)
    images = read_idx(images_path, IMAGES_MAGIC, sums)
    labels = read_idx(labels_path, LABELS_MAGIC, sums)
    if len(images) != len(labels):
        raise DatasetError(
            f"{images_path.name} holds {len(images)} images but {labels_path.name} "
            f"holds {len(labels)} labels (in {data_dir})."
        )
    if labels.size and labels.max() >= NUM_CLASSES:
        raise DatasetError(f"{labels_path} holds label {labels.max()}; labels must be 0-{NUM_CLASSES - 1}.")
    return images, labels


def read_checksums(data_dir: Path | str) -> dict[str, str]:
    """Parse ``data_dir/SHA256SUMS`` into ``{file name: hex digest}``."""
    path = Path(data_dir) / CHECKSUMS_NAME
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DatasetError(f"Checksum file {path} is missing.") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"Cannot read checksum file {path}: {exc}.") from exc
    sums = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        digest, sep, name = line.partition(" ")
        # sha256sum writes "<digest>  <name>" (text mode) or "<digest> *<name>" (binary mode).
        name = name[1:] if name[:1] in (" ", "*") else name
        if not sep or len(digest) != 64 or not name:
            raise DatasetError(f"{path} line {lineno} is not '<sha256>  <file name>': {line!r}.")
        sums[name] = digest.lower()
    return sums


def read_idx(path: Path | str, magic: int, checksums: dict[str, str] | None = None) -> np.ndarray:
    """Parse one IDX file (gzip if its name ends in ``.gz``) into a read-only uint8 array.

    With ``checksums``, the file's sha256 must match its entry before anything is parsed.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DatasetError(f"Dataset file {path} is missing.") from None
    except OSError as exc:
        raise DatasetError(f"Cannot read dataset file {path}: {exc}.") from exc

    if checksums is not None:
        expected = checksums.get(path.name)
        if expected is None:
            raise DatasetError(f"{CHECKSUMS_NAME} next to {path} has no entry for {path.name}.")
        actual = hashlib.sha256(raw).hexdigest()
        if actual != expected:
            raise DatasetError(
                f"Checksum mismatch for {path}: sha256 is {actual}, {CHECKSUMS_NAME} says {expected}; "
                "the file is corrupt or was modified."
            )

    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise DatasetError(f"{path} is not a valid gzip file (corrupt or truncated): {exc}.") from exc
    return _parse_idx(raw, magic, path)


def _parse_idx(raw: bytes, magic: int, path: Path) -> np.ndarray:
    ndim = magic & 0xFF  # the low byte of an IDX magic is the number of dimensions
    header_len = 4 * (1 + ndim)
    if len(raw) < 4:
        raise DatasetError(f"{path} is too short to be an IDX file ({len(raw)} bytes).")
    (found,) = struct.unpack(">i", raw[:4])
    if found != magic:
        raise DatasetError(f"{path} has IDX magic number {found}, expected {magic}; wrong or corrupt file.")
    if len(raw) < header_len:
        raise DatasetError(f"{path} is too short for an IDX header ({len(raw)} bytes, need {header_len}).")
    shape = struct.unpack(f">{ndim}i", raw[4:header_len])
    if any(dim < 0 for dim in shape):
        raise DatasetError(f"{path} has a negative dimension in its IDX header: {shape}.")
    expected_len = int(np.prod(shape, dtype=np.int64))
    payload_len = len(raw) - header_len
    if payload_len != expected_len:
        problem = "truncated" if payload_len < expected_len else "has trailing data"
        raise DatasetError(
            f"{path} is {problem}: header shape {tuple(shape)} needs {expected_len} payload bytes, "
            f"found {payload_len}."
        )
    arr = np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(shape)
    arr.setflags(write=False)
    return arr


def write_idx(
    images: np.ndarray,
    labels: np.ndarray,
    out_dir: Path | str,
    prefix: str,
    compressed: bool = True,
) -> tuple[Path, Path]:
    """Write an images/labels IDX pair into ``out_dir`` and record it in its ``SHA256SUMS``.

    The output is byte-for-byte reproducible (gzip mtime is zeroed), so checksums are stable.
    """
    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DatasetError(f"Images must be uint8 of shape (N, rows, cols), got {images.dtype} {images.shape}.")
    if labels.dtype != np.uint8 or labels.shape != images.shape[:1]:
        raise DatasetError(f"Labels must be uint8 of shape ({len(images)},), got {labels.dtype} {labels.shape}.")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = tuple(out_dir / name for name in idx_names(prefix, compressed))
    for path, magic, arr in zip(paths, (IMAGES_MAGIC, LABELS_MAGIC), (images, labels)):
        data = struct.pack(f">{1 + arr.ndim}i", magic, *arr.shape) + np.ascontiguousarray(arr).tobytes()
        _write_atomic(path, gzip.compress(data, mtime=0) if compressed else data)
    update_checksums(out_dir, [p.name for p in paths])
    return paths


def update_checksums(data_dir: Path | str, names: list[str]) -> Path:
    """(Re)compute the sha256 of ``names`` in ``data_dir`` and merge them into its ``SHA256SUMS``."""
    data_dir = Path(data_dir)
    sums_path = data_dir / CHECKSUMS_NAME
    sums = read_checksums(data_dir) if sums_path.exists() else {}
    for name in names:
        sums[name] = hashlib.sha256((data_dir / name).read_bytes()).hexdigest()
    text = "".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items()))
    _write_atomic(sums_path, text.encode("utf-8"))
    return sums_path


def _write_atomic(path: Path, data: bytes) -> None:
    # A reader (or a crash) must never see a half-written dataset file.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
