"""`python -m service export` writes a verified IDX dataset that `train --extra-data` accepts."""
from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from inputlog_support import DIGIT2, DIGIT7, PHOTO, labels_for, record
from service.config import InputLogSettings
from service.inputlog import InputLog
from service.models import datasets
from service.models.preprocess import PreprocessSpec, preprocess
from support import REPO

def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "service", *args], cwd=REPO, timeout=timeout,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    """Three images logged; two confirmed by feedback (one of them corrected)."""
    directory = tmp_path_factory.mktemp("export") / "log"
    log = InputLog(InputLogSettings(dir=directory), labels_for=labels_for)
    log.start()
    record(log, [DIGIT7], "a", class_id=7)
    record(log, [DIGIT2], "b", class_id=3)
    record(log, [PHOTO], "c", class_id=3)
    record(log, [DIGIT7], "d", class_id=7)  # the same image again: still one sample
    log.feedback("a", label="7")
    log.feedback("b", label="2")  # the model read 3; the person says 2
    log.stop()
    return directory


def read_index(out) -> list[dict]:
    with open(out / "index.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_export_writes_labelled_images_as_the_model_saw_them(logdir, tmp_path):
    out = tmp_path / "out"
    result = cli("export", "--inputlog-dir", str(logdir), "--out", str(out), "--no-progress")
    assert "exported 2 images (2 with feedback)" in result.stdout
    images, labels = datasets.load_idx_dir(out)  # checksums verified
    assert images.shape == (2, 28, 28) and images.dtype == np.uint8
    assert labels.tolist() == [7, 2]
    expected = np.rint(preprocess(DIGIT7, PreprocessSpec()) * 255).astype(np.uint8)
    assert np.array_equal(images[0], expected)
    index = read_index(out)
    assert [(r["label"], r["label_source"], r["request_id"]) for r in index] == [
        ("7", "feedback", "a"), ("2", "feedback", "b")]
    assert (out / "SHA256SUMS").read_text().count("inputlog-") == 2


def test_unlabelled_images_only_on_request_and_marked_as_predictions(logdir, tmp_path):
    out = tmp_path / "out"
    cli("export", "--inputlog-dir", str(logdir), "--out", str(out), "--include-unlabelled",
        "--no-progress")
    index = read_index(out)
    assert [(r["label"], r["label_source"]) for r in index] == [
        ("7", "feedback"), ("2", "feedback"), ("3", "prediction")]
    later = tmp_path / "later"
    cli("export", "--inputlog-dir", str(logdir), "--out", str(later), "--since", "2999-01-01",
        "--no-progress")
    assert datasets.load_idx_dir(later)[0].shape == (0, 28, 28)


def test_train_accepts_the_export_as_extra_data(logdir, tmp_path):
    out, graphs = tmp_path / "out", tmp_path / "graphs"
    cli("export", "--inputlog-dir", str(logdir), "--out", str(out), "--no-progress")
    cli("train", "--model", "digits-cnn", "--epochs", "1", "--limit", "500", "--graphs-dir",
        str(graphs), "--extra-data", str(out), timeout=300)
    manifest = json.loads((graphs / "digits-cnn" / "1" / "manifest.json").read_text())
    assert manifest["training"]["extra_images"] == 2
    assert manifest["training"]["train_images"] == 502
