"""Watch every response the tests receive: errors that leak internals, answers off-spec.

`tests/conftest.py` installs the watch around every test: the clients the suite uses
(requests, httpx2 under the openai SDK, httpx under litellm, Flask's test client) report
each response here.
A test that received an error with a traceback, a `File "..."` frame or a path inside the
repository fails, whatever it asserted itself; so does one that received a 200 from an
image endpoint, or a stream event, that OpenAI's spec or SDK types do not allow
(tests/support/contract.py). Streams read incrementally through `requests`
(stream=True) are not checked here; the SDK's streams are, event by event.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import httpx2
import pytest
import requests
from flask.testing import FlaskClient
from openai._streaming import Stream

from tests.support.contract import check_answer, check_event

AnyHttpxResponse = httpx.Response | httpx2.Response
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

        def wrap(owner: type, name: str, read: Callable[[Any, Any, Any, Any], None]) -> None:
            original = getattr(owner, name)

            @functools.wraps(original)
            def watched(self: Any, *args: Any, **kwargs: Any) -> Any:
                response = original(self, *args, **kwargs)
                read(self, args, kwargs, response)
                return response

            monkeypatch.setattr(owner, name, watched)

        def from_requests(_: Any, args: Any, kwargs: Any, response: requests.Response) -> None:
            if response.status_code >= 400:  # the body stays readable after .content
                self.check("requests", response.url, response.status_code, response.content)
            elif response.status_code == 200 and not kwargs.get("stream"):
                path = urlsplit(response.url).path
                check_answer(path, response.headers.get("Content-Type", ""), response.content)

        def from_httpx(_: Any, args: Any, kwargs: Any, response: AnyHttpxResponse) -> None:
            if response.status_code >= 400:
                self.check("httpx", str(response.url), response.status_code, response.read())
            elif response.status_code == 200 and not kwargs.get("stream"):
                check_answer(response.url.path, response.headers.get("Content-Type", ""),
                             response.read())  # fmt: skip

        def from_flask(_: Any, args: Any, kwargs: Any, response: Any) -> None:
            if response.status_code >= 400:
                url = args[0] if args and isinstance(args[0], str) else "?"
                self.check("flask", url, response.status_code, response.get_data())
            elif response.status_code == 200:
                check_answer(response.request.path, response.content_type or "",
                             response.get_data())  # fmt: skip

        wrap(requests.Session, "send", from_requests)
        wrap(httpx2.Client, "send", from_httpx)
        wrap(httpx.Client, "send", from_httpx)  # litellm's own transport
        wrap(FlaskClient, "open", from_flask)

        original_events = Stream._iter_events

        def checked_events(stream: Any) -> Iterator[Any]:
            for sse in original_events(stream):
                check_event(sse.event, sse.json())
                yield sse

        monkeypatch.setattr(Stream, "_iter_events", checked_events)
