"""The HTTP API in process, through Flask's test client, over the real tiny pipeline."""

from __future__ import annotations

import base64
import errno
import io
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import torch
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image
from werkzeug.test import TestResponse

from app.engine import GenerationSpec
from app.engine.runner import call_pipeline
from app.schemas import MAX_SEED
from app.storage import local as local_store
from tests.support.apps import idle_app, make_app
from tests.support.client import GENERATIONS, post_generation
from tests.support.client import generate as generate_json
from tests.support.errors import assert_openai_error
from tests.support.images import b64_pixels, max_diff, pixels, png_parameters

IMAGE_URL = re.compile(r"^http://localhost/static/images/[0-9a-f]{32}\.png$")
FRESH_ID = re.compile(r"^[0-9a-f]{32}$")


def image_dir(app: Flask) -> Path:
    """The directory the app stores its images in."""
    return Path(app.config["IMAGE_DIR"])


def stored_files(app: Flask) -> set[str]:
    """Every entry in the app's image directory, hidden temporary files included."""
    return {path.name for path in image_dir(app).iterdir()}


def temporary_files(app: Flask) -> set[str]:
    """The half-written images left in the app's image directory."""
    return {name for name in stored_files(app) if name.startswith(".tmp-")}


def fetch(client: FlaskClient, url: str) -> TestResponse:
    """GET an image URL from the response through the same app."""
    return client.get(urlsplit(url).path)


# -- successful generations ----------------------------------------------------------


def test_url_response_points_at_a_stored_png(app: Flask, client: FlaskClient) -> None:
    before = time.time()
    resp = post_generation(client, prompt="a lighthouse at dusk", seed=1234)
    after = time.time()

    assert resp.status_code == 200, resp.data
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert isinstance(body["created"], int)
    assert int(before) - 1 <= body["created"] <= after + 1
    assert len(body["data"]) == 1
    item = body["data"][0]
    assert set(item) == {"url", "seed"}
    assert item["seed"] == 1234
    assert IMAGE_URL.match(item["url"]), item["url"]

    name = item["url"].rsplit("/", 1)[1]
    stored = image_dir(app) / name
    assert stored.is_file()
    assert not temporary_files(app)

    served = fetch(client, item["url"])
    assert served.status_code == 200
    assert served.mimetype == "image/png"
    assert served.data == stored.read_bytes()
    assert served.data.startswith(b"\x89PNG\r\n\x1a\n")

    png = Image.open(io.BytesIO(served.data))
    assert png.format == "PNG"
    assert png.size == (64, 64)
    parameters = png_parameters(served.data)
    assert parameters["prompt"] == "a lighthouse at dusk"
    assert parameters["seed"] == 1234
    assert parameters["steps"] == 1
    assert parameters["size"] == "64x64"
    assert parameters["model"] == "tiny-random"


def test_n_images_get_their_own_urls_and_consecutive_seeds(client: FlaskClient) -> None:
    resp = post_generation(client, n=2, seed=500)
    assert resp.status_code == 200, resp.data
    data = resp.get_json()["data"]
    assert [item["seed"] for item in data] == [500, 501]
    urls = [item["url"] for item in data]
    assert len(set(urls)) == 2 and all(IMAGE_URL.match(url) for url in urls)
    first, second = (pixels(fetch(client, url).data) for url in urls)
    assert not np.array_equal(first, second)


def test_b64_json_writes_no_file_and_decodes_at_the_requested_size(
    app: Flask, client: FlaskClient
) -> None:
    before = stored_files(app)
    resp = post_generation(client, response_format="b64_json", size="64x128")
    assert resp.status_code == 200, resp.data
    assert stored_files(app) == before

    body = resp.get_json()
    assert "size" not in body  # none of OpenAI's three sizes: left out
    (item,) = body["data"]
    assert set(item) == {"b64_json", "seed"}
    image = Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))
    assert image.format == "PNG"
    assert image.size == (64, 128)  # width 64, height 128
    assert b64_pixels(item).shape == (128, 64, 3)


def test_same_seed_gives_identical_pixels_and_another_seed_differs(client: FlaskClient) -> None:
    def image(seed: int) -> np.ndarray:
        resp = post_generation(client, response_format="b64_json", seed=seed)
        assert resp.status_code == 200, resp.data
        return b64_pixels(resp.get_json()["data"][0])

    first = image(42)
    assert np.array_equal(first, image(42))
    assert not np.array_equal(first, image(43))


def test_a_returned_seed_regenerates_its_image_alone(client: FlaskClient) -> None:
    batch = post_generation(client, response_format="b64_json", n=2, seed=7000)
    assert batch.status_code == 200, batch.data
    second = batch.get_json()["data"][1]
    assert second["seed"] == 7001
    alone = post_generation(client, response_format="b64_json", seed=second["seed"])
    assert alone.status_code == 200, alone.data
    # Batched and single runs may round a pixel differently.
    assert max_diff(b64_pixels(second), b64_pixels(alone.get_json()["data"][0])) <= 2


def test_every_returned_seed_can_be_sent_back(client: FlaskClient) -> None:
    # A client replays an image by sending the seed it was given; near the top of the
    # range, n > 1 must not hand out seeds that the server itself refuses.
    resp = post_generation(client, response_format="b64_json", n=2, seed=MAX_SEED)
    assert resp.status_code == 200, resp.data
    for item in resp.get_json()["data"]:
        replay = post_generation(client, response_format="b64_json", seed=item["seed"])
        assert replay.status_code == 200, (item["seed"], replay.data)


@pytest.mark.parametrize(
    ("output_format", "pil_format", "mimetype"),
    [("jpeg", "JPEG", "image/jpeg"), ("webp", "WEBP", "image/webp")],
)
def test_output_format_sets_the_encoding_and_the_url_extension(
    client: FlaskClient, output_format: str, pil_format: str, mimetype: str
) -> None:
    resp = post_generation(client, output_format=output_format)
    assert resp.status_code == 200, resp.data
    body = resp.get_json()
    assert body["output_format"] == output_format
    url = body["data"][0]["url"]
    assert re.match(rf"^http://localhost/static/images/[0-9a-f]{{32}}\.{output_format}$", url)

    served = fetch(client, url)
    assert served.status_code == 200
    assert served.mimetype == mimetype
    if output_format == "jpeg":
        assert served.data.startswith(b"\xff\xd8\xff")
    else:
        assert served.data[:4] == b"RIFF" and served.data[8:12] == b"WEBP"
    image = Image.open(io.BytesIO(served.data))
    assert image.format == pil_format
    assert image.size == (64, 64)


def test_output_compression_changes_the_jpeg_size(client: FlaskClient) -> None:
    def jpeg(compression: int) -> bytes:
        resp = post_generation(
            client,
            response_format="b64_json",
            output_format="jpeg",
            output_compression=compression,
            seed=99,
        )
        assert resp.status_code == 200, resp.data
        blob = base64.b64decode(resp.get_json()["data"][0]["b64_json"])
        assert blob.startswith(b"\xff\xd8\xff")
        return blob

    assert len(jpeg(10)) < len(jpeg(95))


def test_response_echoes_values_within_openais_enums(client: FlaskClient) -> None:
    resp = client.post(
        GENERATIONS,
        json={
            "prompt": "a teapot",
            "size": "128x64",
            "quality": "low",
            "response_format": "b64_json",
            "background": "auto",
        },
    )
    assert resp.status_code == 200, resp.data
    body = resp.get_json()
    assert "size" not in body  # 128x64 has no place in OpenAI's size enum
    assert body["quality"] == "low"
    assert body["output_format"] == "png"
    assert body["background"] == "opaque"  # `auto` resolved to what was made: no alpha
    assert Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"]))).size == (128, 64)


def test_an_official_size_is_echoed(client: FlaskClient) -> None:
    body = generate_json(client, size="1536x1024", num_inference_steps=1)
    assert body["size"] == "1536x1024"
    assert b64_pixels(body["data"][0]).shape == (1024, 1536, 3)


@pytest.mark.parametrize(
    ("fields", "quality"),
    [({"quality": "auto"}, "medium"), ({"quality": "standard"}, "medium"),
     ({"quality": "hd"}, "high"), ({"num_inference_steps": 1}, "low"),
     ({"num_inference_steps": 2}, "medium"), ({"num_inference_steps": 9}, "high"),
     ({"quality": "low", "num_inference_steps": 3}, "high")],
)  # fmt: skip
def test_quality_is_resolved_from_the_steps_that_ran(
    client: FlaskClient, fields: dict[str, Any], quality: str
) -> None:
    # DEFAULT_STEPS=2: low runs 1 step, medium 2, high 3; the nearest count names it.
    body = {"prompt": "a teapot", "size": "64x64", "response_format": "b64_json", **fields}
    resp = client.post(GENERATIONS, json=body)
    assert resp.status_code == 200, resp.data
    assert resp.get_json()["quality"] == quality


def test_usage_counts_prompt_tokens_and_latent_patches(app: Flask, client: FlaskClient) -> None:
    tokenizer = app.extensions["engine"].shared_pipeline().tokenizer
    prompt = "a teapot on a wooden table"
    text = len(tokenizer(prompt)["input_ids"])
    body = generate_json(client, prompt=prompt, size="128x64", n=2)
    per_image = (128 // 16) * (64 // 16)  # SD3: VAE downscale 8 x patch 2
    assert body["usage"] == {
        "input_tokens": text, "input_tokens_details": {"text_tokens": text, "image_tokens": 0},
        "output_tokens": 2 * per_image, "total_tokens": text + 2 * per_image,
    }  # fmt: skip
    longer = generate_json(client, prompt=prompt, size="128x64", negative_prompt="blurry")
    assert longer["usage"]["input_tokens"] > text  # the negative prompt is input text too


@pytest.mark.parametrize(
    ("model", "kind"),
    [("gpt-image-1", "b64_json"), ("gpt-image-1.5", "b64_json"),
     ("chatgpt-image-latest", "b64_json"), ("dall-e-3", "url"), ("dall-e-2", "url"),
     ("tiny-random", "url"), (None, "url")],
)  # fmt: skip
def test_model_decides_the_default_response_format(
    client: FlaskClient, model: str | None, kind: str
) -> None:
    resp = post_generation(client, model=model)
    assert resp.status_code == 200, resp.data
    assert set(resp.get_json()["data"][0]) == {kind, "seed"}
    explicit = post_generation(client, model=model, response_format="url")
    assert set(explicit.get_json()["data"][0]) == {"url", "seed"}  # an explicit choice wins


def test_safety_identifier_and_a_long_user_are_accepted_and_logged(
    client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    user = "u" * 1000  # the spec sets no length cap
    with caplog.at_level("INFO", logger="app.api"):
        resp = post_generation(client, user=user, safety_identifier="hash-of-alice")
    assert resp.status_code == 200, resp.data
    assert "safety_identifier='hash-of-alice'" in caplog.text
    assert "user='uuuu" in caplog.text and user not in caplog.text  # logged, but bounded


def test_quality_low_runs_fewer_steps_than_auto_and_high_more(client: FlaskClient) -> None:
    # No num_inference_steps: quality alone decides. The PNG records the steps that ran.
    steps, images = {}, {}
    for quality in ("low", "auto", "high"):
        body = {"prompt": "a teapot", "size": "64x64", "seed": 8, "quality": quality}
        resp = client.post(GENERATIONS, json={**body, "response_format": "b64_json"})
        assert resp.status_code == 200, resp.data
        item = resp.get_json()["data"][0]
        steps[quality] = png_parameters(base64.b64decode(item["b64_json"]))["steps"]
        images[quality] = b64_pixels(item)
    assert steps["low"] < steps["auto"] < steps["high"]
    assert steps["auto"] == 2  # the app's DEFAULT_STEPS
    # Same seed, other step counts: the pipeline really ran them.
    assert not np.array_equal(images["low"], images["high"])


def test_the_seed_documents_exact_request_works(client: FlaskClient) -> None:
    resp = client.post(
        GENERATIONS,
        data='{"model": "something", "prompt": "a kitten in front of a fireplace"}',
        headers={"Content-Type": "application/json"},
    )
    assert resp.status_code == 200, resp.data
    body = resp.get_json()
    assert "size" not in body  # 64x64 is none of OpenAI's sizes
    assert body["quality"] == "medium"  # auto: DEFAULT_STEPS, the medium step count
    assert body["output_format"] == "png"
    (item,) = body["data"]
    assert IMAGE_URL.match(item["url"])
    assert 0 <= item["seed"] <= MAX_SEED
    parameters = png_parameters(fetch(client, item["url"]).data)
    assert parameters["steps"] == 2  # the app's DEFAULT_STEPS


def test_models_lists_the_served_model(client: FlaskClient) -> None:
    resp = client.get("/v1/models")
    assert resp.status_code == 200
    assert resp.headers.get("x-request-id")
    body = resp.get_json()
    assert body["object"] == "list"
    (model,) = body["data"]
    assert model["id"] == "tiny-random"
    assert model["object"] == "model"
    assert isinstance(model["created"], int)
    assert model["ready"] is True


# -- request errors ------------------------------------------------------------------


def test_unknown_field_is_400_naming_the_field(client: FlaskClient) -> None:
    resp = post_generation(client, foo="bar")
    error = assert_openai_error(resp, 400, param="foo", code="unknown_parameter")
    assert "foo" in error["message"]
    assert error["type"] == "invalid_request_error"


def test_missing_prompt_is_400_missing_required_parameter(client: FlaskClient) -> None:
    resp = client.post(GENERATIONS, json={"size": "64x64"})
    assert_openai_error(resp, 400, param="prompt", code="missing_required_parameter")


@pytest.mark.parametrize("n", [0, 11, "2", True, 1.5, -1])
def test_invalid_n_is_400_naming_n(client: FlaskClient, n: Any) -> None:
    error = assert_openai_error(post_generation(client, n=n), 400, param="n", code="invalid_value")
    assert "n" in error["message"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("size", "100x100"),
        ("size", "2048x2048"),
        ("quality", "ultra"),
        ("response_format", "xml"),
        ("output_format", "gif"),
        ("seed", -1),
        ("num_inference_steps", 0),
        ("background", "transparent"),
        ("stream", "yes"),
        ("prompt", ""),
    ],
)
def test_invalid_value_is_400_naming_its_field(client: FlaskClient, field: str, value: Any) -> None:
    assert_openai_error(
        post_generation(client, **{field: value}), 400, param=field, code="invalid_value"
    )


def test_malformed_json_is_400(client: FlaskClient) -> None:
    resp = client.post(GENERATIONS, data='{"prompt": "a cat",', content_type="application/json")
    assert_openai_error(resp, 400, code="invalid_json")


@pytest.mark.parametrize("body", ['["a cat"]', "[]", '"a cat"', "42", "null"])
def test_json_that_is_not_an_object_is_400(client: FlaskClient, body: str) -> None:
    resp = client.post(GENERATIONS, data=body, content_type="application/json")
    assert_openai_error(resp, 400, code="invalid_request")


def test_form_encoded_body_is_415(client: FlaskClient) -> None:
    resp = client.post(GENERATIONS, data={"prompt": "a cat"})
    error = assert_openai_error(resp, 415, code="unsupported_media_type")
    assert "application/json" in error["message"]


def test_json_body_without_a_content_type_is_415(client: FlaskClient) -> None:
    resp = client.post(GENERATIONS, data='{"prompt": "a cat"}')
    assert_openai_error(resp, 415, code="unsupported_media_type")


def test_body_over_the_default_limit_is_413(client: FlaskClient) -> None:
    resp = client.post(GENERATIONS, json={"prompt": "x" * (1024 * 1024 + 1)})
    assert_openai_error(resp, 413, code="request_too_large")


def test_body_over_a_configured_limit_is_413(tmp_path: Path) -> None:
    small = idle_app(tmp_path, MAX_REQUEST_BYTES=200).test_client()
    resp = small.post(GENERATIONS, json={"prompt": "x" * 300})
    assert_openai_error(resp, 413, code="request_too_large")
    # Under the limit the body is read and validated as usual.
    assert_openai_error(small.post(GENERATIONS, json={"prompt": "x", "foo": 1}), 400, param="foo")


def test_unknown_route_is_404(client: FlaskClient) -> None:
    assert_openai_error(client.get("/v1/nothing-here"), 404, code="not_found")
    assert_openai_error(
        client.post("/v1/images/nothing", json={"prompt": "x"}), 404, code="not_found"
    )


def test_get_on_generations_is_405_with_allow(client: FlaskClient) -> None:
    resp = client.get(GENERATIONS)
    assert_openai_error(resp, 405, code="method_not_allowed")
    assert "POST" in resp.headers["Allow"]


# -- request ids ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/v1/models", "/v1/nothing-here"])
def test_well_formed_request_id_is_echoed(client: FlaskClient, path: str) -> None:
    resp = client.get(path, headers={"x-request-id": "req-2024.06:abc_DEF"})
    assert resp.headers["x-request-id"] == "req-2024.06:abc_DEF"


def test_well_formed_request_id_is_echoed_on_a_validation_error(client: FlaskClient) -> None:
    resp = client.post(GENERATIONS, json={"foo": 1}, headers={"x-request-id": "abc-123"})
    assert_openai_error(resp, 400)
    assert resp.headers["x-request-id"] == "abc-123"


@pytest.mark.parametrize(
    "incoming",
    ["has spaces in it", "a" * 300, "<script>alert(1)</script>", "id;rm -rf", "é-unicode", ""],
)
def test_malformed_request_id_is_replaced_by_a_fresh_one(
    client: FlaskClient, incoming: str
) -> None:
    resp = client.get("/healthz", headers={"x-request-id": incoming})
    assert resp.status_code == 200
    assert FRESH_ID.match(resp.headers["x-request-id"]), resp.headers["x-request-id"]
    assert resp.headers["x-request-id"] != incoming


def test_each_request_without_an_id_gets_its_own(client: FlaskClient) -> None:
    first = client.get("/healthz").headers["x-request-id"]
    second = client.get("/healthz").headers["x-request-id"]
    assert FRESH_ID.match(first) and FRESH_ID.match(second)
    assert first != second


# -- static files --------------------------------------------------------------------

TRAVERSALS = [
    "/static/../app/config.py",
    "/static/images/../../app/config.py",
    "/static/images/../../wsgi.py",
    "/static/images/%2e%2e%2fconfig.py",
    "/static/images/%2e%2e%2f%2e%2e%2fwsgi.py",
    "/static/images/..%2f..%2fwsgi.py",
    "/static/%2e%2e/wsgi.py",
    "/static/%2e%2e/app/config.py",
    "/static/..%2fwsgi.py",
    "/static/./images/.gitkeep",
    "/static/images/.gitkeep",
    "/static/.gitignore",
    "/static/images/.gitignore",
    "/static/images/notanimage.txt",
    "/static/images/" + "0" * 32 + ".png",
    "/static/images/" + "0" * 32 + ".PNG",
    "/static/images/" + "0" * 32 + ".png%00.txt",
    "/static/wsgi.py%00.css",
    "/static/images",
    "/static/images/",
    "/static/",
    "/static/..",
]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_path_outside_the_images_is_404_through_the_client(client: FlaskClient, path: str) -> None:
    resp = client.get(path)
    assert_openai_error(resp, 404, code="not_found")
    assert b"import" not in resp.data and b"MODEL_ID" not in resp.data


def test_raw_path_override_reaches_the_router(client: FlaskClient) -> None:
    # Guards the raw-path test below: the override, not the client's path, is routed.
    resp = client.get("/nothing", environ_overrides={"PATH_INFO": "/healthz"})
    assert resp.status_code == 200
    assert resp.get_json() == {"status": "ok"}


@pytest.mark.parametrize("path", TRAVERSALS)
def test_path_outside_the_images_is_404_as_a_raw_path(client: FlaskClient, path: str) -> None:
    # PATH_INFO exactly as given: neither percent-decoded nor normalised by the client.
    raw = {"PATH_INFO": path, "REQUEST_URI": path, "RAW_URI": path}
    resp = client.get("/", environ_overrides=raw)
    assert_openai_error(resp, 404, code="not_found")
    assert b"import" not in resp.data and b"MODEL_ID" not in resp.data


def test_existing_files_that_are_not_images_are_never_served(tmp_path: Path) -> None:
    app = idle_app(tmp_path)
    static = tmp_path / "static"
    (static / "css").mkdir(parents=True)
    (static / "css" / "site.css").write_text("body { color: black }")
    (static / ".env").write_text("SECRET=1")
    (static / "css" / ".secret").write_text("SECRET=2")
    (tmp_path / "outside.txt").write_text("SECRET=3")
    app.static_folder = str(static)
    images = image_dir(app)
    name = "0123456789abcdef0123456789abcdef"
    (images / f"{name}.png").write_bytes(b"\x89PNG fake")
    (images / f".tmp-{name}.part").write_bytes(b"half written")
    (images / "notanimage.txt").write_text("SECRET=4")
    (images / f"{name}.py").write_text("SECRET=5")
    client = app.test_client()

    assert client.get("/static/css/site.css").data == b"body { color: black }"
    assert client.get(f"/static/images/{name}.png").data == b"\x89PNG fake"
    for path in [
        "/static/.env",
        "/static/css/.secret",
        "/static/../outside.txt",
        "/static/css/../../outside.txt",
        f"/static/images/.tmp-{name}.part",
        "/static/images/notanimage.txt",
        f"/static/images/{name}.py",
    ]:
        for resp in (client.get(path), client.get("/", environ_overrides={"PATH_INFO": path})):
            assert_openai_error(resp, 404, code="not_found")
            assert b"SECRET" not in resp.data and b"half written" not in resp.data, path


# -- engine states and failures ------------------------------------------------------


def test_generation_while_the_model_loads_is_503_with_retry_after(tmp_path: Path) -> None:
    app = idle_app(tmp_path)
    client = app.test_client()

    resp = post_generation(client)
    error = assert_openai_error(resp, 503, code="model_loading")
    assert error["type"] == "server_error"
    assert resp.headers["Retry-After"] == str(app.config["LOAD_RETRY_AFTER_SECONDS"])

    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["status"] == "loading"
    assert client.get("/v1/models").get_json()["data"][0]["ready"] is False
    # Requests are still validated while the model loads.
    assert_openai_error(post_generation(client, foo=1), 400, param="foo", code="unknown_parameter")


def test_model_load_failure_is_503_naming_the_setting_not_the_path(
    model_cache: Path, tmp_path: Path
) -> None:
    missing = str(tmp_path / "no-such-model")
    app = make_app(model_cache, tmp_path / "images", MODEL_ID=missing)
    client = app.test_client()

    resp = post_generation(client)
    error = assert_openai_error(resp, 503, code="model_load_failed")
    assert "MODEL_ID" in error["message"]
    assert str(tmp_path) not in resp.get_data(as_text=True)
    assert "no-such-model" not in resp.get_data(as_text=True)

    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["status"] == "failed"
    assert "MODEL_ID" in ready.get_json()["reason"]
    assert str(tmp_path) not in ready.get_data(as_text=True)


def test_models_list_never_shows_a_local_model_path(model_cache: Path, tmp_path: Path) -> None:
    # A local MODEL_ID is named by its last part only (app._model_name), so the server's
    # file layout stays private; that must hold when the directory is missing too.
    missing = str(tmp_path / "no-such-model")
    client = idle_app(tmp_path, MODEL_ID=missing).test_client()
    body = client.get("/v1/models").get_data(as_text=True)
    assert str(tmp_path) not in body, body


@pytest.mark.parametrize(("function", "failing_call"), [("replace", 2), ("fsync", 1), ("fsync", 2)])
def test_full_disk_is_500_and_leaves_no_files(
    app: Flask,
    client: FlaskClient,
    monkeypatch: pytest.MonkeyPatch,
    function: str,
    failing_call: int,
) -> None:
    before = stored_files(app)
    real: Callable[..., Any] = getattr(os, function)
    calls = 0

    def disk_full(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == failing_call:
            raise OSError(errno.ENOSPC, "No space left on device", str(image_dir(app)))
        return real(*args, **kwargs)

    monkeypatch.setattr(local_store.os, function, disk_full)
    resp = post_generation(client, n=2)
    monkeypatch.undo()

    error = assert_openai_error(resp, 500, code="storage_failed")
    assert error["type"] == "server_error"
    assert "No space" not in error["message"]
    assert calls == failing_call
    assert stored_files(app) == before
    assert not temporary_files(app)

    again = post_generation(client, n=2)
    assert again.status_code == 200, again.data
    assert len(stored_files(app) - before) == 2


class FailNext:
    """A pipeline call that raises `fault` once when one is set, else calls the pipeline."""

    def __init__(self) -> None:
        self.fault: BaseException | None = None

    def __call__(self, pipeline: Any, arguments: dict[str, Any]) -> list[Image.Image]:
        fault, self.fault = self.fault, None
        if fault is not None:
            raise fault
        return call_pipeline(pipeline, arguments)


@pytest.fixture
def failing() -> FailNext:
    return FailNext()


@pytest.fixture
def fresh_app(model_cache: Path, tmp_path: Path, failing: FailNext) -> Flask:
    return make_app(model_cache, tmp_path / "images", pipeline_call=failing)


def test_pipeline_error_is_500_without_details_and_the_next_request_works(
    fresh_app: Flask, failing: FailNext
) -> None:
    client = fresh_app.test_client()
    failing.fault = RuntimeError("boom /secret/path.py")
    resp = post_generation(client)

    error = assert_openai_error(resp, 500, code="generation_failed")
    assert error["type"] == "server_error"
    assert "boom" not in resp.get_data(as_text=True)
    assert "/secret" not in resp.get_data(as_text=True)
    assert not stored_files(fresh_app)

    again = post_generation(client)
    assert again.status_code == 200, again.data


def test_out_of_memory_is_503_with_retry_after(fresh_app: Flask, failing: FailNext) -> None:
    client = fresh_app.test_client()
    failing.fault = torch.OutOfMemoryError("CUDA out of memory at /secret/path.py")
    resp = post_generation(client)

    assert_openai_error(resp, 503, code="out_of_memory")
    assert resp.headers["Retry-After"]
    assert "/secret" not in resp.get_data(as_text=True)
    assert post_generation(client).status_code == 200


# -- configuration -------------------------------------------------------------------


def test_strict_model_name_rejects_another_model(model_cache: Path, tmp_path: Path) -> None:
    app = make_app(model_cache, tmp_path / "images", ACCEPT_ANY_MODEL=False)
    client = app.test_client()

    error = assert_openai_error(
        post_generation(client, model="other"), 404, param="model", code="model_not_found"
    )
    assert "tiny-random" in error["message"]
    assert (
        post_generation(client, model="tiny-random", response_format="b64_json").status_code == 200
    )
    assert post_generation(client, response_format="b64_json").status_code == 200


def test_public_base_url_prefixes_the_image_urls(model_cache: Path, tmp_path: Path) -> None:
    app = make_app(
        model_cache, tmp_path / "images", PUBLIC_BASE_URL="https://images.example.com/base/"
    )
    resp = post_generation(app.test_client(), n=2)
    assert resp.status_code == 200, resp.data
    for item in resp.get_json()["data"]:
        assert re.match(
            r"^https://images\.example\.com/base/static/images/[0-9a-f]{32}\.png$", item["url"]
        ), item["url"]


FORWARDED = {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "proxy.example"}


def test_trusted_proxy_headers_shape_the_image_urls(model_cache: Path, tmp_path: Path) -> None:
    app = make_app(model_cache, tmp_path / "images", TRUSTED_PROXIES=1)
    client = app.test_client()

    resp = client.post(
        GENERATIONS,
        json={"prompt": "a fox", "size": "64x64", "num_inference_steps": 1},
        headers=FORWARDED,
    )
    assert resp.status_code == 200, resp.data
    url = resp.get_json()["data"][0]["url"]
    assert re.match(r"^https://proxy\.example/static/images/[0-9a-f]{32}\.png$", url), url


def test_proxy_headers_are_ignored_by_default(client: FlaskClient) -> None:
    resp = client.post(
        GENERATIONS,
        json={"prompt": "a fox", "size": "64x64", "num_inference_steps": 1},
        headers=FORWARDED,
    )
    assert resp.status_code == 200, resp.data
    assert IMAGE_URL.match(resp.get_json()["data"][0]["url"])


def test_counting_usage_leaves_the_pipelines_tokenizers_alone(app: Flask) -> None:
    # A fast tokenizer's truncation settings change on every call: counting with the copy a
    # streamed generation is encoding with broke it (CLIP embeddings of 45 and 77 tokens).
    engine = app.extensions["engine"]
    shared = engine.shared_pipeline()
    mine = engine._deriver._thread_tokenizers(shared)["tokenizer"]
    mine("a prompt", padding="max_length", max_length=77, truncation=True)
    settings = (mine._tokenizer.truncation, mine._tokenizer.padding)
    spec = GenerationSpec("a much longer prompt " * 20, "blur", 64, 64, 2, 1.0, (1,))
    assert engine.usage(spec)["input_tokens"] > 77  # counted untruncated
    assert (mine._tokenizer.truncation, mine._tokenizer.padding) == settings
