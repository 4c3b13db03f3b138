"""Training CLI smoke run, freezing, and the shipped versions through `evaluate`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from service.models import graph, store
from service.models.architectures import ARCHITECTURES
from service.models.training import check_frozen_matches_keras

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service", *args], cwd=REPO, text=True,
                          capture_output=True, timeout=timeout,
                          env={"TF_CPP_MIN_LOG_LEVEL": "2", "PATH": "/usr/bin:/bin"})


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_frozen_graph_computes_what_keras_computes(name):
    arch = ARCHITECTURES[name]
    model = arch.build()  # untrained weights are as good as any for an equality check
    frozen = graph.freeze_keras_model(model, arch.input_shape)
    sample = np.random.default_rng(0).random((8, *arch.input_shape), dtype=np.float32)
    check_frozen_matches_keras(model, frozen, sample)
    parsed = graph.parse_graph_def(frozen.graph_def_bytes)
    ops = {node.op for node in parsed.node}
    assert "VarHandleOp" not in ops and "ReadVariableOp" not in ops  # really frozen
    assert not ops & {"While", "StatelessWhile"}  # the LSTM is unrolled
    names = {node.name for node in parsed.node}
    assert {"image", "probabilities"} <= names  # stable tensor names


def test_train_smoke_exports_a_version_that_loads_and_predicts(tmp_path):
    result = run_cli("train", "--model", "digits-cnn", "--epochs", "1", "--limit", "2000",
                     "--graphs-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "exported digits-cnn version 1" in result.stdout
    assert "test accuracy:" in result.stdout
    assert "accuracy:" in result.stderr + result.stdout  # Keras per-epoch progress
    version_dir = tmp_path / "digits-cnn" / "1"
    manifest = json.loads((version_dir / "manifest.json").read_text())
    # one augmented epoch on 2,000 digits (seeded): far above chance (0.1), not yet good
    assert manifest["training"]["train_images"] == 2000 and manifest["accuracy"] > 0.5
    assert manifest["training"]["augmentation"]["rotate_deg"] > 0
    assert (version_dir / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    frozen = graph.FrozenGraph((version_dir / "model.pb").read_bytes(), "image:0",
                               "probabilities:0")
    probs = graph.run_frozen(frozen, np.zeros((3, 28, 28, 1), np.float32))
    assert probs.shape == (3, 10) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    # the next run gets the next version number
    assert store.next_version(tmp_path, "digits-cnn") == 2


def test_train_rejects_an_unknown_model():
    result = run_cli("train", "--model", "digits-gan")
    assert result.returncode == 2 and "unknown model 'digits-gan'" in result.stderr


@pytest.mark.parametrize("name, floor", [("digits-cnn", 0.995), ("digits-rnn", 0.99)])
def test_shipped_versions_meet_their_floor_through_evaluate(name, floor):
    result = run_cli("evaluate", "--model", name)
    assert result.returncode == 0, result.stderr
    line = next(l for l in result.stdout.splitlines() if l.startswith("accuracy:"))
    accuracy = float(line.split()[1].rstrip("%")) / 100
    assert accuracy >= floor, result.stdout
    assert "confusion matrix" in result.stdout and "warning" not in result.stdout


def test_evaluate_refuses_a_version_below_the_configured_floor(tmp_path):
    conf = tmp_path / "strict.conf"
    conf.write_text("[model:digits-cnn]\nmin_accuracy = 0.9999\n")
    result = run_cli("evaluate", "--model", "digits-cnn", "--config", str(conf))
    assert result.returncode == 2
    assert "refused by the QA gate" in result.stderr and "99.99%" in result.stderr
