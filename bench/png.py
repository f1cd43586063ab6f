"""Compare the server's PNG encoder (app/png.py) with Pillow's, side by side in one run.

    .venv/bin/python bench/png.py                      # synthetic photo-like image and noise
    .venv/bin/python bench/png.py --image photo.jpg    # also any photo of yours, resized

Prints a markdown table: median encode time and file size per encoder, level and thread
count, each as a ratio of Pillow at compress_level=1, the honest baseline: the server
encodes at level 1, so Pillow's default (level 6) would flatter it. Every file is decoded
again and compared pixel for pixel, so a wrong encoder cannot win.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__":
    # `python bench/png.py` puts bench/ first on the path, where its modules would shadow
    # top-level names; import from the repository root instead.
    sys.path[0] = str(ROOT)

from app.png import encode_png  # noqa: E402


def photo_like(side: int) -> Image.Image:
    """Smooth shapes with film grain: compresses like a generated photo, roughly."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:side, 0:side] / side
    planes = [
        128 + 90 * np.sin(6 * x + 2 * c) * np.cos(4 * y - c) + 30 * np.sin(25 * x * y + c)
        for c in range(3)
    ]
    pixels = np.stack(planes, axis=-1) + rng.normal(0, 3, (side, side, 3))
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def noise(side: int) -> Image.Image:
    """Uniform noise, what random-weight models like tiny-random produce: incompressible."""
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))


def pillow(level: int | None) -> Callable[[Image.Image], bytes]:
    """Return Pillow's encoder at `level` (None: Pillow's default, 6)."""

    def encode(image: Image.Image) -> bytes:
        buffer = io.BytesIO()
        image.save(buffer, "PNG", **({} if level is None else {"compress_level": level}))
        return buffer.getvalue()

    return encode


def ours(level: int, threads: int, pool: ThreadPoolExecutor) -> Callable[[Image.Image], bytes]:
    """Return app/png.py's encoder at `level`, deflating on `threads` threads."""

    def encode(image: Image.Image) -> bytes:
        return encode_png(image, level=level, pool=pool if threads > 1 else None, pieces=threads)

    return encode


def timed(
    encode: Callable[[Image.Image], bytes], image: Image.Image, repeat: int
) -> tuple[float, int]:
    """Check that the encoding decodes to the input; return (median seconds, bytes)."""
    blob = encode(image)
    decoded = np.asarray(Image.open(io.BytesIO(blob)).convert(image.mode))
    if not np.array_equal(decoded, np.asarray(image)):
        raise AssertionError("decoded pixels differ from the input")
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        encode(image)
        times.append(time.perf_counter() - started)
    return statistics.median(times), len(blob)


def main(argv: list[str] | None = None) -> int:
    """Time every encoder on every image and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", action="append", default=[], help="a photo to add (resized)")
    parser.add_argument("--sizes", default="256,1024", help="comma-separated square sides")
    parser.add_argument("--repeat", type=int, default=10, help="timed encodes per row")
    parser.add_argument("--threads", default="", help="thread counts (default: 1,2,...,CPUs)")
    args = parser.parse_args(argv)

    cpus = len(os.sched_getaffinity(0))
    counts = [int(t) for t in args.threads.split(",")] if args.threads else sorted({1, 2, cpus})
    pool = ThreadPoolExecutor(max(counts))
    print(
        f"{cpus} usable CPUs, load average at start {os.getloadavg()[0]:.2f}; "
        f"median of {args.repeat} encodes; Pillow {Image.__version__}\n"
    )
    print("| Image | Encoder | Time | Size | Time / Pillow level 1 | Size / Pillow level 1 |")
    print("| --- | --- | --- | --- | --- | --- |")
    for side in (int(s) for s in args.sizes.split(",")):
        images = {"photo-like": photo_like(side), "noise": noise(side)}
        for path in args.image:
            images[Path(path).name] = Image.open(path).convert("RGB").resize((side, side))
        for name, image in images.items():
            # The first is the reference: Pillow at the server's level.
            encoders = {"Pillow, level 1": pillow(1), "Pillow, default level (6)": pillow(None)}
            for level in (1, 6):
                for threads in counts:
                    plural = "s" if threads > 1 else ""
                    label = f"app/png.py, level {level}, {threads} thread{plural}"
                    encoders[label] = ours(level, threads, pool)
            baseline: tuple[float, int] | None = None
            for label, encode in encoders.items():
                seconds, size = timed(encode, image, args.repeat)
                base_seconds, base_size = baseline = baseline or (seconds, size)
                print(f"| {name} {side}x{side} | {label} | {seconds * 1000:.1f} ms "
                      f"| {size / 1e6:.3f} MB | {seconds / base_seconds:.2f}x "
                      f"| {size / base_size:.2f}x |")  # fmt: skip
    pool.shutdown()
    print(f"\nLoad average at end {os.getloadavg()[0]:.2f}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
