"""The command line: flags, and the defaults that depend on --quick and on GPU mode."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from app.tiny_model import TINY_MODEL_ID
from bench.sections import SECTIONS

# app/sd3_medium_random.py's id: importing that module imports diffusers, which warns.
SD3_MEDIUM_RANDOM_ID = "sd3-medium-random"
DESCRIPTION = "Benchmark the image server against the bare diffusers pipeline, in one run."

# Counts by mode: (overhead requests, warm-up, requests per client per round, memory
# requests, memory warm-up, concurrency rounds, admission requests). GPU mode runs its
# designs one at a time (1 round): three sd3-medium-random servers may not fit in memory.
MODE_COUNTS: dict[str, tuple[int, int, int, int, int, int, int]] = {
    "cpu": (60, 5, 8, 1000, 100, 3, 200),
    "cpu-quick": (10, 2, 1, 100, 20, 1, 40),
    "gpu": (12, 2, 2, 1000, 100, 1, 200),
    "gpu-quick": (4, 1, 1, 100, 20, 1, 40),
}
COUNTED = ("overhead_requests", "warmup", "requests_per_client", "memory_requests",
           "memory_warmup", "rounds", "admission_requests")  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; defaults depend on --quick and on GPU mode."""

    def by_mode(index: int) -> str:
        counts = ", ".join(f"{mode} {values[index]}" for mode, values in MODE_COUNTS.items())
        return f"(default by mode: {counts})"

    parser = argparse.ArgumentParser(description=DESCRIPTION)
    parser.add_argument("--quick", action="store_true", help="fewer requests: a smoke run")
    gpu = parser.add_mutually_exclusive_group()
    gpu.add_argument(
        "--gpu",
        action="store_true",
        default=None,
        help="GPU mode: sd3-medium-random at 1024x1024, 28 steps, bfloat16 "
        "(the default when CUDA is available)",
    )
    gpu.add_argument(
        "--cpu",
        dest="gpu",
        action="store_false",
        help="CPU mode: tiny-random in float32 (the default without CUDA)",
    )
    parser.add_argument("--out", type=Path, help="also write the table to this file")
    parser.add_argument(
        "--model-id",
        help="MODEL_ID for the server and the bare loop "
        "(default: sd3-medium-random in GPU mode, tiny-random on CPU)",
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {','.join(SECTIONS)} (default: all of them)",
    )
    parser.add_argument(
        "--overhead-cases",
        help="comma-separated WxH:steps cases "
        "(default: 64x64:4,256x256:16 on CPU, 1024x1024:28 in GPU mode)",
    )
    parser.add_argument(
        "--overhead-requests",
        type=int,
        help=f"timed calls per case, bare and server each {by_mode(0)}",
    )
    parser.add_argument(
        "--overhead-chunk",
        type=int,
        default=1,
        help="bare and server take turns, this many calls at a time (default: 1)",
    )
    parser.add_argument(
        "--bare-main-thread",
        action="store_true",
        help="run the bare loop on the main thread instead of a worker thread like the "
        "server's (see BareLoop: on a busy CPU this makes it much slower)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads of the bare loop and of every server (OMP_NUM_THREADS); "
        "default: torch's own choice, the core count. 1 gives steadier figures on a CPU "
        "shared with other work",
    )
    parser.add_argument(
        "--warmup", type=int, help=f"untimed calls before each timed series {by_mode(1)}"
    )
    parser.add_argument(
        "--concurrency-case",
        help="WxH:steps (default: 256x256:16 on CPU, 1024x1024:28 in GPU mode)",
    )
    parser.add_argument(
        "--clients",
        default="1,4,8,16",
        help="comma-separated concurrent client counts (default: 1,4,8,16)",
    )
    parser.add_argument(
        "--requests-per-client",
        type=int,
        help=f"requests each client sends back to back, per round {by_mode(2)}",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="concurrency rounds; above 1 the three designs' servers run side by side and "
        f"take turns round by round, so load drifts hit them alike {by_mode(5)}",
    )
    parser.add_argument(
        "--admission-case",
        default="1024x1024:28",
        help="WxH:steps of the requests that keep the lane busy and the queue full while "
        "the admission section floods the server (default: 1024x1024:28)",
    )
    parser.add_argument(
        "--admission-requests",
        type=int,
        help=f"small requests the flooding clients send in all {by_mode(6)}",
    )
    parser.add_argument("--memory-case", default="64x64:1", help="WxH:steps (default: 64x64:1)")
    parser.add_argument(
        "--memory-requests", type=int, help=f"requests between the two RSS readings {by_mode(3)}"
    )
    parser.add_argument(
        "--memory-warmup", type=int, help=f"requests before the first RSS reading {by_mode(4)}"
    )
    parser.add_argument(
        "--memory-clients",
        type=int,
        default=4,
        help="client threads of the memory section (default: 4)",
    )
    parser.add_argument(
        "--ready-timeout",
        type=float,
        default=900,
        help="seconds a server may take to load its model (default: 900)",
    )
    args = parser.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    if args.gpu is None:
        args.gpu = torch.cuda.is_available()
    if args.gpu and not torch.cuda.is_available():
        parser.error("--gpu: CUDA is not available here")
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds: at least 1")
    args.mode = ("gpu" if args.gpu else "cpu") + ("-quick" if args.quick else "")
    for name, value in zip(COUNTED, MODE_COUNTS[args.mode], strict=True):
        if getattr(args, name) is None:
            setattr(args, name, value)
    if args.model_id is None:
        args.model_id = SD3_MEDIUM_RANDOM_ID if args.gpu else TINY_MODEL_ID
    if args.overhead_cases is None:
        args.overhead_cases = "1024x1024:28" if args.gpu else "64x64:4,256x256:16"
    if args.concurrency_case is None:
        args.concurrency_case = "1024x1024:28" if args.gpu else "256x256:16"
    return args
