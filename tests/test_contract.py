"""The contract checker (tests/support/contract.py) refuses what OpenAI's spec and types refuse,
and every test's image answers go through it."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.support import official_spec
from tests.support.client import post_generation
from tests.support.contract import ContractViolation, check_event, check_images_response

USAGE = {"input_tokens": 5, "input_tokens_details": {"text_tokens": 5, "image_tokens": 0},
         "output_tokens": 16, "total_tokens": 21}  # fmt: skip
GOOD = {"created": 1, "data": [{"b64_json": "eA==", "seed": 3}], "quality": "medium",
        "output_format": "png", "background": "opaque", "size": "1024x1024",
        "usage": USAGE}  # fmt: skip
EVENT = {"type": "image_generation.completed", "b64_json": "eA==", "created_at": 1,
         "quality": "high", "output_format": "png", "background": "opaque", "size": "64x64",
         "usage": USAGE, "seed": 3}  # fmt: skip


def _with(body: dict[str, Any], **changes: Any) -> dict[str, Any]:
    changed = copy.deepcopy(body)
    for name, value in changes.items():
        if value is None:
            changed.pop(name)
        else:
            changed[name] = value
    return changed


def test_a_response_within_the_spec_passes() -> None:
    check_images_response(GOOD)
    check_images_response(_with(GOOD, size=None))  # size may be left out
    check_event("image_generation.completed", EVENT)


@pytest.mark.parametrize(
    "changes",
    [{"quality": "auto"}, {"quality": "standard"}, {"background": "auto"},
     {"size": "256x256"}, {"usage": None}, {"output_format": "bmp"}, {"created": "now"},
     {"data": [{"seed": 1}]}, {"data": [{"url": "http://x/a.png", "sed": 1}]},
     {"revision": 2}],
)  # fmt: skip
def test_values_outside_the_spec_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ContractViolation):
        check_images_response(_with(GOOD, **changes))


@pytest.mark.parametrize(
    ("name", "changes"),
    [("image_generation.completed", {"usage": None}),
     ("image_generation.completed", {"quality": "hd"}),
     ("image_generation.completed", {"size": None}),
     ("image_edit.completed", {}),  # the type says image_generation
     ("image_generation.partial_image", {}),  # no partial_image_index
     ("image_generation.done", {})],
)  # fmt: skip
def test_events_outside_the_spec_are_refused(name: str, changes: dict[str, Any]) -> None:
    with pytest.raises(ContractViolation):
        check_event(name, _with(EVENT, **changes))


def test_every_image_answer_a_test_receives_is_checked() -> None:
    off_spec = Flask(__name__)
    off_spec.post("/v1/images/generations")(lambda: {**GOOD, "quality": "auto"})
    with pytest.raises(ContractViolation):
        off_spec.test_client().post("/v1/images/generations", json={})


def test_the_server_answers_within_the_spec(client: FlaskClient) -> None:
    response = post_generation(client, quality="auto", background="auto")
    assert response.status_code == 200  # and the watch checked it against the SDK's types
    check_images_response(response.get_json())


def test_the_official_spec_is_the_pinned_copy_with_the_image_operations() -> None:
    assert official_spec.metadata()["syncedAt"].startswith(official_spec.SPEC_DATE)
    assert official_spec.spec_path().is_file()  # and its sha256 is the one recorded
    assert official_spec.spec()["openapi"].startswith("3.1")
    assert official_spec.image_operations() == {
        "/images/edits": ["post"], "/images/generations": ["post"],
        "/images/variations": ["post"]}  # fmt: skip


@pytest.mark.parametrize(
    "changes",
    [{"quality": "auto"}, {"background": "auto"}, {"size": "256x256"},
     {"output_format": "gif"}, {"created": None}, {"data": "x"},
     {"usage": {"input_tokens": 1}}],
)  # fmt: skip
def test_the_official_spec_alone_refuses_what_it_does_not_allow(changes: dict[str, Any]) -> None:
    assert official_spec.violations("ImagesResponse", GOOD) == []
    assert official_spec.violations("ImagesResponse", _with(GOOD, **changes))


def test_the_official_spec_is_stricter_than_the_sdk_where_it_is_older() -> None:
    """The SDK's later spec added event qualities this copy lacks; the spec check refuses them,
    and the one relaxation (any event size) is the later spec's rule."""
    for name, event in [
        ("image_generation.completed", EVENT),
        ("image_edit.completed", {**EVENT, "type": "image_edit.completed"}),
    ]:
        schema = official_spec.EVENT_SCHEMAS[name]
        assert official_spec.violations(schema, event) == []  # size "64x64": relaxed
        assert official_spec.violations(schema, {**event, "quality": "xhigh"})
        with pytest.raises(ContractViolation, match="official spec"):
            check_event(name, {**event, "quality": "xhigh"})
