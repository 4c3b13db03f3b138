"""Dynamic batching: one worker merges queued submissions into a run of up to ``max_rows``.

Whatever is queued joins at once. Beyond that a worker waits (at most the batch timeout)
only while fewer submissions have arrived than joined its previous batch: under concurrent
load the callers it just answered are about to come back, while a lone caller never waits.
"""
from __future__ import annotations

import queue
import time
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

# Put on the queue once per worker by stop(): the worker leaves once it has taken it.
STOP = object()


@dataclass
class Submission:
    """One caller's rows, waiting for (or in) a run; ``future`` yields its answer."""

    inputs: np.ndarray
    deadline: float | None
    future: Future = field(default_factory=Future)
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

    def __init__(self, source: queue.Queue, admit: Callable[[Submission], bool]):
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
        while rows < max_rows:
            remaining = wait_until - time.monotonic()
            try:
                if remaining > 0 and len(batch) < expected:
                    item = self.source.get(timeout=remaining)
                else:
                    item = self.source.get_nowait()
            except queue.Empty:
                break
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
