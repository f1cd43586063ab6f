"""Section 1, overhead: sequential server requests against the bare pipeline loop."""

from __future__ import annotations

import gc
import statistics
import time

import requests
import torch

from bench.bare import BareLoop, load_bare
from bench.common import Case, percentile, ratio_text, say, seconds
from bench.harness import Bench
from bench.load import Results, post_generation
from bench.table import Row
from tests.support.gunicorn import GunicornServer

# Server p50 / bare p50, by case; GPU mode states it as throughput.
OVERHEAD_TARGETS = {"64x64:4": 1.30, "256x256:16": 1.05}
GPU_THROUGHPUT_TARGET = 0.97  # bare p50 / server p50 at 1024x1024, 28 steps
KEEPALIVE_REUSE_SECONDS = 4.0  # below gunicorn.conf.py's keepalive of 5 s


def run(bench: Bench) -> None:
    """Compare p50 latency of sequential server requests with the bare pipeline loop."""
    args = bench.args
    cases = [Case.parse(text) for text in args.overhead_cases.split(",")]
    say(f"overhead: loading the bare pipeline ({args.model_id})")
    pipe = load_bare(args.model_id, bench.workdir / "models", bench.device, bench.dtype)
    bare = BareLoop(pipe, on_main_thread=args.bare_main_thread)
    del pipe
    try:
        with bench.server("overhead", {}) as server:
            for case in cases:
                measure_case(bench, bare, server, case)
    finally:
        bare.close()
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the servers that follow get all the device memory


def measure_case(bench: Bench, loop: BareLoop, server: GunicornServer, case: Case) -> None:
    """Measure one case, bare and server taking turns; never both computing at once."""
    n, chunk = bench.args.overhead_requests, max(1, bench.args.overhead_chunk)
    say(f"overhead {case.label()}: warm-up, then {n} bare and {n} server requests")
    for i in range(bench.args.warmup):
        loop.call(case, 10_000 + i)
    bench.warm_up(server, case, 1)
    bare: list[float] = []
    served = Results()
    session, last_used = requests.Session(), time.monotonic()
    try:
        for first in range(0, n, chunk):
            seeds = range(first, min(n, first + chunk))
            bare += [loop.call(case, seed) for seed in seeds]
            # Reconnect rather than race the server's keep-alive timeout (5 s).
            if time.monotonic() - last_used > KEEPALIVE_REUSE_SECONDS:
                session.close()
                session = requests.Session()
            for seed in seeds:
                started = time.perf_counter()
                status = post_generation(session, server.base_url, case, seed)
                served.add(time.perf_counter() - started, status)
            last_used = time.monotonic()
    finally:
        session.close()
    bench.failures += served.failed
    bare_p50, server_p50 = statistics.median(bare), percentile(served.latencies, 50)
    say(
        f"overhead {case.label()}: bare p50 {seconds(bare_p50)}, "
        f"server p50 {seconds(server_p50)}, {served.failure_text()}"
    )
    figure = (
        f"bare p50 {seconds(bare_p50)} ({1 / bare_p50:.3g} img/s), server p50 "
        f"{seconds(server_p50)} ({1 / server_p50:.3g} img/s); {n} each, "
        f"{served.failure_text()}"
    )
    if bench.args.gpu:
        value = bare_p50 / server_p50
        bench.rows.append(
            Row(
                f"Overhead, {case.label()}: throughput bare p50 / server p50",
                figure,
                ratio_text(value),
                f">= {GPU_THROUGHPUT_TARGET:.2f}x",
                value >= GPU_THROUGHPUT_TARGET,
            )
        )
        return
    value = server_p50 / bare_p50
    limit = OVERHEAD_TARGETS.get(str(case))
    bench.rows.append(
        Row(
            f"Overhead, {case.label()}: server p50 / bare p50",
            figure,
            ratio_text(value),
            f"<= {limit:.2f}x" if limit else "",
            None if limit is None else value <= limit,
        )
    )
