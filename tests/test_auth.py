"""API keys: the real Gunicorn server and the official openai SDK (slow), plus in-process checks."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient

from app.auth import _is_valid, load_keys
from tests.support.apps import make_app, server_env
from tests.support.client import openai_client
from tests.support.errors import assert_openai_error
from tests.support.gunicorn import GunicornServer

SMALL = {"size": "64x64", "num_inference_steps": 1}
KEY_ONE = "sk-one-5f1b9c0e7d"
KEY_TWO = "sk-two-a8e3c64b21"
WRONG_KEY = "sk-wrong-77d02f9a"


@pytest.fixture(scope="module")
def keyed(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GunicornServer]:
    """A server with one key in API_KEYS and one in API_KEYS_FILE."""
    tmp = tmp_path_factory.mktemp("keys")
    keys_file = tmp / "keys.txt"
    keys_file.write_text(f"# operators' keys\n\n  {KEY_TWO}  \n")
    env = server_env(model_cache, tmp / "images", API_KEYS=KEY_ONE, API_KEYS_FILE=keys_file,
                     LOG_LEVEL="DEBUG")  # fmt: skip
    with GunicornServer(env) as server:
        yield server


@pytest.mark.slow
@pytest.mark.parametrize("key", [KEY_ONE, KEY_TWO])
def test_sdk_with_a_configured_key_generates(keyed: GunicornServer, key: str) -> None:
    sdk = openai_client(keyed.base_url, key)
    result = sdk.images.generate(prompt="a key", extra_body=SMALL)
    # The image itself needs no key: its URL is unguessable.
    assert requests.get(result.data[0].url, timeout=10).status_code == 200
    assert [model.id for model in sdk.models.list()] == ["tiny-random"]


@pytest.mark.slow
def test_sdk_with_a_wrong_key_gets_401_invalid_api_key(keyed: GunicornServer) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        openai_client(keyed.base_url, WRONG_KEY).images.generate(prompt="x", extra_body=SMALL)
    assert caught.value.status_code == 401
    assert caught.value.body["code"] == "invalid_api_key"


@pytest.mark.slow
@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": f"Basic {KEY_ONE}"}, {"Authorization": "Bearer "},
     {"Authorization": f"Bearer {KEY_ONE}x"}, {"Authorization": f"Bearer {KEY_ONE[:-1]}"},
     {"Authorization": KEY_ONE}],
)  # fmt: skip
def test_missing_or_wrong_key_is_401_on_every_v1_endpoint(
    keyed: GunicornServer, headers: dict[str, str]
) -> None:
    base = keyed.base_url
    for response in (
        requests.post(f"{base}/v1/images/generations", json={"prompt": "x"}, headers=headers,
                      timeout=10),
        requests.get(f"{base}/v1/models", headers=headers, timeout=10),
        requests.get(f"{base}/v1/no-such-endpoint", headers=headers, timeout=10),
    ):  # fmt: skip
        assert_openai_error(response, 401, code="invalid_api_key")


@pytest.mark.slow
@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/openapi.json", "/"])
def test_probes_metrics_and_docs_need_no_key(keyed: GunicornServer, path: str) -> None:
    assert requests.get(f"{keyed.base_url}{path}", timeout=10).status_code == 200


@pytest.mark.slow
def test_keys_never_appear_in_the_log(keyed: GunicornServer) -> None:
    ids = []
    for index, key in enumerate((KEY_ONE, KEY_TWO, WRONG_KEY, KEY_ONE[:-1])):
        ids.append(f"key-log-{index}")
        headers = {"Authorization": f"Bearer {key}", "x-request-id": ids[-1]}
        requests.get(f"{keyed.base_url}/v1/models", headers=headers, timeout=10)
    log = keyed.wait_for_log(lambda log: all(f"[{i}] app.access" in log for i in ids))
    assert '"GET /v1/models" 200' in log and '"GET /v1/models" 401' in log
    for secret in (KEY_ONE, KEY_TWO, WRONG_KEY, KEY_ONE[:-1]):
        assert secret not in log


@pytest.fixture(scope="module")
def metrics_keyed(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Flask:
    return make_app(model_cache, tmp_path_factory.mktemp("metrics-keyed"), API_KEYS=KEY_ONE,
                    METRICS_REQUIRE_KEY=True)  # fmt: skip


def test_metrics_can_require_a_key(metrics_keyed: Flask) -> None:
    client = metrics_keyed.test_client()
    refused = client.get("/metrics")
    assert_openai_error(refused, 401, code="invalid_api_key")
    assert client.get("/metrics", headers={"Authorization": f"Bearer {KEY_ONE}"}).status_code == 200
    assert client.get("/healthz").status_code == 200
    spec = client.get("/openapi.json").get_json()
    assert "401" in spec["paths"]["/metrics"]["get"]["responses"]


def test_no_keys_means_open(client: FlaskClient) -> None:  # the session app has no keys
    assert client.get("/v1/models").status_code == 200
    spec = client.get("/openapi.json").get_json()
    assert "401" not in spec["paths"]["/v1/models"]["get"]["responses"]
    assert "securitySchemes" not in spec.get("components", {})


def test_load_keys_reads_the_list_and_the_file(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text("# comment\nk2\n\n k3 \nk1\n")
    assert load_keys(" k1, ,k2 ", str(keys_file)) == (b"k1", b"k2", b"k3")
    assert load_keys("", "") == ()
    with pytest.raises(OSError):
        load_keys("", str(tmp_path / "missing"))


def test_every_key_is_compared() -> None:
    keys = (b"first", b"second")
    assert _is_valid(b"second", keys) and _is_valid(b"first", keys)
    assert not _is_valid(b"secon", keys) and not _is_valid(b"", keys)


@pytest.mark.slow
def test_openapi_documents_bearer_auth_when_keys_are_set(keyed: GunicornServer) -> None:
    spec = json.loads(requests.get(f"{keyed.base_url}/openapi.json", timeout=10).content)
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    operation = spec["paths"]["/v1/images/generations"]["post"]
    assert operation["security"] == [{"bearerAuth": []}] and "401" in operation["responses"]
