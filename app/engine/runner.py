"""One pipeline call for a batch of jobs: its arguments, its step callback, its faults.

A batch is one request, or several compatible ones (same `GenerationSpec.batch_key`)
that the lane collected. Each image gets one prompt entry and one generator, so every
request receives exactly its own images; a step-end callback stops the call once nobody
waits for it and hands a streamed request its partial images.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from app.engine.families import accepted_arguments, call_parameters, takes_references
from app.engine.previews import decode_latents, partial_steps
from app.engine.work import GenerationSpec, Task, Work
from app.exceptions import (
    DeadlineExceeded,
    FatalDeviceError,
    GenerationError,
    GenerationOutOfMemory,
)
from app.lane import Job

log = logging.getLogger(__name__)

# Calls a derived pipeline with keyword arguments and returns its images. The engine's
# seam for the pipeline call: tests wrap it to inject faults a CPU cannot produce.
PipelineCall = Callable[[Any, dict[str, Any]], list[Image.Image]]

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


def call_pipeline(pipeline: Any, arguments: dict[str, Any]) -> list[Image.Image]:
    """Call `pipeline` and return its PIL images."""
    return list(pipeline(**arguments).images)


def run_batch(jobs: list[Job[Work]], call: PipelineCall = call_pipeline) -> list[list[Image.Image]]:
    """Run one pipeline call for `jobs`; return each job's images, in order.

    Raises DeadlineExceeded (stopped by the callback), GenerationOutOfMemory,
    FatalDeviceError or GenerationError, with the pipeline's exception chained.
    """
    works = [job.work for job in jobs]
    specs = [work.spec for work in works]
    pipeline = works[0].pipeline
    arguments = call_arguments(specs, takes_references(type(pipeline)))
    arguments["generator"] = [generator for work in works for generator in work.generators]
    if "callback_on_step_end" in call_parameters(type(pipeline)):
        arguments["callback_on_step_end"] = step_end_callback(jobs)
    else:
        # Pipelines without a step-end callback (PixArt-Sigma) still stop at a deadline
        # through the older per-step `callback`, where they take one.
        arguments["callback"] = stop_callback(jobs)
        arguments["callback_steps"] = 1
    # Only what this class takes: app/engine/families.py:check has refused any request
    # field it cannot honour, so what is dropped here are defaults (strength, a callback).
    arguments = accepted_arguments(pipeline, arguments)
    try:
        images = call(pipeline, arguments)
    except DeadlineExceeded:
        raise
    except torch.OutOfMemoryError as exc:
        raise GenerationOutOfMemory() from exc
    except Exception as exc:
        if is_fatal_device_error(exc):
            raise FatalDeviceError() from exc
        raise GenerationError() from exc
    results, start = [], 0
    for spec in specs:
        results.append(images[start : start + len(spec.seeds)])
        start += len(spec.seeds)
    return results


def call_arguments(specs: list[GenerationSpec], references: bool = False) -> dict[str, Any]:
    """Return the pipeline arguments shared by a batch of compatible specs.

    `references`: the pipeline's `image` is reference images for each output (FLUX.2), so
    an edit passes its input images once, never one per output.
    """
    first = specs[0]
    arguments: dict[str, Any] = {
        "height": first.height,
        "width": first.width,
        "num_inference_steps": first.steps,
        "guidance_scale": first.guidance_scale,
        "output_type": "pil",
        # PixArt cleans captions by default, which needs Beautiful Soup and warns on every
        # call without it; the prompt is used as it is sent, as other families do.
        "clean_caption": False,
    }
    edit = first.task != Task.TEXT_TO_IMAGE
    if len(specs) == 1 and (len(first.references) > 1 or (edit and references)):
        # The reference images, once, for the outputs of one prompt (FLUX.2, Qwen-Image
        # edit); such edits are never batched (app/engine/families.py:batchable).
        arguments.update(prompt=first.prompt, num_images_per_prompt=len(first.seeds),
                         image=list(first.references), strength=first.strength)  # fmt: skip
        if first.negative_prompt:
            arguments["negative_prompt"] = first.negative_prompt
        return arguments
    if len(specs) == 1 and first.task == Task.TEXT_TO_IMAGE:
        arguments["prompt"] = first.prompt
        arguments["num_images_per_prompt"] = len(first.seeds)
        if first.negative_prompt:
            arguments["negative_prompt"] = first.negative_prompt
        return arguments
    # One prompt entry per image, so image i of the call gets generator i.
    arguments["prompt"] = [spec.prompt for spec in specs for _ in spec.seeds]
    if first.negative_prompt is not None:
        arguments["negative_prompt"] = [spec.negative_prompt for spec in specs for _ in spec.seeds]
    if first.task != Task.TEXT_TO_IMAGE:
        arguments["image"] = [image for spec in specs for image in spec.init_images]
        arguments["strength"] = first.strength
    if first.task == Task.INPAINT:
        arguments["mask_image"] = [mask for spec in specs for mask in spec.masks]
    return arguments


def stop_callback(jobs: list[Job[Work]]) -> Callable[..., None]:
    """Return a legacy per-step callback that stops the call once nobody waits."""

    def callback(step: int, timestep: Any, latents: Any) -> None:
        if all(job.expired() for job in jobs):
            raise DeadlineExceeded(ran=True)

    return callback


def step_end_callback(jobs: list[Job[Work]]) -> Callable[..., dict[str, Any]]:
    """Return a step-end callback: stop once nobody waits; emit a streamed job's partials."""
    lead = jobs[0].work

    def callback(pipeline: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict:
        if all(job.expired() for job in jobs):
            raise DeadlineExceeded(ran=True)
        if lead.on_partial is not None and lead.spec.partial_images:
            # img2img and inpainting run only the last `strength` share of the schedule.
            steps_run = getattr(pipeline, "_num_timesteps", None) or lead.spec.steps
            picks = partial_steps(steps_run, lead.spec.partial_images)
            if step in picks:
                size = lead.spec.width, lead.spec.height
                try:
                    preview = decode_latents(pipeline, kwargs["latents"], *size)[0]
                    lead.on_partial(picks.index(step), preview)
                except Exception:  # a preview must never fail the generation
                    log.warning("could not decode a partial image", exc_info=True)
        return kwargs

    return callback
