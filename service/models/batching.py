"""Dynamic batching: one worker merges queued submissions into a run of up to ``max_rows``.

Whatever is queued joins at once. Beyond that a worker waits (at most the batch timeout)
only while fewer submissions have arrived than joined its previous batch: under concurrent
load the callers it just answered are about to come back, while a lone caller never waits.

Thread wake-ups are the cost that grows with load, so there are few: a worker waiting for
a batch to fill is woken once, when enough have arrived or its time is up (not on every
submission, as ``queue.Queue`` would); and each caller waits on a ``Reply``, one lock that
the answer releases, rather than on a ``concurrent.futures.Future``'s condition variable.
"""
from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import CancelledError, InvalidStateError
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

# Put on the queue once per worker by stop(): the worker leaves once it has taken it.
STOP = object()

_PENDING, _RUNNING, _CANCELLED, _FINISHED = range(4)


class Reply:
    """The answer to one submission: ``concurrent.futures.Future``'s methods that the pool
    and its callers use (``result``, ``exception``, ``done``, ``cancel``, the ``set_*``),
    with the same states and errors, on a lock held until the answer is set."""

    __slots__ = ("_answered", "_state", "_result", "_error")
    _transition = threading.Lock()  # every reply's state changes: a few instructions each

    def __init__(self) -> None:
        self._answered = threading.Lock()
        self._answered.acquire()
        self._state = _PENDING
        self._result: Any = None
        self._error: BaseException | None = None

    def done(self) -> bool:
        return self._state >= _CANCELLED

    def cancel(self) -> bool:
        """Cancel unless a worker has started on it (or it is answered)."""
        with Reply._transition:
            if self._state in (_RUNNING, _FINISHED):
                return False
            if self._state == _PENDING:
                self._state = _CANCELLED
                self._answered.release()
        return True

    def set_running_or_notify_cancel(self) -> bool:
        """False if cancelled; else it is running and can no longer be cancelled."""
        with Reply._transition:
            if self._state == _CANCELLED:
                return False
            if self._state != _PENDING:
                raise InvalidStateError("the reply is already running or answered")
            self._state = _RUNNING
            return True

    def set_result(self, result: Any) -> None:
        self._finish(result, None)

    def set_exception(self, error: BaseException) -> None:
        self._finish(None, error)

    def result(self, timeout: float | None = None) -> Any:
        self._wait(timeout)
        if self._error is not None:
            raise self._error
        return self._result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        return self._error

    def _finish(self, result: Any, error: BaseException | None) -> None:
        with Reply._transition:
            if self._state >= _CANCELLED:
                raise InvalidStateError("the reply is already cancelled or answered")
            self._result, self._error, self._state = result, error, _FINISHED
        self._answered.release()

    def _wait(self, timeout: float | None) -> None:
        if self._state < _CANCELLED:
            if not self._answered.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
                raise TimeoutError
            self._answered.release()  # for any other waiter, and any later call
        if self._state == _CANCELLED:
            raise CancelledError


class SubmissionQueue(queue.Queue):
    """A bounded ``queue.Queue`` that wakes a waiting worker only once it has what it
    waits for: one submission (``get``), or ``count`` of them (``wait_for``)."""

    def __init__(self, maxsize: int = 0):
        super().__init__(maxsize)
        self._wanted: list[int] = []  # per waiting worker: the queue length that wakes it

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        with self.not_full:
            if 0 < self.maxsize <= self._qsize():
                if not block:
                    raise queue.Full
                if not self.not_full.wait_for(lambda: self._qsize() < self.maxsize, timeout):
                    raise queue.Full
            self._put(item)
            self.unfinished_tasks += 1
            if self._wanted and self._qsize() >= min(self._wanted):
                self.not_empty.notify_all()

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        with self.not_empty:
            if not self._qsize() and not (block and self._await(1, timeout)):
                raise queue.Empty
            item = self._get()
            self.not_full.notify()
            return item

    def wait_for(self, count: int, timeout: float) -> bool:
        """Until ``count`` submissions are queued (True) or ``timeout`` passes (False)."""
        with self.not_empty:
            return self._qsize() >= count or self._await(count, timeout)

    def _await(self, count: int, timeout: float | None) -> bool:
        self._wanted.append(count)
        try:
            return self.not_empty.wait_for(lambda: self._qsize() >= count, timeout)
        finally:
            self._wanted.remove(count)


@dataclass
class Submission:
    """One caller's rows, waiting for (or in) a run; ``future`` yields its answer."""

    inputs: np.ndarray
    deadline: float | None
    future: Reply = field(default_factory=Reply)
    enqueued: float = field(default_factory=time.monotonic)

    def fail(self, error: Exception) -> None:
        """Fail the future unless it is already answered or cancelled."""
        try:
            self.future.set_exception(error)
        except InvalidStateError:
            pass


class Batcher:
    """One worker's intake: the submissions of its current (or last) run, and the one taken
    off the queue for the next. Written by the worker alone; read by whoever must fail what
    the worker held if it dies (``held``)."""

    def __init__(self, source: SubmissionQueue, admit: Callable[[Submission], bool]):
        self.source = source
        self.admit = admit  # False: drop it (cancelled, or past its deadline)
        self.batch: list[Submission] = []
        self.carry: Submission | None = None

    def held(self) -> list[Submission]:
        """Submissions taken off the queue and not yet answered."""
        taken = self.batch + ([self.carry] if self.carry is not None else [])
        return [s for s in taken if not s.future.done()]

    def collect(self, expected: int, max_rows: int,
                timeout_s: float) -> tuple[list[Submission], bool]:
        """Gather the next run's submissions into ``batch``. Returns (batch, stop?).

        ``expected`` is how many joined the previous batch; a submission that would overflow
        ``max_rows`` is kept in ``carry`` to start the next batch.
        """
        carried = self.carry
        first = carried if carried is not None else self.source.get()
        if first is STOP:
            return [], True
        # Published at once, so the supervisor can fail these if the worker dies.
        batch = self.batch = [first] if self.admit(first) else []
        if carried is not None:
            self.carry = None
        rows = len(first.inputs) if batch else 0
        wait_until = time.monotonic() + timeout_s
        waited = False
        while rows < max_rows:
            try:
                item = self.source.get_nowait()
            except queue.Empty:
                if waited or len(batch) >= expected:
                    break
                # One wait for the rest of the previous batch's callers, then what is there.
                waited = True
                self.source.wait_for(expected - len(batch), wait_until - time.monotonic())
                continue
            if item is STOP:
                self.source.put(STOP)  # keep it for after this batch; drain continues
                break
            if rows and rows + len(item.inputs) > max_rows:
                self.carry = item  # run what we have; this one starts the next batch
                break
            if self.admit(item):
                batch.append(item)
                rows += len(item.inputs)
        return batch, False
