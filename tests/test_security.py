"""Security: paths, body sizes and headers black-box against the real Gunicorn server (slow);
CORS and the leak watch in process."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
import requests
from flask import Flask

from tests.support.apps import make_app
from tests.support.client import get_raw_path
from tests.support.errors import assert_openai_error
from tests.support.leaks import ResponseWatch, leak_in

FRESH_ID = re.compile(r"^[0-9a-f]{32}$")


@pytest.mark.slow
@pytest.mark.parametrize(
    "path",
    [
        "/static/../../../../etc/passwd",
        "/static/%2e%2e/%2e%2e/etc/passwd",
        "/static/%252e%252e/wsgi.py",  # double-encoded
        "/static/..%5cwsgi.py",  # backslash
        "/static/%2fetc%2fpasswd",
        "/static/images/%2e%2e%2f%2e%2e%2fwsgi.py",
        "/static/images/..;/..;/wsgi.py",
        "/static/%C0%AE%C0%AE/wsgi.py",  # overlong UTF-8 dots
        "/static/a%00b",
        "/static/index.html%00.png",
        "/static/%2egitignore",
        "/static/./images/.gitkeep",
        "/static/images/" + "0" * 32 + ".png%2f..%2f..%2fwsgi.py",
    ],
)
def test_static_path_traversal_raw_and_encoded_is_404(server: str, path: str) -> None:
    response = get_raw_path(server, path)
    assert_openai_error(response, 404)
    assert b"root:" not in response.content and b"import" not in response.content


@pytest.mark.slow
def test_oversized_json_body_is_413(server: str) -> None:
    body = b'{"prompt": "' + b"x" * (1024 * 1024 + 1) + b'"}'
    response = requests.post(f"{server}/v1/images/generations", data=body,
                             headers={"Content-Type": "application/json"}, timeout=30)  # fmt: skip
    assert_openai_error(response, 413, code="request_too_large")


@pytest.mark.slow
def test_oversized_multipart_body_is_413(server: str) -> None:
    # Over MAX_UPLOAD_BYTES (25 MiB by default), the limit of the endpoints that take files.
    files = {"image": ("big.png", b"\x89PNG" + b"\0" * (25 * 1024 * 1024), "image/png")}
    response = requests.post(f"{server}/v1/images/edits", files=files,
                             data={"prompt": "x"}, timeout=30)  # fmt: skip
    assert_openai_error(response, 413, code="request_too_large")


def _raw_get(server: str, request_id: bytes) -> tuple[bytes, dict[bytes, list[bytes]]]:
    """Send GET /healthz with a raw x-request-id header; return the status line and headers."""
    host, port = server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n"
                     b"x-request-id: " + request_id + b"\r\n\r\n")  # fmt: skip
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status, *lines = data.split(b"\r\n\r\n", 1)[0].split(b"\r\n")
    headers: dict[bytes, list[bytes]] = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    return status, headers


@pytest.mark.slow
@pytest.mark.parametrize(
    "request_id",
    [
        b"abc%0d%0aSet-Cookie:%20evil=1",  # encoded CRLF
        b"abc\tSet-Cookie: evil=1",
        b"abc Set-Cookie: evil=1",
        b"\xc3\xa9t\xc3\xa9\r\x85Set-Cookie: evil=1".replace(b"\r", b""),  # non-ASCII bytes
        b"a" * 129,  # too long
        b"",
    ],
)
def test_malformed_request_id_is_replaced_never_echoed(server: str, request_id: bytes) -> None:
    status, headers = _raw_get(server, request_id)
    assert status.startswith(b"HTTP/1.1 200")
    assert b"set-cookie" not in headers
    [echoed] = headers[b"x-request-id"]
    assert FRESH_ID.match(echoed.decode()), echoed


@pytest.mark.slow
@pytest.mark.parametrize(
    "request_id",
    [b"abc\rSet-Cookie: evil=1", b"abc\nSet-Cookie: evil=1", b"abc\r\n Set-Cookie: evil=1",
     b"abc\x00Set-Cookie: evil=1"],
)  # fmt: skip
def test_request_id_with_bare_cr_lf_or_nul_is_refused_without_injection(
    server: str, request_id: bytes
) -> None:
    status, headers = _raw_get(server, request_id)
    assert status.startswith(b"HTTP/1.1 400")  # Gunicorn refuses the request line itself
    assert b"set-cookie" not in headers


@pytest.mark.slow
def test_crlf_in_request_id_only_ends_the_header(server: str) -> None:
    # CRLF ends the header line: "Set-Cookie" arrives as a request header of its own and
    # never becomes a response header; the well-formed part before it is kept.
    status, headers = _raw_get(server, b"abc\r\nSet-Cookie: evil=1")
    assert status.startswith(b"HTTP/1.1 200")
    assert b"set-cookie" not in headers
    assert headers[b"x-request-id"] == [b"abc"]


@pytest.mark.slow
def test_cors_is_off_by_default(server: str) -> None:
    origin = {"Origin": "https://evil.example"}
    response = requests.get(f"{server}/v1/models", headers=origin, timeout=10)
    assert "Access-Control-Allow-Origin" not in response.headers
    preflight = requests.options(
        f"{server}/v1/images/generations",
        headers={**origin, "Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert "Access-Control-Allow-Origin" not in preflight.headers


@pytest.fixture(scope="module")
def cors_app(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Flask:
    return make_app(model_cache, tmp_path_factory.mktemp("cors"),
                    CORS_ORIGINS="https://a.example, https://b.example/", API_KEYS="k")  # fmt: skip


@pytest.mark.parametrize("origin", ["https://a.example", "https://b.example"])
def test_cors_origins_allow_exactly_the_named_origins(cors_app: Flask, origin: str) -> None:
    client = cors_app.test_client()
    preflight = client.options(
        "/v1/images/generations",
        headers={"Origin": origin, "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization, content-type"},
    )  # fmt: skip
    assert preflight.status_code == 200  # a preflight needs no API key
    assert preflight.headers["Access-Control-Allow-Origin"] == origin
    allowed = preflight.headers["Access-Control-Allow-Headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    response = client.get("/v1/models", headers={"Origin": origin, "Authorization": "Bearer k"})
    assert response.headers["Access-Control-Allow-Origin"] == origin
    assert "x-request-id" in response.headers["Access-Control-Expose-Headers"].lower()
    assert "Origin" in response.headers["Vary"]


@pytest.mark.parametrize(
    "origin", ["https://c.example", "https://a.example.evil.com", "http://a.example", "null"]
)
def test_cors_refuses_other_origins(cors_app: Flask, origin: str) -> None:
    client = cors_app.test_client()
    preflight = client.options(
        "/v1/images/generations",
        headers={"Origin": origin, "Access-Control-Request-Method": "POST"},
    )
    assert "Access-Control-Allow-Origin" not in preflight.headers
    response = client.get("/healthz", headers={"Origin": origin})
    assert "Access-Control-Allow-Origin" not in response.headers


def test_the_leak_watch_catches_tracebacks_and_paths() -> None:
    watch = ResponseWatch()
    watch.check("test", "/x", 500, b'Traceback (most recent call last):\n  File "a.py"')
    watch.check("test", "/x", 404, str(Path(__file__).resolve()).encode())
    watch.check("test", "/x", 200, b"Traceback in a 200 is an image caption")
    assert len(watch.leaks) == 2
    assert leak_in(b'{"error": {"message": "fine"}}') is None
