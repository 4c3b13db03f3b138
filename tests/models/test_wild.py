"""The wild set (wild.py), training augmentation (augment.py) and `evaluate --wild`."""
from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from service.models import augment, datasets, wild
from support import REPO


@pytest.fixture(scope="module")
def mnist():
    return datasets.load_mnist("test")


def test_the_wild_set_is_the_same_for_a_seed_and_labelled_from_mnist(mnist):
    images, labels = mnist
    first = list(wild.wild_set(images, labels, per_category=3))
    again = list(wild.wild_set(images, labels, per_category=3))
    other = list(wild.wild_set(images, labels, per_category=3, seed=7))
    assert [s.data for s in first] == [s.data for s in again]
    assert [s.data for s in first] != [s.data for s in other]
    assert [s.category for s in first] == [c for c in wild.CATEGORIES for _ in range(3)]
    assert all(s.label == labels[s.index] for s in first)


def test_each_category_is_sent_as_people_send_it(mnist):
    images, labels = mnist
    seen = {}
    for sample in wild.wild_set(images, labels, per_category=2):
        with Image.open(io.BytesIO(sample.data)) as img:
            seen.setdefault(sample.category, []).append((img.format, img.mode, img.size))
    assert {fmt for fmt, _, _ in seen["photo"]} == {"JPEG"}
    assert all(mode == "RGBA" for _, mode, _ in seen["canvas"])  # exported with transparency
    assert all(max(size) <= 28 for _, _, size in seen["tiny"])
    assert all(min(size) >= 225 for _, _, size in seen["photo_shadow"])


def test_augmentation_is_seeded_and_changes_most_digits(mnist):
    images = mnist[0][:400]
    a = augment.augment(images, np.random.default_rng(5))
    b = augment.augment(images, np.random.default_rng(5))
    assert np.array_equal(a, b) and a.dtype == np.uint8 and a.shape == images.shape
    changed = np.mean([not np.array_equal(x, y) for x, y in zip(images, a)])
    assert 0.6 < changed < 1.0  # DEFAULT.keep of them stay as they were
    ink_kept = a.reshape(400, -1).sum(1) / images.reshape(400, -1).sum(1)
    assert ink_kept.min() > 0.4  # no digit thinned or shifted away


def test_evaluate_wild_reports_every_category_and_writes_its_pictures(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "service", "evaluate", "--model", "digits-cnn", "--wild",
         "--per-category", "4", "--out", str(tmp_path)], cwd=REPO, capture_output=True,
        text=True, timeout=300, env={"TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    for name in (*wild.CATEGORIES, "sklearn_digits", "overall (wild)"):
        assert name in result.stdout
    figures = json.loads((tmp_path / "wild.json").read_text())
    assert set(figures["accuracy"]) == {*wild.CATEGORIES, "sklearn_digits"}
    assert figures["images"]["photo"] == 4 and figures["images"]["sklearn_digits"] == 1797
    assert figures["accuracy"]["sklearn_digits"] > 0.5  # another population, still digits
    for png in ("worst.png", "confusion-photo.png", "confusion-sklearn_digits.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
