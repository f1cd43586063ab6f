"""The OpenAI-compatible API: image generations, edits, variations, models and adapters.

Each view reads top to bottom: parse (app/schemas.py), build the spec (app/spec.py),
generate and answer (app/render.py, through the engine).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from flask import Blueprint, current_app, request
from PIL import Image

from app.exceptions import APIError, InvalidRequest, ModelNotFound
from app.render import answer
from app.schemas import ImageRequest, edit_request, generation_request, variation_request
from app.spec import Endpoint, build_spec
from app.uploads import edit_mask, read_image

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/v1")

UPLOAD_FIELDS = ("image", "image[]", "mask")


@bp.before_request
def allow_uploads() -> None:
    """Let edits and variations carry image files; JSON bodies keep the smaller limit."""
    if request.endpoint in ("api.create_edit", "api.create_variation"):
        request.max_content_length = current_app.config["MAX_UPLOAD_BYTES"]


@bp.post("/images/generations")
def create_image() -> Any:
    """Generate images from a prompt, as OpenAI's images.generate does."""
    deadline = _deadline()
    params: ImageRequest = generation_request.load(_json_object())
    _check_model(params.model)
    return _generate(Endpoint.GENERATION, params, deadline)


@bp.post("/images/edits")
def create_edit() -> Any:
    """Edit images with a prompt (inpainting with a mask, else image-to-image)."""
    deadline = _deadline()
    params: ImageRequest = edit_request.load(_form_fields())
    _check_model(params.model)
    images = _uploaded_images()
    mask_upload = request.files.get("mask")
    mask = _read(mask_upload, "mask") if mask_upload else None
    if mask is not None and len(images) > 1:
        raise InvalidRequest(
            "A mask can be combined with a single image only.", param="mask", code="invalid_mask"
        )
    repaint = edit_mask(images[0], mask) if len(images) == 1 else None
    return _generate(Endpoint.EDIT, params, deadline, images, repaint)


@bp.post("/images/variations")
def create_variation() -> Any:
    """Make variations of an image: image-to-image with the server's variations prompt."""
    deadline = _deadline()
    params: ImageRequest = variation_request.load(_form_fields())
    _check_model(params.model)
    images = _uploaded_images(allow_several=False)
    return _generate(Endpoint.VARIATION, params, deadline, images)


@bp.get("/models")
def list_models() -> dict[str, Any]:
    """List the one served model, as OpenAI's models.list does."""
    return {
        "object": "list",
        "data": [
            {
                "id": current_app.config["MODEL_NAME"],
                "object": "model",
                "created": current_app.config["STARTED_AT"],
                "owned_by": "image-server",
                "ready": current_app.extensions["engine"].state == "ready",
            }
        ],
    }


@bp.get("/loras")
def list_loras() -> dict[str, Any]:
    """List the LoRA adapters of LORA_DIR that requests may name in `loras`."""
    library = current_app.extensions["loras"]
    files = library.list() if library is not None else []
    return {"object": "list", "data": [lora.as_json() for lora in files]}


# -- request parsing ----------------------------------------------------------------------


def _deadline() -> float:
    return time.monotonic() + current_app.config["REQUEST_TIMEOUT_SECONDS"]


def _check_model(name: str | None) -> None:
    served = current_app.config["MODEL_NAME"]
    if name and not current_app.config["ACCEPT_ANY_MODEL"] and name != served:
        raise ModelNotFound(
            f"The model '{name}' does not exist; this server serves '{served}'.", param="model"
        )


def _generate(
    endpoint: Endpoint,
    params: ImageRequest,
    deadline: float,
    images: list[Image.Image] | None = None,
    mask: Image.Image | None = None,
) -> Any:
    """Build the spec with every default, log the request, generate and answer."""
    spec, output = build_spec(params, current_app.config, endpoint, images or (), mask)
    log.info(
        "%s model=%r user=%r n=%d size=%dx%d steps=%d seed=%d stream=%s",
        endpoint, params.model, params.user, len(spec.seeds), spec.width, spec.height,
        spec.steps, spec.seeds[0], output.stream,
    )  # fmt: skip
    return answer(spec, output, deadline, endpoint)


def _json_object() -> dict[str, Any]:
    body = request.get_json()  # 415 for another content type, 400 for malformed JSON
    if not isinstance(body, dict):
        raise APIError("The request body must be a JSON object.")
    return body


def _form_fields() -> dict[str, Any]:
    """Return the text fields of a multipart form, refusing other bodies and files."""
    if request.mimetype != "multipart/form-data":
        raise APIError(
            "Send edits and variations as multipart/form-data, with the image as a file.",
            status=415,
            code="unsupported_media_type",
        )
    for name in request.files:
        if name not in UPLOAD_FIELDS:
            raise APIError(f"Unknown parameter: '{name}'.", param=name, code="unknown_parameter")
    for name in UPLOAD_FIELDS:
        if name in request.form:
            raise InvalidRequest(
                f"'{name}' must be sent as a file, not as a text field.", param=name
            )
    return request.form.to_dict()


def _read(upload: Any, param: str) -> Image.Image:
    return read_image(upload, param, current_app.config["MAX_UPLOAD_PIXELS"])


def _uploaded_images(allow_several: bool = True) -> list[Image.Image]:
    """Read `image` (or `image[]`, several) from the form."""
    uploads = request.files.getlist("image") + request.files.getlist("image[]")
    if not uploads:
        raise APIError(
            "Missing required parameter: 'image' (send it as a file).",
            param="image",
            code="missing_required_parameter",
        )
    if len(uploads) > 1 and not allow_several:
        raise InvalidRequest("Send exactly one image.", param="image")
    return [_read(upload, "image") for upload in uploads]
