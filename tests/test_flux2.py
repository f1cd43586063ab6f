"""FLUX.2 [klein] edits in process: the reference images reach the pipeline once, as one
list, whatever `n`; the edit runs every step (no strength); such edits never share a call."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from PIL import Image

from app.engine import GenerationSpec, Task
from app.engine.runner import call_pipeline
from tests.support.apps import make_app
from tests.support.errors import assert_openai_error
from tests.support.families import ensure_family
from tests.support.images import opaque_png, png_parameters, striped_png


class ArgumentSpy:
    """Record the arguments of every pipeline call, then make the call."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def __call__(self, pipeline: Any, arguments: dict[str, Any]) -> list[Image.Image]:
        self.calls.append(arguments)
        return call_pipeline(pipeline, arguments)


SPY = ArgumentSpy()


@pytest.fixture(scope="module")
def klein(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Flask:
    directory = ensure_family("flux2-klein", tmp_path_factory.mktemp("families"))
    images = tmp_path_factory.mktemp("klein-images")
    return make_app(model_cache, images, pipeline_call=SPY, MODEL_ID=str(directory),
                    BATCH_MAX_SIZE=8)  # fmt: skip


def data_url(blob: bytes) -> dict[str, str]:
    return {"image_url": "data:image/png;base64," + base64.b64encode(blob).decode()}


def edit(app: Flask, images: list[bytes], **fields: Any) -> Any:
    body = {"prompt": "moss", "images": [data_url(blob) for blob in images],
            "num_inference_steps": 2, "response_format": "b64_json", **fields}  # fmt: skip
    return app.test_client().post("/v1/images/edits", json=body)


@pytest.mark.parametrize("count", [1, 2])
def test_references_are_passed_once_with_n_outputs(klein: Flask, count: int) -> None:
    SPY.calls.clear()
    images = [opaque_png(), striped_png(hole=(0, 0, 32, 32))][:count]
    response = edit(klein, images, n=3, seed=5)
    assert response.status_code == 200, response.get_json()
    assert [item["seed"] for item in response.get_json()["data"]] == [5, 6, 7]
    [arguments] = SPY.calls  # one call for the three outputs
    assert isinstance(arguments["prompt"], str) and arguments["num_images_per_prompt"] == 3
    assert len(arguments["image"]) == count and len(arguments["generator"]) == 3
    assert "strength" not in arguments


def test_edits_run_every_step_and_refuse_strength(klein: Flask) -> None:
    # One step: the default strength (0.8) would leave none, but FLUX.2 runs them all.
    response = edit(klein, [opaque_png()], num_inference_steps=1)
    assert response.status_code == 200, response.get_json()
    blob = base64.b64decode(response.get_json()["data"][0]["b64_json"])
    assert png_parameters(blob)["strength"] == 1.0
    assert_openai_error(edit(klein, [opaque_png()], strength=0.5), 400, param="strength")
    mask = {"mask": data_url(striped_png(hole=(16, 16, 48, 48)))}
    assert_openai_error(edit(klein, [opaque_png()], **mask), 400, param="mask")


def test_edits_never_share_a_pipeline_call(klein: Flask) -> None:
    engine = klein.extensions["engine"]
    generation = engine.submit(_spec(), deadline=float("inf"))
    edited = engine.submit(_spec(references=1), deadline=float("inf"))
    assert generation.batch_key is not None and edited.batch_key is None
    engine.complete(generation)
    engine.complete(edited)


def _spec(references: int = 0) -> GenerationSpec:
    image = Image.new("RGB", (64, 64))
    task = Task.IMAGE_TO_IMAGE if references else Task.TEXT_TO_IMAGE
    inputs = (image,) * references
    return GenerationSpec("x", None, 64, 64, 2, 1.0, (1,), task=task, init_images=inputs,
                          references=inputs)  # fmt: skip
