"""Encode generated images; the names stores give them (app/storage/)."""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

from app.png import encode_png

# What `output_format` names, mapped to Pillow's format and the file extension.
FORMATS: dict[str, tuple[str, str]] = {
    "png": ("PNG", "png"),
    "jpeg": ("JPEG", "jpeg"),
    "webp": ("WEBP", "webp"),
}
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}

# 128 random bits as hex, then the extension: the only names the store serves.
IMAGE_NAME = re.compile(r"^[0-9a-f]{32}\.(png|jpeg|webp)$")

# Deflate threads per PNG when ENCODE_THREADS is 0: the usable CPUs, at most this many.
MAX_AUTO_THREADS = 8


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class ImageEncoder:
    """Encode generated images; PNGs carry the generation parameters in a text chunk.

    PNGs go through app.png (Up filter, deflate split across `threads` threads at zlib
    `png_level`); jpeg and webp through Pillow.
    """

    def __init__(self, png_level: int = 1, threads: int = 0) -> None:
        if not 0 <= png_level <= 9:
            raise ValueError(f"PNG_COMPRESS_LEVEL must be 0..9, got {png_level}")
        if threads < 0:
            raise ValueError(f"ENCODE_THREADS must be 0 (automatic) or more, got {threads}")
        self.png_level = png_level
        self.threads = threads or min(MAX_AUTO_THREADS, _usable_cpus())
        # No thread starts until the first large PNG. The calling thread deflates one
        # piece itself, the pool the others.
        self._pool = (
            ThreadPoolExecutor(self.threads - 1, thread_name_prefix="png-deflate")
            if self.threads > 1
            else None
        )

    def encode(
        self,
        image: Image.Image,
        output_format: str,
        compression: int,
        parameters: Mapping[str, Any],
    ) -> bytes:
        """Encode `image` as `output_format`; `compression` is the jpeg/webp quality."""
        if output_format == "png":
            text = {"parameters": json.dumps(parameters, ensure_ascii=False)}
            return encode_png(image, level=self.png_level, text=text,
                              pool=self._pool, pieces=self.threads)  # fmt: skip
        pil_format, _ = FORMATS[output_format]
        buffer = io.BytesIO()
        # OpenAI's output_compression defaults to 100 for the best result, so it reads
        # as Pillow's quality; 0 is the smallest file.
        image.convert("RGB").save(buffer, pil_format, quality=compression)
        return buffer.getvalue()
