"""The thread-pinned session pool, on the shipped CNN graph with real TensorFlow."""
from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from service.config import PoolSettings
from service.errors import DeadlineExceeded, Overloaded, Unavailable
from service.models import datasets, store
from service.models.graph import import_graph, parse_graph_def
from service.models.manifest import read_manifest
from service.models.session_pool import SessionPool
from support import wait_for

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
    images = digits[0]
    pool = make_pool(cnn, queue_size=1)
    release = threading.Event()
    try:
        wedge(pool._workers[0], release)  # busy until released, however fast the machine
        busy = pool.submit(images[:4])
        wait_for(lambda: pool.busy == 1)  # the worker has taken `busy` off the queue
        queued = pool.submit(images[:1])  # the queue's one place
        waits = []  # a submit waiting for a place would wait on the queue's not_full condition
        not_full = pool._queue.not_full
        real_wait = not_full.wait
        not_full.wait = lambda timeout=None: waits.append(timeout) or real_wait(timeout)
        with pytest.raises(Overloaded) as info:
            pool.submit(images[:1])
        assert waits == []  # refused without waiting for a place, not even briefly
        assert not busy.done() and not queued.done() and pool.queue_depth == 1  # still stuck
        assert info.value.status == 503 and info.value.headers["Retry-After"]
        release.set()
        assert busy.result(60)[0].shape == (4, 10)
        assert queued.result(60)[0].shape == (1, 10)
    finally:
        release.set()
        pool.stop()


def test_submission_past_its_deadline_times_out(cnn, digits):
    images = digits[0]
    pool = make_pool(cnn)
    worker = pool._workers[0]
    release, again = threading.Event(), threading.Event()
    try:
        wedge(worker, release)  # the worker is busy until its deadline has passed
        first = pool.submit(images[:1])
        wait_for(lambda: pool.busy == 1)
        deadline = time.monotonic() + 0.05
        late = pool.submit(images[:1], deadline=deadline)
        wait_for(lambda: time.monotonic() > deadline)
        release.set()
        with pytest.raises(DeadlineExceeded):
            late.result(60)
        assert pool.stats.timeouts == 1
        assert first.result(60)[0].shape == (1, 10)
        wedge(worker, again)  # no answer can come within the caller's timeout
        with pytest.raises(DeadlineExceeded):
            pool.run(images[:8], timeout=0.001)
    finally:
        release.set()
        again.set()
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
    with pytest.raises(ValueError, match="worker_timeout_s"):
        PoolSettings(worker_timeout_s=0)
    assert PoolSettings().check_interval() == 1.0
    assert PoolSettings(worker_timeout_s=0.5).check_interval() == 0.125
    assert PoolSettings(pool_size=1, intra_op_threads=3).threads_per_session() == 3
    assert PoolSettings(pool_size=64).threads_per_session() == 1


def test_a_lone_caller_never_waits_for_a_batch_to_fill(cnn, digits):
    pool = make_pool(cnn, batch_timeout_ms=60_000)
    try:
        for _ in range(3):
            started = time.monotonic()
            pool.run(digits[0][:1], timeout=30)
            # Waiting for the batch to fill would take the whole minute: only that exceeds 20 s.
            assert time.monotonic() - started < 20
    finally:
        pool.stop()


# -- supervision: crashed and wedged workers -------------------------------------------------
# Faults are injected by swapping a worker's ``_Session.run`` (the only mock): a session.run
# that never returns or raises a BaseException cannot be produced with a real graph.
# Every fault lasts until the test ends it, so no check here depends on the machine's speed:
# - worker_timeout_s is RELAXED except while a test waits for a run it wedged to be seen
#   (detect_wedges): no real run, not even a fresh session's slow first one, is ever taken
#   for a wedge however loaded the machine;
# - the supervisor is waited for up to SEEN_WITHIN, a ceiling only one that never acts misses;
# - lower bounds ("not before worker_timeout_s") are measured from before the run started.
TIMEOUT = 1.0      # worker_timeout_s while a test waits for a wedge to be seen
RELAXED = 600.0    # worker_timeout_s at all other times
INTERVAL = PoolSettings(worker_timeout_s=TIMEOUT).check_interval()  # the supervisor's period
SEEN_WITHIN = 20.0


def supervised_pool(cnn, **settings) -> SessionPool:
    """A pool whose supervisor checks every INTERVAL, with worker_timeout_s RELAXED."""
    pool = make_pool(cnn, worker_timeout_s=TIMEOUT, **settings)  # sets the check interval
    set_worker_timeout(pool, RELAXED)
    return pool


def set_worker_timeout(pool: SessionPool, seconds: float) -> None:
    """The supervisor reads worker_timeout_s afresh at each check."""
    pool.settings = dataclasses.replace(pool.settings, worker_timeout_s=seconds)


def detect_wedges(pool: SessionPool) -> None:
    """worker_timeout_s is TIMEOUT until a replacement worker opens its session.

    The replacement relaxes it again before it runs anything, its slow first run included.
    """
    real_open = pool._open_session

    def open_relaxed():
        set_worker_timeout(pool, RELAXED)
        pool._open_session = real_open
        return real_open()
    pool._open_session = open_relaxed
    set_worker_timeout(pool, TIMEOUT)


class Crash(BaseException):
    """Escapes ``except Exception``, as a real crash of the worker loop would."""


def wedge(worker, release: threading.Event) -> None:
    """The worker's next run blocks until ``release``, then finishes for real."""
    real_run = worker.session.run

    def stuck(inputs):
        release.wait()
        return real_run(inputs)
    worker.session.run = stuck


def crash(worker) -> None:
    def boom(inputs):
        raise Crash("injected")
    worker.session.run = boom


def assert_restarted(future, since: float = 0.0) -> float:
    """The future fails with worker_restarted; returns the seconds from ``since`` until then."""
    error = future.exception(timeout=SEEN_WITHIN)  # raises TimeoutError if never answered
    seen = time.monotonic()
    assert isinstance(error, Unavailable) and error.code == "worker_restarted", error
    assert error.status == 503 and error.headers["Retry-After"]
    return seen - since


def test_a_wedged_worker_is_retired_and_replaced(cnn, digits):
    images = digits[0]
    pool = supervised_pool(cnn)
    release = threading.Event()
    try:
        pool.run(images[:1], timeout=30)  # the original worker has run once
        old = pool._workers[0]
        wedge(old, release)
        detect_wedges(pool)
        since = time.monotonic()  # before the run starts, so this lower bound needs no slack
        held = pool.submit(images[:4])
        wait_for(lambda: pool.busy == 1)
        assert assert_restarted(held, since) > TIMEOUT  # not before the run overran the timeout
        assert pool.stats.restarts == Counter(wedged=1)
        assert pool.busy == 0 and old.thread.is_alive()  # off the count, though still stuck

        outputs, _ = pool.run(images[:8], timeout=30)
        np.testing.assert_array_equal(outputs, direct_run(cnn, images[:8]))
        new = pool._workers[0]
        assert new.thread is not old.thread and new.thread.ident != old.thread.ident
        assert new.session.owner == new.thread.ident and old.session.owner == old.thread.ident

        release.set()  # the wedged run returns at last: its result is dropped, the thread ends
        old.thread.join(10)
        assert not old.thread.is_alive()
        assert old.session.session._closed  # it closed the session only it ever ran
        assert held.exception().code == "worker_restarted"  # not overwritten by the late result
        assert pool.stats.batch_sizes[4] == 0 and pool.busy == 0
        assert pool.run(images[:2], timeout=30)[0].shape == (2, 10)
    finally:
        release.set()
        pool.stop()
    owners = {old.thread.ident, new.thread.ident}
    assert pool.stats.run_threads == pool.stats.owner_threads == owners
    assert threading.get_ident() not in pool.stats.run_threads


def test_a_crashed_worker_is_replaced_from_the_graph_in_memory(cnn, digits, tmp_path):
    manifest, graph_bytes = cnn
    images = digits[0]
    model_file = tmp_path / "model.pb"
    model_file.write_bytes(graph_bytes)
    pool = SessionPool(model_file.read_bytes(), manifest.input.name, manifest.output_name,
                       PoolSettings(worker_timeout_s=TIMEOUT), name="test").start()
    set_worker_timeout(pool, RELAXED)  # a crash is seen from the thread's death, at any timeout
    model_file.write_bytes(b"corrupted after start-up")  # a restart must not care
    try:
        old = pool._workers[0]
        crash(old)
        held = pool.submit(images[:3])
        assert_restarted(held)
        assert pool.stats.restarts == Counter(crashed=1)
        assert not old.thread.is_alive()

        outputs, _ = pool.run(images[:16], timeout=30)
        np.testing.assert_array_equal(outputs, direct_run(cnn, images[:16]))
        new = pool._workers[0]
        assert new.thread is not old.thread and new.thread.name != old.thread.name
        assert new.session is not old.session and new.session.owner == new.thread.ident
        assert pool.busy == 0  # the crashed run took itself off the count
    finally:
        pool.stop()
    assert threading.get_ident() not in pool.stats.run_threads
    assert new.thread.ident in pool.stats.run_threads <= pool.stats.owner_threads


def test_other_workers_serve_while_one_is_wedged(cnn, digits):
    images = digits[0]
    pool = supervised_pool(cnn, pool_size=2)
    release = threading.Event()
    try:
        victim, healthy = pool._workers
        wedge(victim, release)
        # Either worker may take a submission: submit until the victim holds one.
        for _ in range(20):
            held = pool.submit(images[:4])
            wait_for(lambda: held.done() or victim.running_since is not None)
            if not held.done():
                break
        assert victim.running_since is not None
        # worker_timeout_s is still RELAXED: the other worker answers meanwhile, however slowly
        assert pool.run(images[:2], timeout=30)[0].shape == (2, 10)
        assert not held.done()
        detect_wedges(pool)
        assert_restarted(held)
        wait_for(lambda: len({w.thread for w in pool._workers} - {victim.thread}) == 2)
        assert healthy in pool._workers and victim not in pool._workers
        assert pool.stats.restarts == Counter(wedged=1)
    finally:
        release.set()
        pool.stop()
    victim.thread.join(10)  # no TensorFlow call left running at interpreter exit
    assert not victim.thread.is_alive()


CHUNKS, CHUNK_S = 8, 0.3 * TIMEOUT  # each run under TIMEOUT; all of them well over it


def test_a_long_submission_in_chunks_is_not_wedged(cnn, digits):
    pool = supervised_pool(cnn, max_batch_size=16)
    worker = pool._workers[0]
    big = np.repeat(digits[0][:16], CHUNKS, axis=0)  # CHUNKS runs of 16 rows
    runs = []
    try:
        pool.run(big[:16], timeout=30)  # a fresh session's first run is the slow one
        real_run = worker.session.run

        def slow_run(inputs):  # slow by construction: CHUNK_S more per run
            runs.append(len(inputs))
            time.sleep(CHUNK_S)
            return real_run(inputs)
        worker.session.run = slow_run
        set_worker_timeout(pool, TIMEOUT)
        outputs, timing = pool.run(big, timeout=60)
    finally:
        pool.stop()
    assert runs == [16] * CHUNKS
    assert timing.inference >= CHUNKS * CHUNK_S > TIMEOUT + INTERVAL  # a check saw it running
    assert not pool.stats.restarts  # worker_timeout_s bounds each session.run, not the sum
    np.testing.assert_allclose(outputs, direct_run(cnn, big), atol=1e-5)


def test_a_replacement_that_fails_to_open_is_retried(cnn, digits, caplog):
    images = digits[0]
    pool = supervised_pool(cnn)
    good_bytes = pool._graph_def_bytes
    try:
        pool._graph_def_bytes = b"not a graph"  # every new session now fails to open
        crash(pool._workers[0])
        with caplog.at_level(logging.ERROR, logger="service.models"):
            assert_restarted(pool.submit(images[:1]))
            failures = lambda: [r for r in caplog.records if "could not open" in r.getMessage()]
            wait_for(lambda: len(failures()) >= 2)  # retried at a later check, still supervising
        pool._graph_def_bytes = good_bytes
        outputs, _ = pool.run(images[:4], timeout=30)
        np.testing.assert_array_equal(outputs, direct_run(cnn, images[:4]))
        assert pool.stats.restarts == Counter(crashed=1)  # failed opens are not restarts
    finally:
        pool._graph_def_bytes = good_bytes
        pool.stop()


def test_stop_drains_through_a_replacement_when_a_worker_is_wedged(cnn, digits):
    images = digits[0]
    pool = supervised_pool(cnn, max_batch_size=4)
    release = threading.Event()
    try:
        old = pool._workers[0]
        wedge(old, release)
        detect_wedges(pool)
        held = pool.submit(images[:4])
        wait_for(lambda: pool.busy == 1)
        queued = [pool.submit(images[i:i + 4]) for i in range(4, 20, 4)]
        started = time.monotonic()
        pool.stop()
        elapsed = time.monotonic() - started
    finally:
        release.set()
        old.thread.join(10)
    assert not old.thread.is_alive()
    # The wedge lasts until released below: a stop waiting for it would take its full 30 s.
    assert elapsed < SEEN_WITHIN
    assert held.exception(0).code == "worker_restarted"
    for i, future in zip(range(4, 20, 4), queued):
        np.testing.assert_array_equal(future.result(0)[0], direct_run(cnn, images[i:i + 4]))
    assert not pool._workers and pool.busy == 0
    assert not any(t.is_alive() for t in threading.enumerate() if t.name.startswith("test-s"))


def test_stop_gives_up_on_a_wedged_worker_after_its_timeout(cnn, digits):
    images = digits[0]
    pool = make_pool(cnn, worker_timeout_s=RELAXED)  # never detected within this test
    release = threading.Event()
    stuck = pool._workers[0]
    try:
        wedge(stuck, release)
        held = pool.submit(images[:4])
        wait_for(lambda: pool.busy == 1)
        queued = pool.submit(images[4:5])
        started = time.monotonic()
        pool.stop(timeout=0.3)
        elapsed = time.monotonic() - started
        # The wedge lasts until released below: a stop that waited for it would never return.
        assert 0.3 <= elapsed < SEEN_WITHIN
        for future in (held, queued):
            error = future.exception(0)  # answered, not left hanging
            assert isinstance(error, Unavailable) and error.code == "model_unavailable"
        assert pool.busy == 0 and not pool.stats.restarts
    finally:
        release.set()
        stuck.thread.join(10)
    assert not stuck.thread.is_alive()  # once unstuck it saw it was retired and ended



# TF's compute threads are process-wide, started by the process's first session: so this runs
# in a process of its own, where this pool's session is the first.
NICE_PROBE = """
import os, sys, threading
import numpy as np
sys.path[:0] = ["tests", "tests/models"]
from test_session_pool import GRAPHS, make_pool, thread_nice
from service.models import store
from service.models.manifest import read_manifest
version = store.list_versions(GRAPHS, "digits-cnn")[-1]
directory = store.version_dir(GRAPHS, "digits-cnn", version)
cnn = read_manifest(directory), (directory / "model.pb").read_bytes()
base = thread_nice(threading.get_native_id())
before = set(os.listdir("/proc/self/task"))
pool = make_pool(cnn, compute_nice=5)
pool.run(np.zeros((8, 28, 28, 1), np.float32), timeout=30)
worker = next(t for t in threading.enumerate() if t.name.startswith("test-session"))
started = set(os.listdir("/proc/self/task")) - before
print(base, thread_nice(threading.get_native_id()), thread_nice(worker.native_id),
      sorted(thread_nice(int(tid)) for tid in started))
pool.stop()
"""


def thread_nice(native_id: int) -> int:
    stat = Path(f"/proc/self/task/{native_id}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[16])  # "nice": field 19 of the whole line


def test_session_threads_and_the_tf_threads_they_start_run_nicer():
    root = GRAPHS.parent
    done = subprocess.run([sys.executable, "-c", NICE_PROBE], cwd=root, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(root)})
    assert done.returncode == 0, done.stderr
    base, caller, worker, started = done.stdout.split(" ", 3)
    started = [int(n) for n in started.strip(" []\n").split(",")]
    assert int(caller) == int(base) and int(worker) == int(base) + 5
    assert started.count(int(base) + 5) >= 3  # the worker and the TF threads it started
    with pytest.raises(ValueError, match="compute_nice"):
        PoolSettings(compute_nice=20)
