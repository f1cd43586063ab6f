"""Fixtures over the real tiny SD3 pipeline, built once per test session."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from app import create_app
from app.engine import PipelineCall
from app.tiny_model import ensure_tiny_sd3
from tests.leaks import ResponseWatch
from tests.lora_files import make_corrupt, make_foreign, make_kohya, make_lora, make_wrong_shapes
from tests.server import GunicornServer

# Small and fast defaults for every app and server the tests start.
FAST = {"MODEL_ID": "tiny-random", "DEFAULT_SIZE": "64x64", "DEFAULT_STEPS": 2}


@pytest.fixture(autouse=True)
def no_traceback_in_error_responses(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail any test that received an error response with a traceback or internal path."""
    watch = ResponseWatch()
    watch.install(monkeypatch)
    yield
    if watch.leaks:
        pytest.fail("error responses leaked internals:\n" + "\n".join(watch.leaks))


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build the tiny random pipeline once; every app loads it with from_pretrained."""
    cache = tmp_path_factory.mktemp("models")
    ensure_tiny_sd3(cache)
    return cache


@pytest.fixture(scope="session")
def lora_sources(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every adapter file the tests use, good and broken, made once."""
    model_dir = ensure_tiny_sd3(model_cache)
    root = tmp_path_factory.mktemp("lora-sources")
    make_lora(model_dir, root / "style_a.safetensors", seed=1)
    make_lora(model_dir, root / "style_b.safetensors", seed=2)
    make_lora(model_dir, root / "with_te.safetensors", seed=3, text_encoder=True)
    make_wrong_shapes(root / "style_a.safetensors", root / "wide.safetensors")
    make_kohya(root / "style_a.safetensors", root / "kohya.safetensors")
    make_foreign(root / "foreign.safetensors")
    make_corrupt(root / "corrupt.safetensors")
    return root


def make_app(
    model_cache: Path,
    image_dir: Path,
    *,
    pipeline_call: PipelineCall | None = None,
    **overrides: Any,
) -> Flask:
    """Create an app on the tiny model and wait until the model has loaded.

    `pipeline_call` replaces the engine's pipeline-call seam (to spy or inject faults).
    """
    config = {**FAST, "MODEL_CACHE_DIR": str(model_cache), "IMAGE_DIR": str(image_dir)}
    app = create_app({**config, **overrides}, pipeline_call=pipeline_call)
    assert app.extensions["engine"].wait_until_loaded(120), "model did not load"
    return app


@pytest.fixture(scope="session")
def app(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Flask:
    """One in-process app for the session, unbounded so threads really run at once."""
    return make_app(model_cache, tmp_path_factory.mktemp("images"), MAX_CONCURRENT_GENERATIONS=0)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="session")
def server(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real `gunicorn -c gunicorn.conf.py wsgi:app` on a free loopback port."""
    image_dir = tmp_path_factory.mktemp("served-images")
    env = {**FAST, "MODEL_CACHE_DIR": str(model_cache), "IMAGE_DIR": str(image_dir)}
    with GunicornServer(env) as running:
        yield running.base_url


def pixels(blob: bytes) -> np.ndarray:
    """Decode an encoded image to an array of pixels."""
    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))


def b64_pixels(item: dict[str, Any]) -> np.ndarray:
    """Decode a `b64_json` response item to pixels."""
    return pixels(base64.b64decode(item["b64_json"]))


def assert_openai_error(
    status: int,
    body: bytes | str,
    headers: Any,
    expected_status: int,
    *,
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """Assert an OpenAI-shaped error with no traceback or path in it; return its body."""
    assert status == expected_status, body
    text = body.decode() if isinstance(body, bytes) else body
    assert "Traceback" not in text and "/work" not in text and ".py" not in text, text
    error = json.loads(text)["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["message"]
    assert headers.get("x-request-id")
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error
