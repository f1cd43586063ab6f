"""The OpenAI-compatible API: /v1/images/generations and /v1/models."""

from __future__ import annotations

import base64
import logging
import time
from typing import Any

from flask import Blueprint, current_app, request, url_for

from app.engine import Engine, GenerationSpec
from app.errors import APIError
from app.images import FORMATS, ImageStore, encode_image
from app.schemas import generation_request

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/v1")


def _engine() -> Engine:
    return current_app.extensions["engine"]


def _served_model_name() -> str:
    return current_app.config["MODEL_NAME"]


def _image_url(name: str) -> str:
    """Return the absolute URL of a stored image, behind any trusted proxy."""
    base = current_app.config["PUBLIC_BASE_URL"]
    if base:
        return f"{base.rstrip('/')}/static/images/{name}"
    return url_for("files.image", name=name, _external=True)


def _check_model(name: str | None) -> None:
    if name and not current_app.config["ACCEPT_ANY_MODEL"] and name != _served_model_name():
        raise APIError(
            f"The model '{name}' does not exist; this server serves '{_served_model_name()}'.",
            status=404,
            param="model",
            code="model_not_found",
        )


@bp.post("/images/generations")
def create_image() -> dict[str, Any]:
    """Generate images from a prompt, as OpenAI's images.generate does."""
    started = time.monotonic()
    params = generation_request.load(_json_object())
    _check_model(params["model"])
    log.info(
        "generate model=%r user=%r n=%d size=%dx%d steps=%d seed=%d",
        params["model"], params["user"], params["n"], params["width"], params["height"],
        params["steps"], params["seed"],
    )  # fmt: skip
    spec = GenerationSpec(
        prompt=params["prompt"],
        negative_prompt=params["negative_prompt"],
        width=params["width"],
        height=params["height"],
        steps=params["steps"],
        guidance_scale=params["guidance_scale"],
        seeds=params["seeds"],
    )
    deadline = started + current_app.config["REQUEST_TIMEOUT_SECONDS"]
    images = _engine().generate(spec, deadline)
    return _render(images, spec, params)


def _json_object() -> dict[str, Any]:
    body = request.get_json()  # 415 for another content type, 400 for malformed JSON
    if not isinstance(body, dict):
        raise APIError("The request body must be a JSON object.", code="invalid_request")
    return body


def _render(images: list, spec: GenerationSpec, params: dict[str, Any]) -> dict[str, Any]:
    """Encode the images (outside the GPU lane) and answer with URLs or base64."""
    output_format = params["output_format"]
    blobs = [
        encode_image(
            image,
            output_format,
            params["output_compression"],
            {
                "prompt": spec.prompt,
                "negative_prompt": spec.negative_prompt,
                "seed": seed,
                "steps": spec.steps,
                "guidance_scale": spec.guidance_scale,
                "size": f"{spec.width}x{spec.height}",
                "model": _served_model_name(),
            },
        )
        for image, seed in zip(images, spec.seeds, strict=True)
    ]
    if params["response_format"] == "b64_json":
        data = [{"b64_json": base64.b64encode(blob).decode("ascii")} for blob in blobs]
    else:
        store: ImageStore = current_app.extensions["image_store"]
        names = store.save_all(blobs, FORMATS[output_format][1])
        data = [{"url": _image_url(name)} for name in names]
    for item, seed in zip(data, spec.seeds, strict=True):
        item["seed"] = seed
    return {
        "created": int(time.time()),
        "data": data,
        "size": f"{spec.width}x{spec.height}",
        "quality": params["quality"],
        "output_format": output_format,
        "background": params["background"],
    }


@bp.get("/models")
def list_models() -> dict[str, Any]:
    """List the one served model, as OpenAI's models.list does."""
    return {
        "object": "list",
        "data": [
            {
                "id": _served_model_name(),
                "object": "model",
                "created": current_app.config["STARTED_AT"],
                "owned_by": "image-server",
                "ready": _engine().state == "ready",
            }
        ],
    }
