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
    quality: str
    background: str
    stream: bool


def build_spec(
    request: ImageRequest,
    config: Mapping[str, Any],
    endpoint: Endpoint = Endpoint.GENERATION,
    images: Sequence[Image.Image] = (),
    mask: Image.Image | None = None,
) -> tuple[GenerationSpec, OutputOptions]:
    """Fill in every default and return what the engine runs and how to answer.

    `images` are the decoded input images of an edit or variation; `mask` (white =
    repaint, at the first image's size) makes an edit an inpainting.
    """
    # 1. The task and the output size: an input image's own size when none is asked.
    task = Task.TEXT_TO_IMAGE
    if images:
        task = Task.INPAINT if mask is not None else Task.IMAGE_TO_IMAGE
    if images and request.size in (None, "auto"):
        width, height = output_size(images[0], config["MAX_IMAGE_SIDE"], config["MAX_IMAGE_PIXELS"])
    else:
        width, height = parse_size(request.size or "auto", config)

    # 2. Denoising: steps follow `quality` unless given; strength for edits and variations.
    quality = request.quality or "auto"
    steps = request.num_inference_steps or quality_steps(quality, config["DEFAULT_STEPS"])
    strength = 1.0
    if task != Task.TEXT_TO_IMAGE:
        default = "VARIATIONS_STRENGTH" if endpoint == Endpoint.VARIATION else "DEFAULT_STRENGTH"
        strength = request.strength if request.strength is not None else config[default]
        if int(steps * strength) < 1:
            raise InvalidRequest(
                f"num_inference_steps x strength must be at least 1 ({steps} x {strength:g}); "
                "raise one of them.",
                param="strength",
            )

    # 3. Seeds: n per input image (one input for generations); image i uses seed + i,
    # wrapped so every returned seed can be sent back.
    n = request.n or 1
    total = n * max(1, len(images))
    if total > config["MAX_IMAGES_PER_REQUEST"]:
        raise InvalidRequest(
            f"{len(images)} images x n={n} asks for {total} images; the most is "
            f"{config['MAX_IMAGES_PER_REQUEST']}.",
            param="n",
        )
    seed = request.seed if request.seed is not None else secrets.randbelow(MAX_SEED + 1)
    seeds = tuple((seed + i) % (MAX_SEED + 1) for i in range(total))

    # 4. Each output image gets its input image (n per input, in order) at the output size.
    inputs = tuple(
        image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
        for image in images
        for _ in range(n)
    )
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
    )
    output = OutputOptions(
        response_format=request.response_format or "url",
        output_format=request.output_format or "png",
        compression=request.output_compression if request.output_compression is not None else 100,
        quality=quality,
        background=request.background or "auto",
        stream=stream,
    )
    return spec, output
