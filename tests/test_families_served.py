"""Tiny random SD 1.5, SDXL, FLUX.1, FLUX.2 [klein], PixArt-Sigma and SANA pipelines
(tests/support/families.py), each loaded with from_pretrained by a real Gunicorn and driven
through the openai SDK: generations, negative prompt, edits with and without a mask,
variations, streaming with partial images, concurrent requests. What a family cannot
honour is a 400 naming the field, never a 500 and never a 200 with the field ignored."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import openai
import pytest

from tests.support.apps import server_env
from tests.support.client import openai_client
from tests.support.families import ensure_family
from tests.support.gunicorn import GunicornServer
from tests.support.images import max_diff, opaque_png, pixels, sdk_pixels, striped_png

pytestmark = pytest.mark.slow  # a real Gunicorn per family

STEPS = {"num_inference_steps": 4}
ASK = {"prompt": "a fox", "size": "64x64", "response_format": "b64_json"}


@dataclass(frozen=True)
class Family:
    """What a served family does, as docs/api.md's family table says."""

    negative_prompt: bool = True  # else a 400 naming negative_prompt
    edits: bool = True  # else a 400 naming image
    strength: bool = True  # else a 400 naming strength
    masks: bool = True  # else a 400 naming mask
    previews: bool = True  # else a 400 naming partial_images
    references: bool = False  # several input images are references for each output


FAMILIES = {
    "sd15": Family(),
    "sdxl": Family(),
    "flux": Family(negative_prompt=False),  # true CFG only
    "flux2-klein": Family(negative_prompt=False, strength=False, masks=False, references=True),
    "pixart-sigma": Family(edits=False, previews=False),
    "sana": Family(edits=False),
}

# Library warnings that must not repeat per request (at most once, at load).
ONCE = ("You have disabled the safety checker", "should be kept in float32", "Beautiful Soup")


@pytest.fixture(scope="module", params=list(FAMILIES))
def served(
    request: pytest.FixtureRequest, model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Family, openai.OpenAI]]:
    """The family `request.param`, saved and served by a real Gunicorn running up to three
    pipeline calls at once."""
    directory = ensure_family(request.param, tmp_path_factory.mktemp("families"))
    images = tmp_path_factory.mktemp(f"{request.param}-images")
    env = server_env(model_cache, images, MODEL_ID=directory, DEFAULT_GUIDANCE_SCALE=2.0,
                     MAX_CONCURRENT_GENERATIONS=3)  # fmt: skip
    with GunicornServer(env) as server:
        yield FAMILIES[request.param], openai_client(server.base_url)
        log = server.log()
        assert "Traceback" not in log, log[-4000:]
        for warning in ONCE:
            assert log.count(warning) <= 1, (warning, log[-4000:])


def refused(param: str, call: object, *args: object, **kwargs: object) -> None:
    """Assert that `call(*args, **kwargs)` is a 400 naming `param`."""
    with pytest.raises(openai.BadRequestError) as error:
        call(*args, **kwargs)  # type: ignore[operator]
    assert error.value.body["param"] == param, error.value.body


def test_generation_is_seeded_and_at_the_requested_size(
    served: tuple[Family, openai.OpenAI],
) -> None:
    _, sdk = served
    first = sdk.images.generate(**ASK, extra_body={**STEPS, "seed": 3})
    again = sdk.images.generate(**ASK, extra_body={**STEPS, "seed": 3})
    other = sdk.images.generate(**ASK, extra_body={**STEPS, "seed": 4})
    [a], [b], [c] = sdk_pixels(first), sdk_pixels(again), sdk_pixels(other)
    assert a.shape == (64, 64, 3) and np.array_equal(a, b) and not np.array_equal(a, c)


def test_negative_prompt_takes_effect_or_is_refused(served: tuple[Family, openai.OpenAI]) -> None:
    family, sdk = served
    if not family.negative_prompt:  # FLUX.1 (true CFG only), FLUX.2: a 400, never ignored
        refused("negative_prompt", sdk.images.generate, **ASK,
                extra_body={**STEPS, "negative_prompt": "blurry"})  # fmt: skip
        return
    plain = sdk.images.generate(**ASK, extra_body={**STEPS, "seed": 5})
    negative = sdk.images.generate(**ASK, extra_body={**STEPS, "seed": 5, "negative_prompt": "x"})
    assert not np.array_equal(sdk_pixels(plain)[0], sdk_pixels(negative)[0])


def test_edits_with_and_without_mask_and_variations(served: tuple[Family, openai.OpenAI]) -> None:
    family, sdk = served
    source = ("a.png", opaque_png(), "image/png")
    mask = ("m.png", striped_png(hole=(16, 16, 48, 48)), "image/png")
    edit = {"prompt": "moss", "response_format": "b64_json"}
    if not family.edits:  # no image-to-image pipeline: edits and variations are 400s
        refused("image", sdk.images.edit, image=source, **edit, extra_body=STEPS)
        refused("image", sdk.images.create_variation, image=source, extra_body=STEPS)
        return
    edited = sdk.images.edit(image=source, n=2, **edit, extra_body={**STEPS, "seed": 7})
    assert [image.shape for image in sdk_pixels(edited)] == [(64, 64, 3)] * 2
    strength = {**STEPS, "strength": 1.0}
    if family.strength:
        assert sdk_pixels(sdk.images.edit(image=source, **edit, extra_body=strength))
    else:
        refused("strength", sdk.images.edit, image=source, **edit, extra_body=strength)
    if family.masks:
        [inpainted] = sdk_pixels(sdk.images.edit(image=source, mask=mask, **edit,
                                                 extra_body=strength))  # fmt: skip
        original = pixels(source[1]).astype(int)
        inside = np.abs(inpainted[20:44, 20:44].astype(int) - original[20:44, 20:44]).mean()
        outside = np.abs(inpainted[:8].astype(int) - original[:8]).mean()
        assert inside > outside
    else:
        refused("mask", sdk.images.edit, image=source, mask=mask, **edit, extra_body=STEPS)
    varied = sdk.images.create_variation(image=source, size="64x64",
                                         response_format="b64_json", extra_body=STEPS)  # fmt: skip
    assert sdk_pixels(varied)[0].shape == (64, 64, 3)


def test_several_images_are_references_or_a_400_naming_image(
    served: tuple[Family, openai.OpenAI],
) -> None:
    family, sdk = served
    source = ("a.png", opaque_png(), "image/png")
    second = ("b.png", striped_png(hole=(0, 0, 32, 32)), "image/png")
    ask = {"prompt": "moss", "response_format": "b64_json", "size": "64x64"}
    if not family.references:  # one input image per edit (or no edits at all)
        refused("image", sdk.images.edit, image=[source, second], **ask, extra_body=STEPS)
        return
    one = sdk.images.edit(image=source, **ask, extra_body={**STEPS, "seed": 7})
    two = sdk.images.edit(image=source, n=2, **ask, extra_body={**STEPS, "seed": 7})
    assert max_diff(sdk_pixels(one)[0], sdk_pixels(two)[0]) <= 2  # up to batched rounding
    both = sdk.images.edit(image=[source, second], n=2, **ask, extra_body={**STEPS, "seed": 7})
    assert [item.seed for item in both.data] == [7, 8]
    # The random tiny transformer barely reacts to its references, so what the pipeline is
    # given (each reference once, n outputs) is checked in tests/test_flux2.py.


def test_stream_sends_partial_images_at_the_requested_size(
    served: tuple[Family, openai.OpenAI],
) -> None:
    family, sdk = served
    ask = {"prompt": "a harbour", "stream": True, "partial_images": 2, "size": "96x64"}
    if not family.previews:  # no step-end callback (PixArt-Sigma)
        refused("partial_images", sdk.images.generate, **ask, extra_body=STEPS)
        return
    events = list(sdk.images.generate(**ask, extra_body={"num_inference_steps": 6, "seed": 2}))
    assert [event.type for event in events] == ["image_generation.partial_image"] * 2 + [
        "image_generation.completed"
    ]
    shots = [pixels(base64.b64decode(event.b64_json)) for event in events]
    assert [shot.shape for shot in shots] == [(64, 96, 3)] * 3
    assert max_diff(shots[0], shots[1]) > 0  # two steps, two different previews
    if family.edits:  # a streamed edit: partial images too, at the input's size
        stream = sdk.images.edit(image=("a.png", opaque_png(), "image/png"), prompt="moss",
                                 stream=True, partial_images=1, extra_body=STEPS)  # fmt: skip
        edit_events = list(stream)
        assert [event.type for event in edit_events] == [
            "image_edit.partial_image", "image_edit.completed"
        ]  # fmt: skip
        assert pixels(base64.b64decode(edit_events[0].b64_json)).shape == (64, 64, 3)


def test_concurrent_requests_equal_sequential_ones(served: tuple[Family, openai.OpenAI]) -> None:
    _, sdk = served

    def generate(seed: int) -> np.ndarray:
        return sdk_pixels(sdk.images.generate(**ASK, extra_body={**STEPS, "seed": seed}))[0]

    seeds = [11, 12, 13]
    alone = [generate(seed) for seed in seeds]
    with ThreadPoolExecutor(len(seeds)) as pool:
        together = list(pool.map(generate, seeds))
    for seed, first, second in zip(seeds, alone, together, strict=True):
        assert np.array_equal(first, second), f"seed {seed} differs run concurrently"
