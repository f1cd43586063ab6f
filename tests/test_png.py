"""The fast PNG encoder: files any decoder reads back exactly, with their text chunks."""

from __future__ import annotations

import base64
import io
import os
import struct
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from app.images import ImageEncoder
from app.png import MIN_PIECE_BYTES, encode_png
from tests.support.apps import idle_app, make_app
from tests.support.client import generate


@pytest.fixture(scope="module")
def pool() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(7) as executor:
        yield executor


def photo_like(height: int, width: int, channels: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients with grain: compressible, but not trivially."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    planes = [
        128 + 100 * np.sin(x / 37.0 + c) * np.cos(y / 23.0 - c) + rng.normal(0, 4, (height, width))
        for c in range(channels)
    ]
    return np.stack(planes, axis=-1).clip(0, 255).astype(np.uint8)


def chunks(blob: bytes) -> list[tuple[bytes, bytes]]:
    """Split a PNG into (type, data) chunks, checking the signature and every CRC."""
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    found, offset = [], 8
    while offset < len(blob):
        (length,) = struct.unpack(">I", blob[offset : offset + 4])
        kind = blob[offset + 4 : offset + 8]
        data = blob[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", blob[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + data), f"bad CRC in {kind!r}"
        found.append((kind, data))
        offset += 12 + length
    assert found[0][0] == b"IHDR" and found[-1] == (b"IEND", b"")
    return found


def unfilter(raw: bytes, height: int, row_bytes: int, bpp: int) -> np.ndarray:
    """Undo PNG filters None/Sub/Up row by row, as a decoder does."""
    rows = np.frombuffer(raw, dtype=np.uint8).reshape(height, row_bytes + 1)
    out = np.zeros((height, row_bytes), dtype=np.uint8)
    for y in range(height):
        kind, line = rows[y, 0], rows[y, 1:]
        if kind == 0:
            out[y] = line
        elif kind == 2:
            above = out[y - 1] if y else np.zeros(row_bytes, np.uint8)
            out[y] = line + above  # wraps modulo 256
        else:
            raise AssertionError(f"unexpected filter {kind} in row {y}")
    return out


@pytest.mark.parametrize("mode, channels", [("RGB", 3), ("RGBA", 4), ("L", 1), ("LA", 2)])
@pytest.mark.parametrize("pieces", [1, 2, 8])
def test_pixels_and_text_read_back_exactly(
    pool: ThreadPoolExecutor, mode: str, channels: int, pieces: int
) -> None:
    pixels = photo_like(480, 641, channels)
    image = Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode)
    text = {"parameters": '{"prompt": "a lighthouse"}'}

    blob = encode_png(image, level=1, text=text, pool=pool, pieces=pieces)

    decoded = Image.open(io.BytesIO(blob))
    assert decoded.mode == mode and decoded.size == (641, 480)
    assert np.array_equal(np.asarray(decoded), np.asarray(image))
    assert decoded.text == text


def test_parallel_pieces_form_one_checked_zlib_stream(pool: ThreadPoolExecutor) -> None:
    pixels = photo_like(512, 512, 3)
    image = Image.fromarray(pixels)
    assert pixels.nbytes > 4 * MIN_PIECE_BYTES  # large enough to be cut in 4

    one = encode_png(image, level=6, pool=pool, pieces=1)
    four = encode_png(image, level=6, pool=pool, pieces=4)

    idats = {}
    for name, blob in (("one", one), ("four", four)):
        found = chunks(blob)
        width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", found[0][1])
        assert (width, height, depth, color, interlace) == (512, 512, 8, 2, 0)
        idats[name] = idat(blob)
        # zlib.decompress checks the Adler-32 of the joined pieces.
        raw = zlib.decompress(idats[name])
        rows = unfilter(raw, 512, 512 * 3, 3)
        assert np.array_equal(rows.reshape(512, 512, 3), pixels)
    # The pieces were deflated separately: the streams differ, the pixels do not.
    assert idats["one"] != idats["four"]


@pytest.mark.parametrize("size", [(1, 1), (1, 300), (300, 1), (3, 5)])
def test_tiny_and_thin_images(pool: ThreadPoolExecutor, size: tuple[int, int]) -> None:
    pixels = photo_like(size[1], size[0], 3)
    blob = encode_png(Image.fromarray(pixels), pool=pool, pieces=8)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(blob))), pixels)


def idat(blob: bytes) -> bytes:
    return b"".join(data for kind, data in chunks(blob) if kind == b"IDAT")


def test_more_pieces_than_rows(pool: ThreadPoolExecutor) -> None:
    pixels = photo_like(2, 70_000, 3)  # 420 KB in 2 rows: pieces cut across rows
    blob = encode_png(Image.fromarray(pixels), pool=pool, pieces=8)
    assert idat(blob) != idat(encode_png(Image.fromarray(pixels)))  # it was split
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(blob))), pixels)
    assert zlib.decompress(idat(blob))  # complete, checksum included


def test_a_shut_down_pool_falls_back_to_one_thread() -> None:
    # Gunicorn exits a worker with requests still finishing; Python then refuses new
    # work on thread pools, and an image encoded at that moment must still be whole.
    stopped = ThreadPoolExecutor(2)
    stopped.shutdown()
    pixels = photo_like(256, 256, 3)
    blob = encode_png(Image.fromarray(pixels), pool=stopped, pieces=4)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(blob))), pixels)


def test_the_app_encoder_splits_large_pngs_across_its_threads() -> None:
    encoder = ImageEncoder(png_level=1, threads=4)
    image = Image.fromarray(photo_like(300, 300, 3))
    blob = encoder.encode(image, "png", 100, {"prompt": "a lighthouse"})
    assert idat(blob) != idat(encode_png(image, level=1))  # deflated in pieces
    decoded = Image.open(io.BytesIO(blob))
    assert np.array_equal(np.asarray(decoded), np.asarray(image))
    assert decoded.text == {"parameters": '{"prompt": "a lighthouse"}'}


def test_many_threads_encoding_at_once_on_a_small_pool() -> None:
    encoder = ImageEncoder(png_level=1, threads=3)  # 2 pool threads for 16 encoders
    images = [photo_like(300, 300, 3, seed) for seed in range(16)]
    with ThreadPoolExecutor(16) as requests:
        blobs = list(requests.map(
            lambda pixels: encoder.encode(Image.fromarray(pixels), "png", 100, {}), images
        ))  # fmt: skip
    for pixels, blob in zip(images, blobs, strict=True):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(blob))), pixels)


def test_text_outside_latin1_goes_into_an_itxt_chunk() -> None:
    image = Image.fromarray(photo_like(8, 8, 3))
    latin = encode_png(image, text={"parameters": "café"})
    wide = encode_png(image, text={"parameters": "雪の灯台 ☃"})

    assert [kind for kind, _ in chunks(latin)].count(b"tEXt") == 1
    assert [kind for kind, _ in chunks(wide)].count(b"iTXt") == 1
    assert Image.open(io.BytesIO(latin)).text == {"parameters": "café"}
    assert Image.open(io.BytesIO(wide)).text == {"parameters": "雪の灯台 ☃"}


def test_other_modes_are_converted_keeping_transparency() -> None:
    palette = Image.new("P", (4, 4), 1)
    palette.info["transparency"] = 1
    assert Image.open(io.BytesIO(encode_png(palette))).mode == "RGBA"
    assert Image.open(io.BytesIO(encode_png(Image.new("1", (4, 4), 1)))).mode == "RGB"


def test_higher_levels_make_smaller_files_of_the_same_pixels(pool: ThreadPoolExecutor) -> None:
    image = Image.fromarray(photo_like(256, 256, 3))
    sizes = {}
    for level in (0, 1, 9):
        blob = encode_png(image, level=level, pool=pool, pieces=2)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(blob))), np.asarray(image))
        sizes[level] = len(blob)
    assert sizes[0] > sizes[1] > sizes[9]


@pytest.mark.parametrize("setting, value", [("PNG_COMPRESS_LEVEL", 10), ("ENCODE_THREADS", -1)])
def test_out_of_range_encoder_settings_stop_the_app(
    tmp_path: Path, setting: str, value: int
) -> None:
    with pytest.raises(ValueError, match=setting):
        idle_app(tmp_path, **{setting: value})


def test_the_automatic_encoder_writes_exact_pngs_in_pieces_when_cpus_allow() -> None:
    # ENCODE_THREADS=0 (the default) deflates on the usable CPUs: with one CPU the
    # image is one zlib stream, with several it is deflated in pieces.
    image = Image.fromarray(photo_like(300, 300, 3))
    blob = ImageEncoder().encode(image, "png", 100, {})
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(blob))), np.asarray(image))
    split = idat(blob) != idat(encode_png(image, level=1))
    assert split == (len(os.sched_getaffinity(0)) > 1)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_served_pngs_are_deflated_in_encode_threads_pieces(
    model_cache: Path, tmp_path: Path, pool: ThreadPoolExecutor, threads: int
) -> None:
    # 256x256 RGB is three pieces' worth of rows, so each setting gives its own stream.
    app = make_app(model_cache, tmp_path, ENCODE_THREADS=threads, PNG_COMPRESS_LEVEL=1)
    body = generate(app.test_client(), size="256x256", seed=3)
    blob = base64.b64decode(body["data"][0]["b64_json"])
    decoded = Image.open(io.BytesIO(blob))
    streams = {n: idat(encode_png(decoded, level=1, pool=pool, pieces=n)) for n in (1, 2, 3)}
    assert len(set(streams.values())) == 3
    assert idat(blob) == streams[threads]


def test_served_pngs_follow_png_compress_level(model_cache: Path, tmp_path: Path) -> None:
    body = {"prompt": "a lighthouse", "size": "128x128", "seed": 5, "response_format": "b64_json"}
    files = {}
    for level in (0, 9):
        app = make_app(model_cache, tmp_path / str(level), PNG_COMPRESS_LEVEL=level)
        response = generate(app.test_client(), **body)
        files[level] = base64.b64decode(response["data"][0]["b64_json"])
    pixels = [np.asarray(Image.open(io.BytesIO(blob))) for blob in files.values()]
    assert np.array_equal(pixels[0], pixels[1])
    assert len(files[0]) > len(files[9])
