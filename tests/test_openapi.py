"""GET /openapi.json: generated from the marshmallow schemas, with the configured limits."""

from __future__ import annotations

import re
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from app import create_app
from app.schemas import GenerationRequestSchema

LIMITS = {"MAX_IMAGES_PER_REQUEST": 3, "MAX_STEPS": 7, "MAX_PROMPT_CHARS": 99,
          "MAX_GUIDANCE_SCALE": 12.5, "MAX_IMAGE_SIDE": 128}  # fmt: skip


@pytest.fixture(scope="module")
def limited() -> Flask:
    """An app (no model needed) with limits of its own."""
    return create_app({"MODEL_ID": "tiny-random", **LIMITS}, load_model=False)


def _spec(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    return response.get_json()


def test_every_route_is_documented_with_its_methods(client: FlaskClient, app: Flask) -> None:
    paths = _spec(client)["paths"]
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", rule.rule)
        assert path in paths, f"{rule.rule} is not in /openapi.json"
        methods = {m.lower() for m in rule.methods or ()} - {"head", "options"}
        assert methods <= set(paths[path]), f"{rule.rule}: {methods} not all documented"


def test_request_schema_comes_from_the_marshmallow_schema(client: FlaskClient) -> None:
    schema = _spec(client)["components"]["schemas"]["ImageGenerationRequest"]
    assert set(schema["properties"]) == set(GenerationRequestSchema().fields)
    assert schema["required"] == ["prompt"] and schema["additionalProperties"] is False
    props = schema["properties"]
    assert props["n"]["type"] == ["integer", "null"]  # StrictInteger
    assert props["guidance_scale"]["type"] == ["number", "null"]  # StrictNumber
    assert props["stream"]["type"] == ["boolean", "null"]  # StrictBoolean
    assert props["seed"]["maximum"] == 2**32 - 1 and props["output_compression"]["maximum"] == 100
    assert None in props["quality"]["enum"] and "hd" in props["quality"]["enum"]
    assert "transparent" not in props["background"]["enum"]  # always refused


def test_configured_limits_are_in_the_document(limited: Flask) -> None:
    props = _spec(limited.test_client())["components"]["schemas"]["ImageGenerationRequest"][
        "properties"
    ]
    assert props["n"]["maximum"] == 3 and props["num_inference_steps"]["maximum"] == 7
    assert props["prompt"]["maxLength"] == 99 and props["guidance_scale"]["maximum"] == 12.5
    size = re.compile(props["size"]["pattern"])
    assert size.match("auto") and size.match("128x64") and size.match("64x112")
    assert not size.match("144x64") and not size.match("100x64") and not size.match("48x64")


def test_every_generation_error_is_documented_with_the_error_envelope(
    client: FlaskClient,
) -> None:
    spec = _spec(client)
    for path in ("/v1/images/generations", "/v1/images/edits", "/v1/images/variations"):
        responses = spec["paths"][path]["post"]["responses"]
        assert set(responses) == {"200", "400", "404", "413", "415", "429", "500", "503", "504"}
        for status, response in responses.items():
            assert response["headers"]["x-request-id"]["required"] is True
            if status != "200":
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}
        assert responses["429"]["headers"]["Retry-After"]["required"] is True
    error = spec["components"]["schemas"]["ErrorDetail"]
    assert set(error["required"]) == {"message", "type", "param", "code"}
