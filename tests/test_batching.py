"""Micro-batching on the real tiny pipeline, in-process.

A spy in the engine's `pipeline_call` seam (it calls the real pipeline) records the prompt
entries of every pipeline call, so which requests shared a call, and holds the first,
incompatible request inside the lane until the compatible ones are queued behind it; then
they run as one batch. Each batched request must get exactly the images it gets alone,
give or take batched-matmul rounding.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from PIL import Image

from app.engine.runner import call_pipeline
from tests.support.apps import make_app
from tests.support.client import generate
from tests.support.images import b64_pixels, max_diff
from tests.support.waiting import wait_until

WAIT = 60.0  # upper bound for every wait; a healthy run never gets near it
# Batched and unbatched pixels may differ by rounding in batched matmuls: on CPU in float32
# the tiny model differs by at most 1 in a handful of pixel values, while images of
# different requests differ by hundreds.
TOLERANCE = 8
HOLDER = {"prompt": "holder", "size": "128x128", "seed": 1}  # incompatible batch key
TWO_STEPS = {"num_inference_steps": 2}


class BatchSpy:
    """Record each pipeline call's prompt entries; hold the HOLDER call until released."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.calls: list[list[str]] = []  # one prompt entry per image, per call
        self.negatives: list[list[str | None]] = []
        self.holding = threading.Event()
        self.release = threading.Event()

    def __call__(self, pipeline: Any, arguments: dict[str, Any]) -> list[Image.Image]:
        prompts = arguments["prompt"]
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        negatives = arguments.get("negative_prompt")
        if not isinstance(negatives, list):
            negatives = [negatives] * len(prompts)
        self.calls.append(prompts)
        self.negatives.append(negatives)
        if prompts[0] == HOLDER["prompt"]:
            self.holding.set()
            assert self.release.wait(WAIT), "the holder was never released"
        return call_pipeline(pipeline, arguments)


SPY = BatchSpy()


@pytest.fixture(scope="module")
def batched(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Flask:
    return make_app(model_cache, tmp_path_factory.mktemp("batched"), pipeline_call=SPY,
                    MAX_CONCURRENT_GENERATIONS=1, BATCH_MAX_SIZE=8, BATCH_WAIT_MS=300)  # fmt: skip


@pytest.fixture(scope="module")
def alone(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Flask:
    """The same server without batching: every request is its own pipeline call."""
    return make_app(model_cache, tmp_path_factory.mktemp("alone"), MAX_CONCURRENT_GENERATIONS=1)


@pytest.fixture
def spy(batched: Flask) -> Iterator[BatchSpy]:
    SPY.reset()
    yield SPY
    SPY.release.set()  # never leave a request thread blocked, whatever failed


def run_batched(app: Flask, spy: BatchSpy, bodies: list[dict[str, Any]]) -> list[dict]:
    """Hold the lane, queue `bodies` in order behind it, release; return their responses."""
    lane = app.extensions["engine"].lane
    results: dict[int, dict[str, Any]] = {}
    errors: list[BaseException] = []

    def send(i: int, body: dict[str, Any]) -> None:
        try:
            results[i] = generate(app.test_client(), **TWO_STEPS, **body)
        except BaseException as exc:  # noqa: BLE001 -- reported by the test thread
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(-1, HOLDER), daemon=True)]
    threads[0].start()
    assert spy.holding.wait(WAIT), "the holder never reached the pipeline"
    for i, body in enumerate(bodies):
        threads.append(threading.Thread(target=send, args=(i, body), daemon=True))
        threads[-1].start()
        wait_until(lambda n=i + 1: lane.queued_requests == n, f"request {i} to queue", WAIT)
    spy.release.set()
    for thread in threads:
        thread.join(WAIT)
    assert not errors, errors
    assert lane.idle()
    assert len(results[-1]["data"]) == 1
    return [results[i] for i in range(len(bodies))]


def assert_same_as_alone(
    alone: Flask, bodies: list[dict[str, Any]], responses: list[dict[str, Any]]
) -> int:
    """Assert each response matches its request run alone, and no other; return max diff."""
    client = alone.test_client()
    expected = [
        [b64_pixels(item) for item in generate(client, **TWO_STEPS, **body)["data"]]
        for body in bodies
    ]
    got = [[b64_pixels(item) for item in r["data"]] for r in responses]
    observed = 0
    for body, response, images, reference in zip(bodies, responses, got, expected, strict=True):
        n = body.get("n", 1)
        assert [item["seed"] for item in response["data"]] == [body["seed"] + i for i in range(n)]
        assert len(images) == len(reference) == n
        for image, ref in zip(images, reference, strict=True):
            assert image.shape == ref.shape == (64, 64, 3)
            observed = max(observed, max_diff(image, ref))
            assert max_diff(image, ref) <= TOLERANCE, body
    # Every image differs clearly from every other, so a mixed-up assignment would fail.
    flat = [image for images in expected for image in images]
    for a, b in itertools.combinations(flat, 2):
        assert max_diff(a, b) > 4 * TOLERANCE
    return observed


def test_queued_compatible_requests_run_as_one_batch_with_their_own_images(
    batched: Flask, alone: Flask, spy: BatchSpy
) -> None:
    bodies = [
        {"prompt": "a red fox", "seed": 11},
        {"prompt": "a blue lake", "seed": 22, "n": 2},
        {"prompt": "a green hill", "seed": 33},
        {"prompt": "a grey cat", "seed": 44, "n": 2},
        {"prompt": "a tall tree", "seed": 55},
        {"prompt": "a small boat", "seed": 66},
    ]
    responses = run_batched(batched, spy, bodies)
    # The holder's call, then one call with every image of the six requests, in order.
    assert spy.calls == [
        [HOLDER["prompt"]],
        [b["prompt"] for b in bodies for _ in range(b.get("n", 1))],
    ]
    observed = assert_same_as_alone(alone, bodies, responses)
    print(f"max pixel difference batched vs alone: {observed}")


def test_requests_with_and_without_negative_prompt_are_never_merged(
    batched: Flask, alone: Flask, spy: BatchSpy
) -> None:
    bodies = [
        {"prompt": "plain one", "seed": 101},
        {"prompt": "negative one", "seed": 202, "negative_prompt": "blurry"},
        {"prompt": "plain two", "seed": 303, "n": 2},
        {"prompt": "negative two", "seed": 404, "negative_prompt": "dark, noisy", "n": 2},
    ]
    responses = run_batched(batched, spy, bodies)
    for negatives in spy.negatives:
        assert len({negative is not None for negative in negatives}) == 1, negatives
    assert spy.calls[1:] == [
        ["plain one", "plain two", "plain two"],
        ["negative one", "negative two", "negative two"],
    ]
    observed = assert_same_as_alone(alone, bodies, responses)
    print(f"max pixel difference batched vs alone (negative prompts): {observed}")
