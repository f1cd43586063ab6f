"""Benchmark LoRA adapters per request against the bare model, in one run, on the CPU.

One in-process app (the real request path: schema, spec, engine, lane, adapters, render)
on `tiny-random` with two tiny PEFT adapters in a temporary `LORA_DIR`:

1. bare: requests without `loras`, before any adapter was ever loaded;
2. first load: the first request naming each adapter (loading included);
3. alternating: requests switching between two adapter sets every time, each a different
   set from the one before ([A] at 1.0, then [A at 0.5, B at 1.0]); interleaved with
   requests without adapters once adapters are loaded (disabled, not removed).

Prints one markdown table: medians, ratios against the bare median, and the 1.10x target.

    .venv/bin/python bench/lora.py                 # 256x256, 16 steps, 8 rounds
    .venv/bin/python bench/lora.py --rounds 3 --size 64x64 --steps 4   # smoke run
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/lora.py` imports `app` from the repo root

TARGET = 1.10
PROMPT = "a lighthouse on a cliff at dusk, oil painting, warm light"
SET_A = [{"name": "style_a", "scale": 1.0}]
SET_AB = [{"name": "style_a", "scale": 0.5}, {"name": "style_b", "scale": 1.0}]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="256x256")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=8, help="requests per measured kind")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    return parser.parse_args(argv)


def machine_line() -> str:
    import torch

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{platform.processor() or platform.machine()}, {cpus} usable CPUs, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), "
        f"{datetime.date.today().isoformat()}"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    from app import create_app
    from app.tiny_model import ensure_tiny_sd3
    from tests.lora_files import make_lora

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        root = Path(tmp)
        model_dir = ensure_tiny_sd3(root / "models")
        make_lora(model_dir, root / "loras" / "style_a.safetensors", seed=1)
        make_lora(model_dir, root / "loras" / "style_b.safetensors", seed=2)
        app = create_app(
            {
                "MODEL_ID": "tiny-random",
                "MODEL_CACHE_DIR": str(root / "models"),
                "IMAGE_DIR": str(root / "images"),
                "LORA_DIR": str(root / "loras"),
                "LOG_LEVEL": "WARNING",
            }
        )
        assert app.extensions["engine"].wait_until_loaded(300), "model did not load"
        client = app.test_client()

        def timed(loras: list[dict[str, Any]] | None, seed: int) -> float:
            body: dict[str, Any] = {"prompt": PROMPT, "size": args.size, "seed": seed,
                                    "num_inference_steps": args.steps,
                                    "response_format": "b64_json"}  # fmt: skip
            if loras is not None:
                body["loras"] = loras
            started = time.perf_counter()
            response = client.post("/v1/images/generations", json=body)
            elapsed = time.perf_counter() - started
            assert response.status_code == 200, response.get_json()
            return elapsed

        timed(None, 0)  # one untimed request: first-call costs outside the warm-up's size
        bare = [timed(None, seed) for seed in range(args.rounds)]
        first_a = timed(SET_A, 0)
        first_ab = timed(SET_AB, 0)  # loads style_b
        alternating, loaded_bare = [], []
        for seed in range(args.rounds):
            alternating.append(timed(SET_A, seed))
            alternating.append(timed(SET_AB, seed))
            loaded_bare.append(timed(None, seed))

    base = statistics.median(bare)
    rows = [
        ("bare model (no adapter ever loaded)", base, None),
        ("first request naming style_a (loads it)", first_a, None),
        ("first request naming [style_a, style_b] (loads style_b)", first_ab, None),
        ("alternating [A] / [A 0.5, B] (a switch every request)",
         statistics.median(alternating), TARGET),
        ("no adapters, with both loaded (disabled)", statistics.median(loaded_bare), TARGET),
    ]  # fmt: skip
    print(f"\n{machine_line()}; tiny-random, {args.size}, {args.steps} steps, "
          f"{args.rounds} rounds, medians\n")  # fmt: skip
    print("| Case | Latency | vs bare | Target | Met |")
    print("| --- | --- | --- | --- | --- |")
    for label, value, target in rows:
        ratio = value / base
        met = "" if target is None else ("yes" if ratio <= target else "no")
        shown = "" if target is None else f"≤ {target:.2f}x"
        print(f"| {label} | {value * 1000:.0f} ms | {ratio:.2f}x | {shown} | {met} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
