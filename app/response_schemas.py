"""Response schemas, for the OpenAPI document only: what the API answers, as JSON Schema.

The responses themselves are built by app/render.py, app/api.py and app/errors.py; tests
check the answers against the document (tests/test_openapi.py, schemathesis).
"""

from __future__ import annotations

from marshmallow import Schema, fields, validate


class ErrorDetailSchema(Schema):
    message = fields.String(required=True)
    type = fields.String(required=True)
    param = fields.String(required=True, allow_none=True)
    code = fields.String(required=True, allow_none=True)


class ErrorSchema(Schema):
    """OpenAI's error envelope, the body of every error."""

    error = fields.Nested(ErrorDetailSchema, required=True)


class ImageSchema(Schema):
    url = fields.String(metadata={"description": "With response_format=url (absolute URL)."})
    b64_json = fields.String(metadata={"description": "With response_format=b64_json."})
    seed = fields.Integer(required=True, metadata={"description": "The seed of this image."})


class InputTokensDetailsSchema(Schema):
    text_tokens = fields.Integer(required=True)
    image_tokens = fields.Integer(required=True)


class UsageSchema(Schema):
    """OpenAI's `usage`; how this server counts tokens is in docs/api.md."""

    input_tokens = fields.Integer(required=True)
    input_tokens_details = fields.Nested(InputTokensDetailsSchema, required=True)
    output_tokens = fields.Integer(required=True)
    total_tokens = fields.Integer(required=True)


# Values within OpenAI's enums: quality resolved from the steps run; no alpha is made.
_QUALITY = validate.OneOf(["low", "medium", "high"])
_BACKGROUND = validate.OneOf(["opaque"])
_FORMAT = validate.OneOf(["png", "jpeg", "webp"])


class ImagesResponseSchema(Schema):
    created = fields.Integer(required=True, metadata={"description": "Unix seconds."})
    data = fields.List(fields.Nested(ImageSchema), required=True)
    size = fields.String(
        validate=validate.OneOf(["1024x1024", "1536x1024", "1024x1536"]),
        metadata={"description": "Left out when the size is none of OpenAI's three."},
    )
    quality = fields.String(required=True, validate=_QUALITY)
    output_format = fields.String(required=True, validate=_FORMAT)
    background = fields.String(required=True, validate=_BACKGROUND)
    usage = fields.Nested(UsageSchema, required=True)


class ModelSchema(Schema):
    id = fields.String(required=True)
    object = fields.String(required=True, validate=validate.OneOf(["model"]))
    created = fields.Integer(required=True)
    owned_by = fields.String(required=True)
    ready = fields.Boolean(required=True)


class ModelListSchema(Schema):
    object = fields.String(required=True, validate=validate.OneOf(["list"]))
    data = fields.List(fields.Nested(ModelSchema), required=True)


class LoraSchema(Schema):
    name = fields.String(required=True, metadata={"description": "Send it in `loras`."})
    object = fields.String(required=True, validate=validate.OneOf(["lora"]))
    size_bytes = fields.Integer(required=True)
    targets = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "Pipeline components its weights apply to (`transformer`, "
                  "`text_encoder`, ...), read from the file's header; empty: none known."},
    )  # fmt: skip
    layout = fields.String(
        required=True,
        validate=validate.OneOf(["diffusers", "kohya", "unknown"]),
        metadata={"description": "Key layout; only `diffusers` (PEFT) files load for SD3."},
    )


class LoraListSchema(Schema):
    object = fields.String(required=True, validate=validate.OneOf(["list"]))
    data = fields.List(fields.Nested(LoraSchema), required=True)


class HealthSchema(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["ok"]))


class ReadinessSchema(Schema):
    status = fields.String(
        required=True,
        validate=validate.OneOf(["ready", "loading", "failed", "draining", "fatal"]),
    )
    reason = fields.String(required=True, allow_none=True)


_EVENT_TYPES = [
    f"{kind}.{what}"
    for kind in ("image_generation", "image_edit")
    for what in ("partial_image", "completed")
] + ["error"]


class StreamEventSchema(Schema):
    """One server-sent event: its name, and its `data` (a StreamEventData as JSON)."""

    event = fields.String(required=True, validate=validate.OneOf(_EVENT_TYPES))
    data = fields.String(required=True)


class StreamEventDataSchema(Schema):
    """An event's data: partial images, then the final image, or an error."""

    type = fields.String(required=True, validate=validate.OneOf(_EVENT_TYPES))
    b64_json = fields.String()
    partial_image_index = fields.Integer()
    seed = fields.Integer()
    created_at = fields.Integer()
    size = fields.String()
    quality = fields.String(validate=_QUALITY)
    output_format = fields.String(validate=_FORMAT)
    background = fields.String(validate=_BACKGROUND)
    usage = fields.Nested(UsageSchema, metadata={"description": "On *.completed events."})
    error = fields.Nested(ErrorDetailSchema)
