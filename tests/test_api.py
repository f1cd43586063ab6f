"""The HTTP API in process, through Flask's test client, over the real tiny pipeline."""

from __future__ import annotations

import base64
import errno
import io
import json
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

from app import create_app
from app.engine.runner import call_pipeline
from app.schemas import MAX_SEED
from app.storage import local as local_store
from tests.conftest import FAST, assert_openai_error, b64_pixels, make_app, pixels

GENERATIONS = "/v1/images/generations"
IMAGE_URL = re.compile(r"^http://localhost/static/images/[0-9a-f]{32}\.png$")
FRESH_ID = re.compile(r"^[0-9a-f]{32}$")


def generate(client: FlaskClient, **fields: Any) -> TestResponse:
    """POST a tiny, fast generation request; `fields` add to or replace the defaults."""
    body = {"prompt": "a red fox in the snow", "size": "64x64", "num_inference_steps": 1}
    body.update(fields)
    return client.post(GENERATIONS, json=body)


def image_dir(app: Flask) -> Path:
    return Path(app.config["IMAGE_DIR"])


def stored_files(app: Flask) -> set[str]:
    """Every entry in the app's image directory, hidden temporary files included."""
    return {path.name for path in image_dir(app).iterdir()}


def temporary_files(app: Flask) -> set[str]:
    return {name for name in stored_files(app) if name.startswith(".tmp-")}


def fetch(client: FlaskClient, url: str) -> TestResponse:
    """GET an image URL from the response through the same app."""
    return client.get(urlsplit(url).path)


def error_of(resp: TestResponse, status: int, **expected: Any) -> dict[str, Any]:
    return assert_openai_error(resp.status_code, resp.data, resp.headers, status, **expected)


def idle_app(tmp_path: Path, **overrides: Any) -> Flask:
    """An app whose model is never loaded: for what happens before the engine."""
    config = {
        **FAST,
        "IMAGE_DIR": str(tmp_path / "images"),
        "MODEL_CACHE_DIR": str(tmp_path / "models"),
    }
    return create_app({**config, **overrides}, load_model=False)


# -- successful generations ----------------------------------------------------------


def test_url_response_points_at_a_stored_png(app: Flask, client: FlaskClient) -> None:
    before = time.time()
    resp = generate(client, prompt="a lighthouse at dusk", seed=1234)
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
    parameters = json.loads(png.text["parameters"])
    assert parameters["prompt"] == "a lighthouse at dusk"
    assert parameters["seed"] == 1234
    assert parameters["steps"] == 1
    assert parameters["size"] == "64x64"
    assert parameters["model"] == "tiny-random"


def test_n_images_get_their_own_urls_and_consecutive_seeds(client: FlaskClient) -> None:
    resp = generate(client, n=2, seed=500)
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
    resp = generate(client, response_format="b64_json", size="64x128")
    assert resp.status_code == 200, resp.data
    assert stored_files(app) == before

    body = resp.get_json()
    assert body["size"] == "64x128"
    (item,) = body["data"]
    assert set(item) == {"b64_json", "seed"}
    image = Image.open(io.BytesIO(base64.b64decode(item["b64_json"])))
    assert image.format == "PNG"
    assert image.size == (64, 128)  # width 64, height 128
    assert b64_pixels(item).shape == (128, 64, 3)


def test_same_seed_gives_identical_pixels_and_another_seed_differs(client: FlaskClient) -> None:
    def image(seed: int) -> np.ndarray:
        resp = generate(client, response_format="b64_json", seed=seed)
        assert resp.status_code == 200, resp.data
        return b64_pixels(resp.get_json()["data"][0])

    first = image(42)
    assert np.array_equal(first, image(42))
    assert not np.array_equal(first, image(43))


def test_a_returned_seed_regenerates_its_image_alone(client: FlaskClient) -> None:
    batch = generate(client, response_format="b64_json", n=2, seed=7000)
    assert batch.status_code == 200, batch.data
    second = batch.get_json()["data"][1]
    assert second["seed"] == 7001
    alone = generate(client, response_format="b64_json", seed=second["seed"])
    assert alone.status_code == 200, alone.data
    difference = np.abs(
        b64_pixels(second).astype(int) - b64_pixels(alone.get_json()["data"][0]).astype(int)
    )
    assert difference.max() <= 2  # batched and single runs may round a pixel differently


def test_every_returned_seed_can_be_sent_back(client: FlaskClient) -> None:
    # A client replays an image by sending the seed it was given; near the top of the
    # range, n > 1 must not hand out seeds that the server itself refuses.
    resp = generate(client, response_format="b64_json", n=2, seed=MAX_SEED)
    assert resp.status_code == 200, resp.data
    for item in resp.get_json()["data"]:
        replay = generate(client, response_format="b64_json", seed=item["seed"])
        assert replay.status_code == 200, (item["seed"], replay.data)


@pytest.mark.parametrize(
    ("output_format", "pil_format", "mimetype"),
    [("jpeg", "JPEG", "image/jpeg"), ("webp", "WEBP", "image/webp")],
)
def test_output_format_sets_the_encoding_and_the_url_extension(
    client: FlaskClient, output_format: str, pil_format: str, mimetype: str
) -> None:
    resp = generate(client, output_format=output_format)
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
        resp = generate(
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


def test_response_echoes_size_quality_and_output_format(client: FlaskClient) -> None:
    resp = client.post(
        GENERATIONS,
        json={
            "prompt": "a teapot",
            "size": "128x64",
            "quality": "low",
            "response_format": "b64_json",
        },
    )
    assert resp.status_code == 200, resp.data
    body = resp.get_json()
    assert body["size"] == "128x64"
    assert body["quality"] == "low"
    assert body["output_format"] == "png"
    assert Image.open(io.BytesIO(base64.b64decode(body["data"][0]["b64_json"]))).size == (128, 64)


def test_the_seed_documents_exact_request_works(client: FlaskClient) -> None:
    resp = client.post(
        GENERATIONS,
        data='{"model": "something", "prompt": "a kitten in front of a fireplace"}',
        headers={"Content-Type": "application/json"},
    )
    assert resp.status_code == 200, resp.data
    body = resp.get_json()
    assert body["size"] == "64x64"
    assert body["quality"] == "auto"
    assert body["output_format"] == "png"
    (item,) = body["data"]
    assert IMAGE_URL.match(item["url"])
    assert 0 <= item["seed"] <= MAX_SEED
    parameters = json.loads(
        Image.open(io.BytesIO(fetch(client, item["url"]).data)).text["parameters"]
    )
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
    resp = generate(client, foo="bar")
    error = error_of(resp, 400, param="foo", code="unknown_parameter")
    assert "foo" in error["message"]
    assert error["type"] == "invalid_request_error"


def test_missing_prompt_is_400_missing_required_parameter(client: FlaskClient) -> None:
    resp = client.post(GENERATIONS, json={"size": "64x64"})
    error_of(resp, 400, param="prompt", code="missing_required_parameter")


@pytest.mark.parametrize("n", [0, 11, "2", True, 1.5, -1])
def test_invalid_n_is_400_naming_n(client: FlaskClient, n: Any) -> None:
    error = error_of(generate(client, n=n), 400, param="n", code="invalid_value")
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
    error_of(generate(client, **{field: value}), 400, param=field, code="invalid_value")


def test_malformed_json_is_400(client: FlaskClient) -> None:
    resp = client.post(GENERATIONS, data='{"prompt": "a cat",', content_type="application/json")
    error_of(resp, 400, code="invalid_json")


@pytest.mark.parametrize("body", ['["a cat"]', "[]", '"a cat"', "42", "null"])
def test_json_that_is_not_an_object_is_400(client: FlaskClient, body: str) -> None:
    resp = client.post(GENERATIONS, data=body, content_type="application/json")
    error_of(resp, 400, code="invalid_request")


def test_form_encoded_body_is_415(client: FlaskClient) -> None:
    resp = client.post(GENERATIONS, data={"prompt": "a cat"})
    error = error_of(resp, 415, code="unsupported_media_type")
    assert "application/json" in error["message"]


def test_json_body_without_a_content_type_is_415(client: FlaskClient) -> None:
    resp = client.post(GENERATIONS, data='{"prompt": "a cat"}')
    error_of(resp, 415, code="unsupported_media_type")


def test_body_over_the_default_limit_is_413(client: FlaskClient) -> None:
    resp = client.post(GENERATIONS, json={"prompt": "x" * (1024 * 1024 + 1)})
    error_of(resp, 413, code="request_too_large")


def test_body_over_a_configured_limit_is_413(tmp_path: Path) -> None:
    small = idle_app(tmp_path, MAX_REQUEST_BYTES=200).test_client()
    resp = small.post(GENERATIONS, json={"prompt": "x" * 300})
    error_of(resp, 413, code="request_too_large")
    # Under the limit the body is read and validated as usual.
    error_of(small.post(GENERATIONS, json={"prompt": "x", "foo": 1}), 400, param="foo")


def test_unknown_route_is_404(client: FlaskClient) -> None:
    error_of(client.get("/v1/nothing-here"), 404, code="not_found")
    error_of(client.post("/v1/images/nothing", json={"prompt": "x"}), 404, code="not_found")


def test_get_on_generations_is_405_with_allow(client: FlaskClient) -> None:
    resp = client.get(GENERATIONS)
    error_of(resp, 405, code="method_not_allowed")
    assert "POST" in resp.headers["Allow"]


# -- request ids ---------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/healthz", "/v1/models", "/v1/nothing-here"])
def test_well_formed_request_id_is_echoed(client: FlaskClient, path: str) -> None:
    resp = client.get(path, headers={"x-request-id": "req-2024.06:abc_DEF"})
    assert resp.headers["x-request-id"] == "req-2024.06:abc_DEF"


def test_well_formed_request_id_is_echoed_on_a_validation_error(client: FlaskClient) -> None:
    resp = client.post(GENERATIONS, json={"foo": 1}, headers={"x-request-id": "abc-123"})
    error_of(resp, 400)
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
    error_of(resp, 404, code="not_found")
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
    error_of(resp, 404, code="not_found")
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
            error_of(resp, 404, code="not_found")
            assert b"SECRET" not in resp.data and b"half written" not in resp.data, path


# -- engine states and failures ------------------------------------------------------


def test_generation_while_the_model_loads_is_503_with_retry_after(tmp_path: Path) -> None:
    app = idle_app(tmp_path)
    client = app.test_client()

    resp = generate(client)
    error = error_of(resp, 503, code="model_loading")
    assert error["type"] == "server_error"
    assert resp.headers["Retry-After"] == str(app.config["LOAD_RETRY_AFTER_SECONDS"])

    assert client.get("/healthz").status_code == 200
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.get_json()["status"] == "loading"
    assert client.get("/v1/models").get_json()["data"][0]["ready"] is False
    # Requests are still validated while the model loads.
    error_of(generate(client, foo=1), 400, param="foo", code="unknown_parameter")


def test_model_load_failure_is_503_naming_the_setting_not_the_path(
    model_cache: Path, tmp_path: Path
) -> None:
    missing = str(tmp_path / "no-such-model")
    app = make_app(model_cache, tmp_path / "images", MODEL_ID=missing)
    client = app.test_client()

    resp = generate(client)
    error = error_of(resp, 503, code="model_load_failed")
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
    resp = generate(client, n=2)
    monkeypatch.undo()

    error = error_of(resp, 500, code="storage_failed")
    assert error["type"] == "server_error"
    assert "No space" not in error["message"]
    assert calls == failing_call
    assert stored_files(app) == before
    assert not temporary_files(app)

    again = generate(client, n=2)
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
    resp = generate(client)

    error = error_of(resp, 500, code="generation_failed")
    assert error["type"] == "server_error"
    assert "boom" not in resp.get_data(as_text=True)
    assert "/secret" not in resp.get_data(as_text=True)
    assert not stored_files(fresh_app)

    again = generate(client)
    assert again.status_code == 200, again.data


def test_out_of_memory_is_503_with_retry_after(fresh_app: Flask, failing: FailNext) -> None:
    client = fresh_app.test_client()
    failing.fault = torch.OutOfMemoryError("CUDA out of memory at /secret/path.py")
    resp = generate(client)

    error_of(resp, 503, code="out_of_memory")
    assert resp.headers["Retry-After"]
    assert "/secret" not in resp.get_data(as_text=True)
    assert generate(client).status_code == 200


# -- configuration -------------------------------------------------------------------


def test_strict_model_name_rejects_another_model(model_cache: Path, tmp_path: Path) -> None:
    app = make_app(model_cache, tmp_path / "images", ACCEPT_ANY_MODEL=False)
    client = app.test_client()

    error = error_of(generate(client, model="other"), 404, param="model", code="model_not_found")
    assert "tiny-random" in error["message"]
    assert generate(client, model="tiny-random", response_format="b64_json").status_code == 200
    assert generate(client, response_format="b64_json").status_code == 200


def test_public_base_url_prefixes_the_image_urls(model_cache: Path, tmp_path: Path) -> None:
    app = make_app(
        model_cache, tmp_path / "images", PUBLIC_BASE_URL="https://images.example.com/base/"
    )
    resp = generate(app.test_client(), n=2)
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
