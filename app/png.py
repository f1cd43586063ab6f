"""A fast PNG encoder for generated images: one filter for every row, parallel deflate.

Pillow's PNG encoder picks a filter per row by trying all five and deflates on one
thread: about 250 ms for a 1024x1024 photo at its default level, on every request's
critical path (bench/png.py; figures in bench/README.md). Here every row uses the Up filter
(a row minus the one above: one vectorised subtraction, and for photos within a few
percent of the best filter), and the filtered rows are cut into pieces that are deflated
at the same time on several threads (zlib releases the GIL), the way pigz does: each piece
but the last ends on a byte-aligned sync flush, so the pieces join into one valid deflate
stream, wrapped in a zlib header and the Adler-32 of all the rows. Decoders see an
ordinary PNG.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Mapping
from concurrent.futures import Executor

import numpy as np
from PIL import Image

SIGNATURE = b"\x89PNG\r\n\x1a\n"
# PNG colour types by Pillow mode: grey, grey+alpha, RGB, RGBA (8 bits per sample).
COLOR_TYPES = {"L": 0, "LA": 4, "RGB": 2, "RGBA": 6}
FILTER_NONE, FILTER_UP = 0, 2
ZLIB_HEADER = b"\x78\x9c"  # deflate, 32 KiB window; the level bits are informative only
# Rows are cut into pieces of at least this many bytes: smaller ones cost more in thread
# hand-offs than they save.
MIN_PIECE_BYTES = 64 * 1024


def _chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC of type and data."""
    crc = zlib.crc32(data, zlib.crc32(kind))  # without copying the data
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


def _text_chunk(keyword: str, text: str) -> bytes:
    """A tEXt chunk when the text is Latin-1, else an uncompressed UTF-8 iTXt chunk."""
    key = keyword.encode("latin-1")
    try:
        return _chunk(b"tEXt", key + b"\0" + text.encode("latin-1"))
    except UnicodeEncodeError:
        # keyword, NUL, compression flag 0, method 0, empty language, NUL, empty
        # translated keyword, NUL, then the UTF-8 text.
        return _chunk(b"iTXt", key + b"\0\0\0\0\0" + text.encode("utf-8"))


def filter_rows(pixels: np.ndarray) -> np.ndarray:
    """Return the scanlines with a filter byte each: None for the first, Up for the rest."""
    height = pixels.shape[0]
    rows = pixels.reshape(height, -1)
    filtered = np.empty((height, rows.shape[1] + 1), dtype=np.uint8)
    filtered[:, 0] = FILTER_UP
    filtered[0, 0] = FILTER_NONE
    filtered[0, 1:] = rows[0]
    # uint8 arithmetic wraps modulo 256, as the PNG filter is defined.
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])
    return filtered


def _deflate_piece(data: memoryview, level: int, last: bool) -> bytes:
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    end = zlib.Z_FINISH if last else zlib.Z_SYNC_FLUSH
    return compressor.compress(data) + compressor.flush(end)


def deflate(
    data: bytes | memoryview | np.ndarray, level: int, pool: Executor | None, pieces: int
) -> bytes:
    """Deflate `data` into one zlib stream, its pieces compressed on `pool` at once."""
    view = memoryview(data).cast("B")
    total = len(view)
    pieces = max(1, min(pieces, total // MIN_PIECE_BYTES))
    if pool is None or pieces == 1:
        return zlib.compress(view, level)
    size = math.ceil(total / pieces)
    bounds = [(start, min(start + size, total)) for start in range(0, total, size)]
    try:
        futures = [
            pool.submit(_deflate_piece, view[start:end], level, end == total)
            for start, end in bounds[1:]
        ]
    except RuntimeError:  # the pool is shut down: the interpreter is exiting
        return zlib.compress(view, level)
    # The calling thread deflates the first piece and sums the rows while the pool works.
    first = _deflate_piece(view[bounds[0][0] : bounds[0][1]], level, len(bounds) == 1)
    checksum = zlib.adler32(view)
    body = b"".join([first, *(future.result() for future in futures)])
    return ZLIB_HEADER + body + struct.pack(">I", checksum)


def encode_png(
    image: Image.Image,
    *,
    level: int = 1,
    text: Mapping[str, str] | None = None,
    pool: Executor | None = None,
    pieces: int = 1,
) -> bytes:
    """Encode `image` as an 8-bit PNG with `text` chunks; deflate on up to `pieces` threads.

    L, LA, RGB and RGBA images are written as they are (generated images are RGB); any
    other mode is converted to RGBA if it has alpha or transparency, else to RGB.
    """
    if image.mode not in COLOR_TYPES:
        alpha = "A" in image.getbands() or "transparency" in image.info
        image = image.convert("RGBA" if alpha else "RGB")
    pixels = np.asarray(image)
    height, width = pixels.shape[:2]
    header = struct.pack(">IIBBBBB", width, height, 8, COLOR_TYPES[image.mode], 0, 0, 0)
    rows = filter_rows(pixels)
    return b"".join([
        SIGNATURE,
        _chunk(b"IHDR", header),
        *(_text_chunk(key, value) for key, value in (text or {}).items()),
        _chunk(b"IDAT", deflate(rows, level, pool, pieces)),
        _chunk(b"IEND", b""),
    ])  # fmt: skip
