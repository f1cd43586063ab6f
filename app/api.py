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
from app.schemas import (
    ImageRequest,
    JsonEdit,
    edit_request,
    generation_request,
    json_edit_request,
    variation_request,
)
from app.spec import Endpoint, build_spec
from app.uploads import edit_mask, read_image, read_image_reference

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
    """Edit an image with a prompt (inpainting with a mask, else image-to-image); several
    images are references for each output. Multipart files, or JSON with data URLs."""
    deadline = _deadline()
    params, images, mask = _json_edit() if request.is_json else _multipart_edit()
    _check_model(params.model)
    # As OpenAI's: the mask (or the first image's own transparency) edits the first image.
    return _generate(Endpoint.EDIT, params, deadline, images, edit_mask(images[0], mask))


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
    spec, output = build_spec(
        params, current_app.config, endpoint, images or (), mask, _takes_strength(images)
    )
    log.info(
        "%s model=%.256r user=%.256r safety_identifier=%.256r n=%d size=%dx%d steps=%d "
        "seed=%d stream=%s",
        endpoint, params.model, params.user, params.safety_identifier, len(spec.seeds),
        spec.width, spec.height, spec.steps, spec.seeds[0], output.stream,
    )  # fmt: skip
    return answer(spec, output, deadline, endpoint)


def _takes_strength(images: list[Image.Image] | None) -> bool:
    """Return whether the served pipeline's edits take `strength` (until the model is
    ready, True: the request is answered 503 when it reaches the engine anyway)."""
    engine = current_app.extensions["engine"]
    if not images or engine.state != "ready":
        return True
    return engine.capabilities().strength


def _json_object() -> dict[str, Any]:
    body = request.get_json()  # 415 for another content type, 400 for malformed JSON
    if not isinstance(body, dict):
        raise APIError("The request body must be a JSON object.")
    return body


def _form_fields() -> dict[str, Any]:
    """Return the text fields of a multipart form, refusing other bodies and files."""
    if request.mimetype != "multipart/form-data":
        raise APIError(
            "Send edits and variations as multipart/form-data, with the image as a file "
            "(edits also take JSON, with images as data URLs).",
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


def _multipart_edit() -> tuple[ImageRequest, list[Image.Image], Image.Image | None]:
    params: ImageRequest = edit_request.load(_form_fields())
    images = _uploaded_images()
    mask_upload = request.files.get("mask")
    return params, images, _read(mask_upload, "mask") if mask_upload else None


def _json_edit() -> tuple[ImageRequest, list[Image.Image], Image.Image | None]:
    edit: JsonEdit = json_edit_request.load(_json_object())
    limit = current_app.config["MAX_UPLOAD_PIXELS"]
    images = [read_image_reference(ref, "images", limit) for ref in edit.images]
    mask = read_image_reference(edit.mask, "mask", limit) if edit.mask is not None else None
    return edit.request, images, mask


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
