"""Loading versions: checksum, manifest validation, QA gate, FAILED models beside good ones."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.errors import ModelLoadError, NotFound, Unavailable
from service.models import store
from service.models.manifest import Manifest, read_manifest
from service.config import ModelConfig, PoolSettings
from service.models.loader import load_version
from service.models.registry import ModelRegistry, ModelState

REPO = Path(__file__).resolve().parents[2]
GRAPHS = REPO / "graphs"


def newest(name: str) -> Path:
    return store.version_dir(GRAPHS, name, store.list_versions(GRAPHS, name)[-1])


@pytest.fixture
def graphs(tmp_path) -> Path:
    """A private copy of the newest shipped CNN version, free to damage."""
    target = tmp_path / "graphs" / "digits-cnn" / "1"
    shutil.copytree(newest("digits-cnn"), target)
    manifest = json.loads((target / "manifest.json").read_text())
    manifest["version"] = 1
    (target / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path / "graphs"


def test_loads_verifies_warms_and_lists_layers(graphs):
    model = load_version(graphs, ModelConfig("digits-cnn", min_accuracy=0.99))
    try:
        assert model.version == 1 and model.labels == [str(i) for i in range(10)]
        ops = {layer["op"] for layer in model.layers}
        assert {"Conv2D", "MaxPool", "MatMul", "Softmax"} <= ops
        assert any(layer["shape"] == [None, 10] for layer in model.layers)
        probs, _ = model.predict(np.zeros((2, 28, 28), np.float32))  # reshaped to the input
        assert probs.shape == (2, 10) and np.allclose(probs.sum(1), 1, atol=1e-5)
        assert model.pool.stats.batch_sizes[1] == 1  # the warm-up batch
    finally:
        model.close()


def test_checksum_mismatch_is_refused_naming_the_file(graphs):
    pb = graphs / "digits-cnn" / "1" / "model.pb"
    data = bytearray(pb.read_bytes())
    data[len(data) // 2] ^= 0xFF
    pb.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match=r"model\.pb: sha256 .* does not match"):
        load_version(graphs, ModelConfig("digits-cnn"))


def test_garbage_graph_with_matching_checksum_is_refused(graphs):
    directory = graphs / "digits-cnn" / "1"
    (directory / "model.pb").write_bytes(b"\x00not a graph\xff" * 10)
    manifest = json.loads((directory / "manifest.json").read_text())
    import hashlib
    manifest["sha256"] = hashlib.sha256((directory / "model.pb").read_bytes()).hexdigest()
    (directory / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="bad graph"):
        load_version(graphs, ModelConfig("digits-cnn"))


def test_quality_gate_names_version_and_both_numbers(graphs):
    accuracy = read_manifest(graphs / "digits-cnn" / "1").accuracy
    with pytest.raises(ModelLoadError) as info:
        load_version(graphs, ModelConfig("digits-cnn", min_accuracy=0.9999))
    message = info.value.message
    assert "version 1" in message and f"{accuracy:.2%}" in message and "99.99%" in message
    assert info.value.code == "quality_gate"


@pytest.mark.parametrize("edit, match", [
    (lambda m: m.pop("sha256"), "'sha256' is missing"),
    (lambda m: m.update(version="one"), "'version' has the wrong type"),
    (lambda m: m.update(accuracy=1.5), "'accuracy' must be within"),
    (lambda m: m.update(outputs={}), "no 'probabilities'"),
    (lambda m: m.update(preprocess={"kind": "sepia"}), "kind"),
])
def test_manifest_validation_names_the_field(graphs, edit, match):
    path = graphs / "digits-cnn" / "1" / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match=match):
        load_version(graphs, ModelConfig("digits-cnn"))


def test_manifest_round_trips(graphs):
    manifest = read_manifest(graphs / "digits-cnn" / "1")
    assert Manifest.from_dict(json.loads(json.dumps(manifest.to_dict()))) == manifest


def test_pinned_and_newest_versions(graphs):
    shutil.copytree(graphs / "digits-cnn" / "1", graphs / "digits-cnn" / "3")
    with pytest.raises(ModelLoadError, match="pinned version 2"):
        load_version(graphs, ModelConfig("digits-cnn", version=2))
    with pytest.raises(ModelLoadError, match="no versions"):
        load_version(graphs, ModelConfig("digits-none"))


def test_registry_keeps_serving_good_models_beside_a_failed_one(graphs):
    registry = ModelRegistry([ModelConfig("digits-cnn", pool=PoolSettings(max_batch_size=8)),
                              ModelConfig("digits-missing")], graphs)
    registry.start()
    try:
        states = {s.name: s for s in registry.statuses()}
        assert states["digits-cnn"].state is ModelState.AVAILABLE
        assert states["digits-missing"].state is ModelState.FAILED
        assert "no versions" in states["digits-missing"].error
        assert not registry.ready()
        assert registry.get("digits-cnn").version == 1
        with pytest.raises(Unavailable):
            registry.get("digits-missing")
        with pytest.raises(NotFound):
            registry.get("nope")
    finally:
        registry.stop()
