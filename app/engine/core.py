"""The engine: one shared diffusers pipeline per worker, a derived pipeline per request.

The shared pipeline is loaded once, in a background thread, so the worker answers
(with 503 "model is loading") while weights load and Gunicorn never kills it for being
slow. Each request builds its own pipeline object around the SHARED modules (never
copied, converted or moved), with its own scheduler, its own copies of the tokenizers
(fast tokenizers mutate themselves on every call) and its own CPU generators, so the same
seed gives the same image whatever runs beside it.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from app.engine.loading import explain_load_failure, load_pipeline, resolve_device, resolve_dtype
from app.lane import DeadlineExceeded, Job, Lane
from app.metrics import Metrics

log = logging.getLogger(__name__)


class ModelLoading(Exception):
    """The shared pipeline is still loading."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("model is loading")
        self.retry_after = retry_after


class ModelLoadFailed(Exception):
    """The shared pipeline could not be loaded; the message says what to set."""


class GenerationError(Exception):
    """The pipeline call failed; the cause is chained for the log."""


class GenerationOutOfMemory(GenerationError):
    """The pipeline call ran out of device memory; retrying may succeed."""


class FatalDeviceError(GenerationError):
    """The device is in an unrecoverable state; the worker must be restarted."""


class UnsupportedParameter(Exception):
    """The served pipeline cannot honour a request parameter."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


TEXT_TO_IMAGE, IMAGE_TO_IMAGE, INPAINT = "text2image", "image2image", "inpaint"


@dataclass(frozen=True)
class GenerationSpec:
    """What the pipeline needs for one request: one image per seed.

    For image-to-image and inpainting, `init_images[i]` (and `masks[i]`) belong to the
    output image made with `seeds[i]`, already at the output size.
    """

    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    guidance_scale: float
    seeds: tuple[int, ...]
    task: str = TEXT_TO_IMAGE
    init_images: tuple[Image.Image, ...] = ()
    masks: tuple[Image.Image, ...] = ()
    strength: float = 1.0
    partial_images: int = 0


# Called with (partial_image_index, image) while a streamed generation runs.
PartialCallback = Callable[[int, Image.Image], None]


# Messages of CUDA errors after which the context is unusable for the whole process.
_FATAL_MARKERS = (
    "illegal memory access",
    "device-side assert",
    "unspecified launch failure",
    "misaligned address",
    "illegal instruction",
    "uncorrectable ECC error",
    "CUBLAS_STATUS_EXECUTION_FAILED",
)


def is_fatal_device_error(exc: BaseException) -> bool:
    """Return whether `exc` leaves the CUDA context unusable."""
    return isinstance(exc, RuntimeError) and any(m in str(exc) for m in _FATAL_MARKERS)


class Engine:
    """Hold the shared pipeline and run generations on pipelines derived from it."""

    def __init__(
        self,
        model_id: str,
        lane: Lane,
        *,
        device: str = "auto",
        dtype: str = "auto",
        cache_dir: str | Path = "instance/models",
        retry_after: int = 10,
        warmup: bool = True,
        metrics: Metrics | None = None,
    ) -> None:
        self.model_id = model_id
        self.lane = lane
        self._device_name = device
        self._dtype_name = dtype
        self._cache_dir = Path(cache_dir)
        self._retry_after = retry_after
        self._warmup = warmup
        self._metrics = metrics
        # Called after a fatal device error; Gunicorn's hook sets it to restart the worker.
        self.on_fatal: Callable[[], None] | None = None
        # Called with each admitted job in the request's thread (the access log reads it).
        self.on_submit: Callable[[Job], None] | None = None
        self._shared: Any = None
        self._failure: str | None = None
        self._fatal: str | None = None
        self._loaded = threading.Event()
        self._local = threading.local()
        self._call_parameters: frozenset[str] = frozenset()
        self.device: torch.device | None = None
        self.dtype: torch.dtype | None = None

    # -- loading ---------------------------------------------------------------------

    def start(self) -> None:
        """Load the shared pipeline in a background thread."""
        threading.Thread(target=self.load, name="model-loader", daemon=True).start()

    def load(self) -> None:
        """Load and warm up the shared pipeline; record a readable reason if it fails."""
        started = time.monotonic()
        try:
            self._shared = self._load_pipeline()
            self._call_parameters = frozenset(
                inspect.signature(type(self._shared).__call__).parameters
            )
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
            pipeline = self._derive(self._shared)
            self._run_batch([Job((spec, pipeline, _generators(spec), None), 1, math.inf)])
        except Exception as exc:
            self._failure = "The warm-up generation failed; see the server log."
            log.error("warm-up generation failed", exc_info=exc)
        else:
            log.info("warm-up generation took %.2fs", time.monotonic() - started)

    def _load_pipeline(self) -> Any:
        self.device = resolve_device(self._device_name)
        self.dtype = resolve_dtype(self._dtype_name, self.device)
        return load_pipeline(self.model_id, self.device, self.dtype, self._cache_dir)

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

    @property
    def shared(self) -> Any:
        """Return the shared pipeline, or raise why there is none."""
        if not self._loaded.is_set():
            raise ModelLoading(self._retry_after)
        if self._failure:
            raise ModelLoadFailed(self._failure)
        if self._fatal:
            raise FatalDeviceError(self._fatal)
        return self._shared

    # -- generation ------------------------------------------------------------------

    def derive_pipeline(self, task: str = TEXT_TO_IMAGE) -> Any:
        """Build a pipeline for `task` around the shared modules, with per-request parts."""
        return self._derive(self.shared, task)

    def _derive(self, shared: Any, task: str = TEXT_TO_IMAGE) -> Any:
        components = dict(shared.components)
        # Schedulers keep step state: a fresh one per request, from the shared config.
        components["scheduler"] = type(shared.scheduler).from_config(shared.scheduler.config)
        components.update(self._thread_tokenizers(shared))
        pipeline_class = self._pipeline_class(shared, task)
        accepted = _init_parameters(pipeline_class)
        # Built directly (not with from_pipe), which would convert the shared modules'
        # dtype in place when none is given.
        pipeline = pipeline_class(**{k: v for k, v in components.items() if k in accepted})
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    @staticmethod
    def _pipeline_class(shared: Any, task: str) -> type:
        """Return the pipeline class for `task` in the shared pipeline's model family."""
        if task == TEXT_TO_IMAGE:
            return type(shared)
        from diffusers.pipelines import auto_pipeline

        mapping = {
            IMAGE_TO_IMAGE: auto_pipeline.AUTO_IMAGE2IMAGE_PIPELINES_MAPPING,
            INPAINT: auto_pipeline.AUTO_INPAINT_PIPELINES_MAPPING,
        }[task]
        found = auto_pipeline._get_task_class(mapping, type(shared).__name__, False)
        if found is None:
            raise UnsupportedParameter(
                "image", f"The served model has no {task} pipeline; edits are not available."
            )
        return found

    def _thread_tokenizers(self, shared: Any) -> dict[str, Any]:
        """Return this thread's own copies of the shared tokenizers."""
        tokenizers = getattr(self._local, "tokenizers", None)
        if tokenizers is None:
            tokenizers = {
                name: copy.deepcopy(component)
                for name, component in shared.components.items()
                if name.startswith("tokenizer") and component is not None
            }
            self._local.tokenizers = tokenizers
        return tokenizers

    def generate(self, spec: GenerationSpec, deadline: float) -> list[Image.Image]:
        """Queue `spec` for the lane; return one PIL image per seed, in order.

        Raises Overloaded or Draining (not admitted), DeadlineExceeded, or a GenerationError.
        """
        return self.complete(self.submit(spec, deadline))

    def submit(
        self, spec: GenerationSpec, deadline: float, on_partial: PartialCallback | None = None
    ) -> Job:
        """Derive this request's pipeline and generators and admit it to the queue."""
        if spec.negative_prompt and "negative_prompt" not in self._call_parameters:
            self.shared  # noqa: B018 -- a model that is not loaded says so first
            raise UnsupportedParameter(
                "negative_prompt", "The served model does not support negative_prompt."
            )
        # The request thread derives its own pipeline and generators before queueing.
        pipeline = self.derive_pipeline(spec.task)
        batchable = on_partial is None and spec.partial_images == 0
        job = Job(
            payload=(spec, pipeline, _generators(spec), on_partial),
            images=len(spec.seeds),
            deadline=deadline,
            batch_key=(spec.task, spec.width, spec.height, spec.steps, spec.guidance_scale,
                       spec.strength, spec.negative_prompt is not None) if batchable else None,
        )  # fmt: skip
        self.lane.enqueue(job)
        if self.on_submit:
            self.on_submit(job)
        return job

    def complete(self, job: Job) -> list[Image.Image]:
        """Wait for a submitted job's turn in the lane and return its images."""
        return self.lane.complete(job, self._run_batch)

    def _run_batch(self, jobs: list[Job]) -> list[list[Image.Image]]:
        """Run one pipeline call for `jobs`; return each job's images."""
        specs: list[GenerationSpec] = [job.payload[0] for job in jobs]
        pipeline = jobs[0].payload[1]
        if self._metrics:
            for job in jobs:
                if job.started_at is not None:
                    self._metrics.queue_wait.observe(job.started_at - job.enqueued_at)
        kwargs = self._call_arguments(specs)
        kwargs["generator"] = [g for job in jobs for g in job.payload[2]]
        if "callback_on_step_end" in self._call_parameters:
            kwargs["callback_on_step_end"] = _step_end_callback(jobs)
        started = time.monotonic()
        try:
            images = list(pipeline(**kwargs).images)
        except DeadlineExceeded:
            raise
        except torch.OutOfMemoryError as exc:
            self._release_memory()
            raise GenerationOutOfMemory(str(exc)) from exc
        except Exception as exc:
            if is_fatal_device_error(exc):
                self._declare_fatal(exc)
                raise FatalDeviceError(self._fatal or "") from exc
            raise GenerationError(f"{type(exc).__name__} during generation") from exc
        if self._metrics:
            self._metrics.generation_time.observe(time.monotonic() - started)
            self._metrics.images.inc(len(images))
        results, start = [], 0
        for spec in specs:
            results.append(images[start : start + len(spec.seeds)])
            start += len(spec.seeds)
        return results

    @staticmethod
    def _call_arguments(specs: list[GenerationSpec]) -> dict[str, Any]:
        """Return the pipeline arguments shared by a batch of compatible specs."""
        first = specs[0]
        kwargs: dict[str, Any] = {
            "height": first.height,
            "width": first.width,
            "num_inference_steps": first.steps,
            "guidance_scale": first.guidance_scale,
            "output_type": "pil",
        }
        if len(specs) == 1 and first.task == TEXT_TO_IMAGE:
            kwargs["prompt"] = first.prompt
            kwargs["num_images_per_prompt"] = len(first.seeds)
            if first.negative_prompt:
                kwargs["negative_prompt"] = first.negative_prompt
            return kwargs
        # One prompt entry per image, so image i of the call gets generator i.
        kwargs["prompt"] = [s.prompt for s in specs for _ in s.seeds]
        if first.negative_prompt is not None:
            kwargs["negative_prompt"] = [s.negative_prompt for s in specs for _ in s.seeds]
        if first.task != TEXT_TO_IMAGE:
            kwargs["image"] = [image for s in specs for image in s.init_images]
            kwargs["strength"] = first.strength
        if first.task == INPAINT:
            kwargs["mask_image"] = [mask for s in specs for mask in s.masks]
        return kwargs

    def _declare_fatal(self, exc: BaseException) -> None:
        """Mark the worker unready for good and ask for it to be restarted."""
        self._fatal = "A fatal device error occurred; the worker is restarting."
        log.critical("fatal device error, the worker will exit: %s", exc)
        if self.on_fatal:
            self.on_fatal()

    def _release_memory(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.empty_cache()


@functools.cache
def _init_parameters(pipeline_class: type) -> frozenset[str]:
    """Return the component names a pipeline class takes (looked up once per class)."""
    return frozenset(inspect.signature(pipeline_class.__init__).parameters)


def _generators(spec: GenerationSpec) -> list[torch.Generator]:
    """Return one CPU generator per image: the same seed gives the same noise anywhere."""
    return [torch.Generator("cpu").manual_seed(seed) for seed in spec.seeds]


def partial_steps(steps: int, partial_images: int) -> list[int]:
    """Return the step indices, evenly spaced and before the last, that yield partials."""
    if partial_images <= 0 or steps < 2:
        return []
    picks = {round((i + 1) * steps / (partial_images + 1)) - 1 for i in range(partial_images)}
    return sorted(step for step in picks if 0 <= step < steps - 1)


def decode_latents(pipeline: Any, latents: torch.Tensor) -> list[Image.Image]:
    """Decode intermediate latents to preview images, as the pipeline's last step does."""
    vae = pipeline.vae
    latents = latents / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", 0) or 0)
    with torch.no_grad():
        decoded = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
    return pipeline.image_processor.postprocess(decoded, output_type="pil")


def _step_end_callback(jobs: list[Job]) -> Callable[..., dict[str, Any]]:
    """Return a step-end callback: stop once nobody waits; emit a streamed job's partials."""
    spec, _, _, on_partial = jobs[0].payload

    def callback(pipeline: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict:
        now = time.monotonic()
        if all(job.expired(now) for job in jobs):
            raise DeadlineExceeded(ran=True)
        if on_partial is not None and spec.partial_images:
            # img2img and inpainting run only the last `strength` share of the schedule.
            steps_run = getattr(pipeline, "_num_timesteps", None) or spec.steps
            picks = partial_steps(steps_run, spec.partial_images)
            if step in picks:
                try:
                    on_partial(picks.index(step), decode_latents(pipeline, kwargs["latents"])[0])
                except Exception:  # a preview must never fail the generation
                    log.warning("could not decode a partial image", exc_info=True)
        return kwargs

    return callback
