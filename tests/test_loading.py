"""The worker answers while the model loads, and says why when loading fails."""

from __future__ import annotations

import time
from pathlib import Path

import openai
import pytest
import requests

from tests.support.apps import FAST, server_env
from tests.support.client import openai_client
from tests.support.errors import assert_openai_error
from tests.support.gunicorn import GunicornServer

pytestmark = pytest.mark.slow  # every test here starts a real Gunicorn process


def test_slow_load_answers_503_and_is_never_killed_by_gunicorn(
    model_cache: Path, tmp_path: Path
) -> None:
    # The load takes over twice Gunicorn's worker timeout (which must still cover booting).
    env = server_env(model_cache, tmp_path, GUNICORN_TIMEOUT=5, TEST_LOAD_DELAY=12,
                     LOAD_RETRY_AFTER_SECONDS=3)  # fmt: skip
    server = GunicornServer(env, app="tests.slow_wsgi:app").start(wait_ready=False)
    try:
        url = server.base_url
        deadline = time.monotonic() + 60
        while True:  # wait for the worker to answer at all
            try:
                health = requests.get(f"{url}/healthz", timeout=30)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.1)
        assert health.status_code == 200
        ready = requests.get(f"{url}/readyz", timeout=30)
        assert ready.status_code == 503 and ready.json()["reason"] == "model is loading"
        response = requests.post(f"{url}/v1/images/generations", json={"prompt": "x"}, timeout=30)
        assert_openai_error(response, 503, code="model_loading")
        assert response.headers["Retry-After"] == "3"
        server.wait_ready()
        generated = requests.post(f"{url}/v1/images/generations", json={"prompt": "x"}, timeout=60)
        assert generated.status_code == 200
        assert "WORKER TIMEOUT" not in server.log()
        assert server.log().count("Booting worker") == 1
    finally:
        server.stop()


def test_load_failure_answers_503_saying_what_to_set(model_cache: Path, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    env = {**FAST, "MODEL_ID": str(missing), "IMAGE_DIR": tmp_path / "images"}
    server = GunicornServer(env).start(wait_ready=False)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                ready = requests.get(f"{server.base_url}/readyz", timeout=30)
                if ready.json()["status"] == "failed":
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.2)
        assert ready.status_code == 503 and "MODEL_ID" in ready.json()["reason"]
        sdk = openai_client(server.base_url)
        with pytest.raises(openai.InternalServerError) as caught:
            sdk.images.generate(prompt="a kitten")
        assert caught.value.status_code == 503
        error = caught.value.body
        assert error["code"] == "model_load_failed"
        assert "MODEL_ID" in error["message"] and str(missing) not in error["message"]
        assert "tiny-random" in error["message"]
    finally:
        server.stop()
