"""What the engine is asked for (GenerationSpec) and what travels through the lane (Work)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import torch
from PIL import Image


class Task(StrEnum):
    """Which pipeline of the served model family a request runs."""

    TEXT_TO_IMAGE = "text2image"
    IMAGE_TO_IMAGE = "image2image"
    INPAINT = "inpaint"


@dataclass(frozen=True)
class GenerationSpec:
    """What the pipeline needs for one request: one image per seed.

    For image-to-image and inpainting, `init_images[i]` (and `masks[i]`) belong to the
    output image made with `seeds[i]`, already at the output size; `references` are all
    the input images of an edit (the first is the one edited, the mask's), at that size.
    """

    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    guidance_scale: float
    seeds: tuple[int, ...]
    task: Task = Task.TEXT_TO_IMAGE
    init_images: tuple[Image.Image, ...] = ()
    masks: tuple[Image.Image, ...] = ()
    strength: float = 1.0
    partial_images: int = 0
    # LoRA adapters as (name, scale) pairs, in the request's order; () runs the bare model.
    loras: tuple[tuple[str, float], ...] = ()
    references: tuple[Image.Image, ...] = ()
    # Request fields sent rather than defaulted, that a pipeline might not take (strength):
    # app/engine/families.py refuses them there instead of dropping them.
    sent: frozenset[str] = frozenset()

    def batch_key(self) -> Hashable:
        """Return what specs must share to run in one pipeline call.

        The adapter set is part of it: adapters and their scales live on the shared
        modules, so one call runs one set.
        """
        return (self.task, self.width, self.height, self.steps, self.guidance_scale,
                self.strength, self.negative_prompt is not None, self.loras)  # fmt: skip

    def cost(self) -> float:
        """Return the work of this request for Retry-After: pixels × denoising steps × images.

        Image-to-image runs only the last `strength` of the steps, as diffusers does.
        """
        steps = (
            self.steps
            if self.task == Task.TEXT_TO_IMAGE
            else max(1, int(self.steps * self.strength))
        )
        return float(self.width * self.height * steps * len(self.seeds))

    def generators(self) -> list[torch.Generator]:
        """Return one CPU generator per image: the same seed gives the same noise anywhere."""
        return [torch.Generator("cpu").manual_seed(seed) for seed in self.seeds]


# Called with (partial_image_index, image) while a streamed generation runs.
PartialCallback = Callable[[int, Image.Image], None]


@dataclass(eq=False)
class Work:
    """One request's work item in the lane: its spec and its own pipeline and generators."""

    spec: GenerationSpec
    pipeline: Any
    generators: list[torch.Generator] = field(default_factory=list)
    on_partial: PartialCallback | None = None

    @property
    def batchable(self) -> bool:
        """Return whether other requests may share this one's pipeline call."""
        return (
            self.on_partial is None
            and self.spec.partial_images == 0
            and len(self.spec.references) <= 1  # several references: one call of their own
        )
