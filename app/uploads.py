"""Read uploaded images and masks for edits and variations, refusing anything unsafe."""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from typing import Any

from PIL import Image, UnidentifiedImageError
from werkzeug.datastructures import FileStorage

from app.exceptions import APIError
from app.schemas import MIN_IMAGE_SIDE, SIZE_STEP

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")


# `data:[<media type>][;parameters];base64,<data>`; only base64 payloads carry images.
_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?((?:;[\w.+-]+=[\w.+-]+)*);base64,(.*)$", re.S)


def read_image(upload: FileStorage, param: str, max_pixels: int) -> Image.Image:
    """Decode one uploaded PNG, JPEG or WEBP image, refusing bombs and other files."""
    return decode_image(upload.read(), param, max_pixels)


def read_image_reference(reference: Any, param: str, max_pixels: int) -> Image.Image:
    """Decode a JSON image reference (`{"image_url": "data:..."}`), as OpenAI's JSON edits
    send it; remote URLs and file ids are refused, never fetched (a server-side request
    risk)."""
    if not isinstance(reference, dict) or len(reference) != 1:
        raise APIError(
            f"Each '{param}' entry must be an object with one key, 'image_url' (a data URL).",
            param=param,
            code="invalid_image",
        )
    if "file_id" in reference:
        raise APIError(
            "File ids are not supported by this server (it has no Files API): send the image "
            "as a base64 data URL in 'image_url', or as a multipart file.",
            param=param,
            code="unsupported_parameter",
        )
    url = reference.get("image_url")
    if not isinstance(url, str):
        raise APIError(
            f"'{param}' needs 'image_url', a base64 data URL (data:image/png;base64,...).",
            param=param,
            code="invalid_image",
        )
    match = _DATA_URL.match(url)
    if not match:
        raise APIError(
            "This server does not fetch remote image URLs: send the image inline as a base64 "
            "data URL (data:image/png;base64,...) or as a multipart file.",
            param=param,
            code="unsupported_image_url",
        )
    try:
        data = base64.b64decode(match[3], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise APIError(
            f"The data URL sent as '{param}' is not valid base64.", param=param,
            code="invalid_image",
        ) from exc  # fmt: skip
    return decode_image(data, param, max_pixels)


def decode_image(data: bytes, param: str, max_pixels: int) -> Image.Image:
    """Decode a PNG, JPEG or WEBP image from bytes, refusing bombs and other files."""
    if not data:
        raise APIError(f"The file sent as '{param}' is empty.", param=param, code="invalid_image")
    try:
        with warnings.catch_warnings():
            # Pillow's decompression-bomb guard warns before it refuses: refuse at once.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in ACCEPTED_FORMATS:
                raise APIError(
                    f"The file sent as '{param}' is a {image.format} image; send PNG, JPEG "
                    "or WEBP.",
                    param=param,
                    code="invalid_image_format",
                )
            width, height = image.size
            if width * height > max_pixels:
                raise APIError(
                    f"The image sent as '{param}' has {width}x{height} pixels, more than the "
                    f"{max_pixels} this server accepts.",
                    param=param,
                    code="image_too_large",
                )
            image.load()
    except APIError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError,
            Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:  # fmt: skip
        raise APIError(
            f"The file sent as '{param}' is not a readable PNG, JPEG or WEBP image.",
            param=param,
            code="invalid_image",
        ) from exc
    return image


def edit_mask(image: Image.Image, mask: Image.Image | None) -> Image.Image | None:
    """Return the inpainting mask (white = repaint) from OpenAI's transparent-pixel mask.

    With no mask, an image with transparent pixels is its own mask; with neither, None
    (image-to-image).
    """
    source = mask if mask is not None else image
    if mask is not None:
        if mask.format != "PNG":
            raise APIError("The mask must be a PNG image.", param="mask", code="invalid_mask")
        if mask.size != image.size:
            raise APIError(
                f"The mask is {mask.size[0]}x{mask.size[1]} but the image is "
                f"{image.size[0]}x{image.size[1]}; they must be the same size.",
                param="mask",
                code="invalid_mask",
            )
        if "A" not in mask.getbands() and "transparency" not in mask.info:
            raise APIError(
                "The mask has no alpha channel: fully transparent pixels mark where to edit.",
                param="mask",
                code="invalid_mask",
            )
    elif "A" not in image.getbands() and "transparency" not in image.info:
        return None
    alpha = source.convert("RGBA").getchannel("A")
    # Fully transparent pixels are the ones to repaint.
    repaint = alpha.point(lambda value: 255 if value == 0 else 0)
    if mask is None and repaint.getbbox() is None:
        return None  # an alpha channel with nothing transparent: plain image-to-image
    return repaint


def output_size(image: Image.Image, max_side: int, max_pixels: int) -> tuple[int, int]:
    """Return the input's size rounded to multiples of 16, scaled down to fit the limits."""
    width, height = image.size
    scale = min(1.0, max_side / max(width, height), (max_pixels / (width * height)) ** 0.5)
    width, height = width * scale, height * scale

    def snap(side: float) -> int:
        return max(MIN_IMAGE_SIDE, min(max_side, int(round(side / SIZE_STEP)) * SIZE_STEP))

    width_px, height_px = snap(width), snap(height)
    while width_px * height_px > max_pixels:  # rounding up may overshoot the pixel cap
        width_px, height_px = width_px - SIZE_STEP, height_px - SIZE_STEP
    return width_px, height_px
