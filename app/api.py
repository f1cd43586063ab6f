"""The OpenAI-compatible API: image generations, edits, variations, and models."""

from __future__ import annotations

import base64
import json
import logging
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

from flask import Blueprint, Response, current_app, request, stream_with_context, url_for
from PIL import Image

from app.engine import IMAGE_TO_IMAGE, INPAINT, TEXT_TO_IMAGE, Engine, GenerationSpec
from app.errors import APIError, api_error_for
from app.images import FORMATS, ImageEncoder, ImageStore
from app.schemas import MAX_SEED, edit_request, generation_request, variation_request
from app.uploads import edit_mask, output_size, read_image

log = logging.getLogger(__name__)

bp = Blueprint("api", __name__, url_prefix="/v1")

UPLOAD_FIELDS = ("image", "image[]", "mask")
# Seconds between SSE comments while nothing else is sent: keeps proxies from timing
# out and notices a client that has gone away.
STREAM_KEEPALIVE = 1.0


def _engine() -> Engine:
    return current_app.extensions["engine"]


def _served_model_name() -> str:
    return current_app.config["MODEL_NAME"]


def _deadline() -> float:
    return time.monotonic() + current_app.config["REQUEST_TIMEOUT_SECONDS"]


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


def _log_request(kind: str, params: dict[str, Any], spec: GenerationSpec) -> None:
    log.info(
        "%s model=%r user=%r n=%d size=%dx%d steps=%d seed=%d stream=%s",
        kind, params["model"], params["user"], len(spec.seeds), spec.width, spec.height,
        spec.steps, spec.seeds[0], params["stream"],
    )  # fmt: skip


@bp.before_request
def allow_uploads() -> None:
    """Let edits and variations carry image files; JSON bodies keep the smaller limit."""
    if request.endpoint in ("api.create_edit", "api.create_variation"):
        request.max_content_length = current_app.config["MAX_UPLOAD_BYTES"]


@bp.post("/images/generations")
def create_image() -> Any:
    """Generate images from a prompt, as OpenAI's images.generate does."""
    deadline = _deadline()
    params = generation_request.load(_json_object())
    _check_model(params["model"])
    spec = _spec(params, TEXT_TO_IMAGE)
    _log_request("generate", params, spec)
    return _answer(spec, params, deadline, "image_generation")


@bp.post("/images/edits")
def create_edit() -> Any:
    """Edit images with a prompt (inpainting with a mask, else image-to-image)."""
    deadline = _deadline()
    params = edit_request.load(_form_fields())
    _check_model(params["model"])
    images = _uploaded_images()
    mask_upload = request.files.get("mask")
    mask = _read(mask_upload, "mask") if mask_upload else None
    if mask is not None and len(images) > 1:
        raise APIError(
            "A mask can be combined with a single image only.", param="mask", code="invalid_mask"
        )
    repaint = edit_mask(images[0], mask) if len(images) == 1 else None
    task = INPAINT if repaint is not None else IMAGE_TO_IMAGE
    spec = _spec(params, task, images, repaint)
    _log_request("edit", params, spec)
    return _answer(spec, params, deadline, "image_edit")


@bp.post("/images/variations")
def create_variation() -> Any:
    """Make variations of an image: image-to-image with the server's variations prompt."""
    deadline = _deadline()
    params = variation_request.load(_form_fields())
    _check_model(params["model"])
    images = _uploaded_images(allow_several=False)
    params["prompt"] = current_app.config["VARIATIONS_PROMPT"]
    if params["strength"] is None:
        params["strength"] = current_app.config["VARIATIONS_STRENGTH"]
    spec = _spec(params, IMAGE_TO_IMAGE, images)
    _log_request("variation", params, spec)
    return _answer(spec, params, deadline, "image_variation")


# -- request parsing ----------------------------------------------------------------


def _json_object() -> dict[str, Any]:
    body = request.get_json()  # 415 for another content type, 400 for malformed JSON
    if not isinstance(body, dict):
        raise APIError("The request body must be a JSON object.", code="invalid_request")
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
            raise APIError(
                f"'{name}' must be sent as a file, not as a text field.",
                param=name,
                code="invalid_value",
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
        raise APIError("Send exactly one image.", param="image", code="invalid_value")
    return [_read(upload, "image") for upload in uploads]


def _spec(
    params: dict[str, Any],
    task: str,
    images: list[Image.Image] = (),  # type: ignore[assignment]
    mask: Image.Image | None = None,
) -> GenerationSpec:
    """Turn validated parameters (and input images) into the engine's request."""
    config = current_app.config
    width, height = params["width"], params["height"]
    if task != TEXT_TO_IMAGE and not width:
        width, height = output_size(images[0], config["MAX_IMAGE_SIDE"], config["MAX_IMAGE_PIXELS"])
    n = params["n"]
    seeds = params["seeds"] if task == TEXT_TO_IMAGE else _edit_seeds(params, len(images))
    strength = params["strength"]
    if strength is None:
        strength = config["DEFAULT_STRENGTH"]
    if task != TEXT_TO_IMAGE and int(params["steps"] * strength) < 1:
        raise APIError(
            f"num_inference_steps x strength must be at least 1 ({params['steps']} x "
            f"{strength:g}); raise one of them.",
            param="strength",
            code="invalid_value",
        )
    # Each output image gets its input image (n per input, in order) at the output size.
    inputs = tuple(
        image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
        for image in images
        for _ in range(n)
    )
    masks = (mask.resize((width, height), Image.Resampling.NEAREST),) * n if mask else ()
    return GenerationSpec(
        prompt=params["prompt"],
        negative_prompt=params["negative_prompt"],
        width=width,
        height=height,
        steps=params["steps"],
        guidance_scale=params["guidance_scale"],
        seeds=seeds,
        task=task,
        init_images=inputs,
        masks=masks,
        strength=strength,
        partial_images=params["partial_images"] if params["stream"] else 0,
    )


def _edit_seeds(params: dict[str, Any], inputs: int) -> tuple[int, ...]:
    """Return one seed per output image: n per input image, consecutive."""
    total = params["n"] * inputs
    if total > current_app.config["MAX_IMAGES_PER_REQUEST"]:
        raise APIError(
            f"{inputs} images x n={params['n']} asks for {total} images; the most is "
            f"{current_app.config['MAX_IMAGES_PER_REQUEST']}.",
            param="n",
            code="invalid_value",
        )
    first = params["seeds"][0]
    return tuple((first + i) % (MAX_SEED + 1) for i in range(total))


# -- answering ------------------------------------------------------------------------


def _answer(spec: GenerationSpec, params: dict[str, Any], deadline: float, kind: str) -> Any:
    if params["stream"]:
        return _stream(spec, params, deadline, kind)
    images = _engine().generate(spec, deadline)
    return _render(images, spec, params)


def _encode(image: Image.Image, seed: int, spec: GenerationSpec, params: dict[str, Any]) -> bytes:
    """Encode one image (outside the GPU lane) with its parameters in PNG metadata."""
    metadata = {
        "prompt": spec.prompt,
        "negative_prompt": spec.negative_prompt,
        "seed": seed,
        "steps": spec.steps,
        "guidance_scale": spec.guidance_scale,
        "size": f"{spec.width}x{spec.height}",
        "model": _served_model_name(),
        "task": spec.task,
    }
    if spec.task != TEXT_TO_IMAGE:
        metadata["strength"] = spec.strength
    encoder: ImageEncoder = current_app.extensions["image_encoder"]
    return encoder.encode(image, params["output_format"], params["output_compression"], metadata)


def _render(images: list, spec: GenerationSpec, params: dict[str, Any]) -> dict[str, Any]:
    """Answer with URLs of stored files or base64, as `response_format` asks."""
    blobs = [
        _encode(image, seed, spec, params) for image, seed in zip(images, spec.seeds, strict=True)
    ]
    if params["response_format"] == "b64_json":
        data = [{"b64_json": base64.b64encode(blob).decode("ascii")} for blob in blobs]
    else:
        store: ImageStore = current_app.extensions["image_store"]
        names = store.save_all(blobs, FORMATS[params["output_format"]][1])
        data = [{"url": _image_url(name)} for name in names]
    for item, seed in zip(data, spec.seeds, strict=True):
        item["seed"] = seed
    return {
        "created": int(time.time()),
        "data": data,
        **_image_fields(spec, params),
    }


def _image_fields(spec: GenerationSpec, params: dict[str, Any]) -> dict[str, Any]:
    return {
        "size": f"{spec.width}x{spec.height}",
        "quality": params["quality"],
        "output_format": params["output_format"],
        "background": params["background"],
    }


def _sse(event: str, payload: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(payload)}\n\n"


def _stream(spec: GenerationSpec, params: dict[str, Any], deadline: float, kind: str) -> Response:
    """Answer with server-sent events: partial images as they come, then the final one.

    Admission happens here, before the 200, so a full queue is still a plain 429. The
    generation runs in a helper thread while this one writes events; when the client
    goes away, the next write fails, the job is cancelled and the pipeline stops at its
    next step.
    """
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    engine = _engine()
    job = engine.submit(
        spec, deadline, on_partial=lambda index, image: events.put(("partial", (index, image)))
    )

    def work() -> None:
        try:
            events.put(("done", engine.complete(job)))
        except BaseException as exc:  # handed to the writer, which answers with an event
            events.put(("error", exc))

    threading.Thread(target=work, name="stream-job", daemon=True).start()
    fields = _image_fields(spec, params)

    def generate() -> Iterator[str]:
        try:
            while True:
                try:
                    what, value = events.get(timeout=STREAM_KEEPALIVE)
                except queue.Empty:
                    yield ": keep-alive\n\n"
                    continue
                now = int(time.time())
                if what == "partial":
                    index, image = value
                    blob = _encode(image, spec.seeds[0], spec, params)
                    yield _sse(f"{kind}.partial_image", {
                        "type": f"{kind}.partial_image", "b64_json": _b64(blob),
                        "partial_image_index": index, "created_at": now, **fields,
                    })  # fmt: skip
                elif what == "done":
                    for image, seed in zip(value, spec.seeds, strict=True):
                        blob = _encode(image, seed, spec, params)
                        yield _sse(f"{kind}.completed", {
                            "type": f"{kind}.completed", "b64_json": _b64(blob), "seed": seed,
                            "created_at": now, **fields,
                        })  # fmt: skip
                    return
                else:
                    error = api_error_for(value)
                    body = {"message": error.message, "type": error.type,
                            "param": error.param, "code": error.code}  # fmt: skip
                    yield _sse("error", {"type": "error", "error": body})
                    return
        finally:
            job.cancelled = True  # the client is gone or the stream is over

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return Response(stream_with_context(generate()), mimetype="text/event-stream", headers=headers)


def _b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode("ascii")


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
