"""Hot reload in the registry: swap after load+warm+gate, keep serving on rejection, pin, poll."""
from __future__ import annotations

import logging
import threading
import time
import uuid

import numpy as np
import pytest

from model_versions import NAME, build_version, publish_local
from support import wait_for
from service.errors import NotFound, ReloadFailed, Unavailable
from service.config import ModelConfig, PoolSettings
from service.models.registry import ModelRegistry, ModelState
from service.models.store import S3Store
from service.models.publish import S3Location, publish

IMAGES = np.zeros((1, 28, 28), np.float32)
CONFIG = ModelConfig(NAME, min_accuracy=0.99, pool=PoolSettings(max_batch_size=8))


@pytest.fixture
def graphs(tmp_path):
    build_version(tmp_path / "graphs", 1)
    return tmp_path / "graphs"


@pytest.fixture
def registry(graphs):
    registry = ModelRegistry([CONFIG], graphs)
    registry.start()
    yield registry
    registry.stop()


def test_reload_swaps_and_retires_the_old_version_after_its_leases(registry, graphs):
    publish_local(graphs, 2)
    with registry.lease([NAME]) as (old,):  # a request in flight on version 1
        status = registry.reload(NAME)
        assert (status.version, status.previous_version, status.policy) == (2, 1, "latest")
        assert registry.get(NAME).version == 2
        time.sleep(0.5)  # the retiring thread waits for our lease: still serving
        probs, _ = old.predict(IMAGES)
        assert probs.shape == (1, 10)
    wait_for(lambda: not old.pool._workers)  # drained: the old pool stops
    with pytest.raises(Unavailable):
        old.predict(IMAGES)
    assert registry.get(NAME).predict(IMAGES)[0].shape == (1, 10)


@pytest.mark.parametrize("kind, reason", [
    ("corrupt_pb", "bad graph"),
    ("checksum", r"sha256 .* does not match"),
    ("qa_gate", "refused by the QA gate"),
])
def test_a_rejected_version_leaves_the_old_one_serving(registry, graphs, kind, reason):
    publish_local(graphs, 2, kind)
    with pytest.raises(ReloadFailed, match=reason) as info:
        registry.reload(NAME)
    assert "version 1 keeps serving" in info.value.message and info.value.status == 409
    status = registry.status(NAME)
    assert status.state is ModelState.AVAILABLE and status.version == 1
    assert status.last_failure.version == 2
    assert status.last_failure.at.endswith("+00:00")
    assert registry.get(NAME).predict(IMAGES)[0].shape == (1, 10)
    assert registry.poll(NAME) is False  # polling does not retry a rejected version


def test_pin_rolls_back_and_stops_following_the_newest(registry, graphs):
    publish_local(graphs, 2)
    assert registry.reload(NAME).version == 2
    status = registry.reload(NAME, 1)
    assert (status.version, status.previous_version, status.policy, status.pinned) == (1, 2, "pinned", 1)
    publish_local(graphs, 3)
    assert registry.poll(NAME) is False and registry.get(NAME).version == 1
    with pytest.raises(ReloadFailed, match="pinned version 7 is not in"):
        registry.reload(NAME, 7)
    assert registry.status(NAME).pinned == 1  # a failed pin changes nothing
    status = registry.reload(NAME)  # back to following the newest
    assert (status.version, status.policy, status.pinned) == (3, "latest", None)
    assert registry.versions(NAME) == [1, 2, 3]
    with pytest.raises(NotFound):
        registry.reload("nope")


def test_concurrent_reloads_of_one_model_load_it_once(registry, graphs, caplog):
    publish_local(graphs, 2)
    caplog.set_level(logging.INFO, "service.models")
    results, threads = [], [threading.Thread(target=lambda: results.append(registry.reload(NAME)))
                            for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [s.version for s in results] == [2, 2, 2]
    loads = [r for r in caplog.records if "version 2 loaded" in r.getMessage()]
    assert len(loads) == 1
    assert any("swapped version 1 -> 2" in r.getMessage() for r in caplog.records)


def test_the_poller_swaps_in_a_new_version(graphs):
    registry = ModelRegistry([CONFIG], graphs, poll_interval_s=0.2)
    registry.start()
    try:
        assert registry.get(NAME).version == 1
        publish_local(graphs, 2)
        wait_for(lambda: registry.get(NAME).version == 2)
        publish_local(graphs, 3, "qa_gate")
        wait_for(lambda: registry.status(NAME).last_failure is not None)
        assert registry.status(NAME).last_failure.version == 3
        assert registry.get(NAME).version == 2
    finally:
        registry.stop()
    assert registry.statuses()[0].state is ModelState.LOADING


def test_a_model_with_no_versions_yet_loads_when_one_appears(tmp_path):
    graphs = tmp_path / "graphs"
    registry = ModelRegistry([CONFIG], graphs, poll_interval_s=0.2)
    registry.start()
    try:
        assert registry.status(NAME).state is ModelState.FAILED
        (graphs / NAME).mkdir(parents=True)
        publish_local(graphs, 1)
        wait_for(lambda: registry.status(NAME).state is ModelState.AVAILABLE)
        assert registry.get(NAME).version == 1
    finally:
        registry.stop()


def test_registry_loads_and_reloads_from_s3(s3_server, tmp_path):
    client = s3_server.client()
    bucket = f"models-{uuid.uuid4().hex[:8]}"
    client.create_bucket(Bucket=bucket)
    where = S3Location(bucket, "prod/")
    for version in (1, 2):
        directory = build_version(tmp_path / f"b{version}", version)
        publish(client, directory, NAME, version, where, say=lambda line: None)
    registry = ModelRegistry([CONFIG], S3Store(client, bucket, "prod", tmp_path / "cache"))
    registry.start()
    try:
        assert registry.get(NAME).version == 2
        assert registry.reload(NAME, 1).version == 1
        assert sorted(p.name for p in (tmp_path / "cache" / NAME).iterdir()) == ["1", "2"]
    finally:
        registry.stop()


def test_start_falls_back_past_a_rejected_newest_version(graphs):
    publish_local(graphs, 2, "checksum")
    registry = ModelRegistry([CONFIG], graphs)
    registry.start()
    try:
        status = registry.status(NAME)
        assert (status.state, status.version) == (ModelState.AVAILABLE, 1)
        assert status.last_failure.version == 2 and "does not match" in status.last_failure.reason
        assert registry.poll(NAME) is False
    finally:
        registry.stop()
