"""Decode the images the server returns; build the images the tests upload."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np
import openai
from PIL import Image


def pixels(blob: bytes) -> np.ndarray:
    """Decode an encoded image to an array of RGB pixels."""
    return np.asarray(Image.open(io.BytesIO(blob)).convert("RGB"))


def b64_pixels(item: dict[str, Any]) -> np.ndarray:
    """Decode a `b64_json` response item to pixels."""
    return pixels(base64.b64decode(item["b64_json"]))


def sdk_pixels(result: openai.types.ImagesResponse) -> list[np.ndarray]:
    """Decode every `b64_json` image of an SDK result to pixels."""
    return [pixels(base64.b64decode(item.b64_json)) for item in result.data]


def max_diff(a: np.ndarray, b: np.ndarray) -> int:
    """Return the largest difference between two images, pixel by pixel and channel."""
    return int(np.abs(a.astype(int) - b.astype(int)).max())


def png_parameters(blob: bytes) -> dict[str, Any]:
    """Return the generation parameters a served PNG records in its text chunk."""
    return json.loads(Image.open(io.BytesIO(blob)).text["parameters"])


def striped_png(
    size: tuple[int, int] = (64, 64), hole: tuple[int, int, int, int] | None = None
) -> bytes:
    """A PNG of stripes; `hole` (left, top, right, bottom) is made fully transparent."""
    image = Image.new("RGBA", size, (30, 120, 200, 255))
    for x in range(0, size[0], 8):
        for y in range(size[1]):
            image.putpixel((x, y), (250, 250, 20, 255))
    if hole:
        image.paste((0, 0, 0, 0), hole)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def opaque_png(size: tuple[int, int] = (64, 64)) -> bytes:
    """The striped PNG without an alpha channel: an edit source with nothing masked."""
    buffer = io.BytesIO()
    Image.open(io.BytesIO(striped_png(size))).convert("RGB").save(buffer, "PNG")
    return buffer.getvalue()
