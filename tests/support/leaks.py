"""Watch every response the tests receive for tracebacks and internal paths in errors.

`tests/conftest.py` installs the watch around every test: the clients the suite uses
(requests, httpx2 under the openai SDK, Flask's test client) report each 4xx/5xx body
here, and a test that received one with a traceback, a `File "..."` frame or a path inside
the repository fails, whatever it asserted itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
import requests
from flask.testing import FlaskClient

ROOT = Path(__file__).resolve().parents[2]  # the repository
MARKERS = ("Traceback (most recent call last)", 'File "', str(ROOT))


def leak_in(body: bytes | str) -> str | None:
    """Return the first marker of an internal detail found in `body`, if any."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    return next((marker for marker in MARKERS if marker in text), None)


class ResponseWatch:
    """Collect error responses that leak internals."""

    def __init__(self) -> None:
        self.leaks: list[str] = []

    def check(self, client: str, url: str, status: int, body: bytes | str) -> None:
        if status >= 400 and (marker := leak_in(body)):
            self.leaks.append(f"{client} {url} -> {status} contains {marker!r}: {body[:500]!r}")

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Wrap the clients' send methods for the duration of a test."""

        def wrap(owner: type, name: str, read: Callable[[Any, Any, Any], None]) -> None:
            original = getattr(owner, name)

            @functools.wraps(original)
            def watched(self: Any, *args: Any, **kwargs: Any) -> Any:
                response = original(self, *args, **kwargs)
                read(self, args, response)
                return response

            monkeypatch.setattr(owner, name, watched)

        def from_requests(_: Any, args: Any, response: requests.Response) -> None:
            if response.status_code >= 400:  # the body stays readable after .content
                self.check("requests", response.url, response.status_code, response.content)

        def from_httpx(_: Any, args: Any, response: httpx2.Response) -> None:
            if response.status_code >= 400:
                self.check("httpx", str(response.url), response.status_code, response.read())

        def from_flask(_: Any, args: Any, response: Any) -> None:
            if response.status_code >= 400:
                url = args[0] if args and isinstance(args[0], str) else "?"
                self.check("flask", url, response.status_code, response.get_data())

        wrap(requests.Session, "send", from_requests)
        wrap(httpx2.Client, "send", from_httpx)
        wrap(FlaskClient, "open", from_flask)
