"""The GPU lane alone: admission, FIFO, deadlines, draining and micro-batching.

Real threads run `Lane.run`; the batch runner below records which jobs ran together and
holds chosen jobs on events, so queues are filled deterministically. Nothing here asserts
a duration: short deadlines only make expiry happen.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Hashable
from typing import Any

import pytest

from app.exceptions import DeadlineExceeded, Draining, Overloaded
from app.lane import BatchRunner, CostModel, Job, Lane
from tests.support import waiting

WAIT = 10.0  # upper bound for every wait; a healthy run never gets near it


def wait_until(predicate: Callable[[], bool], what: str) -> None:
    """Poll `predicate` closely (lane steps take milliseconds) for at most WAIT seconds."""
    waiting.wait_until(predicate, what, timeout=WAIT, interval=0.002)


def job(
    work: Any, images: int = 1, key: Hashable = None, timeout: float = 30.0, cost: float = 0.0
) -> Job:
    return Job(work, images, time.monotonic() + timeout, batch_key=key, cost=cost)


class Runner:
    """A run_batch that records calls, tracks concurrency and holds chosen payloads."""

    def __init__(self) -> None:
        self.calls: list[list[Any]] = []
        self.active = 0
        self.max_active = 0
        self.fail_with: BaseException | None = None
        self._holds: dict[Any, threading.Event] = {}
        self._lock = threading.Condition()

    def hold(self, payload: Any) -> threading.Event:
        """Make a batch containing `payload` block until the returned event is set."""
        self._holds[payload] = threading.Event()
        return self._holds[payload]

    def release(self, payload: Any = None) -> None:
        """Let the held `payload` (or, by default, every held payload) finish."""
        for held, event in self._holds.items():
            if payload is None or held == payload:
                event.set()

    def wait_for_call(self, payload: Any) -> None:
        """Wait until a batch containing `payload` has entered run_batch."""
        with self._lock:
            ok = self._lock.wait_for(lambda: any(payload in c for c in self.calls), WAIT)
        assert ok, f"{payload!r} never started"

    def __call__(self, jobs: list[Job]) -> list[Any]:
        payloads = [j.work for j in jobs]
        with self._lock:
            self.calls.append(payloads)
            self.active += 1
            self.max_active = max(self.max_active, self.active)
            self._lock.notify_all()
        try:
            for payload in payloads:
                if payload in self._holds:
                    assert self._holds[payload].wait(WAIT), f"{payload!r} never released"
            if self.fail_with is not None:
                raise self.fail_with
            return payloads
        finally:
            with self._lock:
                self.active -= 1


class Caller(threading.Thread):
    """A request thread: runs one job through the lane and keeps the outcome."""

    def __init__(self, lane: Lane, the_job: Job, run_batch: BatchRunner) -> None:
        super().__init__(daemon=True)
        self.lane, self.job, self.run_batch = lane, the_job, run_batch
        self.result: Any = None
        self.error: BaseException | None = None
        self.start()

    def run(self) -> None:
        try:
            self.result = self.lane.run(self.job, self.run_batch)
        except BaseException as exc:  # noqa: BLE001 -- kept for the test to inspect
            self.error = exc

    def outcome(self) -> Any:
        """Join, then return the result or re-raise the error."""
        self.join(WAIT)
        assert not self.is_alive(), f"{self.job.work!r} still waiting"
        if self.error is not None:
            raise self.error
        return self.result


def start_running(lane: Lane, runner: Runner, payload: Any, **kwargs: Any) -> Caller:
    """Start a job and wait until it is inside run_batch (held there by the runner)."""
    runner.hold(payload)
    caller = Caller(lane, job(payload, **kwargs), runner)
    runner.wait_for_call(payload)
    return caller


def enqueue(lane: Lane, runner: BatchRunner, the_job: Job) -> Caller:
    """Start a job and wait until it is queued, so queue order is the call order."""
    before = lane.queued_requests
    caller = Caller(lane, the_job, runner)
    wait_until(lambda: lane.queued_requests == before + 1, f"{the_job.work!r} to queue")
    return caller


# -- one slot: mutual exclusion and FIFO -------------------------------------------------


def test_one_slot_runs_jobs_one_at_a_time_in_fifo_order() -> None:
    lane, runner = Lane(1, 100), Runner()
    first = start_running(lane, runner, "first")
    queued = [enqueue(lane, runner, job(f"job{i}")) for i in range(5)]
    assert lane.queued_requests == 5 and lane.queued_images == 5
    assert lane.running_images == 1
    runner.release("first")
    assert first.outcome() == "first"
    assert [c.outcome() for c in queued] == [f"job{i}" for i in range(5)]
    assert runner.calls == [["first"]] + [[f"job{i}"] for i in range(5)]
    assert runner.max_active == 1
    assert lane.idle() and lane.running_images == 0 and lane.queued_images == 0


def test_one_slot_never_overlaps_jobs_started_at_once() -> None:
    lane, runner = Lane(1, 100), Runner()
    barrier = threading.Barrier(8)

    def run_batch(jobs: list[Job]) -> list[Any]:
        time.sleep(0.005)  # widens the window in which an overlap would show
        return runner(jobs)

    def start(i: int) -> Any:
        barrier.wait(WAIT)
        return lane.run(job(i), run_batch)

    callers = [threading.Thread(target=start, args=(i,), daemon=True) for i in range(8)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join(WAIT)
    assert sorted(p for call in runner.calls for p in call) == list(range(8))
    assert runner.max_active == 1
    assert lane.idle()


# -- admission ----------------------------------------------------------------------------


def test_full_queue_refuses_at_once_with_retry_after() -> None:
    lane, runner = Lane(1, 2), Runner()
    running = start_running(lane, runner, "running")
    # One running, nothing queued: a job bigger than the whole queue is refused.
    with pytest.raises(Overloaded) as refused:
        lane.run(job("three", images=3, timeout=1), runner)
    assert refused.value.retry_after >= 1
    queued = [enqueue(lane, runner, job(f"q{i}")) for i in range(2)]
    assert lane.queued_images == 2
    with pytest.raises(Overloaded) as refused:
        lane.run(job("one more", timeout=1), runner)
    assert refused.value.retry_after >= 1
    with pytest.raises(Overloaded):
        lane.run(job("three", images=3, timeout=1), runner)
    # Refused jobs never enter the queue nor reach run_batch.
    assert lane.queued_requests == 2
    runner.release("running")
    assert running.outcome() == "running"
    assert [c.outcome() for c in queued] == ["q0", "q1"]
    assert runner.calls == [["running"], ["q0"], ["q1"]]


def test_multi_image_job_refused_when_anything_is_queued() -> None:
    lane, runner = Lane(1, 4), Runner()
    running = start_running(lane, runner, "running")
    queued = enqueue(lane, runner, job("queued", images=2))
    with pytest.raises(Overloaded):
        lane.run(job("three", images=3, timeout=1), runner)
    runner.release("running")
    running.outcome()
    assert queued.outcome() == "queued"


def test_idle_lane_admits_a_job_bigger_than_the_queue() -> None:
    lane, runner = Lane(1, 2), Runner()
    assert lane.run(job("big", images=5, timeout=5), runner) == "big"
    lane_without_queue = Lane(1, 0)
    assert lane_without_queue.run(job("big", images=3, timeout=5), runner) == "big"
    assert runner.calls == [["big"], ["big"]]


def test_unbounded_lane_never_refuses_and_runs_jobs_concurrently() -> None:
    lane, runner = Lane(0, 0), Runner()
    together = threading.Barrier(6)

    def run_batch(jobs: list[Job]) -> list[Any]:
        together.wait(WAIT)  # breaks (and fails the jobs) unless all six run at once
        return runner(jobs)

    callers = [Caller(lane, job(i, images=4), run_batch) for i in range(6)]
    assert sorted(c.outcome() for c in callers) == list(range(6))
    assert lane.idle()


def test_retry_after_follows_measured_service_times_not_the_initial_guess() -> None:
    lane, runner = Lane(1, 100, initial_seconds_per_image=1000.0), Runner()
    # A guess of 1000 s per image until something has run: 2 images ahead, 2000 s.
    running = start_running(lane, runner, "guessed", images=2)
    assert lane.retry_after() == 2000
    runner.release()
    running.outcome()
    # One measured call (well under a second per image) replaces the guess entirely.
    running = start_running(lane, runner, "measured", images=2)
    assert lane.retry_after() == 1
    runner.release()
    running.outcome()


def test_the_cost_model_learns_the_call_time_a_runner_reports_not_its_waits() -> None:
    lane = Lane(1, 100)

    def waits_then_works(jobs: list[Job]) -> list[Any]:
        time.sleep(0.3)  # e.g. a LoRA switch waiting for other calls to finish
        jobs[0].call_seconds = 0.01  # the work itself
        return [job.work for job in jobs]

    lane.run(job("a", images=1), waits_then_works)
    assert lane.cost_model.predict([job("b", images=1)]) == pytest.approx(0.01)

    def reports_nothing(jobs: list[Job]) -> list[Any]:
        time.sleep(0.3)
        return [job.work for job in jobs]

    other = Lane(1, 100)
    other.run(job("a", images=1), reports_nothing)
    assert other.cost_model.predict([job("b", images=1)]) >= 0.3  # the lane's own clock


def test_the_cost_model_skips_a_call_its_runner_says_is_not_representative() -> None:
    lane = Lane(1, 100)

    def works(seconds: float, representative: bool):  # noqa: ANN202
        def run(jobs: list[Job]) -> list[Any]:
            jobs[0].call_seconds, jobs[0].representative = seconds, representative
            return [job.work for job in jobs]

        return run

    lane.run(job("a", images=1), works(0.02, True))
    lane.run(job("b", images=1), works(90.0, False))  # e.g. it compiled a new size first
    assert lane.cost_model.predict([job("c", images=1)]) == pytest.approx(0.02)


def test_retry_after_grows_with_the_queue() -> None:
    lane, runner = Lane(1, 100), Runner()
    assert lane.retry_after() >= 1
    running = start_running(lane, runner, "running", images=2)
    queued = [enqueue(lane, runner, job("a", images=2))]
    shorter = lane.retry_after()
    queued += [enqueue(lane, runner, job(f"b{i}", images=3)) for i in range(3)]
    longer = lane.retry_after()
    assert 1 <= shorter < longer
    # The estimate a refusal carries grows the same way.
    small = Lane(1, 1)
    small_runner = Runner()
    small_running = start_running(small, small_runner, "running")
    with pytest.raises(Overloaded) as short_queue:
        small.run(job("x", images=2, timeout=1), small_runner)
    small_queued = enqueue(small, small_runner, job("q"))
    with pytest.raises(Overloaded) as long_queue:
        small.run(job("x", timeout=1), small_runner)
    assert 1 <= short_queue.value.retry_after < long_queue.value.retry_after
    runner.release()
    small_runner.release()
    for caller in [running, *queued, small_running, small_queued]:
        caller.outcome()


# -- deadlines ----------------------------------------------------------------------------


def test_deadline_while_queued_removes_the_job_and_it_never_runs() -> None:
    lane, runner = Lane(1, 10), Runner()
    running = start_running(lane, runner, "running")
    before = enqueue(lane, runner, job("before"))
    expiring = enqueue(lane, runner, job("expiring", timeout=0.2))
    after = enqueue(lane, runner, job("after"))
    with pytest.raises(DeadlineExceeded) as exceeded:
        expiring.outcome()
    assert exceeded.value.ran is False
    assert lane.queued_requests == 2 and lane.queued_images == 2
    runner.release("running")
    assert [c.outcome() for c in (running, before, after)] == ["running", "before", "after"]
    assert runner.calls == [["running"], ["before"], ["after"]]
    assert lane.idle()


def test_deadline_of_a_follower_while_its_batch_runs() -> None:
    lane, runner = Lane(1, 10, batch_max_images=2, batch_wait=0.05), Runner()
    first = start_running(lane, runner, "first", key="other")
    runner.hold("leader")
    leader = enqueue(lane, runner, job("leader", key="k"))
    follower_job = job("follower", key="k", timeout=0.5)
    follower = enqueue(lane, runner, follower_job)
    runner.release("first")
    runner.wait_for_call("leader")
    assert runner.calls[-1] == ["leader", "follower"]
    with pytest.raises(DeadlineExceeded) as exceeded:
        follower.outcome()
    assert exceeded.value.ran is True
    assert follower_job.cancelled and follower_job.expired()
    runner.release("leader")
    assert first.outcome() == "first"
    assert leader.outcome() == "leader"
    assert lane.idle()


def test_leader_past_its_deadline_frees_the_slot_when_run_batch_stops() -> None:
    lane, calls = Lane(1, 10), []

    def run_batch(jobs: list[Job]) -> list[Any]:
        """Like the engine's step callback: stop once every job of the call expired."""
        calls.append([j.work for j in jobs])
        give_up = time.monotonic() + WAIT
        while jobs[0].work == "slow" and time.monotonic() < give_up:
            if all(j.expired() for j in jobs):
                raise DeadlineExceeded(ran=True)
            time.sleep(0.005)  # one "denoising step"
        return [j.work for j in jobs]

    slow = Caller(lane, job("slow", timeout=0.2), run_batch)
    wait_until(lambda: calls, "the slow job to start")
    next_job = enqueue(lane, run_batch, job("next"))
    with pytest.raises(DeadlineExceeded) as exceeded:
        slow.outcome()
    assert exceeded.value.ran is True
    assert next_job.outcome() == "next"
    assert calls == [["slow"], ["next"]]
    assert lane.idle() and lane.running_images == 0


# -- failures and draining --------------------------------------------------------------


def test_run_batch_error_reaches_every_job_of_the_batch_and_the_lane_recovers() -> None:
    lane, runner = Lane(1, 10, batch_max_images=4, batch_wait=0.05), Runner()
    running = start_running(lane, runner, "running", key="other")
    batch = [enqueue(lane, runner, job(f"b{i}", key="k")) for i in range(3)]
    runner.fail_with = ValueError("pipeline failed")
    runner.release("running")
    with pytest.raises(ValueError):
        running.outcome()
    for caller in batch:
        with pytest.raises(ValueError):
            caller.outcome()
    errors = {id(c.error) for c in batch}
    assert runner.calls[-1] == ["b0", "b1", "b2"] and len(errors) == 1
    runner.fail_with = None
    assert lane.run(job("after", key="k", timeout=5), runner) == "after"
    assert lane.idle() and lane.running_images == 0 and lane.queued_images == 0


def test_drain_refuses_new_jobs_and_finishes_queued_ones() -> None:
    lane, runner = Lane(1, 10), Runner()
    running = start_running(lane, runner, "running")
    queued = enqueue(lane, runner, job("queued"))
    lane.drain()
    assert lane.draining and not lane.idle()
    with pytest.raises(Draining):
        lane.run(job("late", timeout=1), runner)
    runner.release("running")
    assert running.outcome() == "running"
    assert queued.outcome() == "queued"
    assert lane.idle()
    assert runner.calls == [["running"], ["queued"]]
    with pytest.raises(Draining):
        lane.run(job("later", timeout=1), runner)


# -- micro-batching ------------------------------------------------------------------


def test_compatible_queued_jobs_run_as_one_batch() -> None:
    lane, runner = Lane(1, 10, batch_max_images=4, batch_wait=0.2), Runner()
    first = start_running(lane, runner, "first", key="other")
    callers = [
        enqueue(lane, runner, job("c1", key="k")),
        enqueue(lane, runner, job("c2", key="k")),
        enqueue(lane, runner, job("odd", key="j")),
        enqueue(lane, runner, job("c3", key="k")),
    ]
    runner.release("first")
    assert first.outcome() == "first"
    assert [c.outcome() for c in callers] == ["c1", "c2", "odd", "c3"]
    assert runner.calls == [["first"], ["c1", "c2", "c3"], ["odd"]]
    assert lane.idle() and lane.running_images == 0


def test_a_job_that_would_overfill_the_batch_is_not_merged() -> None:
    lane, runner = Lane(1, 20, batch_max_images=4, batch_wait=0.05), Runner()
    first = start_running(lane, runner, "first", key="other")
    callers = [
        enqueue(lane, runner, job("two", images=2, key="k")),
        enqueue(lane, runner, job("three", images=3, key="k")),
        enqueue(lane, runner, job("also two", images=2, key="k")),
    ]
    runner.release("first")
    first.outcome()
    assert [c.outcome() for c in callers] == ["two", "three", "also two"]
    assert runner.calls == [["first"], ["two", "also two"], ["three"]]


def test_jobs_without_a_batch_key_never_batch() -> None:
    lane, runner = Lane(1, 10, batch_max_images=8, batch_wait=0.05), Runner()
    first = start_running(lane, runner, "first")
    callers = [enqueue(lane, runner, job(f"n{i}")) for i in range(3)]
    runner.release("first")
    first.outcome()
    assert [c.outcome() for c in callers] == ["n0", "n1", "n2"]
    assert runner.calls == [["first"], ["n0"], ["n1"], ["n2"]]


def test_batching_off_by_default_even_with_a_key() -> None:
    lane, runner = Lane(1, 10), Runner()
    first = start_running(lane, runner, "first", key="k")
    callers = [enqueue(lane, runner, job(f"k{i}", key="k")) for i in range(2)]
    runner.release("first")
    first.outcome()
    assert [c.outcome() for c in callers] == ["k0", "k1"]
    assert runner.calls == [["first"], ["k0"], ["k1"]]


def test_a_job_without_deadline_waits_its_turn() -> None:
    # An infinite deadline (the engine's warm-up job uses one; REQUEST_TIMEOUT_SECONDS=inf
    # parses to one) must mean "no deadline", in the queue and as a follower.
    lane, runner = Lane(1, 10, batch_max_images=2, batch_wait=0.05), Runner()
    first = start_running(lane, runner, "first", key="other")
    leader = enqueue(lane, runner, Job("leader", 1, math.inf, batch_key="k"))
    follower = enqueue(lane, runner, Job("follower", 1, math.inf, batch_key="k"))
    runner.release("first")
    assert [c.outcome() for c in (first, leader, follower)] == ["first", "leader", "follower"]
    assert runner.calls == [["first"], ["leader", "follower"]]


# -- the cost model behind Retry-After ------------------------------------------------------


def test_cost_model_learns_a_fixed_part_and_seconds_per_unit() -> None:
    model = CostModel()
    for cost in (1e5, 4e5, 1e6, 1e5, 2e6):
        model.observe(cost, 0.25 + 2e-6 * cost)  # a call: 0.25 s, then 2 µs per unit
    assert model.fixed == pytest.approx(0.25)
    assert model.per_unit == pytest.approx(2e-6)
    assert model.predict([job("big", images=1, cost=3e6)]) == pytest.approx(6.25)


def test_cost_model_with_one_size_only_scales_by_cost() -> None:
    model = CostModel(initial_seconds_per_image=1000.0)
    assert model.predict([job("guess", images=3)]) == 3000.0  # unmeasured: the guess
    for _ in range(3):
        model.observe(100.0, 2.0)
    assert model.predict([job("twice", images=1, cost=200.0)]) == pytest.approx(4.0)


def test_retry_after_of_large_jobs_queued_after_small_ones_counts_their_size() -> None:
    # The case a per-image average got 2x wrong: it learned from small calls and then
    # priced large ones like small ones.
    lane, runner = Lane(1, 100), Runner()
    small, large = 64 * 64 * 2, 1024 * 1024 * 28
    for _ in range(8):
        lane.cost_model.observe(small, 0.1 + small * 1e-7)
    lane.cost_model.observe(large, 0.1 + large * 1e-7)
    running = start_running(lane, runner, "running", images=1, cost=small)
    queued = [enqueue(lane, runner, job(f"large{i}", images=1, cost=large)) for i in range(3)]
    expected = 3 * (0.1 + large * 1e-7)  # plus what is left of the small running call
    assert expected <= lane.expected_wait() <= expected + 0.11
    assert lane.retry_after() == math.ceil(lane.expected_wait())
    runner.release()
    for caller in [running, *queued]:
        caller.outcome()


def test_retry_after_counts_only_what_is_left_of_a_running_call() -> None:
    lane, runner = Lane(1, 100), Runner()
    lane.cost_model.observe(10.0, 100.0)  # 10 s per unit
    running = start_running(lane, runner, "running", images=1, cost=10.0)
    started = next(iter(lane._running.values()))[0]
    assert lane.expected_wait(now=started) == pytest.approx(100.0)
    assert lane.expected_wait(now=started + 60) == pytest.approx(40.0)
    assert lane.expected_wait(now=started + 500) == 0.0  # overdue: nothing promised
    runner.release()
    running.outcome()
