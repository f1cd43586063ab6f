"""Black-box tests: the real Gunicorn process, driven by requests, curl and the openai SDK."""

from __future__ import annotations

import json
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openai
import pytest
import requests

from tests.support.apps import server_env
from tests.support.client import get_raw_path, openai_client, post_generation_http
from tests.support.errors import assert_openai_error
from tests.support.gunicorn import GunicornServer
from tests.support.images import b64_pixels, sdk_pixels

pytestmark = pytest.mark.slow  # every test here talks to a real Gunicorn process

SMALL = {"size": "64x64", "num_inference_steps": 2}


@pytest.fixture(scope="module")
def sdk(server: str) -> openai.OpenAI:
    """The official OpenAI client pointed at the server."""
    return openai_client(server)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_seed_curl_command_returns_a_downloadable_png(server: str) -> None:
    # The exact request from the product's seed document.
    command = ["curl", "-sS", "-X", "POST", "-H", "Content-Type: application/json", "--data",
               '{"model": "something", "prompt": "a kitten in front of a fireplace"}',
               f"{server}/v1/images/generations"]  # fmt: skip
    body = json.loads(subprocess.run(command, capture_output=True, check=True).stdout)
    url = body["data"][0]["url"]
    assert url.startswith(f"{server}/static/images/") and url.endswith(".png")
    image = requests.get(url, timeout=30)
    assert image.status_code == 200
    assert image.headers["Content-Type"] == "image/png"
    assert image.content.startswith(b"\x89PNG\r\n\x1a\n")


def test_sdk_generate_url(sdk: openai.OpenAI, server: str) -> None:
    result = sdk.images.generate(model="anything", prompt="a lighthouse", extra_body=SMALL)
    assert isinstance(result.created, int)
    [item] = result.data
    assert item.url and item.url.startswith(server)
    assert requests.get(item.url, timeout=30).content.startswith(b"\x89PNG")


def test_sdk_generate_b64_json_n2_with_sizes(sdk: openai.OpenAI) -> None:
    result = sdk.images.generate(
        prompt="two boats", n=2, size="128x64", response_format="b64_json",
        extra_body={"num_inference_steps": 2, "seed": 42},
    )  # fmt: skip
    assert len(result.data) == 2
    images = sdk_pixels(result)
    assert all(image.shape == (64, 128, 3) for image in images)
    assert not np.array_equal(images[0], images[1])
    assert result.size is None  # 128x64 is none of OpenAI's sizes: left out
    assert result.quality == "medium" and result.background == "opaque"
    assert result.usage and result.usage.output_tokens == 2 * (128 // 16) * (64 // 16)


def test_sdk_same_seed_gives_same_image(sdk: openai.OpenAI) -> None:
    def generate(seed: int) -> np.ndarray:
        result = sdk.images.generate(prompt="a fox", response_format="b64_json",
                                     extra_body={**SMALL, "seed": seed})  # fmt: skip
        return sdk_pixels(result)[0]

    assert np.array_equal(generate(7), generate(7))
    assert not np.array_equal(generate(7), generate(8))


def test_sdk_bad_request_raises_bad_request_error(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.images.generate(prompt="x", extra_body={"no_such_field": 1})
    assert caught.value.body["param"] == "no_such_field"
    with pytest.raises(openai.BadRequestError) as caught:
        sdk.images.generate(prompt="x", size="100x100")
    assert caught.value.body["param"] == "size"


def test_sdk_lists_the_served_model(sdk: openai.OpenAI) -> None:
    assert [model.id for model in sdk.models.list()] == ["tiny-random"]


def test_errors_from_the_server_are_openai_shaped(server: str) -> None:
    url = f"{server}/v1/images/generations"
    cases = [
        (requests.post(url, data="{", headers={"Content-Type": "application/json"}), 400),
        (requests.post(url, data="prompt=x"), 415),
        (requests.get(url), 405),
        (requests.get(f"{server}/v2/nothing"), 404),
        (requests.post(url, json={"prompt": "x" * 2_000_000}), 413),
    ]
    for response, status in cases:
        assert_openai_error(response, status)


@pytest.mark.parametrize(
    "path",
    ["/static/../wsgi.py", "/static/%2e%2e/wsgi.py", "/static/images/..%2f..%2fwsgi.py",
     "/static/images/%2e%2e/%2e%2e/app/config.py", "/static/..%2fgunicorn.conf.py",
     "/static/images/.gitkeep", "//etc/passwd", "/static//etc/passwd"],
)  # fmt: skip
def test_static_never_serves_outside_the_image_directory(server: str, path: str) -> None:
    response = get_raw_path(server, path)
    assert response.status_code == 404, response.text
    assert b"import" not in response.content and b"root:" not in response.content


def test_sixteen_concurrent_http_requests_match_their_seeds_alone(
    model_cache: Path, tmp_path: Path
) -> None:
    env = server_env(model_cache, tmp_path, MAX_CONCURRENT_GENERATIONS=0, GUNICORN_THREADS=32)
    with GunicornServer(env) as running:

        def generate(seed: int) -> np.ndarray:
            body = {"prompt": "same prompt", "seed": seed, "response_format": "b64_json", **SMALL}
            response = post_generation_http(running.base_url, body)
            assert response.status_code == 200, response.text
            return b64_pixels(response.json()["data"][0])

        seeds = list(range(200, 216))
        alone = [generate(seed) for seed in seeds]
        with ThreadPoolExecutor(len(seeds)) as pool:
            together = list(pool.map(generate, seeds))
        for seed, expected, got in zip(seeds, alone, together, strict=True):
            assert np.array_equal(expected, got), f"seed {seed} differs under concurrency"
        assert "Traceback" not in running.log()
