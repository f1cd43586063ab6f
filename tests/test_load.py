"""Serving under load, black-box: 429s, deadlines, drain, probes, metrics, faults."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.support.apps import server_env
from tests.support.client import post_generation_http
from tests.support.errors import assert_openai_error
from tests.support.gunicorn import GunicornServer
from tests.support.images import b64_pixels
from tests.support.waiting import wait_until

pytestmark = pytest.mark.slow  # every test here starts a real Gunicorn process

SMALL = {"size": "64x64", "num_inference_steps": 2}
# Long enough on this CPU to still be running when the test acts (about 2-5 s).
SLOW = {"size": "512x512", "num_inference_steps": 40}


def _metric(base: str, name: str, labels: str = "") -> float:
    """Read one value from the server's /metrics; 0 when the series is not there yet."""
    text = requests.get(f"{base}/metrics", timeout=10).text
    pattern = rf"^{re.escape(name)}{re.escape(labels)} (\S+)$" if labels else rf"^{name} (\S+)$"
    match = re.search(pattern, text, re.MULTILINE)
    return float(match[1]) if match else 0.0


def _queue_depth(base: str) -> float:
    """How many requests wait for the lane."""
    return _metric(base, "image_server_queue_depth")


def test_flood_gets_429_with_retry_after_and_every_admitted_request_succeeds(
    model_cache: Path, tmp_path: Path
) -> None:
    env = server_env(model_cache, tmp_path, MAX_CONCURRENT_GENERATIONS=1, MAX_QUEUE=3)
    with GunicornServer(env) as server:
        base = server.base_url
        with ThreadPoolExecutor(12) as pool:
            futures = [
                pool.submit(post_generation_http, base, {"prompt": f"p{i}", **SLOW})
                for i in range(12)
            ]
            responses = [future.result() for future in futures]
        ok = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code == 429]
        assert len(ok) + len(refused) == 12, [r.status_code for r in responses]
        assert ok and refused  # at first one running and three queued, the rest refused
        for response in refused:
            error = assert_openai_error(response, 429, code="server_overloaded")
            assert error["type"] == "server_overloaded"
            assert int(response.headers["Retry-After"]) >= 1
        for response in ok:
            url = response.json()["data"][0]["url"]
            assert requests.get(url, timeout=10).status_code == 200
        assert _metric(base, "image_server_rejections_total", '{reason="queue_full"}') == len(
            refused
        )


def test_deadline_stops_a_running_generation_and_frees_the_lane(
    model_cache: Path, tmp_path: Path
) -> None:
    env = server_env(model_cache, tmp_path, REQUEST_TIMEOUT_SECONDS=1.5)
    with GunicornServer(env) as server:
        base = server.base_url
        # Far more than 1.5 s of work: stopped at a step boundary, not run to the end.
        big = {"prompt": "big", "size": "1024x1024", "num_inference_steps": 100}
        started = time.monotonic()
        with ThreadPoolExecutor(2) as pool:
            running = pool.submit(post_generation_http, base, big)
            wait_until(
                lambda: _metric(base, "image_server_inflight_generations") == 1,
                "a generation to start",
            )
            queued = pool.submit(post_generation_http, base, {"prompt": "queued", **SLOW, "n": 1})
            timed_out, queued_response = running.result(), queued.result()
        elapsed = time.monotonic() - started
        for response in (timed_out, queued_response):
            assert_openai_error(response, 504, code="request_timeout")
        assert "while generating" in timed_out.json()["error"]["message"]
        # 100 steps at 1024x1024 take far longer than this on any CPU (about 10 s here).
        assert elapsed < 60
        # The lane is free at once: the next request succeeds.
        assert post_generation_http(base, {"prompt": "after", **SMALL}).status_code == 200


def test_probes_and_metrics_report_readiness_and_move(model_cache: Path, tmp_path: Path) -> None:
    with GunicornServer(server_env(model_cache, tmp_path)) as server:
        base = server.base_url
        assert requests.get(f"{base}/healthz", timeout=5).status_code == 200
        ready = requests.get(f"{base}/readyz", timeout=5)
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        assert _metric(base, "image_server_model_loaded") == 1
        before = _metric(base, "image_server_images_generated_total")
        assert post_generation_http(base, {"prompt": "a", "n": 2, **SMALL}).status_code == 200
        post_generation_http(base, {"prompt": "a", "n": 0})
        assert _metric(base, "image_server_images_generated_total") == before + 2
        assert _metric(base, "image_server_generation_seconds_count") >= 1
        assert _metric(base, "image_server_queue_wait_seconds_count") >= 1
        assert (
            _metric(base, "image_server_requests_total",
                    '{endpoint="/v1/images/generations",status="200"}') == 1
        )  # fmt: skip
        assert (
            _metric(base, "image_server_requests_total",
                    '{endpoint="/v1/images/generations",status="400"}') == 1
        )  # fmt: skip
        assert _metric(base, "image_server_errors_total", '{kind="invalid_value"}') == 1
        assert _queue_depth(base) == 0
        metrics_response = requests.get(f"{base}/metrics", timeout=5)
        assert metrics_response.headers["Content-Type"].startswith("text/plain")


def test_sigterm_drains_running_and_queued_requests_then_exits(
    model_cache: Path, tmp_path: Path
) -> None:
    server = GunicornServer(server_env(model_cache, tmp_path)).start()
    try:
        base = server.base_url
        with (
            requests.Session() as for_post,
            requests.Session() as for_probe,
            ThreadPoolExecutor(2) as pool,
        ):
            running = pool.submit(post_generation_http, base, {"prompt": "running", **SLOW})
            wait_until(
                lambda: _metric(base, "image_server_inflight_generations") == 1,
                "a generation to start",
            )
            queued = pool.submit(post_generation_http, base, {"prompt": "queued", **SMALL})
            wait_until(lambda: _queue_depth(base) == 1, "a queued request")
            # Open two kept-alive connections: once Gunicorn stops accepting, a request on a
            # kept-alive connection is still answered (then the connection is closed).
            for session in (for_post, for_probe):
                assert session.get(f"{base}/healthz", timeout=10).status_code == 200
            assert server.process is not None
            server.process.send_signal(signal.SIGTERM)
            wait_until(lambda: "draining: no new generations" in server.log(), "drain")
            refused = for_post.post(f"{base}/v1/images/generations",
                                    json={"prompt": "late", **SMALL}, timeout=10)  # fmt: skip
            readiness = for_probe.get(f"{base}/readyz", timeout=10)
            finished = [running.result(), queued.result()]
        assert_openai_error(refused, 503, code="server_draining")
        assert readiness.status_code == 503 and readiness.json()["status"] == "draining"
        for response in finished:
            assert response.status_code == 200, response.text
            assert response.json()["data"][0]["url"]
        assert server.process.wait(timeout=60) == 0
    finally:
        server.stop()


@pytest.fixture(scope="module")
def faulty(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    """A server whose pipeline raises injected faults for marked prompts."""
    env = server_env(model_cache, tmp_path_factory.mktemp("faulty"))
    with GunicornServer(env, app="tests.faulty_wsgi:app") as server:
        yield server


def test_out_of_memory_fails_only_its_request_and_the_next_succeeds(faulty: GunicornServer) -> None:
    base = faulty.base_url
    response = post_generation_http(base, {"prompt": "inject:oom", **SMALL})
    assert_openai_error(response, 503, code="out_of_memory")
    assert response.headers["Retry-After"]
    assert post_generation_http(base, {"prompt": "fine", **SMALL}).status_code == 200
    assert requests.get(f"{base}/readyz", timeout=5).status_code == 200


def test_pipeline_exception_is_500_without_details_and_the_next_succeeds(
    faulty: GunicornServer,
) -> None:
    base = faulty.base_url
    response = post_generation_http(base, {"prompt": "inject:error", **SMALL})
    error = assert_openai_error(response, 500, code="generation_failed")
    assert "boom" not in error["message"] and "secret" not in response.text
    assert post_generation_http(base, {"prompt": "fine", **SMALL}).status_code == 200
    assert "boom in /srv/secret/module.py" in faulty.log()  # logged, with the request id
    request_id = response.headers["x-request-id"]
    assert f"[{request_id}]" in faulty.log()


def test_fatal_device_error_makes_the_worker_exit_and_gunicorn_restart_it(
    model_cache: Path, tmp_path: Path
) -> None:
    env = server_env(model_cache, tmp_path)
    with GunicornServer(env, app="tests.faulty_wsgi:app") as server:
        base = server.base_url
        response = post_generation_http(base, {"prompt": "inject:fatal", **SMALL})
        assert_openai_error(response, 503, code="device_error")
        # The old worker exits and the master boots a new one, which loads and serves.
        wait_until(lambda: server.log().count("Booting worker") == 2, "a new worker")
        server.wait_ready()
        assert post_generation_http(base, {"prompt": "fine", **SMALL}).status_code == 200
        assert "fatal device error" in server.log()


def test_concurrent_admitted_requests_get_their_seeds_images_under_the_lane(
    model_cache: Path, tmp_path: Path
) -> None:
    # 32 requests from 16 threads queue for the one-generation lane; each must get the
    # image its seed gives when sent alone, not merely a 200.
    env = server_env(model_cache, tmp_path, MAX_QUEUE=64)
    with GunicornServer(env) as server:

        def image(seed: int) -> np.ndarray:
            body = {"prompt": f"p{seed % 4}", "seed": seed, "response_format": "b64_json", **SMALL}
            response = post_generation_http(server.base_url, body)
            assert response.status_code == 200, response.text
            return b64_pixels(response.json()["data"][0])

        seeds = list(range(300, 332))
        alone = [image(seed) for seed in seeds]
        with ThreadPoolExecutor(16) as pool:
            together = list(pool.map(image, seeds))
    for seed, expected, got in zip(seeds, alone, together, strict=True):
        assert np.array_equal(expected, got), f"seed {seed} differs when sent concurrently"
    # Distinct seeds give distinct images, so the equality above means something.
    assert len({image.tobytes() for image in alone}) == len(seeds)
