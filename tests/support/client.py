"""Send the requests the tests make: through Flask's test client, over HTTP, or the SDK."""

from __future__ import annotations

from typing import Any

import openai
import requests
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

GENERATIONS = "/v1/images/generations"
# A request the tiny model answers at once; tests add to or replace its fields.
TINY: dict[str, Any] = {
    "prompt": "a red fox in the snow",
    "size": "64x64",
    "num_inference_steps": 1,
}


def post_generation(client: FlaskClient, **fields: Any) -> TestResponse:
    """POST a tiny generation request and return the response, whatever its status."""
    return client.post(GENERATIONS, json={**TINY, **fields})


def generate(client: FlaskClient, **fields: Any) -> dict[str, Any]:
    """Generate (b64_json unless `fields` say otherwise), assert success, return the body."""
    response = post_generation(client, **{"response_format": "b64_json", **fields})
    assert response.status_code == 200, response.get_json()
    return response.get_json()


def post_generation_http(
    base_url: str, body: dict[str, Any], timeout: float = 300
) -> requests.Response:
    """POST `body` as it is to a real server's generations endpoint."""
    return requests.post(f"{base_url}{GENERATIONS}", json=body, timeout=timeout)


def get_raw_path(base_url: str, path: str, timeout: float = 10) -> requests.Response:
    """GET `path` exactly as written: no client-side decoding or normalisation (curl
    --path-as-is), so the server alone decides what `..` and `%2e` mean."""
    with requests.Session() as session:
        prepared = requests.Request("GET", base_url + "/").prepare()
        prepared.url = base_url + path
        return session.send(prepared, timeout=timeout)


def openai_client(base_url: str, api_key: str = "unused") -> openai.OpenAI:
    """Return the official OpenAI client pointed at a real server, without retries."""
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=api_key, max_retries=0)
