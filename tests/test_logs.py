"""Logs: one access line per request, JSON lines, errors logged with traceback and id."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask

from tests.support.apps import server_env
from tests.support.client import GENERATIONS, post_generation_http
from tests.support.errors import assert_openai_error
from tests.support.gunicorn import GunicornServer

SMALL = {"size": "64x64", "num_inference_steps": 1}


@pytest.fixture(scope="module")
def json_server(
    model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GunicornServer]:
    """The faulty test app (injected pipeline errors) under Gunicorn with LOG_FORMAT=json."""
    env = server_env(model_cache, tmp_path_factory.mktemp("json-logs"), LOG_FORMAT="json")
    with GunicornServer(env, app="tests.faulty_wsgi:app") as server:
        yield server


def _lines(log: str) -> list[dict[str, Any]]:
    """Every line of a server's output, each of which must be one JSON object."""
    lines = []
    # A last line without its newline may still be being written: it is left for later.
    for line in log.splitlines(keepends=True):
        if not line.endswith("\n"):
            break
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
    return lines


def _access(server: GunicornServer, request_id: str) -> dict[str, Any]:
    """The request's one access line; it is written once the response is sent, so wait."""

    def access_lines(log: str) -> list[dict[str, Any]]:
        return [e for e in _lines(log) if e["logger"] == "app.access"
                and e["request_id"] == request_id]  # fmt: skip

    [line] = access_lines(server.wait_for_log(lambda log: bool(access_lines(log))))
    return line


@pytest.mark.slow
def test_every_line_is_json_and_gunicorn_logs_no_access_lines_of_its_own(
    json_server: GunicornServer,
) -> None:
    requests.get(f"{json_server.base_url}/healthz", timeout=10)
    lines = _lines(json_server.log())
    assert any(e["logger"] == "gunicorn.error" and "Booting worker" in e["message"] for e in lines)
    assert not any(e["logger"] == "gunicorn.access" for e in lines)
    assert 'HTTP/1.1" 200' not in json_server.log()  # Gunicorn's access format


@pytest.mark.slow
def test_access_line_has_id_status_latency_queue_wait_and_images(
    json_server: GunicornServer,
) -> None:
    response = requests.post(f"{json_server.base_url}{GENERATIONS}",
                             json={"prompt": "logged", "n": 2, **SMALL},
                             headers={"x-request-id": "client-id-42"}, timeout=60)  # fmt: skip
    assert response.status_code == 200 and response.headers["x-request-id"] == "client-id-42"
    line = _access(json_server, "client-id-42")
    assert line["method"] == "POST" and line["path"] == "/v1/images/generations"
    assert line["status"] == 200 and line["images"] == 2
    assert line["latency_ms"] >= 0 and line["queue_wait_ms"] >= 0
    assert line["remote_addr"] == "127.0.0.1" and line["level"] == "INFO"


@pytest.mark.slow
def test_refused_request_is_logged_with_no_images(json_server: GunicornServer) -> None:
    response = post_generation_http(json_server.base_url, {"prompt": "x", "n": 0})
    line = _access(json_server, response.headers["x-request-id"])
    assert line["status"] == 400 and line["images"] == 0 and line["queue_wait_ms"] is None


@pytest.mark.slow
def test_error_is_logged_with_traceback_and_request_id_never_returned(
    json_server: GunicornServer,
) -> None:
    response = post_generation_http(json_server.base_url, {"prompt": "inject:error", **SMALL})
    error = assert_openai_error(response, 500, code="generation_failed")
    assert "boom" not in error["message"]
    request_id = response.headers["x-request-id"]
    [logged] = [e for e in _lines(json_server.log()) if e["level"] == "ERROR"
                and e["request_id"] == request_id]  # fmt: skip
    assert logged["exc_info"].startswith("Traceback (most recent call last)")
    assert "boom in /srv/secret/module.py" in logged["exc_info"]
    assert _access(json_server, request_id)["status"] == 500


@pytest.mark.slow
def test_path_cannot_forge_a_log_line(json_server: GunicornServer) -> None:
    response = requests.get(f"{json_server.base_url}/nothing%0d%0aforged%20line%22", timeout=10)
    line = _access(json_server, response.headers["x-request-id"])
    assert line["path"] == "/nothing%0D%0Aforged%20line%22"
    assert "\n" not in line["message"] and "forged line" not in json_server.log()


def test_text_access_line_is_one_readable_line(
    app: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    client = app.test_client()
    with caplog.at_level(logging.INFO, logger="app.access"):
        client.get("/healthz%0d%0aforged", headers={"x-request-id": "text-line"}).close()
        with client.post(GENERATIONS, json={"prompt": "t", **SMALL}) as response:
            request_id = response.headers["x-request-id"]
    first, second = (r for r in caplog.records if r.name == "app.access")
    assert first.request_id == "text-line"
    assert first.getMessage() == '127.0.0.1 "GET /healthz%0D%0Aforged" 404 ' + (
        f"{first.latency_ms:.1f}ms queue_wait=- images=0"
    )
    assert second.request_id == request_id
    assert re.fullmatch(r'127\.0\.0\.1 "POST /v1/images/generations" 200 [\d.]+ms '
                        r"queue_wait=[\d.]+ms images=1", second.getMessage())  # fmt: skip
