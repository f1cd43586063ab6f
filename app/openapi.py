"""GET /openapi.json: the API as it really behaves, built from the marshmallow schemas.

apispec's MarshmallowPlugin turns the request schemas of app/schemas.py (and the
response schemas below, which exist only to be documented) into JSON Schema, so the
document cannot drift from validation: types, choices, fixed ranges and unknown fields
come from the fields themselves. The limits an operator configures (prompt length, `n`,
steps, guidance, sizes, body sizes) are added from the app's config when the document is
built, once per app. 401s are documented only when API keys are configured.
"""

from __future__ import annotations

import copy
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Flask, current_app

from app.auth import keys_required
from app.images import IMAGE_NAME
from app.loras import NAME as LORA_NAME
from app.request_ids import _WELL_FORMED
from app.response_schemas import (
    ErrorSchema,
    HealthSchema,
    ImagesResponseSchema,
    LoraListSchema,
    ModelListSchema,
    ReadinessSchema,
    StreamEventDataSchema,
    StreamEventSchema,
)
from app.schemas import (
    LORA_SCALE_MAX,
    LORA_SCALE_MIN,
    MIN_IMAGE_SIDE,
    SIZE_STEP,
    EditRequestSchema,
    GenerationRequestSchema,
    JsonEditRequestSchema,
    StrictBoolean,
    StrictInteger,
    StrictNumber,
    variation_request,
)

bp = Blueprint("openapi", __name__)

API_VERSION = "0.1.0"


# -- errors each operation can answer ---------------------------------------------------

_ERRORS: dict[int, str] = {
    400: "Invalid request: a field is invalid, unknown or missing, or the body is malformed "
    "(`invalid_value`, `unknown_parameter`, `missing_required_parameter`, `invalid_json`, "
    "`invalid_request`, `unsupported_parameter`, and for uploads `invalid_image`, ...).",
    401: "Missing or wrong API key (`invalid_api_key`).",
    404: "Unknown `model` with ACCEPT_ANY_MODEL=false (`model_not_found`).",
    413: "Request body over the limit (`request_too_large`).",
    415: "Body sent with the wrong Content-Type (`unsupported_media_type`).",
    429: "The queue is full (`server_overloaded`); retry after `Retry-After` seconds.",
    500: "Generation or storage failed (`generation_failed`, `storage_failed`, "
    "`internal_error`); details are logged, never returned.",
    503: "Model loading (`model_loading`, with Retry-After) or failed to load "
    "(`model_load_failed`), out of accelerator memory (`out_of_memory`), draining "
    "(`server_draining`) or a fatal device error (`device_error`).",
    504: "REQUEST_TIMEOUT_SECONDS passed, queued or generating (`request_timeout`).",
}
_GENERATION_ERRORS = (400, 401, 404, 413, 415, 429, 500, 503, 504)

_REQUEST_ID_HEADER = {
    "description": "The request's id: a well-formed incoming `x-request-id`, else a new one.",
    "required": True,
    "schema": {"type": "string", "pattern": _WELL_FORMED.pattern},
}
_RETRY_AFTER = {"description": "Seconds to wait before retrying.", "schema": {"type": "string"}}


def _error(status: int, description: str) -> dict[str, Any]:
    headers: dict[str, Any] = {"x-request-id": _REQUEST_ID_HEADER}
    if status in (429, 503):
        headers["Retry-After"] = {**_RETRY_AFTER, "required": status == 429}
    return {
        "description": description,
        "headers": headers,
        "content": {"application/json": {"schema": "Error"}},
    }


def _ok(description: str, content: dict[str, Any], request_id: bool = True) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": content}
    if request_id:
        response["headers"] = {"x-request-id": _REQUEST_ID_HEADER}
    return response


def _json(schema: str | dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


_REQUEST_ID_PARAMETER = {
    "in": "header",
    "name": "x-request-id",
    "required": False,
    "description": "Your id for the request, echoed and logged if well-formed "
    "(1-128 letters, digits, `._:-`); anything else is replaced.",
    "schema": {"type": "string", "pattern": _WELL_FORMED.pattern},
}


# -- the document ---------------------------------------------------------------------------


def _size_pattern(config: Any) -> str:
    sides = "|".join(str(s) for s in range(MIN_IMAGE_SIDE, config["MAX_IMAGE_SIDE"] + 1, SIZE_STEP))
    return f"^(auto|({sides})x({sides}))$"


def _apply_limits(schema: dict[str, Any], config: Any, *, form: bool = False) -> None:
    """Add the configured limits that the schemas check in code, not on the fields."""
    props = schema["properties"]
    limits = {
        "prompt": {"maxLength": config["MAX_PROMPT_CHARS"]},
        "negative_prompt": {"maxLength": config["MAX_PROMPT_CHARS"]},
        "n": {"maximum": config["MAX_IMAGES_PER_REQUEST"]},
        "num_inference_steps": {"maximum": config["MAX_STEPS"]},
        "guidance_scale": {"maximum": config["MAX_GUIDANCE_SCALE"]},
        "size": {
            "pattern": _size_pattern(config),
            "description": f"`WIDTHxHEIGHT`, each side a multiple of {SIZE_STEP} from "
            f"{MIN_IMAGE_SIDE} to {config['MAX_IMAGE_SIDE']}, at most "
            f"{config['MAX_IMAGE_PIXELS']} pixels in all (400 otherwise); `auto` is "
            f"{config['DEFAULT_SIZE']}" + (" or the input image's size." if form else "."),
        },
    }
    for name, extra in limits.items():
        if name in props:
            props[name].update(extra)
    if "background" in props:
        # `transparent` is accepted by the field, then refused: the model has no alpha.
        props["background"]["enum"] = [v for v in props["background"]["enum"] if v != "transparent"]
        props["background"]["description"] = "`transparent` is refused with a 400."
    if "stream" in props:
        props["stream"]["description"] = (
            "true: answer with server-sent events (text/event-stream); only with n=1."
        )
    if "loras" in props:
        props["loras"] = _loras_schema(config, form)
    if form:
        # Form fields are text: there is no null, only an absent field.
        for prop in props.values():
            if isinstance(prop.get("type"), list):
                prop["type"] = [t for t in prop["type"] if t != "null"][0]
            if "enum" in prop:
                prop["enum"] = [v for v in prop["enum"] if v is not None]


def _loras_schema(config: Any, form: bool) -> dict[str, Any]:
    """`loras`: LoRA adapters by file stem with scales (a JSON string in a form)."""
    item = {"type": "object", "additionalProperties": False, "required": ["name"],
            "properties": {"name": {"type": "string", "pattern": LORA_NAME.pattern},
                           "scale": {"type": "number", "minimum": LORA_SCALE_MIN,
                                     "maximum": LORA_SCALE_MAX, "default": 1.0}}}  # fmt: skip
    text = (
        f"LoRA adapters of LORA_DIR (GET /v1/loras), at most {config['MAX_LORAS_PER_REQUEST']}, "
        "each named once; scale 0 is the bare model. 400 (`param`: `loras`) when LORA_DIR is "
        "unset, a name is unknown or its file is no LoRA for the served model."
    )
    if form:
        return {"type": "string", "contentMediaType": "application/json", "description": text,
                "contentSchema": {"type": "array", "items": item}}  # fmt: skip
    return {"type": ["array", "null"], "items": item, "description": text,
            "maxItems": config["MAX_LORAS_PER_REQUEST"]}  # fmt: skip


_IMAGE_REFERENCE: dict[str, Any] = {
    "type": "object",
    "description": "`image_url`: a base64 data URL (`data:image/png;base64,...`). Remote "
    "URLs and `file_id` are refused with a 400 (this server fetches nothing).",
    "properties": {"image_url": {"type": "string"}, "file_id": {"type": "string"}},
    "additionalProperties": False,
    "minProperties": 1,
    "maxProperties": 1,
}


def _binary(description: str) -> dict[str, Any]:
    return {"type": "string", "format": "binary", "description": description}


def _image_operation(
    summary: str, body: dict[str, Any], secured: bool, streams: bool
) -> dict[str, Any]:
    ok_content = _json("ImagesResponse")
    if streams:
        ok_content["text/event-stream"] = {"schema": "StreamEvent"}
    responses = {"200": _ok("The images (or, with stream=true, server-sent events).", ok_content)}
    for status in _GENERATION_ERRORS:
        if status == 401 and not secured:
            continue
        responses[str(status)] = _error(status, _ERRORS[status])
    return {
        "summary": summary,
        "parameters": [_REQUEST_ID_PARAMETER],
        "requestBody": {"required": True, "content": body},
        "responses": responses,
        **({"security": [{"bearerAuth": []}]} if secured else {}),
    }


def build_document(app: Flask) -> dict[str, Any]:
    """Build the OpenAPI 3.1 document for `app`'s configuration."""
    config = app.config
    secured = keys_required(app)
    metrics_secured = secured and config["METRICS_REQUIRE_KEY"]
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="OpenAI-compatible image server",
        version=API_VERSION,
        openapi_version="3.1.0",
        plugins=[plugin],
        info={
            "description": "OpenAI's Images API (generations, edits, variations) served by a "
            f"diffusers pipeline (model `{config['MODEL_NAME']}`), with extensions. Every "
            "error is the `Error` envelope; besides the statuses listed per operation, a "
            "method a path does not list answers 405 (`method_not_allowed`, with `Allow`) "
            "and an unknown path 404 (`not_found`)."
        },
    )
    # The strict fields only refuse what JSON would coerce; their JSON types are plain.
    plugin.map_to_openapi_type(StrictInteger, "integer", None)
    plugin.map_to_openapi_type(StrictNumber, "number", None)
    plugin.map_to_openapi_type(StrictBoolean, "boolean", None)
    if secured:
        spec.components.security_scheme(
            "bearerAuth", {"type": "http", "scheme": "bearer", "description": "An API key."}
        )

    components = spec.components
    components.schema("ImageGenerationRequest", schema=GenerationRequestSchema)
    components.schema("ImageEditRequest", schema=EditRequestSchema)
    components.schema("ImageEditJsonRequest", schema=JsonEditRequestSchema)
    components.schema("ImageVariationRequest", schema=variation_request)
    documented = {"Error": ErrorSchema, "ImagesResponse": ImagesResponseSchema,
                  "ModelList": ModelListSchema, "LoraList": LoraListSchema, "Health": HealthSchema,
                  "Readiness": ReadinessSchema, "StreamEvent": StreamEventSchema,
                  "StreamEventData": StreamEventDataSchema}  # fmt: skip
    for name, schema in documented.items():
        components.schema(name, schema=schema)
    schemas = components.schemas
    schemas["StreamEvent"]["properties"]["data"].update(
        contentMediaType="application/json",
        contentSchema={"$ref": "#/components/schemas/StreamEventData"},
    )
    _apply_limits(schemas["ImageGenerationRequest"], config)
    _apply_limits(schemas["ImageEditJsonRequest"], config)
    json_edit = schemas["ImageEditJsonRequest"]["properties"]
    json_edit["images"]["items"] = _IMAGE_REFERENCE
    json_edit["images"]["description"] = (
        "The first is edited (and masked); more are reference images, for pipelines that "
        "take several (400 naming `image` otherwise)."
    )
    json_edit["mask"] = {**_IMAGE_REFERENCE, "type": ["object", "null"]}
    for name in ("ImageEditRequest", "ImageVariationRequest"):
        _apply_limits(schemas[name], config, form=True)
    edit = schemas["ImageEditRequest"]
    edit["properties"]["image"] = _binary("The image to edit (PNG, JPEG or WEBP).")
    edit["properties"]["image[]"] = {"type": "array", "items": _binary("An image to edit.")}
    edit["properties"]["mask"] = _binary("Transparent pixels mark what to repaint.")
    edit["required"] = ["prompt", "image"]
    variation = schemas["ImageVariationRequest"]
    variation["properties"]["image"] = _binary("The image to vary (PNG, JPEG or WEBP).")
    variation["required"] = ["image"]

    json_body = {"application/json": {"schema": "ImageGenerationRequest"}}
    upload_limit = f" Bodies over {config['MAX_UPLOAD_BYTES']} bytes get 413."
    spec.path(
        path="/v1/images/generations",
        operations={"post": _image_operation(
            "Generate images from a prompt. Bodies over "
            f"{config['MAX_REQUEST_BYTES']} bytes get 413.", json_body, secured, True
        )},
    )  # fmt: skip
    spec.path(
        path="/v1/images/edits",
        operations={"post": _image_operation(
            "Edit an image with a prompt (inpainting with a mask)." + upload_limit,
            {"multipart/form-data": {"schema": "ImageEditRequest"},
             "application/json": {"schema": "ImageEditJsonRequest"}}, secured, True,
        )},
    )  # fmt: skip
    spec.path(
        path="/v1/images/variations",
        operations={"post": _image_operation(
            "Make variations of an image." + upload_limit,
            {"multipart/form-data": {"schema": "ImageVariationRequest"}}, secured, False,
        )},
    )  # fmt: skip
    listings = {
        "/v1/models": ("List the served model.", "ModelList"),
        "/v1/loras": ("List the LoRA adapters of LORA_DIR (empty when it is unset).", "LoraList"),
    }
    for path, (summary, schema) in listings.items():
        responses = {"200": _ok(summary, _json(schema))}
        if secured:
            responses["401"] = _error(401, _ERRORS[401])
        spec.path(
            path=path,
            operations={"get": {
                "summary": summary, "parameters": [_REQUEST_ID_PARAMETER], "responses": responses,
                **({"security": [{"bearerAuth": []}]} if secured else {}),
            }},
        )  # fmt: skip
    _document_plain_routes(spec, metrics_secured)
    return spec.to_dict()  # schema names given as strings above become $refs


def _document_plain_routes(spec: APISpec, metrics_secured: bool) -> None:
    """Probes, metrics, this document, the playground and static files."""
    not_found = _error(404, "No such file (or an image past IMAGE_TTL_SECONDS).")
    metrics_responses = {
        "200": _ok("Prometheus text format.", {"text/plain": {"schema": {"type": "string"}}})
    }
    if metrics_secured:
        metrics_responses["401"] = _error(401, _ERRORS[401])
    routes: dict[str, dict[str, Any]] = {
        "/healthz": {"summary": "Liveness: 200 while the process runs.",
                     "responses": {"200": _ok("Alive.", _json("Health"))}},
        "/readyz": {"summary": "Readiness: 200 once the model is loaded and warm.",
                    "responses": {"200": _ok("Ready.", _json("Readiness")),
                                  "503": _ok("Not ready; `status` and `reason` say why.",
                                             _json("Readiness"))}},
        "/metrics": {"summary": "Prometheus metrics.", "responses": metrics_responses},
        "/openapi.json": {"summary": "This document.",
                          "responses": {"200": _ok("OpenAPI 3.1.", _json({"type": "object"}))}},
        "/": {"summary": "The playground page.",
              "responses": {"200": _ok("HTML.", {"text/html": {"schema": {"type": "string"}}})}},
        "/static/images/{name}": {
            "summary": "A generated image, by its unguessable name, until it expires.",
            "parameters": [{"in": "path", "name": "name", "required": True,
                            "schema": {"type": "string", "pattern": IMAGE_NAME.pattern}}],
            "responses": {
                "200": _ok("The image (served by nginx, without x-request-id, behind it).", {
                    f"image/{kind}": {"schema": {"type": "string", "format": "binary"}}
                    for kind in ("png", "jpeg", "webp")
                }, request_id=False),
                "404": not_found,
            },
        },
        "/static/{filename}": {
            "summary": "A playground asset (never a hidden file or the image directory).",
            "parameters": [{"in": "path", "name": "filename", "required": True,
                            "schema": {"type": "string"}, "example": "index.html"}],
            "responses": {
                "200": _ok("The file.", {"*/*": {"schema": {"type": "string"}}}),
                "404": not_found,
            },
        },
    }  # fmt: skip
    for path, operation in routes.items():
        parameters = [*operation.pop("parameters", []), _REQUEST_ID_PARAMETER]
        spec.path(path=path, operations={"get": {**operation, "parameters": parameters}})


def get_spec(app: Flask) -> dict[str, Any]:
    """Return the app's document, built on first use."""
    if "openapi" not in app.extensions:
        app.extensions["openapi"] = build_document(app)
    return copy.deepcopy(app.extensions["openapi"])


@bp.get("/openapi.json")
def openapi_json() -> dict[str, Any]:
    """Serve the OpenAPI document; it needs no API key."""
    return get_spec(current_app._get_current_object())


def init_openapi(app: Flask) -> None:
    """Serve /openapi.json."""
    app.register_blueprint(bp)
