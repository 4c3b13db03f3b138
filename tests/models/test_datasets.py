"""Tests for the IDX dataset loader and writer."""
from __future__ import annotations

import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pytest

from service.errors import DatasetError
from service.models import datasets
from service.models.datasets import (
    IMAGES_MAGIC,
    LABELS_MAGIC,
    idx_names,
    load_mnist,
    read_idx,
    update_checksums,
    write_idx,
)

IMAGES_GZ, LABELS_GZ = idx_names("t10k")


# --- the committed MNIST data ----------------------------------------------------------


def test_shapes_and_dtypes():
    for split, n in (("test", 10_000), ("train", 60_000)):
        images, labels = load_mnist(split)
        assert images.shape == (n, 28, 28) and images.dtype == np.uint8
        assert labels.shape == (n,) and labels.dtype == np.uint8


def test_readme_facts():
    _, test_labels = load_mnist("test")
    assert test_labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert test_labels[42] == 4
    _, train_labels = load_mnist("train")
    counts = np.bincount(train_labels, minlength=10).tolist()
    assert counts == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_decompressed_content_matches_readme_digest():
    # Rebuilding the IDX bytes from the arrays proves nothing was dropped or reordered.
    images, labels = load_mnist("test")
    images_idx = struct.pack(">4i", IMAGES_MAGIC, *images.shape) + images.tobytes()
    labels_idx = struct.pack(">2i", LABELS_MAGIC, *labels.shape) + labels.tobytes()
    assert hashlib.sha256(images_idx).hexdigest() == "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
    assert hashlib.sha256(labels_idx).hexdigest() == "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"


def test_cached_and_read_only():
    first = load_mnist("test")
    second = load_mnist("test", str(datasets.DEFAULT_DIR))
    assert first[0] is second[0] and first[1] is second[1]
    with pytest.raises(ValueError):
        first[0][0, 0, 0] = 1


def test_unknown_split():
    with pytest.raises(DatasetError, match="validation"):
        load_mnist("validation")


# --- small synthetic datasets ----------------------------------------------------------


@pytest.fixture
def small_dir(tmp_path: Path) -> Path:
    """A valid 5-image "test" split with a matching SHA256SUMS."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    labels = np.arange(5, dtype=np.uint8)
    write_idx(images, labels, tmp_path, "t10k")
    return tmp_path


def _replace(path: Path, raw_idx: bytes) -> None:
    """Overwrite ``path`` with gzipped ``raw_idx`` and keep SHA256SUMS consistent."""
    path.write_bytes(gzip.compress(raw_idx, mtime=0))
    update_checksums(path.parent, [path.name])


def _error(data_dir: Path) -> str:
    with pytest.raises(DatasetError) as info:
        load_mnist("test", data_dir)
    assert info.value.code == "dataset_error"
    return info.value.message


def test_write_idx_round_trip(small_dir: Path):
    images, labels = load_mnist("test", small_dir)
    assert images.shape == (5, 28, 28) and labels.tolist() == [0, 1, 2, 3, 4]
    assert (small_dir / "SHA256SUMS").read_text().count("\n") == 2


def test_write_idx_uncompressed(tmp_path: Path):
    images = np.zeros((2, 3, 4), dtype=np.uint8)
    images[1] = 255
    img_path, lbl_path = write_idx(images, np.array([3, 9], dtype=np.uint8), tmp_path, "fb", compressed=False)
    assert img_path.name == "fb-images-idx3-ubyte"
    sums = datasets.read_checksums(tmp_path)
    assert np.array_equal(read_idx(img_path, IMAGES_MAGIC, sums), images)
    assert read_idx(lbl_path, LABELS_MAGIC, sums).tolist() == [3, 9]


def test_write_idx_rejects_bad_arrays(tmp_path: Path):
    with pytest.raises(DatasetError):
        write_idx(np.zeros((2, 28, 28), dtype=np.float32), np.zeros(2, np.uint8), tmp_path, "x")
    with pytest.raises(DatasetError):
        write_idx(np.zeros((2, 28, 28), dtype=np.uint8), np.zeros(3, np.uint8), tmp_path, "x")


def test_checksum_mismatch(small_dir: Path):
    path = small_dir / IMAGES_GZ
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    message = _error(small_dir)
    assert IMAGES_GZ in message and "Checksum mismatch" in message


def test_truncated_gzip(small_dir: Path):
    path = small_dir / IMAGES_GZ
    path.write_bytes(path.read_bytes()[:-40])
    update_checksums(small_dir, [IMAGES_GZ])  # so the gzip check, not the checksum, fails
    message = _error(small_dir)
    assert IMAGES_GZ in message and "gzip" in message


def test_wrong_magic(small_dir: Path):
    path = small_dir / LABELS_GZ
    raw = gzip.decompress(path.read_bytes())
    _replace(path, struct.pack(">i", 2051) + raw[4:])
    message = _error(small_dir)
    assert LABELS_GZ in message and "magic" in message


def test_truncated_payload(small_dir: Path):
    path = small_dir / IMAGES_GZ
    _replace(path, gzip.decompress(path.read_bytes())[:-100])
    message = _error(small_dir)
    assert IMAGES_GZ in message and "truncated" in message


def test_trailing_data(small_dir: Path):
    path = small_dir / LABELS_GZ
    _replace(path, gzip.decompress(path.read_bytes()) + b"\0")
    message = _error(small_dir)
    assert LABELS_GZ in message and "trailing" in message


def test_missing_file(small_dir: Path):
    (small_dir / LABELS_GZ).unlink()
    message = _error(small_dir)
    assert LABELS_GZ in message and "missing" in message


def test_missing_checksum_entry(small_dir: Path):
    sums = small_dir / "SHA256SUMS"
    sums.write_text("".join(line + "\n" for line in sums.read_text().splitlines() if IMAGES_GZ not in line))
    message = _error(small_dir)
    assert IMAGES_GZ in message and "no entry" in message


def test_missing_checksum_file(small_dir: Path):
    (small_dir / "SHA256SUMS").unlink()
    assert "SHA256SUMS" in _error(small_dir)


def test_count_mismatch(small_dir: Path):
    write_idx(np.zeros((3, 28, 28), np.uint8), np.zeros(3, np.uint8), small_dir, "other")
    (small_dir / "other-labels-idx1-ubyte.gz").replace(small_dir / LABELS_GZ)
    update_checksums(small_dir, [LABELS_GZ])
    message = _error(small_dir)
    assert IMAGES_GZ in message and LABELS_GZ in message


def test_label_out_of_range(tmp_path: Path):
    write_idx(np.zeros((2, 28, 28), np.uint8), np.array([1, 12], np.uint8), tmp_path, "t10k")
    assert LABELS_GZ in _error(tmp_path)
