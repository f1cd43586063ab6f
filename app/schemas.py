"""Request schemas for the OpenAI Images API, with this server's extensions.

Static rules (types, choices, fixed ranges) live on the fields; the limits an operator
configures (prompt length, image size, step count) are read from the app's config when a
request is validated, never at import time. A schema returns an `ImageRequest`: the
validated fields as sent, None where absent or null. Defaults are filled in by
`app/spec.py`, in one place.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from flask import current_app
from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates,
    validates_schema,
)

from app.loras import lora_name_problem

MIN_IMAGE_SIDE = 64
SIZE_STEP = 16
MAX_SEED = 2**32 - 1
# A LoRA's scale: 0 is the bare model, 1 the adapter as trained, negative values invert it.
LORA_SCALE_MIN, LORA_SCALE_MAX = -2.0, 2.0
_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


class StrictInteger(fields.Integer):
    """A JSON integer: no strings, floats or booleans."""

    default_error_messages = {"invalid": "must be an integer."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid", input=value)
        return value


class StrictNumber(fields.Float):
    """A finite JSON number: no strings, booleans, NaN or infinity."""

    default_error_messages = {"invalid": "must be a finite number."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> float:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise self.make_error("invalid", input=value)
        return float(value)


class StrictBoolean(fields.Boolean):
    """A JSON boolean: no strings or numbers."""

    default_error_messages = {"invalid": "must be true or false."}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid", input=value)
        return value


class LoraList(fields.Field):
    """`loras`: a list of {"name", "scale"} objects; in a multipart form, that list as JSON.

    Returns a tuple of (name, scale) pairs, scale None where absent (build_spec fills it).
    """

    def __init__(self, *, from_text: bool = False, **kwargs: Any) -> None:
        super().__init__(allow_none=True, **kwargs)
        self.from_text = from_text

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> tuple[tuple[str, float | None], ...]:
        shape = 'a list of {"name": "<adapter>", "scale": <number>} objects'
        if self.from_text:
            try:
                value = json.loads(value)
            except (TypeError, ValueError):
                raise ValidationError(f"must be {shape}, as a JSON string.") from None
        if not isinstance(value, list):
            raise ValidationError(f"must be {shape}.")
        limit = current_app.config["MAX_LORAS_PER_REQUEST"]
        if len(value) > limit:
            raise ValidationError(f"names {len(value)} adapters; the most is {limit}.")
        pairs: list[tuple[str, float | None]] = []
        for item in value:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise ValidationError(f'must be {shape}; each needs a "name" string.')
            unknown = sorted(set(item) - {"name", "scale"})
            if unknown:
                raise ValidationError(f"unknown key {unknown[0]!r} in an adapter; use name, scale.")
            name, scale = item["name"], item.get("scale")
            problem = lora_name_problem(name)
            if problem:
                raise ValidationError(problem)
            if name in (seen for seen, _ in pairs):
                raise ValidationError(f"adapter {name!r} is named twice.")
            if scale is not None:
                valid = isinstance(scale, int | float) and not isinstance(scale, bool)
                if not valid or not math.isfinite(scale):
                    raise ValidationError(f"the scale of {name!r} must be a number.")
                if not LORA_SCALE_MIN <= scale <= LORA_SCALE_MAX:
                    raise ValidationError(
                        f"the scale of {name!r} must be between {LORA_SCALE_MIN:g} and "
                        f"{LORA_SCALE_MAX:g}."
                    )
                scale = float(scale)
            pairs.append((name, scale))
        return tuple(pairs)


@dataclass(frozen=True)
class ImageRequest:
    """A validated request to any of the three image endpoints; None means absent."""

    prompt: str | None = None  # required for generations and edits; variations take none
    model: str | None = None
    n: int | None = None
    size: str | None = None
    quality: str | None = None
    response_format: str | None = None
    output_format: str | None = None
    output_compression: int | None = None
    style: str | None = None  # accepted and ignored
    user: str | None = None
    safety_identifier: str | None = None
    background: str | None = None
    moderation: str | None = None  # accepted and ignored
    stream: bool | None = None
    partial_images: int | None = None
    # Extensions, sent by the OpenAI SDK through `extra_body`.
    seed: int | None = None
    negative_prompt: str | None = None
    num_inference_steps: int | None = None
    guidance_scale: float | None = None
    loras: tuple[tuple[str, float | None], ...] | None = None
    # Edits and variations only.
    strength: float | None = None
    input_fidelity: str | None = None  # accepted and ignored


def _choice(*choices: str) -> fields.String:
    return fields.String(
        allow_none=True,
        validate=validate.OneOf(choices, error="must be one of {choices}."),
    )


def parse_size(size: str, config: dict[str, Any]) -> tuple[int, int]:
    """Return (width, height) for a `WxH` string or `auto`, within the configured limits."""
    if size == "auto":
        size = config["DEFAULT_SIZE"]
    match = _SIZE.match(size)
    if not match:
        raise ValidationError("must be 'auto' or 'WIDTHxHEIGHT', for example '1024x1024'.")
    width, height = int(match[1]), int(match[2])
    max_side = config["MAX_IMAGE_SIDE"]
    for side in (width, height):
        if side % SIZE_STEP or not MIN_IMAGE_SIDE <= side <= max_side:
            raise ValidationError(
                f"width and height must be multiples of {SIZE_STEP} between "
                f"{MIN_IMAGE_SIDE} and {max_side}, for example '1024x1024'."
            )
    if width * height > config["MAX_IMAGE_PIXELS"]:
        raise ValidationError(
            f"{width}x{height} has more than the {config['MAX_IMAGE_PIXELS']} pixels this "
            "server allows; ask for a smaller size."
        )
    return width, height


def _at_most(limit_key: str, value: float, what: str = "") -> None:
    limit = current_app.config[limit_key]
    if value > limit:
        raise ValidationError(f"must be at most {limit}{what}.")


class GenerationRequestSchema(Schema):
    """POST /v1/images/generations."""

    class Meta:
        unknown = RAISE

    prompt = fields.String(
        required=True, validate=validate.Length(min=1, error="must not be empty.")
    )
    model = fields.String(allow_none=True, validate=validate.Length(max=256))
    n = StrictInteger(allow_none=True, validate=validate.Range(min=1))
    size = fields.String(allow_none=True)
    quality = _choice("auto", "standard", "hd", "low", "medium", "high")
    response_format = _choice("url", "b64_json")
    output_format = _choice("png", "jpeg", "webp")
    output_compression = StrictInteger(allow_none=True, validate=validate.Range(0, 100))
    style = _choice("vivid", "natural")
    user = fields.String(allow_none=True)  # the spec sets no length cap
    safety_identifier = fields.String(allow_none=True)
    background = _choice("auto", "opaque", "transparent")
    moderation = _choice("auto", "low")
    stream = StrictBoolean(allow_none=True)
    partial_images = StrictInteger(allow_none=True, validate=validate.Range(0, 3))
    # Extensions, sent by the OpenAI SDK through `extra_body`.
    seed = StrictInteger(allow_none=True, validate=validate.Range(0, MAX_SEED))
    negative_prompt = fields.String(allow_none=True)
    num_inference_steps = StrictInteger(allow_none=True, validate=validate.Range(min=1))
    guidance_scale = StrictNumber(allow_none=True, validate=validate.Range(min=0))
    loras = LoraList()

    @validates("prompt", "negative_prompt")
    def _prompt_length(self, value: str | None, data_key: str, **kwargs: Any) -> None:
        if value is not None:
            _at_most("MAX_PROMPT_CHARS", len(value), " characters")

    @validates("n")
    def _n_limit(self, value: int | None, data_key: str, **kwargs: Any) -> None:
        if value is not None:
            _at_most("MAX_IMAGES_PER_REQUEST", value)

    @validates("num_inference_steps")
    def _steps_limit(self, value: int | None, data_key: str, **kwargs: Any) -> None:
        if value is not None:
            _at_most("MAX_STEPS", value)

    @validates("guidance_scale")
    def _guidance_limit(self, value: float | None, data_key: str, **kwargs: Any) -> None:
        if value is not None:
            _at_most("MAX_GUIDANCE_SCALE", value)

    @validates("size")
    def _size_limits(self, value: str | None, data_key: str, **kwargs: Any) -> None:
        if value is not None:
            parse_size(value, current_app.config)

    @validates("background")
    def _background_supported(self, value: str | None, data_key: str, **kwargs: Any) -> None:
        if value == "transparent":
            raise ValidationError(
                "transparent backgrounds are not supported by this server; use 'auto' or 'opaque'."
            )

    @validates_schema
    def _one_image_when_streaming(self, data: dict[str, Any], **kwargs: Any) -> None:
        # OpenAI's spec does not define n > 1 with stream: its completed events carry no
        # image index, so a client could not tell which image an event holds.
        if data.get("stream") and (data.get("n") or 1) > 1:
            raise ValidationError("streaming returns one image: use n=1 with stream.", "n")

    @post_load
    def _to_request(self, data: dict[str, Any], **kwargs: Any) -> ImageRequest:
        return ImageRequest(**data)


class EditRequestSchema(GenerationRequestSchema):
    """POST /v1/images/edits and /v1/images/variations: multipart form fields.

    Form fields arrive as strings, so numbers and booleans are parsed from text here.
    Files (`image`, `image[]`, `mask`) are read by the view, not by this schema.
    """

    n = fields.Integer(allow_none=True, validate=validate.Range(min=1))
    output_compression = fields.Integer(allow_none=True, validate=validate.Range(0, 100))
    stream = fields.Boolean(allow_none=True)
    partial_images = fields.Integer(allow_none=True, validate=validate.Range(0, 3))
    seed = fields.Integer(allow_none=True, validate=validate.Range(0, MAX_SEED))
    num_inference_steps = fields.Integer(allow_none=True, validate=validate.Range(min=1))
    guidance_scale = fields.Float(allow_nan=False, allow_none=True, validate=validate.Range(min=0))
    strength = fields.Float(allow_nan=False, allow_none=True, validate=validate.Range(0, 1))
    loras = LoraList(from_text=True)
    input_fidelity = _choice("low", "high")  # OpenAI's; accepted and ignored


class JsonEditRequestSchema(GenerationRequestSchema):
    """POST /v1/images/edits as JSON: images and mask as `{"image_url": "data:..."}`."""

    strength = StrictNumber(allow_none=True, validate=validate.Range(0, 1))
    input_fidelity = _choice("low", "high")  # OpenAI's; accepted and ignored
    images = fields.List(
        fields.Dict(), required=True, validate=validate.Length(min=1, error="must not be empty.")
    )
    mask = fields.Dict(allow_none=True)

    @post_load
    def _to_request(self, data: dict[str, Any], **kwargs: Any) -> JsonEdit:  # type: ignore[override]
        images, mask = data.pop("images"), data.pop("mask", None)
        return JsonEdit(ImageRequest(**data), images, mask)


@dataclass(frozen=True)
class JsonEdit:
    """A validated JSON edit: its fields, and its image references as sent."""

    request: ImageRequest
    images: list[dict[str, Any]]
    mask: dict[str, Any] | None


generation_request = GenerationRequestSchema()
edit_request = EditRequestSchema()
json_edit_request = JsonEditRequestSchema()
# Variations take no prompt: the server's VARIATIONS_PROMPT is used.
variation_request = EditRequestSchema(
    exclude=("prompt", "negative_prompt", "quality", "style", "background", "moderation",
             "input_fidelity", "stream", "partial_images", "safety_identifier")
)  # fmt: skip
