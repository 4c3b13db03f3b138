"""Reply (the session pool's one-lock future) and SubmissionQueue's single wake-up."""
from __future__ import annotations

import queue
import threading
from concurrent.futures import CancelledError, InvalidStateError

import numpy as np
import pytest

from service.models.batching import STOP, Batcher, Reply, SubmissionQueue, Submission
from support import wait_for


def answer_later(reply: Reply, release: threading.Event, result=None, error=None):
    def answer():
        release.wait(10)
        reply.set_running_or_notify_cancel()
        if error is not None:
            reply.set_exception(error)
        else:
            reply.set_result(result)
    thread = threading.Thread(target=answer)
    thread.start()
    return thread


def test_result_waits_for_the_answer_and_every_waiter_gets_it():
    reply, release = Reply(), threading.Event()
    got: list = []
    waiters = [threading.Thread(target=lambda: got.append(reply.result(10))) for _ in range(3)]
    for waiter in waiters:
        waiter.start()
    assert not reply.done() and got == []
    thread = answer_later(reply, release, result="seven")
    release.set()
    for waiter in waiters + [thread]:
        waiter.join(10)
    assert got == ["seven"] * 3
    assert reply.done() and reply.result() == "seven" and reply.exception() is None


def test_an_exception_is_raised_by_result_and_returned_by_exception():
    reply = Reply()
    assert reply.set_running_or_notify_cancel()
    reply.set_exception(ValueError("bad batch"))
    assert isinstance(reply.exception(), ValueError)
    with pytest.raises(ValueError, match="bad batch"):
        reply.result()


def test_result_times_out_while_unanswered():
    reply = Reply()
    with pytest.raises(TimeoutError):
        reply.result(timeout=0.01)
    with pytest.raises(TimeoutError):
        reply.exception(timeout=0)
    reply.set_result(1)  # still answerable after a caller gave up
    assert reply.result(timeout=0) == 1


def test_cancel_before_running_wakes_waiters_and_the_worker_skips_it():
    reply = Reply()
    raised: list = []

    def wait():
        try:
            reply.result(10)
        except CancelledError as exc:
            raised.append(exc)
    waiter = threading.Thread(target=wait)
    waiter.start()
    assert reply.cancel() and reply.cancel()  # cancelling twice is still cancelled
    waiter.join(10)
    assert len(raised) == 1 and reply.done()
    assert reply.set_running_or_notify_cancel() is False
    with pytest.raises(InvalidStateError):
        reply.set_result(1)


def test_running_or_answered_replies_cannot_be_cancelled_or_answered_twice():
    reply = Reply()
    assert reply.set_running_or_notify_cancel()
    assert not reply.cancel() and not reply.done()
    with pytest.raises(InvalidStateError):
        reply.set_running_or_notify_cancel()
    reply.set_result("once")
    assert not reply.cancel()
    with pytest.raises(InvalidStateError):
        reply.set_exception(RuntimeError("twice"))
    assert reply.result() == "once"


class CountingQueue(SubmissionQueue):
    """Counts the wake-ups a waiting worker is sent."""

    def __init__(self, maxsize: int = 0):
        super().__init__(maxsize)
        self.wakeups = 0
        notify_all = self.not_empty.notify_all

        def counted() -> None:
            self.wakeups += 1
            notify_all()
        self.not_empty.notify_all = counted


def waiting(q: SubmissionQueue, count: int) -> bool:
    with q.mutex:
        return count in q._wanted


def test_a_worker_waiting_for_a_batch_is_woken_once_when_it_is_full():
    q = CountingQueue()
    outcome: list = []
    worker = threading.Thread(target=lambda: outcome.append(q.wait_for(5, timeout=30)))
    worker.start()
    wait_for(lambda: waiting(q, 5), timeout=10)
    for item in range(4):
        q.put(item)
    assert q.wakeups == 0 and worker.is_alive()
    q.put(4)
    worker.join(10)
    assert outcome == [True] and q.wakeups == 1 and q.qsize() == 5
    assert q._wanted == []


def test_wait_for_returns_at_once_when_enough_are_queued_and_false_on_timeout():
    q = SubmissionQueue()
    q.put(1)
    assert q.wait_for(1, timeout=0)
    assert q.wait_for(2, timeout=0.01) is False and q._wanted == []


def test_get_blocks_until_one_arrives_and_honours_bounds():
    q = CountingQueue(maxsize=1)
    got: list = []
    taker = threading.Thread(target=lambda: got.append(q.get(timeout=30)))
    taker.start()
    wait_for(lambda: waiting(q, 1), timeout=10)
    q.put("first")
    taker.join(10)
    assert got == ["first"] and q.wakeups == 1
    with pytest.raises(queue.Empty):
        q.get(timeout=0.01)
    q.put("fills it")
    with pytest.raises(queue.Full):
        q.put("over", block=False)
    with pytest.raises(queue.Full):
        q.put("over", timeout=0.01)
    assert q.get_nowait() == "fills it"


def submission(rows: int) -> Submission:
    return Submission(np.zeros((rows, 2), np.float32), deadline=None)


def test_collect_takes_what_is_queued_carries_an_overflow_and_stops_on_stop():
    q = SubmissionQueue()
    first, second, big = submission(2), submission(3), submission(4)
    for item in (first, second, big, STOP):
        q.put(item)
    batcher = Batcher(q, admit=lambda s: True)
    batch, stop = batcher.collect(expected=1, max_rows=6, timeout_s=0)
    assert batch == [first, second] and not stop and batcher.carry is big
    batch, stop = batcher.collect(expected=1, max_rows=6, timeout_s=0)
    assert batch == [big] and not stop and batcher.carry is None
    assert batcher.collect(expected=1, max_rows=6, timeout_s=0) == ([], True)


def test_collect_drops_what_admit_refuses():
    q = SubmissionQueue()
    kept, dropped = submission(1), submission(1)
    q.put(dropped)
    q.put(kept)
    batcher = Batcher(q, admit=lambda s: s is kept)
    batch, _ = batcher.collect(expected=1, max_rows=8, timeout_s=0)
    assert batch == [kept]
