"""Benchmark the image server against the bare diffusers pipeline, in one run.

Sections: overhead (server p50 vs bare pipeline p50), concurrency (three server designs
under 1 to 16 clients), admission (how fast a full queue answers 429), memory (worker RSS
growth over many requests). The result is one markdown table with every figure, its
ratio, the target and whether it was met.

    .venv/bin/python bench/run.py            # CPU: tiny-random, ~10 minutes on 2 cores
    .venv/bin/python bench/run.py --quick    # smoke run, ~2 minutes
    .venv/bin/python bench/run.py --gpu      # sd3-medium-random at 1024x1024, 28 steps

This file is the entry point; the pieces live beside it (see bench/README.md).
"""

from __future__ import annotations

import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__":
    # `python bench/run.py` puts bench/ first on the path, where its modules would shadow
    # top-level names; import from the repository root instead, as `bench.*` and `app.*`.
    sys.path[0] = str(ROOT)

from app.tiny_model import TINY_MODEL_ID, ensure_tiny_sd3  # noqa: E402
from bench.cli import parse_args  # noqa: E402
from bench.common import say  # noqa: E402
from bench.harness import Bench  # noqa: E402
from bench.sections import SECTIONS  # noqa: E402
from bench.table import Row, load_average, machine_line, render  # noqa: E402


def _interrupt(signum: int, frame: Any) -> None:
    """Turn SIGTERM into KeyboardInterrupt so the servers are stopped on the way out."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the selected sections and print the table; stop every server whatever happens."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    # Ctrl-C stops the run even when started in the background, where SIGINT is ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    device, dtype = ("cuda", "bfloat16") if args.gpu else ("cpu", "float32")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    header = machine_line(args.model_id, device, dtype)
    say(header)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="image-bench-") as tmp:
        bench = Bench(args, Path(tmp), device, dtype)
        (bench.workdir / "images").mkdir()
        if args.model_id == TINY_MODEL_ID:
            ensure_tiny_sd3(bench.workdir / "models")  # built once, before any server
        try:
            for name, section in SECTIONS.items():
                if name in args.sections:
                    section(bench)
        except KeyboardInterrupt:
            say("interrupted: servers stopped")
            return 130
        finally:
            for server in list(bench.servers):
                server.stop()
    bench.rows.append(
        Row(
            "Failed requests (non-200 or no response), all sections",
            str(bench.failures),
            "",
            "0",
            bench.failures == 0,
        )
    )
    header += (
        f"; load average at end {load_average():.2f}; mode {args.mode}; "
        f"run took {(time.monotonic() - started) / 60:.1f} min"
    )
    table = render(header, bench.rows)
    print(table)
    if args.out:
        args.out.write_text(table)
        say(f"table written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
