"""The shared (SQLite) limiter: the same behaviour as the in-memory one, and held across
processes. Every clock here is given: a frozen value, or one the test moves in shared memory,
so no result depends on the machine's speed."""
from __future__ import annotations

import logging
import multiprocessing
import sqlite3
import threading
from pathlib import Path

import pytest

import limiter_behaviour
from service.access.rate_limit import RateLimiter
from service.access.shared_limits import DB_NAME, SharedRateLimiter, make_limiter
from service.cluster.identity import Worker
from service.config import AuthSettings, RateLimits, RateLimitSettings
from service.errors import Overloaded, RateLimited
from service.web.access import Access

NOW = 1000.0
FORK = multiprocessing.get_context("fork")
WAIT_S = 60  # for a child's answer; only a hung child ever waits this long


behaviour, BEHAVIOUR = limiter_behaviour.behaviour("_rate_limit_behaviour")


@pytest.fixture(params=["memory", "shared"])
def new_limiter(request, tmp_path):
    """A factory of fresh limiters of one backend, over a frozen clock."""
    made = []

    def make():
        if request.param == "memory":
            return RateLimiter(clock=lambda: NOW)
        made.append(tmp_path / f"limits-{len(made)}.sqlite")
        return SharedRateLimiter(made[-1], "worker-0", clock=lambda: NOW)
    return make


def test_every_limiter_test_of_the_memory_backend_is_run_here():
    assert len(BEHAVIOUR) >= 4


@pytest.mark.parametrize("case", BEHAVIOUR, ids=lambda case: case.__name__)
def test_both_backends_behave_alike(case, new_limiter, monkeypatch):
    monkeypatch.setattr(behaviour, "RateLimiter", new_limiter)
    case()


def test_enter_says_whether_the_request_counts_in_flight(new_limiter):
    limiter = new_limiter()
    assert limiter.enter("a", RateLimits()) is False                      # nothing to check
    assert limiter.enter("a", RateLimits(requests_per_s=5.0)) is False    # a rate, no cap
    assert limiter.enter("a", RateLimits(max_in_flight=1)) is True
    limiter.leave("a")
    limiter.leave("a")  # one leave too many never goes below zero
    assert limiter.enter("a", RateLimits(max_in_flight=1)) is True


def test_refusals_are_worded_alike_by_both_backends(tmp_path):
    shared = SharedRateLimiter(tmp_path / DB_NAME, "worker-0", clock=lambda: NOW)
    assert behaviour.refusals(shared) == behaviour.refusals(RateLimiter(clock=lambda: NOW))


# -- shared by limiters of one file ---------------------------------------------------------
def test_two_workers_share_one_bucket_and_one_cap(tmp_path):
    clock = [NOW]
    one, two = (SharedRateLimiter(tmp_path / DB_NAME, f"worker-{i}", clock=lambda: clock[0])
                for i in range(2))
    behaviour.two_share_one_bucket_and_one_cap(one, two, clock)


def test_forget_worker_deletes_only_that_workers_counts(tmp_path):
    one, two = (SharedRateLimiter(tmp_path / DB_NAME, f"worker-{i}") for i in range(2))
    capped = RateLimits(max_in_flight=2)
    one.enter("c", capped)
    two.enter("c", capped)
    one.forget_worker("worker-1")
    assert one.enter("c", capped)  # worker-1's request no longer counts; worker-0's does
    with pytest.raises(Overloaded):
        two.enter("c", capped)


def test_idle_buckets_are_deleted_now_and_then(tmp_path):
    clock = [NOW]
    limiter = SharedRateLimiter(tmp_path / DB_NAME, "worker-0", clock=lambda: clock[0])
    limiter.prune_every = 3
    limits = RateLimits(requests_per_s=1.0, requests_burst=2.0)
    limiter.enter("a", limits)
    limiter.enter("b", limits)
    assert bucket_clients(tmp_path) == ["a", "b"]
    clock[0] = NOW + 0.5
    limiter.enter("c", limits)  # the third update deletes the buckets that are full...
    assert bucket_clients(tmp_path) == ["a", "b", "c"]  # ...none yet (1.5 of 2 tokens)
    clock[0] = NOW + 10
    limiter.enter("a", limits)
    limiter.enter("a", limits)
    limiter.enter("d", limits)  # the sixth
    assert bucket_clients(tmp_path) == ["a", "d"]  # b and c refilled: as good as no bucket
    with pytest.raises(RateLimited):  # and a's bucket kept what it had taken
        limiter.enter("a", limits)


def bucket_clients(directory: Path) -> list[str]:
    with sqlite3.connect(directory / DB_NAME) as db:
        return [row[0] for row in db.execute("SELECT client FROM buckets ORDER BY client")]


def test_a_failing_database_admits_and_logs_once(tmp_path, caplog):
    limiter = SharedRateLimiter(tmp_path / DB_NAME, "worker-0", clock=lambda: NOW)
    limits = RateLimits(requests_per_s=1.0, images_per_s=1.0, max_in_flight=1)
    limiter.enter("a", limits)
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        db.executescript("DROP TABLE buckets; DROP TABLE in_flight;")
    with caplog.at_level(logging.WARNING, logger="service.access"):
        for _ in range(3):
            assert limiter.enter("a", limits) is False  # admitted, and not counted
            limiter.charge_images("a", limits, 100, batch_max=8)
            limiter.leave("a")
    warnings = [r for r in caplog.records if r.name == "service.access"]
    assert len(warnings) == 1 and "admitting requests unchecked" in warnings[0].getMessage()


def test_make_limiter_picks_the_backend_and_starts_clean(tmp_path):
    assert isinstance(make_limiter(None), RateLimiter)
    capped = RateLimits(max_in_flight=1)
    dead = SharedRateLimiter(tmp_path / DB_NAME, "worker-1")  # a predecessor that never left
    dead.enter("c", capped)
    replacement = make_limiter(Worker(slot=1, count=2, run_dir=tmp_path, generation=1))
    assert isinstance(replacement, SharedRateLimiter)
    assert (replacement.path, replacement.worker) == (tmp_path / DB_NAME, "worker-1")
    assert replacement.enter("c", capped)


def test_access_takes_its_limiter_from_its_caller(tmp_path):
    limiter = SharedRateLimiter(tmp_path / DB_NAME, "worker-0")
    assert Access(AuthSettings(), RateLimitSettings(), 8, limiter=limiter).limiter is limiter
    assert isinstance(Access(AuthSettings(), RateLimitSettings(), 8).limiter, RateLimiter)


# -- real processes --------------------------------------------------------------------------
def _serve(conn, path: Path, worker: str, clock) -> None:
    """A child: run the parent's calls on its own limiter until told to stop."""
    limiter = SharedRateLimiter(path, worker, clock=lambda: clock.value)
    while True:
        command = conn.recv()
        if command is None:
            return
        method, args, times = command
        answers = []
        for _ in range(times):
            try:
                answers.append(getattr(limiter, method)(*args))
            except (RateLimited, Overloaded) as exc:
                answers.append(exc.code)
        conn.send(answers)


class Child:
    def __init__(self, path: Path, worker: str, clock):
        self.conn, theirs = FORK.Pipe()
        self.process = FORK.Process(target=_serve, args=(theirs, path, worker, clock),
                                    daemon=True)
        self.process.start()

    def send(self, method: str, *args, times: int = 1) -> None:
        self.conn.send((method, args, times))

    def answers(self) -> list:
        assert self.conn.poll(WAIT_S), "the child did not answer"
        return self.conn.recv()

    def call(self, method: str, *args, times: int = 1) -> list:
        self.send(method, *args, times=times)
        return self.answers()

    def stop(self) -> None:
        if self.process.is_alive():
            self.conn.send(None)
        self.process.join(WAIT_S)


@pytest.fixture
def clock():
    value = FORK.RawValue("d", NOW)  # shared memory: the children read what the test sets
    return value


@pytest.fixture
def children(tmp_path, clock):
    made = []

    def start(*workers: str) -> list[Child]:
        made.extend(Child(tmp_path / DB_NAME, worker, clock) for worker in workers)
        return made[-len(workers):]
    yield start
    for child in made:
        child.stop()


def test_two_processes_admit_five_a_second_in_total_not_ten(children, clock):
    limits = RateLimits(requests_per_s=5.0)
    workers = children("worker-0", "worker-1")
    per_second = []
    for second in range(4):
        clock.value = NOW + second
        for child in workers:  # both at once, 20 attempts each
            child.send("enter", "k", limits, times=20)
        answers = [a for child in workers for a in child.answers()]
        assert set(answers) <= {False, "rate_limited"}
        per_second.append(answers.count(False))
    assert per_second == [5, 5, 5, 5]


def test_the_in_flight_cap_is_shared_by_two_processes(children):
    capped = RateLimits(max_in_flight=2)
    one, two = children("worker-0", "worker-1")
    assert one.call("enter", "k", capped) == [True]
    assert two.call("enter", "k", capped) == [True]
    assert one.call("enter", "k", capped) == ["too_many_in_flight"]
    assert two.call("enter", "k", capped) == ["too_many_in_flight"]
    one.call("leave", "k")
    assert two.call("enter", "k", capped) == [True]
    assert one.call("enter", "k", capped) == ["too_many_in_flight"]


def test_a_killed_workers_counts_go_when_its_slot_is_replaced(children, tmp_path):
    capped = RateLimits(max_in_flight=2)
    dead, alive = children("worker-1", "worker-0")
    assert dead.call("enter", "k", capped, times=2) == [True, True]
    dead.process.kill()  # kill -9: it never leaves
    dead.process.join(WAIT_S)
    assert alive.call("enter", "k", capped) == ["too_many_in_flight"]
    make_limiter(Worker(slot=1, count=2, run_dir=tmp_path, generation=1))  # its replacement
    assert alive.call("enter", "k", capped, times=3) == [True, True, "too_many_in_flight"]


def _hammer(path: Path, worker: str, clock, counts, held, peak) -> None:
    """A child: 4 threads entering, charging and leaving as fast as they can."""
    class Count(logging.Handler):  # a failure would fail open, and say so here
        def emit(self, record):
            add(counts["failures"], 1)
    logging.getLogger("service.access").addHandler(Count(logging.WARNING))
    limiter = SharedRateLimiter(path, worker, clock=lambda: clock.value)
    limits = RateLimits(requests_per_s=1.0, requests_burst=150.0, images_per_s=1.0,
                        images_burst=60.0, max_in_flight=3)
    errors = []

    def run() -> None:
        try:
            for _ in range(200):
                try:
                    limiter.charge_images("k", limits, 1, 8)
                    add(counts["charged"], 1)
                except RateLimited:
                    pass
                try:
                    counted = limiter.enter("k", limits)
                except RateLimited:
                    continue
                except Overloaded:  # a request token was taken all the same
                    add(counts["overloaded"], 1)
                    continue
                add(counts["entered"], 1)
                with held.get_lock():
                    held.value += 1
                    peak.value = max(peak.value, held.value)
                add(held, -1)
                if counted:
                    limiter.leave("k")
        except BaseException as exc:  # sqlite3.OperationalError would land here
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def add(value, n: int) -> None:
    with value.get_lock():
        value.value += n


def test_two_processes_of_four_threads_hammering_one_file(tmp_path, clock):
    counts = {name: FORK.Value("i", 0) for name in ("charged", "entered", "overloaded",
                                                     "failures")}
    held, peak = FORK.Value("i", 0), FORK.Value("i", 0)
    processes = [FORK.Process(target=_hammer, args=(tmp_path / DB_NAME, f"worker-{i}", clock,
                                                    counts, held, peak))
                 for i in range(2)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(WAIT_S * 2)
    assert [p.exitcode for p in processes] == [0, 0]  # no thread raised
    assert counts["failures"].value == 0              # and nothing failed open
    assert 1 <= peak.value <= 3                       # the cap held across processes
    # The clock stood still: exactly the bursts were taken, by 2 x 4 x 200 attempts.
    assert counts["charged"].value == 60
    assert counts["entered"].value + counts["overloaded"].value == 150
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        assert db.execute("SELECT count(*) FROM in_flight").fetchone() == (0,)
