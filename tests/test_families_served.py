"""Tiny random SD 1.5, SDXL and FLUX.1 pipelines (tests/support/families.py), each loaded with
from_pretrained by a real Gunicorn and driven through the openai SDK: generations, negative
prompt, edits with and without a mask, variations, streaming with partial images."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest

from tests.support.apps import server_env
from tests.support.client import openai_client
from tests.support.families import ensure_family
from tests.support.gunicorn import GunicornServer
from tests.support.images import opaque_png, pixels, sdk_pixels, striped_png

pytestmark = pytest.mark.slow  # a real Gunicorn per family

STEPS = {"num_inference_steps": 4}


@pytest.fixture(scope="module", params=["sd15", "sdxl", "flux"])
def served(
    request: pytest.FixtureRequest, model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, openai.OpenAI]]:
    """The family `request.param`, saved and served by a real Gunicorn."""
    directory = ensure_family(request.param, tmp_path_factory.mktemp("families"))
    images = tmp_path_factory.mktemp(f"{request.param}-images")
    env = server_env(model_cache, images, MODEL_ID=directory, DEFAULT_GUIDANCE_SCALE=2.0)
    with GunicornServer(env) as server:
        yield request.param, openai_client(server.base_url)
        log = server.log()
        assert "Traceback" not in log, log[-4000:]
        # A model saved without a safety checker warns once, at load, not per request.
        assert log.count("You have disabled the safety checker") <= 1, log[-4000:]


def test_generation_is_seeded_and_at_the_requested_size(served: tuple[str, openai.OpenAI]) -> None:
    _, sdk = served
    ask = {"prompt": "a fox", "size": "64x64", "response_format": "b64_json"}
    first = sdk.images.generate(**ask, extra_body={**STEPS, "seed": 3})
    again = sdk.images.generate(**ask, extra_body={**STEPS, "seed": 3})
    other = sdk.images.generate(**ask, extra_body={**STEPS, "seed": 4})
    [a], [b], [c] = sdk_pixels(first), sdk_pixels(again), sdk_pixels(other)
    assert a.shape == (64, 64, 3) and np.array_equal(a, b) and not np.array_equal(a, c)


def test_negative_prompt_takes_effect_or_is_refused(served: tuple[str, openai.OpenAI]) -> None:
    family, sdk = served
    ask = {"prompt": "a fox", "size": "64x64", "response_format": "b64_json"}
    if family == "flux":  # FLUX.1 reads it only with true CFG: a 400, never ignored
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.images.generate(**ask, extra_body={**STEPS, "negative_prompt": "blurry"})
        assert refused.value.body["param"] == "negative_prompt"
        return
    plain = sdk.images.generate(**ask, extra_body={**STEPS, "seed": 5})
    negative = sdk.images.generate(**ask, extra_body={**STEPS, "seed": 5, "negative_prompt": "x"})
    assert not np.array_equal(sdk_pixels(plain)[0], sdk_pixels(negative)[0])


def test_edits_with_and_without_mask_and_variations(served: tuple[str, openai.OpenAI]) -> None:
    _, sdk = served
    source = opaque_png()
    edited = sdk.images.edit(image=("a.png", source, "image/png"), prompt="moss", n=2,
                             response_format="b64_json", extra_body=STEPS)  # fmt: skip
    assert [image.shape for image in sdk_pixels(edited)] == [(64, 64, 3)] * 2
    masked = sdk.images.edit(
        image=("a.png", source, "image/png"), prompt="a door", response_format="b64_json",
        mask=("m.png", striped_png(hole=(16, 16, 48, 48)), "image/png"),
        extra_body={**STEPS, "strength": 1.0},
    )  # fmt: skip
    [inpainted] = sdk_pixels(masked)
    inside = np.abs(inpainted[20:44, 20:44].astype(int) - pixels(source)[20:44, 20:44]).mean()
    outside = np.abs(inpainted[:8].astype(int) - pixels(source)[:8]).mean()
    assert inside > outside
    varied = sdk.images.create_variation(image=("a.png", source, "image/png"),
                                         response_format="b64_json", extra_body=STEPS)  # fmt: skip
    assert sdk_pixels(varied)[0].shape == (64, 64, 3)


def test_stream_sends_partial_images_at_the_requested_size(
    served: tuple[str, openai.OpenAI],
) -> None:
    _, sdk = served
    stream = sdk.images.generate(prompt="a harbour", stream=True, partial_images=2,
                                 size="96x64", extra_body={"num_inference_steps": 6})  # fmt: skip
    events = list(stream)
    assert [event.type for event in events] == ["image_generation.partial_image"] * 2 + [
        "image_generation.completed"
    ]
    for event in events:
        assert pixels(base64.b64decode(event.b64_json)).shape == (64, 96, 3)
