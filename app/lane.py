"""The GPU lane: admission, a bounded FIFO queue, deadlines and micro-batching.

Pipeline calls in parallel on one device add no throughput (their kernels interleave and
every request gets slower), so at most `slots` calls run at once and the rest wait here,
in order, up to `max_queue` images. Beyond that a request is refused at once with an
estimate of when to retry. Request threads run their own work: the thread that reaches
the head of the queue with a free slot becomes the leader of a batch, takes compatible
waiting jobs along (micro-batching), runs the pipeline once for all of them, and hands
each follower its own images.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from app.exceptions import DeadlineExceeded, Draining, Overloaded

# The work item a job carries; the lane never looks inside it.
W = TypeVar("W")


@dataclass(eq=False)
class Job(Generic[W]):
    """One request's `work`: `images` images, done by `deadline` (time.monotonic())."""

    work: W
    images: int
    deadline: float
    batch_key: Hashable = None
    enqueued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    cancelled: bool = False
    result: Any = None
    error: BaseException | None = None
    done: bool = False

    def expired(self, now: float | None = None) -> bool:
        """Return whether nobody is waiting for this job any more."""
        return self.cancelled or (now or time.monotonic()) >= self.deadline


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
        # Recent service time per image, for Retry-After estimates: a guess until the
        # first generation is measured, then a moving average of measurements only.
        self._seconds_per_image = initial_seconds_per_image
        self._measured = False

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

    def retry_after(self) -> int:
        """Estimate the seconds until the queue ahead of a new request has cleared."""
        ahead = self.queued_images + self._running_images
        slots = 1 if math.isinf(self.slots) else self.slots
        return max(1, math.ceil(ahead * self._seconds_per_image / slots))

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
            try:
                results = run_batch(batch)
            except BaseException as exc:  # every job of the batch shares the failure
                for job in batch:
                    job.error = exc
            else:
                self._record_service_time(batch, time.monotonic() - started)
                for job, result in zip(batch, results, strict=True):
                    job.result = result
        finally:
            with self._cond:
                for job in batch:
                    job.done = True
                self._running_batches -= 1
                self._running_images -= sum(job.images for job in batch)
                self._cond.notify_all()

    def _record_service_time(self, batch: list[Job[W]], seconds: float) -> None:
        per_image = seconds / max(1, sum(job.images for job in batch))
        if not self._measured:
            self._seconds_per_image, self._measured = per_image, True
        else:
            self._seconds_per_image = 0.8 * self._seconds_per_image + 0.2 * per_image

    @staticmethod
    def _outcome(job: Job[W]) -> Any:
        if job.error is not None:
            raise job.error
        return job.result
