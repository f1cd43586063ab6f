"""The GPU lane: admission, a bounded FIFO queue, deadlines and micro-batching.

Pipeline calls in parallel on one device add no throughput (their kernels interleave and
every request gets slower), so at most `slots` calls run at once and the rest wait here,
in order, up to `max_queue` images. Beyond that a request is refused at once with an
estimate of when to retry. Request threads run their own work: the thread that reaches
the head of the queue with a free slot becomes the leader of a batch, takes compatible
waiting jobs along (micro-batching), runs the pipeline once for all of them, and hands
each follower its own images.

`Retry-After` comes from a cost model of what is queued and running: each job carries a
`cost` (the engine gives pixels × steps × images), and the lane learns online what a
pipeline call of a given cost takes (`CostModel`: a fixed part per call plus seconds per
unit of cost, fitted over recent calls). With mixed sizes a per-image average is off by
the ratio of the sizes; a per-unit fit is not.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from app.exceptions import DeadlineExceeded, Draining, Overloaded

# The work item a job carries; the lane never looks inside it.
W = TypeVar("W")


@dataclass(eq=False)
class Job(Generic[W]):
    """One request's `work`: `images` images, done by `deadline` (time.monotonic()).

    `cost` is the job's size for the service-time model (pixels × steps × images for a
    generation); 0 counts it as `images` units. A batch runner may set the leader's
    `call_seconds` to the time of the work alone, without waits it had to make first (a
    LoRA switch waiting for other calls); the model then learns from that. It sets
    `representative` False for a call whose time says nothing of the next ones (it compiled
    new graphs); the model then does not learn from it.
    """

    work: W
    images: int
    deadline: float
    batch_key: Hashable = None
    cost: float = 0.0
    call_seconds: float | None = None
    representative: bool = True
    enqueued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    cancelled: bool = False
    result: Any = None
    error: BaseException | None = None
    done: bool = False

    def expired(self, now: float | None = None) -> bool:
        """Return whether nobody is waiting for this job any more."""
        return self.cancelled or (now or time.monotonic()) >= self.deadline

    @property
    def units(self) -> float:
        return self.cost if self.cost > 0 else float(self.images)


class CostModel:
    """Seconds of a pipeline call as `fixed + per_unit × cost`, fitted over recent calls.

    Until the first call is measured, a call is guessed at `initial_seconds_per_image` per
    image. Least squares over the last `window` calls; when their costs barely differ
    (one size only), or the fit says a negative part, the line goes through the origin.
    """

    def __init__(self, initial_seconds_per_image: float = 1.0, window: int = 32) -> None:
        self.initial_seconds_per_image = initial_seconds_per_image
        self._samples: deque[tuple[float, float]] = deque(maxlen=window)
        self.fixed = 0.0
        self.per_unit = 0.0

    @property
    def measured(self) -> bool:
        return bool(self._samples)

    def observe(self, cost: float, seconds: float) -> None:
        """Learn from one pipeline call of total `cost` that took `seconds`."""
        self._samples.append((cost, seconds))
        n = len(self._samples)
        mean_x = sum(x for x, _ in self._samples) / n
        mean_y = sum(y for _, y in self._samples) / n
        var_x = sum((x - mean_x) ** 2 for x, _ in self._samples)
        if n >= 2 and var_x > (0.05 * mean_x) ** 2 * n:
            slope = sum((x - mean_x) * (y - mean_y) for x, y in self._samples) / var_x
            fixed = mean_y - slope * mean_x
            if slope > 0 and fixed >= 0:
                self.fixed, self.per_unit = fixed, slope
                return
        # One size only (or a fit that makes no physical sense): seconds per unit on average.
        self.fixed, self.per_unit = 0.0, mean_y / mean_x if mean_x > 0 else 0.0

    def predict(self, jobs: Iterable[Job[Any]]) -> float:
        """Return the expected seconds of one call running `jobs`."""
        jobs = list(jobs)
        if not self.measured:
            return self.initial_seconds_per_image * sum(job.images for job in jobs)
        return self.fixed + self.per_unit * sum(job.units for job in jobs)


# run_batch(jobs) returns one result per job, in order, or raises for all of them.
BatchRunner = Callable[[list[Job[W]]], list[Any]]


class Lane(Generic[W]):
    """Run at most `slots` batches at once, queue up to `max_queue` images, FIFO."""

    def __init__(
        self,
        slots: int,
        max_queue: int,
        *,
        batch_max_images: int = 1,
        batch_wait: float = 0.0,
        initial_seconds_per_image: float = 1.0,
    ) -> None:
        self.slots = slots if slots > 0 else math.inf  # 0: unbounded (the seed design)
        self.max_queue = max_queue
        self.batch_max_images = max(1, batch_max_images)
        self.batch_wait = batch_wait
        self._cond = threading.Condition()
        self._waiting: deque[Job[W]] = deque()
        self._running_batches = 0
        self._running_images = 0
        self._draining = False
        # Service times, for Retry-After: a guess until the first call is measured.
        self.cost_model = CostModel(initial_seconds_per_image)
        # Running batches: (started_at, expected seconds), for what is left of them.
        self._running: dict[int, tuple[float, float]] = {}

    # -- state, for probes and metrics ------------------------------------------------

    @property
    def queued_requests(self) -> int:
        return len(self._waiting)

    @property
    def queued_images(self) -> int:
        return sum(job.images for job in self._waiting)

    @property
    def running_images(self) -> int:
        return self._running_images

    @property
    def draining(self) -> bool:
        return self._draining

    def drain(self) -> None:
        """Refuse new work from now on; queued and running work still completes."""
        with self._cond:
            self._draining = True

    def idle(self) -> bool:
        """Return whether nothing is queued or running."""
        with self._cond:
            return not self._waiting and not self._running_batches

    def expected_wait(self, now: float | None = None) -> float:
        """Estimate the seconds until what is queued and running now has finished."""
        now = time.monotonic() if now is None else now
        model = self.cost_model
        running = sum(max(0.0, started + expected - now)
                      for started, expected in self._running.values())  # fmt: skip
        # Queued jobs run one call each (batches would only make it shorter).
        queued = sum(model.predict([job]) for job in self._waiting)
        slots = 1 if math.isinf(self.slots) else self.slots
        return (running + queued) / slots

    def retry_after(self) -> int:
        """Return whole seconds until the queue ahead of a new request has cleared."""
        return max(1, math.ceil(self.expected_wait()))

    # -- running ------------------------------------------------------------------

    def run(self, job: Job[W], run_batch: BatchRunner[W]) -> Any:
        """Admit `job`, wait for its turn, run it (perhaps batched); return its result."""
        self.enqueue(job)
        return self.complete(job, run_batch)

    def enqueue(self, job: Job[W]) -> None:
        """Admit `job` into the queue, or raise Overloaded or Draining at once."""
        with self._cond:
            self._admit(job)
            self._waiting.append(job)
            self._cond.notify_all()

    def complete(self, job: Job[W], run_batch: BatchRunner[W]) -> Any:
        """Wait for an enqueued job's turn, run it (perhaps batched); return its result."""
        with self._cond:
            batch = self._wait_for_turn(job)
        if batch is None:  # a leader ran it as part of its batch
            return self._outcome(job)
        self._run_as_leader(batch, run_batch)
        if job.error is None and job.expired():
            # Its followers kept the call going; past its own deadline it answers as they do.
            raise DeadlineExceeded(ran=True)
        return self._outcome(job)

    def _admit(self, job: Job[W]) -> None:
        if self._draining:
            raise Draining()
        if math.isinf(self.slots):
            return
        free_now = not self._waiting and self._running_batches < self.slots
        if not free_now and self.queued_images + job.images > self.max_queue:
            raise Overloaded(self.retry_after())

    def _wait_for_turn(self, job: Job[W]) -> list[Job[W]] | None:
        """Wait (holding the condition) until `job` leads a batch or a leader ran it."""
        while True:
            if job.done or job.started_at is not None:
                # Taken by a leader: wait for the result, but not past the deadline.
                while not job.done:
                    remaining = job.deadline - time.monotonic()
                    if remaining <= 0:
                        job.cancelled = True
                        raise DeadlineExceeded(ran=True)
                    self._cond.wait(min(remaining, threading.TIMEOUT_MAX))
                return None
            if self._waiting[0] is job and self._running_batches < self.slots:
                self._waiting.popleft()
                self._running_batches += 1
                job.started_at = time.monotonic()
                return [job]
            remaining = job.deadline - time.monotonic()
            if remaining <= 0:
                # Still queued: it never runs.
                self._waiting.remove(job)
                self._cond.notify_all()
                raise DeadlineExceeded(ran=False)
            self._cond.wait(min(remaining, threading.TIMEOUT_MAX))

    def _collect(self, batch: list[Job[W]]) -> None:
        """Add compatible waiting jobs to the leader's batch, waiting up to batch_wait."""
        leader = batch[0]
        images = leader.images
        give_up_at = time.monotonic() + self.batch_wait
        with self._cond:
            while True:
                for job in list(self._waiting):
                    if job.batch_key == leader.batch_key and (
                        images + job.images <= self.batch_max_images
                    ):
                        self._waiting.remove(job)
                        job.started_at = time.monotonic()
                        batch.append(job)
                        images += job.images
                remaining = give_up_at - time.monotonic()
                if images >= self.batch_max_images or remaining <= 0:
                    break
                self._cond.wait(min(remaining, threading.TIMEOUT_MAX))
            self._running_images += images
            self._cond.notify_all()

    def _run_as_leader(self, batch: list[Job[W]], run_batch: BatchRunner[W]) -> None:
        try:
            if self.batch_max_images > 1 and batch[0].batch_key is not None:
                self._collect(batch)
            else:
                with self._cond:
                    self._running_images += batch[0].images
            started = time.monotonic()
            with self._cond:
                self._running[id(batch)] = (started, self.cost_model.predict(batch))
            try:
                results = run_batch(batch)
            except BaseException as exc:  # every job of the batch shares the failure
                for job in batch:
                    job.error = exc
            else:
                with self._cond:
                    elapsed = batch[0].call_seconds or time.monotonic() - started
                    if batch[0].representative:
                        self.cost_model.observe(sum(job.units for job in batch), elapsed)
                for job, result in zip(batch, results, strict=True):
                    job.result = result
        finally:
            with self._cond:
                self._running.pop(id(batch), None)
                for job in batch:
                    job.done = True
                self._running_batches -= 1
                self._running_images -= sum(job.images for job in batch)
                self._cond.notify_all()

    @staticmethod
    def _outcome(job: Job[W]) -> Any:
        if job.error is not None:
            raise job.error
        return job.result
