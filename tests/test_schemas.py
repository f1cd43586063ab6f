"""The generations request: validation by the schema, defaults filled in by build_spec."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from flask import Flask, current_app
from marshmallow import ValidationError

from app.config import quality_steps
from app.engine import GenerationSpec
from app.schemas import MAX_SEED, ImageRequest, generation_request
from app.spec import OutputOptions, build_spec
from tests.support.apps import idle_app

# The limits the rejection table below is written against, set on the app explicitly
# (they are the documented defaults).
LIMITS = {"MAX_IMAGES_PER_REQUEST": 10, "MAX_STEPS": 100, "MAX_PROMPT_CHARS": 4000,
          "MAX_GUIDANCE_SCALE": 30.0, "MAX_IMAGE_SIDE": 2048,
          "MAX_IMAGE_PIXELS": 1536 * 1536}  # fmt: skip


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    """An app (the schema needs no model) with the limits of the rejection table."""
    return idle_app(tmp_path_factory.mktemp("schemas"), **LIMITS)


@pytest.fixture
def ctx(limited: Flask) -> Iterator[Flask]:
    """A request context on that app, whose limits the schema reads."""
    with limited.test_request_context():
        yield limited


class Loaded(NamedTuple):
    """A validated request and what build_spec made of it."""

    request: ImageRequest
    spec: GenerationSpec
    output: OutputOptions

    @property
    def n_images(self) -> int:
        return len(self.spec.seeds)


def load(**fields: Any) -> Loaded:
    """Validate a generation request and fill in its defaults, as the view does."""
    request = generation_request.load({"prompt": "a lighthouse at dusk", **fields})
    return Loaded(request, *build_spec(request, current_app.config))


def test_absent_fields_resolve_to_the_configured_defaults(ctx: Flask) -> None:
    params = load()
    config = ctx.config
    width, height = (int(side) for side in config["DEFAULT_SIZE"].split("x"))
    assert params.spec.prompt == "a lighthouse at dusk"
    assert len(params.spec.seeds) == 1
    assert (params.spec.width, params.spec.height) == (width, height)
    assert params.output.quality == "medium"  # auto resolved: DEFAULT_STEPS is medium
    assert params.spec.steps == config["DEFAULT_STEPS"]
    assert params.spec.guidance_scale == config["DEFAULT_GUIDANCE_SCALE"]
    assert params.output.response_format == "url"
    assert params.output.output_format == "png"
    assert params.output.compression == 100
    assert params.output.background == "opaque"
    assert params.spec.negative_prompt is None
    assert params.request.model is None
    assert params.request.user is None


def test_size_auto_means_the_default_size(ctx: Flask) -> None:
    params = load(size="auto")
    assert f"{params.spec.width}x{params.spec.height}" == ctx.config["DEFAULT_SIZE"]


def test_size_is_parsed_as_width_by_height(ctx: Flask) -> None:
    params = load(size="64x128")
    assert (params.spec.width, params.spec.height) == (64, 128)


def test_null_optional_fields_mean_the_default(ctx: Flask) -> None:
    nulls = {
        name: None
        for name in (
            "model",
            "n",
            "size",
            "quality",
            "response_format",
            "output_format",
            "output_compression",
            "style",
            "user",
            "background",
            "moderation",
            "stream",
            "partial_images",
            "seed",
            "negative_prompt",
            "num_inference_steps",
            "guidance_scale",
        )
    }
    params = load(**nulls)
    defaults = load()
    assert params.request == defaults.request
    assert params.output == defaults.output
    assert replace(params.spec, seeds=()) == replace(defaults.spec, seeds=())
    assert 0 <= params.spec.seeds[0] <= MAX_SEED


def test_steps_follow_quality_low_auto_high(ctx: Flask) -> None:
    steps = {quality: load(quality=quality).spec.steps for quality in ("low", "auto", "high")}
    for quality in ("standard", "medium", "hd"):
        steps[quality] = load(quality=quality).spec.steps
    assert steps["low"] < steps["auto"] < steps["high"]
    assert steps["auto"] == steps["standard"] == steps["medium"] == ctx.config["DEFAULT_STEPS"]
    assert steps["high"] == steps["hd"]


def test_quality_steps_scale_a_production_default() -> None:
    assert quality_steps("low", 28) == 14
    assert quality_steps("auto", 28) == quality_steps("standard", 28) == 28
    assert quality_steps("medium", 28) == 28
    assert quality_steps("high", 28) == quality_steps("hd", 28) == 42
    assert quality_steps("low", 1) == 1  # never zero steps


def test_explicit_steps_win_over_quality(ctx: Flask) -> None:
    assert load(quality="high", num_inference_steps=1).spec.steps == 1
    assert load(quality="low", num_inference_steps=5).spec.steps == 5


def test_a_given_seed_is_kept(ctx: Flask) -> None:
    assert load(seed=0).spec.seeds[0] == 0
    assert load(seed=1234).spec.seeds[0] == 1234
    assert load(seed=MAX_SEED).spec.seeds[0] == MAX_SEED


def test_an_absent_seed_is_random_and_in_range(ctx: Flask) -> None:
    seeds = {load().spec.seeds[0] for _ in range(20)}
    assert all(0 <= seed <= MAX_SEED for seed in seeds)
    assert len(seeds) > 1


def test_accepted_values_pass_through(ctx: Flask) -> None:
    params = load(
        model="tiny-random",
        n=10,
        quality="hd",
        response_format="b64_json",
        output_format="webp",
        output_compression=0,
        style="natural",
        user="someone",
        background="opaque",
        moderation="low",
        stream=False,
        partial_images=0,
        negative_prompt="blurry",
        guidance_scale=0,
    )
    assert len(params.spec.seeds) == 10
    assert params.output.response_format == "b64_json"
    assert params.output.output_format == "webp"
    assert params.output.compression == 0
    assert params.output.background == "opaque"
    assert params.spec.negative_prompt == "blurry"
    assert params.spec.guidance_scale == 0.0
    assert params.request.model == "tiny-random"
    assert params.request.user == "someone"


def test_limits_at_their_maximum_are_accepted(ctx: Flask) -> None:
    config = ctx.config
    assert load(prompt="p" * config["MAX_PROMPT_CHARS"]).spec.prompt
    assert load(negative_prompt="n" * config["MAX_PROMPT_CHARS"]).spec.negative_prompt
    assert load(num_inference_steps=config["MAX_STEPS"]).spec.steps == config["MAX_STEPS"]
    assert (
        load(guidance_scale=config["MAX_GUIDANCE_SCALE"]).spec.guidance_scale
        == (config["MAX_GUIDANCE_SCALE"])
    )
    assert load(n=config["MAX_IMAGES_PER_REQUEST"]).n_images == config["MAX_IMAGES_PER_REQUEST"]
    assert load(size="1536x1536").spec.width == 1536  # exactly MAX_IMAGE_PIXELS
    assert load(size="2048x1152").spec.width == 2048  # MAX_IMAGE_SIDE, within the pixels


REJECTED: list[tuple[str, Any]] = [
    ("n", 0),
    ("n", LIMITS["MAX_IMAGES_PER_REQUEST"] + 1),
    ("n", True),
    ("n", "2"),
    ("n", 1.5),
    ("size", "100x100"),
    ("size", "63x64"),
    ("size", "48x64"),
    ("size", "4096x4096"),
    ("size", f"{LIMITS['MAX_IMAGE_SIDE'] + 16}x64"),
    ("size", "1024"),
    ("size", "axb"),
    ("size", "2048x2048"),  # each side allowed, the pixels not
    ("size", ""),
    ("size", 1024),
    ("quality", "ultra"),
    ("response_format", "xml"),
    ("output_format", "gif"),
    ("output_compression", 101),
    ("output_compression", -1),
    ("output_compression", 50.5),
    ("seed", -1),
    ("seed", 2**32),
    ("seed", "7"),
    ("seed", 1.0),
    ("guidance_scale", float("inf")),
    ("guidance_scale", -1),
    ("guidance_scale", True),
    ("guidance_scale", "7"),
    ("guidance_scale", LIMITS["MAX_GUIDANCE_SCALE"] + 0.5),
    ("num_inference_steps", 0),
    ("num_inference_steps", LIMITS["MAX_STEPS"] + 1),
    ("prompt", ""),
    ("prompt", "p" * (LIMITS["MAX_PROMPT_CHARS"] + 1)),
    ("prompt", None),
    ("prompt", 42),
    ("negative_prompt", "n" * (LIMITS["MAX_PROMPT_CHARS"] + 1)),
    ("background", "transparent"),
    ("stream", 1),
    ("stream", "false"),
    ("style", "photographic"),
    ("partial_images", 4),
    ("foo", "bar"),
]


@pytest.mark.parametrize(("field", "value"), REJECTED)
def test_rejected_value_raises_keyed_by_its_field(ctx: Flask, field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        load(**{field: value})
    assert field in caught.value.messages, caught.value.messages


def test_missing_prompt_is_rejected_as_required(ctx: Flask) -> None:
    with pytest.raises(ValidationError) as caught:
        generation_request.load({"n": 1})
    assert caught.value.messages["prompt"] == ["Missing data for required field."]


def test_unknown_field_is_rejected_as_unknown(ctx: Flask) -> None:
    with pytest.raises(ValidationError) as caught:
        load(foo="bar")
    assert caught.value.messages["foo"] == ["Unknown field."]


def test_oversized_image_message_says_to_ask_for_less(ctx: Flask) -> None:
    with pytest.raises(ValidationError) as caught:
        load(size="2048x2048")
    assert "smaller" in str(caught.value.messages["size"])


def test_limits_come_from_the_app_config_at_request_time(tmp_path: Path) -> None:
    small = idle_app(tmp_path, MAX_PROMPT_CHARS=5, MAX_STEPS=3, MAX_IMAGES_PER_REQUEST=2,
                     MAX_IMAGE_SIDE=128, MAX_IMAGE_PIXELS=64 * 128, DEFAULT_SIZE="64x128",
                     DEFAULT_STEPS=28)  # fmt: skip
    with small.test_request_context():
        spec, _ = build_spec(generation_request.load({"prompt": "short"}), small.config)
        assert (spec.width, spec.height) == (64, 128)
        assert spec.steps == 28
        low, _ = build_spec(
            generation_request.load({"prompt": "short", "quality": "low"}), small.config
        )
        assert low.steps == 14
        for field, value in [
            ("prompt", "sixsix"),
            ("num_inference_steps", 4),
            ("n", 3),
            ("size", "144x64"),
            ("size", "128x128"),
        ]:
            with pytest.raises(ValidationError) as caught:
                generation_request.load({"prompt": "short", field: value})
            assert field in caught.value.messages
