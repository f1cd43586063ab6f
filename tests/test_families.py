"""app/engine/families.py: what each diffusers family can do, read from its classes, and
the 400s for what a request asks and the served pipeline cannot honour."""

from __future__ import annotations

import diffusers
import pytest
from PIL import Image

from app.engine import GenerationSpec, Task
from app.engine.families import accepted_arguments, batchable, check, describe
from app.exceptions import UnsupportedParameter

IMAGE = Image.new("RGB", (64, 64))


def spec(**fields: object) -> GenerationSpec:
    """A small spec; `fields` override its defaults."""
    base: dict = {"prompt": "a fox", "negative_prompt": None, "width": 64, "height": 64,
                  "steps": 2, "guidance_scale": 1.0, "seeds": (1,)}  # fmt: skip
    return GenerationSpec(**{**base, **fields})


def edit(count: int = 1, **fields: object) -> GenerationSpec:
    return spec(task=Task.IMAGE_TO_IMAGE, init_images=(IMAGE,), references=(IMAGE,) * count,
                **fields)  # fmt: skip


def test_sd3_can_do_everything_the_api_asks() -> None:
    sd3 = describe(diffusers.StableDiffusion3Pipeline)
    inpaint = spec(task=Task.INPAINT, init_images=(IMAGE,), masks=(IMAGE,), references=(IMAGE,))
    for asked in (spec(negative_prompt="blur", partial_images=2),
                  edit(sent=frozenset({"strength"})), inpaint):  # fmt: skip
        check(sd3, asked)  # no 400
    assert (sd3.negative_prompt, sd3.strength, sd3.masks, sd3.step_callback) == (True,) * 4
    assert sd3.reference_images == 1 and not sd3.packed_latents


@pytest.mark.parametrize(
    ("family", "asked", "param"),
    [("FluxPipeline", spec(negative_prompt="blur"), "negative_prompt"),  # true CFG only
     ("StableDiffusion3Pipeline", edit(2), "image"),  # one input image
     ("Flux2KleinPipeline", edit(sent=frozenset({"strength"})), "strength"),
     ("Flux2KleinPipeline", spec(negative_prompt="blur"), "negative_prompt"),
     ("PixArtSigmaPipeline", spec(partial_images=1), "partial_images"),  # no step callback
     ("PixArtSigmaPipeline", edit(), "image"),  # no image-to-image pipeline
     ("SanaPipeline", edit(), "image")],
)  # fmt: skip
def test_what_a_family_cannot_honour_is_a_400_naming_the_field(
    family: str, asked: GenerationSpec, param: str
) -> None:
    with pytest.raises(UnsupportedParameter) as refused:
        check(describe(getattr(diffusers, family)), asked)
    assert refused.value.param == param and refused.value.status == 400
    assert family in refused.value.message


def test_flux2_takes_several_reference_images_without_strength() -> None:
    klein = describe(diffusers.Flux2KleinPipeline)
    check(klein, edit(3))  # several references: accepted, all passed to the pipeline
    assert klein.reference_images > 1 and not klein.strength and klein.packed_latents


def test_only_arguments_the_class_takes_are_passed() -> None:
    klein = diffusers.Flux2KleinPipeline.__new__(diffusers.Flux2KleinPipeline)
    arguments = {"prompt": "x", "strength": 0.8, "negative_prompt": None, "image": [IMAGE]}
    assert accepted_arguments(klein, arguments) == {"prompt": "x", "image": [IMAGE]}


def test_reference_image_edits_never_share_a_call() -> None:
    klein, sd3 = (
        describe(diffusers.Flux2KleinPipeline),
        describe(diffusers.StableDiffusion3Pipeline),
    )
    assert not batchable(klein, edit()) and batchable(klein, spec())
    assert batchable(sd3, edit()) and batchable(sd3, spec())
