"""The real nginx (deploy/nginx.conf) in front of the real Gunicorn server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from tests.support.apps import server_env
from tests.support.client import get_raw_path, openai_client
from tests.support.errors import assert_openai_error
from tests.support.gunicorn import ROOT, GunicornServer
from tests.support.nginx import NGINX, NginxProcess, substitute

pytestmark = [
    pytest.mark.slow,  # starts nginx and Gunicorn
    pytest.mark.skipif(NGINX is None, reason="nginx is missing (.ci/run installs it)"),
]

SMALL = {"size": "64x64", "num_inference_steps": 1}


def render_site(nginx_port: int, gunicorn_port: int, image_dir: Path, logs: Path) -> str:
    """Return deploy/nginx.conf with the test's ports and paths in place of the defaults."""
    return substitute((ROOT / "deploy" / "nginx.conf").read_text(), "deploy/nginx.conf", (
        ("server 127.0.0.1:8000;", f"server 127.0.0.1:{gunicorn_port};"),
        ("listen 80;", f"listen 127.0.0.1:{nginx_port};"),
        ("/srv/image-server/static/images/", f"{image_dir}/"),
        ("/var/log/nginx/", f"{logs}/"),
    ))  # fmt: skip


class Nginx(NginxProcess):
    """nginx with deploy/nginx.conf in front of one Gunicorn, serving its image directory."""

    def __init__(self, prefix: Path, upstream_port: int, image_dir: Path) -> None:
        super().__init__(
            prefix, lambda port, logs: render_site(port, upstream_port, image_dir, logs)
        )


@pytest.fixture(scope="module")
def stack(
    model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Nginx, GunicornServer]]:
    """Gunicorn with TRUSTED_PROXIES=1, and nginx in front of it."""
    image_dir = tmp_path_factory.mktemp("nginx-images")
    env = server_env(model_cache, image_dir, TRUSTED_PROXIES=1)
    with GunicornServer(env) as gunicorn:
        with Nginx(tmp_path_factory.mktemp("nginx"), gunicorn.port, image_dir) as nginx:
            yield nginx, gunicorn


def test_image_generated_through_nginx_is_served_by_nginx(
    stack: tuple[Nginx, GunicornServer],
) -> None:
    nginx, gunicorn = stack
    sdk = openai_client(nginx.base_url)
    result = sdk.images.generate(prompt="a lighthouse", extra_body=SMALL)
    url = result.data[0].url
    # The URL was built by the app from nginx's X-Forwarded-* headers: it points at nginx.
    assert url.startswith(f"{nginx.base_url}/static/images/"), url
    name = url.rsplit("/", 1)[1]
    image = requests.get(url, timeout=10)
    assert image.status_code == 200
    assert image.headers["Content-Type"] == "image/png"
    assert image.content == (Path(gunicorn.env["IMAGE_DIR"]) / name).read_bytes()
    # Cached no longer than the URL lives (IMAGE_TTL_SECONDS, 3600 s by default).
    max_age = int(image.headers["Cache-Control"].removeprefix("max-age="))
    assert 3600 - 60 < max_age <= 3600
    # nginx, not Flask: Flask puts x-request-id on every response, and logs every request.
    assert image.headers["Server"] == "nginx"
    assert "x-request-id" not in image.headers
    log = gunicorn.wait_for_log(lambda log: '"POST /v1/images/generations" 200' in log)
    assert name not in log


def test_unknown_or_traversing_image_paths_are_404_from_nginx(
    stack: tuple[Nginx, GunicornServer],
) -> None:
    nginx, _ = stack
    paths = [
        "/static/images/" + "0" * 32 + ".png",
        "/static/images/x.png",
        "/static/images/../../wsgi.py",
        "/static/images/%2e%2e/%2e%2e/wsgi.py",
        "/static/images/..%2f..%2fgunicorn.conf.py",
        "/static/%2e%2e/app/config.py",
    ]
    for path in paths:
        response = get_raw_path(nginx.base_url, path)
        assert_openai_error(response, 404)
        assert b"import" not in response.content


def test_oversized_bodies_get_nginx_413_in_openai_shape(
    stack: tuple[Nginx, GunicornServer],
) -> None:
    nginx, gunicorn = stack
    url = f"{nginx.base_url}/v1/images/generations"
    json_body = json.dumps({"prompt": "x" * (2 * 1024 * 1024)})
    files = {"image": ("big.png", b"\0" * (2 * 1024 * 1024), "image/png")}
    for request_id, kwargs in (
        ("too-large-json", {"data": json_body, "headers": {"Content-Type": "application/json"}}),
        ("too-large-multipart", {"files": files, "data": {"prompt": "x"}}),
    ):
        headers = {**kwargs.pop("headers", {}), "x-request-id": request_id}
        response = requests.post(url, headers=headers, timeout=30, **kwargs)
        assert_openai_error(response, 413, code="request_too_large")
        assert response.headers["Server"] == "nginx"
        assert response.headers["x-request-id"] == request_id
        assert request_id not in gunicorn.log()  # refused before reaching Gunicorn


def test_request_id_and_streaming_pass_through_nginx(stack: tuple[Nginx, GunicornServer]) -> None:
    nginx, gunicorn = stack
    url = f"{nginx.base_url}/v1/images/generations"
    body = {"prompt": "stream", "stream": True, "response_format": "b64_json", **SMALL}
    with requests.post(url, json=body, headers={"x-request-id": "through-nginx"}, stream=True,
                       timeout=60) as response:  # fmt: skip
        if response.status_code == 400:
            pytest.skip("this server does not stream yet")
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["x-request-id"] == "through-nginx"
        events = [line for line in response.iter_lines() if line.startswith(b"event:")]
    assert events and events[-1].endswith(b".completed")
    assert "[through-nginx]" in gunicorn.log()
