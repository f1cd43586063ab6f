"""The engine: one shared diffusers pipeline per worker, a derived pipeline per request.

The shared pipeline is loaded once, in a background thread, so the worker answers (with
503 "model is loading") while weights load and Gunicorn never kills it for being slow.
Each request derives its own pipeline around the shared modules (app/engine/derive.py)
and its own CPU generators, and waits in the lane; the thread whose turn it is runs one
pipeline call for its batch (app/engine/runner.py), holding the batch's LoRA adapters
active on the shared modules while it runs (app/engine/adapters.py, with LORA_DIR set).

Two seams replace the parts a test cannot make fail on a CPU: `loader` (how the shared
pipeline is loaded) and `pipeline_call` (how a derived pipeline is called).
"""

from __future__ import annotations

import copy
import functools
import logging
import math
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from app.config import SETTINGS
from app.engine import families
from app.engine.adapters import AdapterSlots
from app.engine.compile_watch import CompileWatch
from app.engine.derive import PipelineDeriver
from app.engine.hotswap import HotswapSlots, layer_names
from app.engine.loading import explain_load_failure, load_pipeline, resolve_device, resolve_dtype
from app.engine.options import EngineOptions, apply_options, release_offloaded
from app.engine.runner import PipelineCall, call_pipeline, run_batch
from app.engine.usage import token_usage
from app.engine.work import GenerationSpec, PartialCallback, Task, Work
from app.exceptions import (
    FatalDeviceError,
    GenerationOutOfMemory,
    LoraNotFound,
    ModelLoadFailed,
    ModelLoading,
)
from app.lane import Job, Lane
from app.loras import LoraLibrary
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
        warmup_sizes: tuple[tuple[int, int], ...] = ((64, 64),),
        warmup_guidance: float = 1.0,
        options: EngineOptions | None = None,
        metrics: Metrics | None = None,
        loras: LoraLibrary | None = None,
        lora_cache_size: int = 8,
        lora_hotswap: tuple[int, tuple[str, ...]] | None = None,
        loader: Loader | None = None,
        pipeline_call: PipelineCall = call_pipeline,
    ) -> None:
        self.model_id = model_id
        self.lane = lane
        self._device_name = device
        self._dtype_name = dtype
        self._cache_dir = Path(cache_dir)
        self._retry_after = retry_after
        self._warmup = warmup
        self._warmup_sizes = warmup_sizes
        self._warmup_guidance = warmup_guidance
        self.options = options or EngineOptions()
        self._metrics = metrics
        self._loader = loader or functools.partial(load_pipeline, options=self.options)
        self._compile_watch = CompileWatch(metrics.compilations.inc if metrics else None)
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
        # LoRA adapters on the shared modules; None when LORA_DIR is unset. Compiled, they
        # are hot-swapped into fixed slots (`lora_hotswap`: the slots' rank and layers).
        self.adapters: AdapterSlots | None = None
        if loras is not None and self.options.compile:
            rank, layers = lora_hotswap or (
                SETTINGS["LORA_HOTSWAP_RANK"].default,
                layer_names(SETTINGS["LORA_HOTSWAP_LAYERS"].default),
            )
            self.adapters = HotswapSlots(loras, lora_cache_size, rank, layers)
        elif loras is not None:
            self.adapters = AdapterSlots(loras, lora_cache_size)
        self._counting_lock = threading.Lock()
        self._counting_tokenizer: Any = None  # made on first use; False: the model has none
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
            if self.adapters is not None:  # hot-swap slots go in before compiling
                self.adapters.prepare(self._shared)
            apply_options(self._shared, self.options, self.device)
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
        """Run a small generation per warm-up size so the first requests pay no start-up costs.

        With COMPILE=true these are the sizes to compile before /readyz answers 200.
        """
        for width, height in self._warmup_sizes:
            started = time.monotonic()
            spec = GenerationSpec("warm-up", None, width, height, 2, self._warmup_guidance, (0,))
            try:
                work = Work(spec, self._deriver.derive(self._shared), spec.generators())
                self._run_batch(
                    [Job(work, images=1, deadline=math.inf, cost=spec.cost())], reason="warm-up"
                )
            except Exception as exc:
                self._failure = "The warm-up generation failed; see the server log."
                log.error("warm-up generation at %dx%d failed", width, height, exc_info=exc)
                return
            log.info("warm-up generation at %dx%d took %.2fs", width, height,
                     time.monotonic() - started)  # fmt: skip

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
        capabilities = families.describe(type(shared))
        families.check(capabilities, spec)
        if spec.loras:
            if self.adapters is None:
                raise LoraNotFound("LoRA adapters are off on this server (LORA_DIR is unset).")
            self.adapters.check(shared, spec.loras)
        # The request thread derives its own pipeline and generators before queueing.
        work = Work(spec, self._deriver.derive(shared, spec.task), spec.generators(), on_partial)
        job = Job(
            work,
            images=len(spec.seeds),
            deadline=deadline,
            batch_key=(
                spec.batch_key()
                if work.batchable and families.batchable(capabilities, spec)
                else None
            ),
            cost=spec.cost(),
        )
        self.lane.enqueue(job)
        if self.on_submit:
            self.on_submit(job)
        return job

    def capabilities(self) -> families.Capabilities:
        """Return what the served pipeline can do (app/engine/families.py)."""
        return families.describe(type(self.shared_pipeline()))

    def usage(self, spec: GenerationSpec) -> dict[str, Any]:
        """Return OpenAI's `usage` for `spec` (the rule: app/engine/usage.py)."""
        shared = self.shared_pipeline()
        # A copy of its own, under a lock: a fast tokenizer changes its truncation settings
        # on every call, and the thread's copies may be encoding a streamed prompt right now.
        with self._counting_lock:
            if self._counting_tokenizer is None:
                first = _first_tokenizer(shared)
                self._counting_tokenizer = copy.deepcopy(first) if first is not None else False
            return token_usage(
                spec, self._counting_tokenizer or None, families.latent_patch(shared)
            )

    def complete(self, job: Job[Work]) -> list[Image.Image]:
        """Wait for a submitted job's turn in the lane and return its images."""
        return self.lane.complete(job, self._run_batch)

    def _run_batch(
        self, jobs: list[Job[Work]], reason: str = "first request of this shape"
    ) -> list[list[Image.Image]]:
        """Run one pipeline call for `jobs` (the lane's runner), with metrics and faults."""
        if self._metrics:
            for job in jobs:
                if job.started_at is not None:
                    self._metrics.queue_wait.observe(job.started_at - job.enqueued_at)
        started = time.monotonic()
        spec = jobs[0].work.spec
        shape = f"{spec.width}x{spec.height}, {sum(job.images for job in jobs)} image(s)"
        try:
            watch = self._compile_watch.call(shape, reason) if self.options.compile else (
                nullcontext())  # fmt: skip
            with watch as compiled, self._adapters_for(jobs):
                # Timed apart from the adapter switch, which may wait for other calls:
                # Retry-After's cost model learns from the call alone.
                call_started = time.monotonic()
                results = run_batch(jobs, self._pipeline_call)
                jobs[0].call_seconds = time.monotonic() - call_started
            # A call that compiled took seconds to minutes more than the next one will.
            jobs[0].representative = not (compiled and compiled.graphs)
        except GenerationOutOfMemory:
            if self.device is not None and self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise
        except FatalDeviceError as exc:
            self._declare_fatal(exc.__cause__ or exc)
            raise
        finally:
            if self.options.offload == "model":
                release_offloaded(self._shared)
        if self._metrics:
            self._metrics.generation_time.observe(time.monotonic() - started)
            self._metrics.images.inc(sum(len(images) for images in results))
        return results

    def _adapters_for(self, jobs: list[Job[Work]]) -> Any:
        """Return a context holding the shared modules with the batch's adapters active."""
        if self.adapters is None:
            return nullcontext()
        loras = jobs[0].work.spec.loras  # the batch key makes it the same for every job
        return self.adapters.applied(self._shared, loras, lambda: all(j.expired() for j in jobs))

    def _declare_fatal(self, exc: BaseException) -> None:
        """Mark the worker unready for good and ask for it to be restarted."""
        self._fatal = "A fatal device error occurred; the worker is restarting."
        log.critical("fatal device error, the worker will exit: %s", exc)
        if self.on_fatal:
            self.on_fatal()


def _first_tokenizer(shared: Any) -> Any:
    """Return the pipeline's first tokenizer (`tokenizer`, then `tokenizer_2`, ...), or None."""
    components = shared.components
    names = sorted(name for name in components if name.startswith("tokenizer"))
    return next((components[name] for name in names if components[name] is not None), None)
