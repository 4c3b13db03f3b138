"""The thread-pinned session pool, on the shipped CNN graph with real TensorFlow."""
from __future__ import annotations

import threading
from pathlib import Path
import time

import numpy as np
import pytest
import tensorflow as tf

from service.errors import DeadlineExceeded, Overloaded, Unavailable
from service.models import datasets, store
from service.models.graph import import_graph, parse_graph_def
from service.models.manifest import read_manifest
from service.models.session_pool import PoolSettings, SessionPool

GRAPHS = Path(__file__).resolve().parents[2] / "graphs"


@pytest.fixture(scope="module")
def cnn():
    version = store.list_versions(GRAPHS, "digits-cnn")[-1]
    directory = store.version_dir(GRAPHS, "digits-cnn", version)
    return read_manifest(directory), (directory / "model.pb").read_bytes()


@pytest.fixture(scope="module")
def digits():
    images, labels = datasets.load_mnist("test")
    return (images[:512].astype(np.float32) / 255).reshape(-1, 28, 28, 1), labels[:512]


def make_pool(cnn, **settings) -> SessionPool:
    manifest, graph_bytes = cnn
    return SessionPool(graph_bytes, manifest.input.name, manifest.output_name,
                       PoolSettings(**settings), name="test").start()


def direct_run(cnn, batch: np.ndarray) -> np.ndarray:
    manifest, graph_bytes = cnn
    graph = import_graph(parse_graph_def(graph_bytes))
    with tf.compat.v1.Session(graph=graph) as session:
        return session.run(manifest.output_name, {manifest.input.name: batch})


def test_results_bit_identical_to_direct_session_run(cnn, digits):
    batch = digits[0][:64]
    pool = make_pool(cnn)
    try:
        outputs, timing = pool.run(batch, timeout=30)
    finally:
        pool.stop()
    assert np.array_equal(outputs, direct_run(cnn, batch))
    assert timing.batch_size == 64 and timing.inference > 0


def test_concurrent_submissions_are_merged_and_run_on_owner_thread(cnn, digits):
    images, labels = digits
    pool = make_pool(cnn, batch_timeout_ms=5)
    results: dict[int, np.ndarray] = {}

    def client(start: int) -> None:
        for i in range(start, 256, 16):
            results[i] = pool.run(images[i:i + 1], timeout=30)[0][0]

    threads = [threading.Thread(target=client, args=(s,)) for s in range(16)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        pool.stop()
    assert max(pool.stats.batch_sizes) > 1, pool.stats.batch_sizes
    assert sum(n * c for n, c in pool.stats.batch_sizes.items()) == 256
    # session.run only ever happened on the thread that created the session
    assert pool.stats.run_threads == pool.stats.owner_threads
    assert threading.get_ident() not in pool.stats.run_threads
    expected = direct_run(cnn, images[:256])
    merged = np.stack([results[i] for i in range(256)])
    np.testing.assert_allclose(merged, expected, atol=1e-5)  # batch size may change the last bits
    assert (merged.argmax(1) == labels[:256]).mean() > 0.98


def test_full_queue_raises_overloaded_at_once(cnn, digits):
    pool = make_pool(cnn, queue_size=1, max_batch_size=16)
    big = np.repeat(digits[0], 16, axis=0)  # ~8k images keep the worker busy for a while
    try:
        busy = pool.submit(big)
        time.sleep(0.2)  # the worker has taken `big` off the queue
        queued = pool.submit(digits[0][:1])
        started = time.monotonic()
        with pytest.raises(Overloaded) as info:
            pool.submit(digits[0][:1])
        assert time.monotonic() - started < 0.1
        assert info.value.status == 503 and info.value.headers["Retry-After"]
        assert busy.result(60)[0].shape == (len(big), 10)
        assert queued.result(60)[0].shape == (1, 10)
    finally:
        pool.stop()


def test_submission_past_its_deadline_times_out(cnn, digits):
    pool = make_pool(cnn, max_batch_size=16)
    big = np.repeat(digits[0], 8, axis=0)
    try:
        pool.submit(big)
        late = pool.submit(digits[0][:1], deadline=time.monotonic() + 0.05)
        with pytest.raises(DeadlineExceeded):
            late.result(60)
        assert pool.stats.timeouts == 1
        with pytest.raises(DeadlineExceeded):
            pool.run(np.repeat(digits[0], 8, axis=0), timeout=0.001)
    finally:
        pool.stop()


def test_stop_drains_queued_work_then_refuses(cnn, digits):
    pool = make_pool(cnn, max_batch_size=32)
    futures = [pool.submit(digits[0][i:i + 32]) for i in range(0, 512, 32)]
    pool.stop()
    assert all(f.done() and f.result()[0].shape == (32, 10) for f in futures)
    assert not any(t.is_alive() for t in threading.enumerate() if t.name.startswith("test-session"))
    with pytest.raises(Unavailable):
        pool.submit(digits[0][:1])


def test_bad_input_fails_the_submission_not_the_worker(cnn, digits):
    pool = make_pool(cnn)
    try:
        with pytest.raises(Exception):
            pool.run(np.zeros((1, 5, 5, 1), np.float32), timeout=30)
        assert pool.run(digits[0][:2], timeout=30)[0].shape == (2, 10)
    finally:
        pool.stop()


def test_settings_validate_and_split_cores():
    with pytest.raises(ValueError, match="pool_size"):
        PoolSettings(pool_size=0)
    with pytest.raises(ValueError, match="batch_timeout_ms"):
        PoolSettings(batch_timeout_ms=-1)
    assert PoolSettings(pool_size=1, intra_op_threads=3).threads_per_session() == 3
    assert PoolSettings(pool_size=64).threads_per_session() == 1


def test_a_lone_caller_never_waits_for_a_batch_to_fill(cnn, digits):
    pool = make_pool(cnn, batch_timeout_ms=300)
    try:
        for _ in range(3):
            started = time.monotonic()
            pool.run(digits[0][:1], timeout=30)
            assert time.monotonic() - started < 0.25  # a 300 ms wait would show
    finally:
        pool.stop()
