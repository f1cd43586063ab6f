"""The engine: one shared diffusers pipeline per worker, a derived pipeline per request.

The shared pipeline is loaded once, in a background thread, so the worker answers (with
503 "model is loading") while weights load and Gunicorn never kills it for being slow.
Each request derives its own pipeline around the shared modules (app/engine/derive.py)
and its own CPU generators, and waits in the lane; the thread whose turn it is runs one
pipeline call for its batch (app/engine/runner.py).

Two seams replace the parts a test cannot make fail on a CPU: `loader` (how the shared
pipeline is loaded) and `pipeline_call` (how a derived pipeline is called).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from app.engine.derive import PipelineDeriver, call_parameters
from app.engine.loading import explain_load_failure, load_pipeline, resolve_device, resolve_dtype
from app.engine.runner import PipelineCall, call_pipeline, run_batch
from app.engine.work import GenerationSpec, PartialCallback, Task, Work
from app.exceptions import (
    FatalDeviceError,
    GenerationOutOfMemory,
    ModelLoadFailed,
    ModelLoading,
    UnsupportedParameter,
)
from app.lane import Job, Lane
from app.metrics import Metrics

log = logging.getLogger(__name__)

# Loads the shared pipeline: (model_id, device, dtype, cache_dir) -> pipeline.
Loader = Callable[[str, torch.device, torch.dtype, Path], Any]


class Engine:
    """Hold the shared pipeline and run generations on pipelines derived from it."""

    def __init__(
        self,
        model_id: str,
        lane: Lane[Work],
        *,
        device: str = "auto",
        dtype: str = "auto",
        cache_dir: str | Path = "instance/models",
        retry_after: int = 10,
        warmup: bool = True,
        metrics: Metrics | None = None,
        loader: Loader = load_pipeline,
        pipeline_call: PipelineCall = call_pipeline,
    ) -> None:
        self.model_id = model_id
        self.lane = lane
        self._device_name = device
        self._dtype_name = dtype
        self._cache_dir = Path(cache_dir)
        self._retry_after = retry_after
        self._warmup = warmup
        self._metrics = metrics
        self._loader = loader
        self._pipeline_call = pipeline_call
        # Called after a fatal device error; Gunicorn's hook sets it to restart the worker.
        self.on_fatal: Callable[[], None] | None = None
        # Called with each admitted job in the request's thread (the access log reads it).
        self.on_submit: Callable[[Job[Work]], None] | None = None
        self._shared: Any = None
        self._failure: str | None = None
        self._fatal: str | None = None
        self._loaded = threading.Event()
        self._deriver = PipelineDeriver()
        self.device: torch.device | None = None
        self.dtype: torch.dtype | None = None

    # -- loading -------------------------------------------------------------------------

    def start(self) -> None:
        """Load the shared pipeline in a background thread."""
        threading.Thread(target=self.load, name="model-loader", daemon=True).start()

    def load(self) -> None:
        """Load and warm up the shared pipeline; record a readable reason if it fails."""
        started = time.monotonic()
        try:
            self.device = resolve_device(self._device_name)
            self.dtype = resolve_dtype(self._dtype_name, self.device)
            self._shared = self._loader(self.model_id, self.device, self.dtype, self._cache_dir)
        except Exception as exc:  # any failure must leave a reason, not a dead thread
            self._failure = explain_load_failure(exc)
            log.error("model %r failed to load: %s", self.model_id, self._failure, exc_info=exc)
            self._loaded.set()
            return
        log.info(
            "model %r loaded as %s on %s in %s in %.1fs",
            self.model_id, type(self._shared).__name__, self.device, self.dtype,
            time.monotonic() - started,
        )  # fmt: skip
        if self._warmup:
            self._warm_up()
        self._loaded.set()

    def _warm_up(self) -> None:
        """Run one small generation so the first request pays no start-up costs."""
        started = time.monotonic()
        spec = GenerationSpec("warm-up", None, 64, 64, 2, 1.0, (0,))
        try:
            work = Work(spec, self._deriver.derive(self._shared), spec.generators())
            self._run_batch([Job(work, images=1, deadline=math.inf, cost=spec.cost())])
        except Exception as exc:
            self._failure = "The warm-up generation failed; see the server log."
            log.error("warm-up generation failed", exc_info=exc)
        else:
            log.info("warm-up generation took %.2fs", time.monotonic() - started)

    def wait_until_loaded(self, timeout: float | None = None) -> bool:
        """Block until loading (and warm-up) has finished, either way."""
        return self._loaded.wait(timeout)

    @property
    def state(self) -> str:
        """Return "loading", "ready", "failed", "fatal" or "draining"."""
        if not self._loaded.is_set():
            return "loading"
        if self._failure:
            return "failed"
        if self._fatal:
            return "fatal"
        return "draining" if self.lane.draining else "ready"

    @property
    def reason(self) -> str | None:
        """Say why the engine is not ready, or None when it is."""
        return {
            "loading": "model is loading",
            "failed": self._failure,
            "fatal": self._fatal,
            "draining": "server is shutting down",
        }.get(self.state)

    def shared_pipeline(self) -> Any:
        """Return the shared pipeline; raise ModelLoading, ModelLoadFailed or
        FatalDeviceError when there is none to use."""
        if not self._loaded.is_set():
            raise ModelLoading(self._retry_after)
        if self._failure:
            raise ModelLoadFailed(self._failure)
        if self._fatal:
            raise FatalDeviceError()
        return self._shared

    # -- generation ----------------------------------------------------------------------

    def derive_pipeline(self, task: Task = Task.TEXT_TO_IMAGE) -> Any:
        """Build a pipeline for `task` around the shared modules, with per-request parts."""
        return self._deriver.derive(self.shared_pipeline(), task)

    def generate(self, spec: GenerationSpec, deadline: float) -> list[Image.Image]:
        """Queue `spec` for the lane; return one PIL image per seed, in order.

        Raises Overloaded or Draining (not admitted), DeadlineExceeded, or a GenerationError.
        """
        return self.complete(self.submit(spec, deadline))

    def submit(
        self, spec: GenerationSpec, deadline: float, on_partial: PartialCallback | None = None
    ) -> Job[Work]:
        """Derive this request's pipeline and generators and admit it to the queue."""
        shared = self.shared_pipeline()
        if spec.negative_prompt and "negative_prompt" not in call_parameters(type(shared)):
            raise UnsupportedParameter(
                "negative_prompt", "The served model does not support negative_prompt."
            )
        # The request thread derives its own pipeline and generators before queueing.
        work = Work(spec, self._deriver.derive(shared, spec.task), spec.generators(), on_partial)
        job = Job(
            work,
            images=len(spec.seeds),
            deadline=deadline,
            batch_key=spec.batch_key() if work.batchable else None,
            cost=spec.cost(),
        )
        self.lane.enqueue(job)
        if self.on_submit:
            self.on_submit(job)
        return job

    def complete(self, job: Job[Work]) -> list[Image.Image]:
        """Wait for a submitted job's turn in the lane and return its images."""
        return self.lane.complete(job, self._run_batch)

    def _run_batch(self, jobs: list[Job[Work]]) -> list[list[Image.Image]]:
        """Run one pipeline call for `jobs` (the lane's runner), with metrics and faults."""
        if self._metrics:
            for job in jobs:
                if job.started_at is not None:
                    self._metrics.queue_wait.observe(job.started_at - job.enqueued_at)
        started = time.monotonic()
        try:
            results = run_batch(jobs, self._pipeline_call)
        except GenerationOutOfMemory:
            if self.device is not None and self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise
        except FatalDeviceError as exc:
            self._declare_fatal(exc.__cause__ or exc)
            raise
        if self._metrics:
            self._metrics.generation_time.observe(time.monotonic() - started)
            self._metrics.images.inc(sum(len(images) for images in results))
        return results

    def _declare_fatal(self, exc: BaseException) -> None:
        """Mark the worker unready for good and ask for it to be restarted."""
        self._fatal = "A fatal device error occurred; the worker is restarting."
        log.critical("fatal device error, the worker will exit: %s", exc)
        if self.on_fatal:
            self.on_fatal()
