"""Assert OpenAI's error envelope on any response the tests receive."""

from __future__ import annotations

import json
from typing import Any

import requests
from werkzeug.test import TestResponse


def assert_openai_error(
    response: requests.Response | TestResponse,
    status: int,
    *,
    param: str | None = None,
    code: str | None = None,
) -> dict[str, Any]:
    """Assert an OpenAI-shaped error with no traceback or path in it; return its `error`."""
    body = response.content if isinstance(response, requests.Response) else response.get_data()
    text = body.decode()
    assert response.status_code == status, text
    assert "Traceback" not in text and "/work" not in text and ".py" not in text, text
    error = json.loads(text)["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["message"]
    assert response.headers.get("x-request-id")
    if param is not None:
        assert error["param"] == param, error
    if code is not None:
        assert error["code"] == code, error
    return error
