"""Thread-pinned TensorFlow sessions behind one bounded queue.

Each worker thread imports the graph and creates its own ``tf.compat.v1.Session``; only that
thread ever calls ``session.run`` on it. Callers submit numpy batches to the queue and get a
``Reply`` (a future); a worker merges queued submissions into one run (``batching``), and a supervisor
replaces workers that crash or wedge (``supervisor``), rebuilding their sessions from the
graph bytes held in memory.
"""
from __future__ import annotations

import itertools
import logging
import os
import queue
import threading
import time
from collections import Counter
from concurrent.futures import InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .. import cpu_placement
from ..config import PoolSettings
from ..errors import DeadlineExceeded, Overloaded, Unavailable
from .batching import STOP, Batcher, Reply, Submission, SubmissionQueue
from .supervisor import Supervisor, Worker

log = logging.getLogger("service.models")


@dataclass
class RunTiming:
    """Where a submission's time went, in seconds."""

    queue: float = 0.0
    inference: float = 0.0
    batch_size: int = 0


class _Session:
    """A worker's session, used by that worker alone.

    ``run(inputs)`` is a callable TensorFlow prepared once for this feed and fetch
    (``TF_SessionMakeCallable``): each run skips ``session.run``'s feed-dict and fetch
    handling, about 0.2 ms of interpreter time per run (``make_callable`` with a
    ``feed_list`` is ``session.run`` underneath). ``run`` is a plain attribute, so a test can
    swap in a callable that hangs or raises.
    """

    def __init__(self, session: Any, input_name: str, output_name: str, delay_s: float = 0.0):
        from tensorflow.core.protobuf.config_pb2 import CallableOptions

        self.session = session
        self.owner = threading.get_ident()  # the creating thread: the only one that runs it
        prepared = session._make_callable_from_options(
            CallableOptions(feed=[input_name], fetch=[output_name]))
        self.run = lambda inputs: prepared(inputs)[0]
        if delay_s:
            self.run = _delayed(self.run, delay_s)

    def close(self) -> None:
        self.session.close()


def _lower_priority(nice: int) -> None:
    """Make the calling thread ``nice`` nicer (on Linux, niceness is per thread)."""
    if nice:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.nice(0) + nice)
        except OSError as exc:  # e.g. a sandbox that forbids it: serve at the same priority
            log.info("model session threads keep their priority: %s", exc)


def _delayed(run: Callable, delay_s: float) -> Callable:
    """``run``, each call ``delay_s`` late (PoolSettings.inject_run_delay_s)."""
    def slow_run(inputs: Any) -> Any:
        time.sleep(delay_s)
        return run(inputs)
    return slow_run


@dataclass
class PoolStats:
    """Observed behaviour, for tests, benchmarks and /status."""

    batch_sizes: Counter = field(default_factory=Counter)
    run_threads: set = field(default_factory=set)
    owner_threads: set = field(default_factory=set)
    timeouts: int = 0
    restarts: Counter = field(default_factory=Counter)   # by reason: "crashed", "wedged"


class SessionPool:
    """``size`` workers, each owning one session over the same frozen graph."""

    def __init__(self, graph_def_bytes: bytes, input_name: str, output_name: str,
                 settings: PoolSettings = PoolSettings(), name: str = "model"):
        self.settings = settings
        self.name = name
        self.stats = PoolStats()
        # Replacement sessions are built from these bytes, never from disk: a model file
        # changed or corrupted after start-up cannot break a restart.
        self._graph_def_bytes = graph_def_bytes
        self._input = input_name
        self._output = output_name
        self._queue = SubmissionQueue(maxsize=settings.queue_size)
        self._workers: list[Worker] = []        # in service; changed under self._lock
        self._ids = itertools.count()
        self._accepting = False
        self._lock = threading.Lock()
        self._supervisor = Supervisor(self, self.stats.restarts)
        self.busy = 0

    # -- lifecycle ------------------------------------------------------------------------
    def start(self, timeout: float = 120.0) -> "SessionPool":
        """Start the workers; returns once every session exists (raises if one failed)."""
        self._workers = [self._spawn() for _ in range(self.settings.pool_size)]
        deadline = time.monotonic() + timeout
        for worker in self._workers:
            worker.opened.wait(max(0.0, deadline - time.monotonic()))
        failed = [w for w in self._workers if w.open_error is not None]
        if failed or not all(w.opened.is_set() for w in self._workers):
            self._workers = [w for w in self._workers if w.open_error is None]
            self.stop()
            if failed:
                raise failed[0].open_error
            raise TimeoutError(f"model {self.name}: sessions not ready within {timeout:.3g} s")
        self._supervisor.start()
        self._accepting = True
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Refuse new work, let workers finish everything already queued, then end them.

        The supervisor keeps replacing crashed or wedged workers meanwhile, so queued work
        still drains; whatever is unanswered after ``timeout`` fails with ``Unavailable``.
        """
        self._accepting = False
        deadline = time.monotonic() + timeout
        try:
            for _ in self.active_workers():
                # Bounded: a full queue behind a wedged worker must not block stop() forever.
                self._queue.put(STOP, timeout=max(0.0, deadline - time.monotonic()))
        except queue.Full:
            pass  # the wait below ends at the deadline; _abandon answers what is left
        self._wait_for_workers(deadline)
        self._supervisor.stop(max(0.0, deadline - time.monotonic()))
        with self._lock:
            leftovers, self._workers = self._workers, []
        self._abandon(leftovers)

    def _wait_for_workers(self, deadline: float) -> None:
        """Until every worker in service has left on STOP, or ``deadline``."""
        interval = self.settings.check_interval()
        while True:
            # A dead worker that did not stop is the supervisor's to replace: keep waiting.
            pending = [w for w in self.active_workers() if not w.stopped]
            remaining = deadline - time.monotonic()
            if not pending or remaining <= 0:
                return
            if pending[0].thread.is_alive():
                pending[0].thread.join(min(interval, remaining))
            else:
                time.sleep(min(interval, remaining))

    def _abandon(self, leftovers: list[Worker]) -> None:
        """After stop's timeout: fail what is still held or queued; wedged threads are left."""
        for worker in leftovers:
            if not worker.stopped:
                self._retire(worker)  # first: whatever it collects from now on, it drops
        unanswered = [s for w in leftovers if not w.stopped for s in w.held()]
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not STOP:
                unanswered.append(item)
        for item in unanswered:
            item.fail(Unavailable(f"model {self.name} stopped before answering",
                                  "model_unavailable"))
        for worker in leftovers:
            if not worker.stopped and worker.thread.is_alive():
                try:
                    self._queue.put_nowait(STOP)  # one still opening its session ends at once
                except queue.Full:
                    break

    @property
    def queue_depth(self) -> int:
        return self._queue.qsize()

    # -- callers ----------------------------------------------------------------------------
    def submit(self, inputs: np.ndarray, deadline: float | None = None) -> Reply:
        """Queue a batch; the future yields ``(outputs, RunTiming)``.

        ``deadline`` is a ``time.monotonic()`` instant after which the work is not started.
        """
        if not self._accepting:
            raise Unavailable(f"model {self.name} is not accepting requests", "model_unavailable")
        submission = Submission(inputs, deadline)
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

    # -- for the supervisor ------------------------------------------------------------------
    def active_workers(self) -> list[Worker]:
        with self._lock:
            return list(self._workers)

    def retire_if_wedged(self, worker: Worker, now: float) -> bool:
        """Retire ``worker`` if its run has lasted longer than ``worker_timeout_s``."""
        # Under the lock the worker cannot finish this run meanwhile: either it ends the run
        # first (and delivers), or it sees ``retired`` afterwards (and discards).
        with self._lock:
            since = worker.running_since
            if since is None or now - since <= self.settings.worker_timeout_s:
                return False
            self._retire_locked(worker)
            return True

    def replace_worker(self, old: Worker) -> None:
        new = self._spawn()
        with self._lock:
            self._workers = [new if w is old else w for w in self._workers]

    def _retire(self, worker: Worker) -> None:
        with self._lock:
            self._retire_locked(worker)

    def _retire_locked(self, worker: Worker) -> None:
        if worker.running_since is not None and not worker.retired:
            self.busy -= 1  # its run's own decrement is skipped once retired
        worker.retired = True

    # -- workers ----------------------------------------------------------------------------
    def _spawn(self) -> Worker:
        worker = Worker(Batcher(self._queue, self._admit))
        worker.thread = threading.Thread(target=self._work, args=(worker,), daemon=True,
                                         name=f"{self.name}-session-{next(self._ids)}")
        worker.thread.start()
        return worker

    def _work(self, worker: Worker) -> None:
        try:
            session = self._open_session()
        except BaseException as exc:  # start() re-raises it; the supervisor retries
            worker.open_error = exc
            worker.opened.set()
            return
        worker.session = session
        self.stats.owner_threads.add(threading.get_ident())
        worker.opened.set()
        try:
            self._loop(worker, session)
        except BaseException:  # the supervisor sees the thread gone and replaces it
            log.critical("model %s: session worker %s crashed", self.name,
                         threading.current_thread().name, exc_info=True)
        finally:
            session.close()

    def _loop(self, worker: Worker, session: _Session) -> None:
        expected = 1
        while True:
            settings = self.settings
            batch, stop = worker.batcher.collect(expected, settings.max_batch_size,
                                                 settings.batch_timeout_ms / 1000.0)
            if batch:
                if not self._execute(worker, session, batch):
                    self._drop(worker)
                    return  # retired mid-run: a replacement serves from now on
                expected = len(batch)
            if stop:
                worker.stopped = True
                return

    def _drop(self, worker: Worker) -> None:
        """Answer what a retired worker still holds: the supervisor or stop() answered all
        it could see, but stop() may retire a worker while it is still collecting."""
        for item in worker.held():
            item.fail(Unavailable(f"model {self.name}: its session worker was retired "
                                  "before answering", "model_unavailable"))

    def _open_session(self) -> _Session:
        _lower_priority(self.settings.compute_nice)  # both inherited by the threads
        cpu_placement.leave_interpreter_cpu()        # TensorFlow starts now
        import tensorflow as tf  # first imported here, after any daemon fork

        from .graph import import_graph, parse_graph_def

        graph = import_graph(parse_graph_def(self._graph_def_bytes))
        threads = self.settings.threads_per_session()
        config = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=threads,
                                          inter_op_parallelism_threads=self.settings.inter_op_threads)
        # Idle TF threads would otherwise spin between runs, on the cores the interpreter's
        # threads need: 15% more CPU per image at a server's small batches, for no speed.
        config.experimental.disable_thread_spinning = True
        # Resolved now: a name the graph lacks fails here, with the graph's own message.
        names = [graph.get_tensor_by_name(n).name for n in (self._input, self._output)]
        return _Session(tf.compat.v1.Session(graph=graph, config=config), *names,
                        self.settings.inject_run_delay_s)

    def _admit(self, item: Submission) -> bool:
        """False for work nobody waits for any more (cancelled, or past its deadline)."""
        if item.deadline is not None and time.monotonic() > item.deadline:
            self.stats.timeouts += 1
            if item.future.set_running_or_notify_cancel():
                item.future.set_exception(DeadlineExceeded(
                    f"model {self.name}: the request waited past its deadline"))
            return False
        return item.future.set_running_or_notify_cancel()

    def _run_in_chunks(self, worker: Worker, session: _Session, inputs: np.ndarray) -> np.ndarray:
        """One session.run, or several for a single submission larger than max_batch_size."""
        step = self.settings.max_batch_size
        if len(inputs) <= step:
            return session.run(inputs)
        outputs = []
        for i in range(0, len(inputs), step):
            worker.running_since = time.monotonic()  # worker_timeout_s bounds each run
            outputs.append(session.run(inputs[i:i + step]))
        return np.concatenate(outputs)

    def _execute(self, worker: Worker, session: _Session, batch: list[Submission]) -> bool:
        """Run one batch and answer it; False if the worker was retired during the run."""
        inputs = batch[0].inputs if len(batch) == 1 else np.concatenate([s.inputs for s in batch])
        with self._lock:
            self.busy += 1
            started = worker.running_since = time.monotonic()
        error: Exception | None = None
        try:
            outputs = self._run_in_chunks(worker, session, inputs)
        except Exception as exc:  # a bad batch must not kill the worker
            error = exc
        finally:  # also on a BaseException, which then ends the worker
            current = self._end_run(worker)
        if not current:
            return False  # the supervisor already failed these futures
        if error is not None:
            for item in batch:
                item.fail(error)
            return True
        finished = time.monotonic()
        self.stats.run_threads.add(threading.get_ident())
        self.stats.batch_sizes[len(inputs)] += 1
        offset = 0
        for item in batch:
            n = len(item.inputs)
            timing = RunTiming(started - item.enqueued, finished - started, len(inputs))
            try:
                item.future.set_result((outputs[offset:offset + n], timing))
            except InvalidStateError:
                pass  # stop() gave up on it at its deadline, just as this run finished
            offset += n
        return True

    def _end_run(self, worker: Worker) -> bool:
        """Mark the run over; False if the supervisor retired the worker first."""
        with self._lock:
            worker.running_since = None
            if worker.retired:
                return False  # busy was already decremented by the retirement
            self.busy -= 1
            return True
