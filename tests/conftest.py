"""Fixtures over the real tiny SD3 pipeline, built once per test session.

Helpers the test modules share live in tests/support/; tests that start a real process
(Gunicorn, nginx, a browser, the fuzzer, a command) are marked `slow`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app.tiny_model import ensure_tiny_sd3
from tests.support.apps import make_app, server_env
from tests.support.gunicorn import GunicornServer
from tests.support.leaks import ResponseWatch
from tests.support.lora_files import (
    make_corrupt,
    make_foreign,
    make_kohya,
    make_lora,
    make_wrong_shapes,
)


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


@pytest.fixture(scope="session")
def app(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Flask:
    """One in-process app for the session, unbounded so threads really run at once."""
    return make_app(model_cache, tmp_path_factory.mktemp("images"), MAX_CONCURRENT_GENERATIONS=0)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    """A test client of the session app."""
    return app.test_client()


@pytest.fixture(scope="session")
def server(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The real `gunicorn -c gunicorn.conf.py wsgi:app` on a free loopback port."""
    env = server_env(model_cache, tmp_path_factory.mktemp("served-images"))
    with GunicornServer(env) as running:
        yield running.base_url
