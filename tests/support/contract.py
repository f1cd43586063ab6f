"""Check the server's image answers against OpenAI's own types, as its SDK defines them.

OpenAI's published spec (openai/openai-openapi) cannot be fetched here (no network), so
the reference is the `openai` SDK installed with the tests: its response and stream
event types are generated from that spec (`openai/types/images_response.py`,
`image_gen_completed_event.py`, ...), enums as `Literal`s, required fields required.
Every 200 body of an image endpoint and every stream event the tests receive goes
through `check_images_response` / `check_event` (tests/support/leaks.py installs them
around every test):

- the body or event parses into the SDK's model (types, required fields, enum values);
- `size` in a response body is one of OpenAI's three sizes (the spec's enum);
- `usage` is present (gpt-image responses carry it; completed events require it);
- no field beyond the spec's, except this server's documented extension `seed`.
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


def check_images_response(body: Any) -> None:
    """Assert that `body` is an ImagesResponse as OpenAI's spec defines it."""
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
