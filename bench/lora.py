"""Benchmark LoRA adapters per request against the bare model, in one run, on the CPU.

Two in-process apps (the real request path: schema, spec, engine, lane, adapters, render)
on `tiny-random`, each with its own copy of the model: `bare` never loads an adapter;
`loras` has two tiny PEFT adapters in a temporary `LORA_DIR`. Measured:

1. first load: the first request naming each adapter on `loras` (loading included);
2. then rounds, interleaved so that load on the machine hits every kind alike: `bare`
   without adapters; on `loras`: [A], [A] again (same set: no switch), [A at 0.5, B]
   (a switch), the same again (no switch), [A] (a switch), no adapters (loaded, disabled).

Two ratios matter: switching (a request that changes the adapter set against one that
keeps it: the cost of activation, target 1.10x) and adapters against the bare model (the
adapters' own compute: unfused LoRA layers add matmuls to every targeted layer).

Latency is the CPU time of the request's thread (`time.thread_time()`), with torch on one
thread (`--threads 1`, the default) and PNG deflate on the request thread: on a shared
machine, wall time measures the neighbours as much as the adapters. The table also shows
the median wall time of the whole run. Prints one markdown table: medians, ratios, and
the 1.10x targets.

With `--compile` both apps run `COMPILE=true` (the CPU inductor backend; the warm-up
compiles `--size`), so the adapters go through the hot-swap slots (`LORA_CACHE_SIZE=2`
slots of rank 4 here), and the run also reports how many graphs were compiled after the
warm-up: 0 means no adapter switch recompiled.

    .venv/bin/python bench/lora.py                 # 256x256, 16 steps, 8 rounds
    .venv/bin/python bench/lora.py --rounds 3 --size 64x64 --steps 4   # smoke run
    .venv/bin/python bench/lora.py --compile       # compiled, hot-swapped adapters
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
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; with 1 the request's thread does all the work, "
                        "and its CPU time is what is measured")  # fmt: skip
    parser.add_argument("--compile", action="store_true",
                        help="COMPILE=true: adapters hot-swapped into slots")  # fmt: skip
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
    import torch  # after OMP_NUM_THREADS, which it reads once

    from app import create_app
    from app.engine.compile_watch import compiled_graphs
    from app.tiny_model import ensure_tiny_sd3
    from tests.support.lora_files import make_lora

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-lora-") as tmp:
        root = Path(tmp)
        model_dir = ensure_tiny_sd3(root / "models")
        make_lora(model_dir, root / "loras" / "style_a.safetensors", seed=1)
        make_lora(model_dir, root / "loras" / "style_b.safetensors", seed=2)
        config = {
            "MODEL_ID": "tiny-random",
            "MODEL_CACHE_DIR": str(root / "models"),
            "IMAGE_DIR": str(root / "images"),
            "LOG_LEVEL": "WARNING",
            "ENCODE_THREADS": 1,  # all of a request's work on its own thread, timed
        }
        lora_settings: dict[str, Any] = {"LORA_DIR": str(root / "loras")}
        if args.compile:  # the warm-up compiles the measured size; two slots of rank 4
            config.update(COMPILE=True, DEFAULT_SIZE=args.size)
            lora_settings.update(LORA_CACHE_SIZE=2, MAX_LORAS_PER_REQUEST=2, LORA_HOTSWAP_RANK=4)
        apps = []
        for overrides in ({}, lora_settings):
            app = create_app({**config, **overrides})
            # One at a time: loading is not thread-safe (transformers' meta-device init).
            assert app.extensions["engine"].wait_until_loaded(300), "model did not load"
            apps.append(app)
        bare_app, lora_app = apps

        walls: list[float] = []

        def timed(app: Any, loras: list[dict[str, Any]] | None, seed: int) -> float:
            body: dict[str, Any] = {"prompt": PROMPT, "size": args.size, "seed": seed,
                                    "num_inference_steps": args.steps,
                                    "response_format": "b64_json"}  # fmt: skip
            if loras is not None:
                body["loras"] = loras
            started, cpu = time.perf_counter(), time.thread_time()
            response = app.test_client().post("/v1/images/generations", json=body)
            walls.append(time.perf_counter() - started)
            assert response.status_code == 200, response.get_json()
            return time.thread_time() - cpu

        graphs = compiled_graphs()  # after the warm-ups
        for app in (bare_app, lora_app):  # untimed: first-call costs at this size
            timed(app, None, 0)
        first_a = timed(lora_app, SET_A, 0)
        first_ab = timed(lora_app, SET_AB, 0)  # loads style_b
        bare, same, switched, loaded_bare = [], [], [], []
        for seed in range(args.rounds):
            bare.append(timed(bare_app, None, seed))
            timed(lora_app, SET_A, seed)
            same.append(timed(lora_app, SET_A, seed))
            switched.append(timed(lora_app, SET_AB, seed))
            same.append(timed(lora_app, SET_AB, seed))
            switched.append(timed(lora_app, SET_A, seed))
            loaded_bare.append(timed(lora_app, None, seed))

        recompiled = compiled_graphs() - graphs

    base, steady = statistics.median(bare), statistics.median(same)
    loads, unused = (
        ("hot-swaps", "every slot at scale 0") if args.compile else ("loads", "disabled")
    )
    rows = [
        ("bare model (an app that never loads adapters)", base, None, None),
        (f"first request naming style_a ({loads} it)", first_a, None, None),
        (f"first request naming [style_a, style_b] ({loads} style_b)", first_ab, None, None),
        (f"no adapters, both loaded ({unused})", statistics.median(loaded_bare), None, TARGET),
        ("same adapter set as the request before", steady, None, TARGET),
        ("adapter set switched from the request before", statistics.median(switched),
         TARGET, TARGET),
    ]  # fmt: skip
    compiled = (f"; COMPILE=true, graphs compiled after the warm-up: {recompiled}"
                if args.compile else "")  # fmt: skip
    print(f"\n{machine_line()}; tiny-random, {args.size}, {args.steps} steps, "
          f"{args.rounds} rounds, medians of request-thread CPU time (wall median of all "
          f"requests: {statistics.median(walls) * 1000:.0f} ms){compiled}\n")  # fmt: skip
    print("| Case | Latency | vs same set | vs bare | Target |")
    print("| --- | --- | --- | --- | --- |")
    for label, value, switch_target, bare_target in rows:
        targets = []
        if switch_target:
            met = "met" if value / steady <= switch_target else "missed"
            targets.append(f"≤ {switch_target:.2f}x the same set: {met}")
        if bare_target:
            met = "met" if value / base <= bare_target else "missed"
            targets.append(f"≤ {bare_target:.2f}x bare: {met}")
        versus_same = f"{value / steady:.2f}x" if switch_target else ""
        print(f"| {label} | {value * 1000:.0f} ms | {versus_same} | {value / base:.2f}x "
              f"| {'; '.join(targets)} |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
