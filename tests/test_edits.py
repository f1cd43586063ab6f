"""Edits, variations and streaming: through the real server and the official openai SDK
(slow), and the upload checks in process."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import openai
import pytest
import requests
import torch
from flask import Flask
from PIL import Image

from app.engine import Task
from tests.support.apps import make_app
from tests.support.client import openai_client, post_generation_http
from tests.support.errors import assert_openai_error
from tests.support.images import b64_pixels, opaque_png, pixels, sdk_pixels, striped_png

STEPS = {"num_inference_steps": 4}
STEPS_FORM = {"num_inference_steps": "2"}


@pytest.fixture(scope="module")
def sdk(server: str) -> openai.OpenAI:
    """The official OpenAI client pointed at the session's real server."""
    return openai_client(server)


@pytest.mark.slow
def test_sdk_edit_with_mask_repaints_only_the_transparent_area(sdk: openai.OpenAI) -> None:
    source = opaque_png()
    mask = striped_png(hole=(16, 16, 48, 48))
    result = sdk.images.edit(
        image=("in.png", source, "image/png"), mask=("mask.png", mask, "image/png"),
        prompt="a red door", response_format="b64_json", extra_body={**STEPS, "seed": 5},
    )  # fmt: skip
    [edited] = sdk_pixels(result)
    original = pixels(source)
    assert edited.shape == original.shape == (64, 64, 3)
    inside = np.abs(edited[20:44, 20:44].astype(int) - original[20:44, 20:44]).mean()
    outside = np.abs(edited[:8].astype(int) - original[:8]).mean()
    assert inside > outside  # the transparent area changed more than the kept area


@pytest.mark.slow
def test_sdk_edit_without_mask_is_image_to_image(sdk: openai.OpenAI) -> None:
    result = sdk.images.edit(
        image=("in.png", opaque_png((96, 64)), "image/png"), prompt="autumn",
        response_format="b64_json", extra_body={**STEPS, "seed": 9, "strength": 0.5},
    )  # fmt: skip
    [edited] = sdk_pixels(result)
    assert edited.shape == (64, 96, 3)  # the input's size, already a multiple of 16
    again = sdk.images.edit(
        image=("in.png", opaque_png((96, 64)), "image/png"), prompt="autumn",
        response_format="b64_json", extra_body={**STEPS, "seed": 9, "strength": 0.5},
    )  # fmt: skip
    assert np.array_equal(edited, sdk_pixels(again)[0])  # same seed, same image


@pytest.mark.slow
def test_sdk_edit_n2_as_urls_and_several_images_refused(sdk: openai.OpenAI, server: str) -> None:
    result = sdk.images.edit(
        image=("a.png", opaque_png(), "image/png"), n=2, prompt="snow", size="64x64",
        extra_body=STEPS,
    )  # fmt: skip
    assert len(result.data) == 2
    for item in result.data:
        assert item.url and item.url.startswith(server)
        assert requests.get(item.url, timeout=10).content.startswith(b"\x89PNG")
    # Several images are references for one output; SD3's img2img takes one.
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.images.edit(
            image=[("a.png", opaque_png(), "image/png"), ("b.png", opaque_png(), "image/png")],
            prompt="snow", size="64x64", extra_body=STEPS,
        )  # fmt: skip
    assert refused.value.body["param"] == "image"


@pytest.mark.slow
def test_sdk_variations_n2(sdk: openai.OpenAI) -> None:
    result = sdk.images.create_variation(
        image=("in.png", opaque_png(), "image/png"), n=2, response_format="b64_json",
        extra_body={**STEPS, "seed": 11, "strength": 0.7},
    )  # fmt: skip
    first, second = sdk_pixels(result)
    assert [item.seed for item in result.data] == [11, 12]
    assert not np.array_equal(first, second)


@pytest.mark.slow
def test_sdk_streams_two_partial_images_then_the_final_one(sdk: openai.OpenAI) -> None:
    stream = sdk.images.generate(
        prompt="a harbour", stream=True, partial_images=2, size="64x64",
        extra_body={"num_inference_steps": 6, "seed": 3},
    )  # fmt: skip
    events = list(stream)
    assert [event.type for event in events] == [
        "image_generation.partial_image",
        "image_generation.partial_image",
        "image_generation.completed",
    ]
    assert [event.partial_image_index for event in events[:2]] == [0, 1]
    final = pixels(base64.b64decode(events[-1].b64_json))
    assert final.shape == (64, 64, 3)
    assert events[-1].size == "64x64" and events[-1].output_format == "png"
    # The streamed final image is the image the same request gives without streaming.
    plain = sdk.images.generate(prompt="a harbour", size="64x64", response_format="b64_json",
                                extra_body={"num_inference_steps": 6, "seed": 3})  # fmt: skip
    assert np.array_equal(final, sdk_pixels(plain)[0])


@pytest.mark.slow
def test_sdk_streams_an_edit_with_image_edit_events(sdk: openai.OpenAI) -> None:
    stream = sdk.images.edit(
        image=("in.png", opaque_png(), "image/png"),
        mask=("m.png", striped_png(hole=(0, 0, 32, 32)), "image/png"),
        prompt="moss", stream=True, partial_images=1,
        extra_body={"num_inference_steps": 6, "strength": 1.0},
    )  # fmt: skip
    types = [event.type for event in stream]
    assert types == ["image_edit.partial_image", "image_edit.completed"]


@pytest.mark.slow
def test_streaming_errors_before_admission_are_plain_http_errors(server: str) -> None:
    response = post_generation_http(server, {"prompt": "x", "stream": True, "n": 2})
    assert_openai_error(response, 400, param="n")


@pytest.mark.parametrize(
    ("files", "data", "status", "param"),
    [
        ({}, {"prompt": "x"}, 400, "image"),
        ({"image": ("a.txt", b"hello", "text/plain")}, {"prompt": "x"}, 400, "image"),
        ({"image": ("a.png", b"", "image/png")}, {"prompt": "x"}, 400, "image"),
        ({"image": ("a.gif", b"GIF89a\x01\x00\x01\x00\x00\x00\x00;", "image/gif")},
         {"prompt": "x"}, 400, "image"),
        ({"image": ("a.png", opaque_png(), "image/png"),
          "mask": ("m.png", striped_png((32, 32), hole=(0, 0, 8, 8)), "image/png")},
         {"prompt": "x"}, 400, "mask"),
        ({"image": ("a.png", opaque_png(), "image/png"),
          "mask": ("m.png", opaque_png(), "image/png")}, {"prompt": "x"}, 400, "mask"),
        ({"image": ("a.png", opaque_png(), "image/png")}, {}, 400, "prompt"),
        ({"image": ("a.png", opaque_png(), "image/png")}, {"prompt": "x", "n": "zero"}, 400, "n"),
        ({"image": ("a.png", opaque_png(), "image/png")},
         {"prompt": "x", "strength": "1.5"}, 400, "strength"),
        ({"image": ("a.png", opaque_png(), "image/png")}, {"prompt": "x", "bogus": "1"}, 400,
         "bogus"),
        ({"image": ("a.png", opaque_png(), "image/png"), "extra": ("e.png", b"x", "image/png")},
         {"prompt": "x"}, 400, "extra"),
    ],
)  # fmt: skip
def test_bad_uploads_are_openai_errors_and_write_nothing(
    app: Flask, files: dict, data: dict, status: int, param: str
) -> None:
    image_dir = Path(app.config["IMAGE_DIR"])
    before = set(image_dir.iterdir())
    form = {**data, **{name: (io.BytesIO(blob), filename, mime)
                       for name, (filename, blob, mime) in files.items()}}  # fmt: skip
    response = app.test_client().post("/v1/images/edits", data=form,
                                      content_type="multipart/form-data")  # fmt: skip
    assert_openai_error(response, status, param=param)
    assert set(image_dir.iterdir()) == before


def test_decompression_bomb_is_refused_before_decoding(app: Flask) -> None:
    bomb = io.BytesIO()
    Image.new("1", (20000, 20000)).save(bomb, "PNG")  # tiny file, 400 megapixels
    response = app.test_client().post(
        "/v1/images/variations", content_type="multipart/form-data",
        data={"image": (io.BytesIO(bomb.getvalue()), "bomb.png", "image/png")},
    )  # fmt: skip
    error = assert_openai_error(response, 400, param="image")
    assert error["code"] in ("image_too_large", "invalid_image")


def test_upload_over_the_limit_is_413(model_cache: Path, tmp_path: Path) -> None:
    small = make_app(model_cache, tmp_path, MAX_UPLOAD_BYTES=50_000)
    response = small.test_client().post(
        "/v1/images/edits", content_type="multipart/form-data",
        data={"prompt": "x", "image": (io.BytesIO(b"\x00" * 100_000), "big.png", "image/png")},
    )  # fmt: skip
    assert_openai_error(response, 413)


def _data_url(blob: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(blob).decode()


def _multipart_edit(app: Flask, fields: dict, **files: bytes) -> dict:
    form = {**fields, **{name: (io.BytesIO(blob), f"{name}.png", "image/png")
                         for name, blob in files.items()}}  # fmt: skip
    response = app.test_client().post("/v1/images/edits", data=form,
                                      content_type="multipart/form-data")  # fmt: skip
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def test_json_edit_with_data_urls_equals_the_multipart_edit(app: Flask) -> None:
    source, mask = opaque_png(), striped_png(hole=(16, 16, 48, 48))
    fields = {"prompt": "a red door", "seed": 4, "num_inference_steps": 2,
              "response_format": "b64_json"}  # fmt: skip
    references = {"images": [{"image_url": _data_url(source)}],
                  "mask": {"image_url": _data_url(mask)}}  # fmt: skip
    response = app.test_client().post("/v1/images/edits", json={**fields, **references})
    assert response.status_code == 200, response.get_json()
    as_form = _multipart_edit(app, {k: str(v) for k, v in fields.items()}, image=source, mask=mask)
    assert np.array_equal(
        b64_pixels(response.get_json()["data"][0]), b64_pixels(as_form["data"][0])
    )


def test_edit_gives_n_outputs_of_the_first_image(app: Flask) -> None:
    fields = {"prompt": "snow", "n": "3", "seed": "7", "response_format": "b64_json"}
    body = _multipart_edit(app, {**fields, **STEPS_FORM}, image=opaque_png((96, 64)))
    assert [item["seed"] for item in body["data"]] == [7, 8, 9]
    assert all(b64_pixels(item).shape == (64, 96, 3) for item in body["data"])


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [({"images": [{"image_url": "https://example.com/a.png"}]}, "images", "unsupported_image_url"),
     ({"images": [{"file_id": "file-abc"}]}, "images", "unsupported_parameter"),
     ({"images": [{"image_url": "data:image/png;base64,%%%"}]}, "images", "invalid_image"),
     ({"images": [{"image_url": "data:image/png;base64,aGVsbG8="}]}, "images", "invalid_image"),
     ({"images": ["not an object"]}, "images", None),
     ({"images": []}, "images", None),
     ({}, "images", None),
     ({"images": [{"image_url": "DATA"}], "mask": {"image_url": "http://10.0.0.1/m.png"}},
      "mask", "unsupported_image_url"),
     ({"images": [{"image_url": "DATA"}, {"image_url": "DATA"}]}, "image",
      "unsupported_parameter"),
     ({"images": [{"image_url": "DATA"}], "n": "2"}, "n", None),
     ({"images": [{"image_url": "DATA"}], "image": "x"}, "image", "unknown_parameter")],
)  # fmt: skip
def test_bad_json_edits_are_400_naming_the_field_and_write_nothing(
    app: Flask, body: dict, param: str, code: str | None
) -> None:
    image_dir = Path(app.config["IMAGE_DIR"])
    before = set(image_dir.iterdir())
    text = json.dumps({"prompt": "x", **body}).replace(
        '"DATA"', json.dumps(_data_url(opaque_png()))
    )
    response = app.test_client().post("/v1/images/edits", data=text,
                                      content_type="application/json")  # fmt: skip
    assert_openai_error(response, 400, param=param, code=code)
    assert set(image_dir.iterdir()) == before


def test_edit_as_plain_text_is_415(app: Flask) -> None:
    response = app.test_client().post("/v1/images/edits", data="x", content_type="text/plain")
    assert_openai_error(response, 415)


def test_variations_default_to_the_default_size_not_the_inputs(app: Flask) -> None:
    response = app.test_client().post(
        "/v1/images/variations", content_type="multipart/form-data",
        data={"image": (io.BytesIO(opaque_png((96, 48))), "a.png", "image/png"),
              "response_format": "b64_json", **STEPS_FORM},
    )  # fmt: skip
    assert response.status_code == 200, response.get_json()
    assert b64_pixels(response.get_json()["data"][0]).shape == (64, 64, 3)  # DEFAULT_SIZE


def test_edits_share_the_loaded_weights(app: Flask) -> None:
    engine = app.extensions["engine"]
    shared = engine.shared_pipeline()
    modules_before = {name: id(c) for name, c in shared.components.items()}
    for task in (Task.IMAGE_TO_IMAGE, Task.INPAINT):
        derived = engine.derive_pipeline(task)
        assert type(derived).__name__ != type(shared).__name__
        for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
            assert getattr(derived, name) is getattr(shared, name), name
    response = app.test_client().post(
        "/v1/images/edits", content_type="multipart/form-data",
        data={"prompt": "x", "num_inference_steps": "2",
              "image": (io.BytesIO(striped_png(hole=(0, 0, 8, 8))), "a.png", "image/png")},
    )  # fmt: skip
    assert response.status_code == 200, response.get_json()
    assert {name: id(c) for name, c in shared.components.items()} == modules_before
    assert all(p.dtype == torch.float32 for p in shared.transformer.parameters())  # never converted
