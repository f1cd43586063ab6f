"""From a validated request to the engine's GenerationSpec and the response's options.

`build_spec` owns every default of the three image endpoints (size, steps from quality,
guidance, strength, seeds, output format): absent and null fields mean the server's
configured default, decided here and nowhere else.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from PIL import Image

from app.config import quality_steps
from app.engine import GenerationSpec, Task
from app.exceptions import InvalidRequest, LoraNotFound
from app.schemas import MAX_SEED, ImageRequest, parse_size
from app.uploads import output_size


class Endpoint(StrEnum):
    """The image endpoints; each value is the prefix of its stream events."""

    GENERATION = "image_generation"
    EDIT = "image_edit"
    VARIATION = "image_variation"


@dataclass(frozen=True)
class OutputOptions:
    """How a request's images are delivered and what its response echoes."""

    response_format: str  # url | b64_json
    output_format: str  # png | jpeg | webp
    compression: int  # jpeg/webp quality, 0..100
    quality: str  # resolved: low | medium | high, by the steps that run
    background: str  # resolved: opaque (the pipelines make no alpha)
    stream: bool


# OpenAI's models that always answer base64 (`data[].b64_json`); the others default to url.
_BASE64_MODELS = ("gpt-image-", "chatgpt-image-latest")


def default_response_format(model: str | None) -> str:
    """Return OpenAI's default response_format for `model`: gpt-image models b64_json."""
    return "b64_json" if model and model.startswith(_BASE64_MODELS) else "url"


def resolved_quality(steps: int, default_steps: int) -> str:
    """Return OpenAI's quality (low, medium or high) for the steps that run: the one whose
    step count is nearest, a tie going to medium."""
    counts = {q: quality_steps(q, default_steps) for q in ("medium", "low", "high")}
    return min(counts, key=lambda quality: abs(counts[quality] - steps))  # ties: medium


def build_spec(
    request: ImageRequest,
    config: Mapping[str, Any],
    endpoint: Endpoint = Endpoint.GENERATION,
    images: Sequence[Image.Image] = (),
    mask: Image.Image | None = None,
    takes_strength: bool = True,
) -> tuple[GenerationSpec, OutputOptions]:
    """Fill in every default and return what the engine runs and how to answer.

    `images` are the decoded input images of an edit or variation; `mask` (white =
    repaint, at the first image's size) makes an edit an inpainting. `takes_strength` is
    False where the served pipeline edits without strength (FLUX.2): its edits run every
    step, and a sent `strength` is refused by app/engine/families.py:check.
    """
    # 1. The task and the output size: an edit's first image's own size when none is
    # asked; variations, as OpenAI's, the default size.
    task = Task.TEXT_TO_IMAGE
    if images:
        task = Task.INPAINT if mask is not None else Task.IMAGE_TO_IMAGE
    if endpoint == Endpoint.EDIT and request.size in (None, "auto"):
        width, height = output_size(images[0], config["MAX_IMAGE_SIDE"], config["MAX_IMAGE_PIXELS"])
    else:
        width, height = parse_size(request.size or "auto", config)

    # 2. Denoising: steps follow `quality` unless given; strength for edits and variations.
    steps = request.num_inference_steps or quality_steps(
        request.quality or "auto", config["DEFAULT_STEPS"]
    )
    strength = 1.0
    if task != Task.TEXT_TO_IMAGE and takes_strength:
        default = "VARIATIONS_STRENGTH" if endpoint == Endpoint.VARIATION else "DEFAULT_STRENGTH"
        strength = request.strength if request.strength is not None else config[default]
        if int(steps * strength) < 1:
            raise InvalidRequest(
                f"num_inference_steps x strength must be at least 1 ({steps} x {strength:g}); "
                "raise one of them.",
                param="strength",
            )

    # 3. Seeds: n images, whatever the number of input images; image i uses seed + i,
    # wrapped so every returned seed can be sent back.
    n = request.n or 1
    seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
    seeds = tuple((seed + i) % (MAX_SEED + 1) for i in range(n))

    # 4. As OpenAI's edits: every output edits the first image (the mask's); several
    # images are reference images for each output, all at the output size.
    references = tuple(
        image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS) for image in images
    )
    inputs = references[:1] * n
    masks = (mask.resize((width, height), Image.Resampling.NEAREST),) * n if mask else ()

    # 5. Adapters: scale 1.0 (the adapter as trained) unless given.
    loras = tuple((name, 1.0 if scale is None else scale) for name, scale in request.loras or ())
    if loras and not config["LORA_DIR"]:
        raise LoraNotFound("LoRA adapters are off on this server (LORA_DIR is unset).")

    prompt = config["VARIATIONS_PROMPT"] if endpoint == Endpoint.VARIATION else request.prompt
    stream = bool(request.stream)
    spec = GenerationSpec(
        prompt=prompt or "",
        negative_prompt=request.negative_prompt or None,
        width=width,
        height=height,
        steps=steps,
        guidance_scale=(
            request.guidance_scale
            if request.guidance_scale is not None
            else config["DEFAULT_GUIDANCE_SCALE"]
        ),
        seeds=seeds,
        task=task,
        init_images=inputs,
        masks=masks,
        strength=strength,
        partial_images=(request.partial_images or 0) if stream else 0,
        loras=loras,
        references=references,
        sent=frozenset({"strength"} if request.strength is not None else ()),
    )
    output = OutputOptions(
        response_format=request.response_format or default_response_format(request.model),
        output_format=request.output_format or "png",
        compression=request.output_compression if request.output_compression is not None else 100,
        quality=resolved_quality(steps, config["DEFAULT_STEPS"]),
        background="opaque",
        stream=stream,
    )
    return spec, output
