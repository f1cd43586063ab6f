"""Previews decode latents as each family's own last step does (app/engine/previews.py):
decoded from the last step's latents, a preview is the pipeline's final image, at the
requested size, for packed (FLUX.1), batch-norm normalised (FLUX.2) and binned (SANA)
latents alike."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from diffusers import AutoPipelineForText2Image

from app.engine.previews import decode_latents, partial_steps
from tests.support.families import ensure_family


def test_partial_steps_are_evenly_spaced_before_the_last() -> None:
    assert partial_steps(6, 2) == [1, 3]
    assert partial_steps(4, 0) == [] and partial_steps(1, 3) == []


@pytest.mark.parametrize("family", ["sd15", "flux", "flux2-klein", "sana"])
def test_a_preview_of_the_last_step_is_the_final_image(
    family: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory = ensure_family(family, tmp_path_factory.mktemp("families"))
    pipeline = AutoPipelineForText2Image.from_pretrained(directory)
    pipeline.set_progress_bar_config(disable=True)
    width, height, steps = 96, 64, 2
    previews: list[Any] = []

    def callback(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict:
        if step == steps - 1:
            previews.extend(decode_latents(pipe, kwargs["latents"], width, height))
        return kwargs

    [final] = pipeline(
        prompt="a fox", width=width, height=height, num_inference_steps=steps,
        guidance_scale=1.0, generator=torch.Generator().manual_seed(1),
        callback_on_step_end=callback,
    ).images  # fmt: skip
    [preview] = previews
    assert preview.size == final.size == (width, height)
    difference = np.abs(np.asarray(preview).astype(int) - np.asarray(final).astype(int))
    assert difference.max() <= 1, f"{family}: preview differs from the final image"
