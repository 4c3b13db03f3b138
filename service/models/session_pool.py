"""Thread-pinned TensorFlow sessions with dynamic batching.

Each worker thread imports the graph and creates its own ``tf.compat.v1.Session``; only that
thread ever calls ``session.run`` on it. Callers submit numpy batches to one bounded queue
and get a ``Future``; a worker merges queued submissions into one run of up to
``max_batch_size`` rows, waiting at most ``batch_timeout_ms`` for more to arrive.
"""
from __future__ import annotations

import os
import queue
import threading
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import DeadlineExceeded, Overloaded, Unavailable


@dataclass(frozen=True)
class PoolSettings:
    pool_size: int = 1              # sessions, one worker thread each
    max_batch_size: int = 256       # rows per session.run
    # The longest a worker waits for more work to fill a batch, and only while fewer
    # submissions have arrived than joined its previous batch (a lone caller never waits).
    # 0: never wait; batches still hold whatever queued while the previous one ran.
    batch_timeout_ms: float = 1.0
    queue_size: int = 1024          # pending submissions before Overloaded
    intra_op_threads: int = 0       # 0: cores // pool_size, so sessions x threads <= cores
    inter_op_threads: int = 1

    def __post_init__(self) -> None:
        for key in ("pool_size", "max_batch_size", "queue_size"):
            if getattr(self, key) < 1:
                raise ValueError(f"{key} must be >= 1, got {getattr(self, key)}")
        if self.batch_timeout_ms < 0:
            raise ValueError(f"batch_timeout_ms must be >= 0, got {self.batch_timeout_ms}")

    def threads_per_session(self) -> int:
        return self.intra_op_threads or max(1, (os.cpu_count() or 1) // self.pool_size)


@dataclass
class RunTiming:
    """Where a submission's time went, in seconds."""

    queue: float = 0.0
    inference: float = 0.0
    batch_size: int = 0


@dataclass
class _Submission:
    inputs: np.ndarray
    deadline: float | None
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.monotonic)


_STOP = object()


class _Session:
    """A worker's session, used by that worker alone.

    ``make_callable`` prepares the feed and fetch once: each run skips ``session.run``'s
    per-call feed-dict handling, which dominates at the small batches of a busy server.
    """

    def __init__(self, session: Any, input_tensor: Any, output_tensor: Any):
        self.session = session
        self.run = session.make_callable(output_tensor, feed_list=[input_tensor])

    def close(self) -> None:
        self.session.close()


@dataclass
class PoolStats:
    """Observed behaviour, for tests, benchmarks and /status."""

    batch_sizes: Counter = field(default_factory=Counter)
    run_threads: set = field(default_factory=set)
    owner_threads: set = field(default_factory=set)
    timeouts: int = 0


class SessionPool:
    """``size`` workers, each owning one session over the same frozen graph."""

    def __init__(self, graph_def_bytes: bytes, input_name: str, output_name: str,
                 settings: PoolSettings = PoolSettings(), name: str = "model"):
        self.settings = settings
        self.name = name
        self.stats = PoolStats()
        self._graph_def_bytes = graph_def_bytes
        self._input = input_name
        self._output = output_name
        self._queue: queue.Queue = queue.Queue(maxsize=settings.queue_size)
        self._workers: list[threading.Thread] = []
        self._ready = threading.Barrier(settings.pool_size + 1)
        self._start_errors: list[BaseException] = []
        self._accepting = False
        self._lock = threading.Lock()
        self.busy = 0

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> "SessionPool":
        """Start the workers; returns once every session exists (raises if one failed)."""
        for index in range(self.settings.pool_size):
            worker = threading.Thread(target=self._work, name=f"{self.name}-session-{index}",
                                      daemon=True)
            worker.start()
            self._workers.append(worker)
        self._ready.wait(timeout)
        if self._start_errors:
            self.stop()
            raise self._start_errors[0]
        self._accepting = True
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Refuse new work, let workers finish everything already queued, then end them."""
        self._accepting = False
        for _ in self._workers:
            self._queue.put(_STOP)
        for worker in self._workers:
            worker.join(timeout)
        self._workers = []

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    # -- callers ----------------------------------------------------------------------------
    def submit(self, inputs: np.ndarray, deadline: float | None = None) -> Future:
        """Queue a batch; the future yields ``(outputs, RunTiming)``.

        ``deadline`` is a ``time.monotonic()`` instant after which the work is not started.
        """
        if not self._accepting:
            raise Unavailable(f"model {self.name} is not accepting requests", "model_unavailable")
        submission = _Submission(inputs, deadline)
        try:
            self._queue.put_nowait(submission)
        except queue.Full:
            raise Overloaded(f"model {self.name} has {self.settings.queue_size} requests "
                             "queued; try again shortly") from None
        return submission.future

    def run(self, inputs: np.ndarray, timeout: float | None = None) -> tuple[np.ndarray, RunTiming]:
        """Submit and wait: the blocking form of ``submit``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        future = self.submit(inputs, deadline)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise DeadlineExceeded(f"model {self.name} did not answer within {timeout:.3g} s")

    # -- workers ----------------------------------------------------------------------------
    def _work(self) -> None:
        try:
            session = self._open_session()
        except BaseException as exc:  # reported to start(), which re-raises it
            self._start_errors.append(exc)
            self._ready.wait()
            return
        self.stats.owner_threads.add(threading.get_ident())
        self._ready.wait()
        carry: _Submission | None = None
        expected = 1
        try:
            while True:
                batch, carry, stop = self._collect(carry, expected)
                if batch:
                    self._execute(session, batch)
                    expected = len(batch)
                if stop:
                    break
        finally:
            session.close()

    def _open_session(self) -> _Session:
        import tensorflow as tf  # first imported here, after any daemon fork

        from .graph import import_graph, parse_graph_def

        graph = import_graph(parse_graph_def(self._graph_def_bytes))
        threads = self.settings.threads_per_session()
        config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads,
                                          inter_op_parallelism_threads=self.settings.inter_op_threads)
        # Tensors resolved once: fetching by Tensor avoids a name lookup per run.
        return _Session(tf.compat.v1.Session(graph=graph, config=config),
                        graph.get_tensor_by_name(self._input),
                        graph.get_tensor_by_name(self._output))

    def _collect(self, carry: _Submission | None, expected: int):
        """Gather submissions for one run. Returns (batch, carry-over, stop?).

        Whatever is queued joins at once. Beyond that the worker waits (at most
        ``batch_timeout_ms``) only while fewer submissions have arrived than joined its
        previous batch: under concurrent load the callers it just answered are about to come
        back, while a lone caller never waits.
        """
        first = carry if carry is not None else self._queue.get()
        if first is _STOP:
            return [], None, True
        batch, rows = [], 0
        if self._admit(first):
            batch, rows = [first], len(first.inputs)
        limit = self.settings.max_batch_size
        wait_until = time.monotonic() + self.settings.batch_timeout_ms / 1000.0
        while rows < limit:
            remaining = wait_until - time.monotonic()
            try:
                if remaining > 0 and len(batch) < expected:
                    item = self._queue.get(timeout=remaining)
                else:
                    item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is _STOP:
                self._queue.put(_STOP)  # keep it for after this batch; drain continues
                break
            if rows and rows + len(item.inputs) > limit:
                return batch, item, False  # run what we have; this one starts the next batch
            if self._admit(item):
                batch.append(item)
                rows += len(item.inputs)
        return batch, None, False

    def _admit(self, item: _Submission) -> bool:
        """False for work nobody waits for any more (cancelled, or past its deadline)."""
        if item.deadline is not None and time.monotonic() > item.deadline:
            self.stats.timeouts += 1
            if item.future.set_running_or_notify_cancel():
                item.future.set_exception(DeadlineExceeded(
                    f"model {self.name}: the request waited past its deadline"))
            return False
        return item.future.set_running_or_notify_cancel()

    def _run_in_chunks(self, session, inputs: np.ndarray) -> np.ndarray:
        """One session.run, or several for a single submission larger than max_batch_size."""
        step = self.settings.max_batch_size
        if len(inputs) <= step:
            return session.run(inputs)
        return np.concatenate([session.run(inputs[i:i + step]) for i in range(0, len(inputs), step)])

    def _execute(self, session, batch: list[_Submission]) -> None:
        inputs = batch[0].inputs if len(batch) == 1 else np.concatenate([s.inputs for s in batch])
        with self._lock:
            self.busy += 1
        started = time.monotonic()
        try:
            outputs = self._run_in_chunks(session, inputs)
        except Exception as exc:  # a bad batch must not kill the worker
            for item in batch:
                item.future.set_exception(exc)
            return
        finally:
            with self._lock:
                self.busy -= 1
        finished = time.monotonic()
        self.stats.run_threads.add(threading.get_ident())
        self.stats.batch_sizes[len(inputs)] += 1
        offset = 0
        for item in batch:
            n = len(item.inputs)
            timing = RunTiming(started - item.enqueued, finished - started, len(inputs))
            item.future.set_result((outputs[offset:offset + n], timing))
            offset += n
