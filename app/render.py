"""Answering a generation: encode the images, store or inline them, or stream events.

Encoding and writing happen here, in the request's thread, outside the GPU lane. A
streamed answer (server-sent events, OpenAI's event names) is admitted before its 200, so
a full queue is still a plain 429.
"""

from __future__ import annotations

import base64
import json
import queue
import threading
import time
from collections.abc import Iterator
from typing import Any

from flask import Response, current_app, stream_with_context
from PIL import Image

from app.engine import Engine, GenerationSpec, Task
from app.errors import render_error
from app.images import FORMATS, ImageEncoder
from app.spec import Endpoint, OutputOptions
from app.storage import ImageStore

# Seconds between SSE comments while nothing else is sent: keeps proxies from timing
# out and notices a client that has gone away.
STREAM_KEEPALIVE = 1.0


def encode(image: Image.Image, seed: int, spec: GenerationSpec, output: OutputOptions) -> bytes:
    """Encode one image with its generation parameters in the PNG metadata."""
    metadata = {
        "prompt": spec.prompt,
        "negative_prompt": spec.negative_prompt,
        "seed": seed,
        "steps": spec.steps,
        "guidance_scale": spec.guidance_scale,
        "size": f"{spec.width}x{spec.height}",
        "model": current_app.config["MODEL_NAME"],
        "task": str(spec.task),
    }
    if spec.task != Task.TEXT_TO_IMAGE:
        metadata["strength"] = spec.strength
    if spec.loras:
        metadata["loras"] = [{"name": name, "scale": scale} for name, scale in spec.loras]
    encoder: ImageEncoder = current_app.extensions["image_encoder"]
    return encoder.encode(image, output.output_format, output.compression, metadata)


def _b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode("ascii")


# The sizes OpenAI's ImagesResponse allows; another size is left out of a response.
OFFICIAL_SIZES = ("1024x1024", "1536x1024", "1024x1536")


def _echoed_fields(spec: GenerationSpec, output: OutputOptions, event: bool = False) -> dict:
    """Return the fields that describe the images, within the values OpenAI's spec allows.

    A response leaves out `size` when it is none of the official sizes; a stream event,
    where `size` is required, carries the real `WIDTHxHEIGHT` (the current spec allows any).
    """
    size = f"{spec.width}x{spec.height}"
    fields = {"quality": output.quality, "output_format": output.output_format,
              "background": output.background}  # fmt: skip
    if event or size in OFFICIAL_SIZES:
        fields["size"] = size
    return fields


def answer(spec: GenerationSpec, output: OutputOptions, deadline: float, endpoint: Endpoint) -> Any:
    """Generate `spec` and answer with JSON, or with an event stream when asked."""
    engine: Engine = current_app.extensions["engine"]
    if output.stream:
        return stream(engine, spec, output, deadline, endpoint)
    # Counted before generating: finished images must not be lost to a later state change.
    usage = engine.usage(spec)
    return render(engine.generate(spec, deadline), spec, output, usage)


def render(
    images: list[Image.Image],
    spec: GenerationSpec,
    output: OutputOptions,
    usage: dict[str, Any] | None = None,
) -> dict:
    """Answer with URLs of stored files or base64, as `response_format` asks."""
    blobs = [
        encode(image, seed, spec, output) for image, seed in zip(images, spec.seeds, strict=True)
    ]
    if output.response_format == "b64_json":
        data = [{"b64_json": _b64(blob)} for blob in blobs]
    else:
        store: ImageStore = current_app.extensions["image_store"]
        urls = store.save_all(blobs, FORMATS[output.output_format][1])
        data = [{"url": url} for url in urls]
    for item, seed in zip(data, spec.seeds, strict=True):
        item["seed"] = seed
    body = {"created": int(time.time()), "data": data, **_echoed_fields(spec, output)}
    if usage is not None:
        body["usage"] = usage
    return body


def _sse(event: str, payload: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(payload)}\n\n"


def stream(
    engine: Engine,
    spec: GenerationSpec,
    output: OutputOptions,
    deadline: float,
    endpoint: Endpoint,
) -> Response:
    """Answer with server-sent events: partial images as they come, then the final one.

    The generation runs in a helper thread while this one writes events; when the client
    goes away, the next write fails, the job is cancelled and the pipeline stops at its
    next step.
    """
    events: queue.Queue[tuple[str, Any]] = queue.Queue()
    usage = engine.usage(spec)  # before admission: nothing is left running if it fails
    job = engine.submit(
        spec, deadline, on_partial=lambda index, image: events.put(("partial", (index, image)))
    )

    def work() -> None:
        try:
            events.put(("done", engine.complete(job)))
        except BaseException as exc:  # handed to the writer, which answers with an event
            events.put(("error", exc))

    threading.Thread(target=work, name="stream-job", daemon=True).start()
    fields = _echoed_fields(spec, output, event=True)
    kind = str(endpoint)

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
                    blob = encode(image, spec.seeds[0], spec, output)
                    yield _sse(f"{kind}.partial_image", {
                        "type": f"{kind}.partial_image", "b64_json": _b64(blob),
                        "partial_image_index": index, "created_at": now, **fields,
                    })  # fmt: skip
                elif what == "done":
                    for image, seed in zip(value, spec.seeds, strict=True):
                        blob = encode(image, seed, spec, output)
                        yield _sse(f"{kind}.completed", {
                            "type": f"{kind}.completed", "b64_json": _b64(blob), "seed": seed,
                            "created_at": now, **fields, "usage": usage,
                        })  # fmt: skip
                    return
                else:
                    _, body = render_error(value)
                    yield _sse("error", {"type": "error", "error": body})
                    return
        finally:
            job.cancelled = True  # the client is gone or the stream is over

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return Response(stream_with_context(generate()), mimetype="text/event-stream", headers=headers)
