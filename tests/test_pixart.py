"""PixArt-Sigma, a family without a step-end callback: seeded images at the requested size,
a clear 400 for partial images, and a deadline that still stops a running generation."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from flask import Flask

from tests.support.apps import make_app
from tests.support.client import generate, post_generation
from tests.support.errors import assert_openai_error
from tests.support.families import ensure_family
from tests.support.images import b64_pixels

TIMEOUT = 1.0  # REQUEST_TIMEOUT_SECONDS of the deadline test


@pytest.fixture(scope="module")
def pixart(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Flask:
    directory = ensure_family("pixart-sigma", tmp_path_factory.mktemp("families"))
    return make_app(model_cache, tmp_path_factory.mktemp("pixart-images"),
                    MODEL_ID=str(directory), MAX_STEPS=1000,
                    DEFAULT_GUIDANCE_SCALE=2.0)  # fmt: skip


def test_generation_is_seeded_and_at_the_requested_size(pixart: Flask) -> None:
    client = pixart.test_client()
    first = b64_pixels(generate(client, prompt="a fox", seed=3, num_inference_steps=2)["data"][0])
    again = b64_pixels(generate(client, prompt="a fox", seed=3, num_inference_steps=2)["data"][0])
    other = b64_pixels(generate(client, prompt="a fox", seed=4, num_inference_steps=2)["data"][0])
    assert first.shape == (64, 64, 3)
    assert np.array_equal(first, again) and not np.array_equal(first, other)


def test_partial_images_are_refused_naming_the_field(pixart: Flask) -> None:
    response = post_generation(pixart.test_client(), prompt="a fox", stream=True, partial_images=2)
    assert_openai_error(response, 400, param="partial_images")


def test_a_running_generation_stops_at_its_deadline(
    pixart: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 1000 steps take minutes here; the legacy per-step callback must stop the call at the
    # deadline, freeing the lane for the next request. (Only this test has the short
    # deadline: the others' 2-step generations take seconds on a busy 2-core machine.)
    monkeypatch.setitem(pixart.config, "REQUEST_TIMEOUT_SECONDS", TIMEOUT)
    started = time.monotonic()
    response = post_generation(pixart.test_client(), prompt="a fox", num_inference_steps=1000)
    elapsed = time.monotonic() - started
    assert_openai_error(response, 504, code="request_timeout")
    assert elapsed < TIMEOUT + 2.0, f"stopped after {elapsed:.1f}s"
    assert pixart.extensions["engine"].lane.idle()
