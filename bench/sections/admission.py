"""Section 3, admission: how fast a full queue answers 429, and what Retry-After says."""

from __future__ import annotations

import math
import threading
import time

from bench.common import Case, percentile, say, seconds
from bench.harness import Bench
from bench.load import Flood, Results, timed_generation, wait_for_metrics
from bench.table import Row

ADMISSION_LATENCY_TARGET = 0.050  # p95 seconds of a 429 with the lane busy, queue full
ADMISSION_QUEUE = 4  # MAX_QUEUE of the section's server, in images
ADMISSION_FLOOD_CLIENTS = 8


def run(bench: Bench) -> None:
    """With the lane busy and the queue full, time the 429s a flood of requests gets."""
    case, small = Case.parse(bench.args.admission_case), Case(64, 64, 1)
    holding = 1 + ADMISSION_QUEUE  # one image running, the queue full behind it
    with bench.server("admission", {"MAX_QUEUE": str(ADMISSION_QUEUE)}) as server:
        # Recent service times are the holders' kind, as under a steady load.
        bench.warm_up(server, case, 1)
        held, finished = Results(), []

        def hold(seed: int) -> None:
            held.add(*timed_generation(server.base_url, case, seed))
            finished.append(time.monotonic())

        holders = []
        for index in range(holding):
            # Admitted one by one, so each finds room behind the ones before.
            holders.append(threading.Thread(target=hold, args=(70_000 + index,)))
            holders[-1].start()
            wait_for_metrics(server.base_url, lambda m, i=index: m["inflight_generations"]
                             >= 1 and m["queued_images"] >= i)  # fmt: skip
        say(f"admission: lane busy, {ADMISSION_QUEUE} images queued; flooding")
        flood_started = time.monotonic()
        flood = Flood(server.base_url, small)
        flood.run(ADMISSION_FLOOD_CLIENTS, bench.args.admission_requests)
        for holder in holders:
            holder.join()
    bench.failures += held.failed + flood.failed
    refused = flood.refused
    p95 = percentile(refused, 95)
    cleared = max(finished, default=math.nan) - flood_started
    say(f"admission: {len(refused)} refused, p95 {seconds(p95)}; holders {held.failure_text()}")
    hints = f"{min(flood.retry_after)}-{max(flood.retry_after)} s" if refused else "-"
    bench.rows.append(
        Row(
            f"Admission: 429 latency with the lane busy ({case.label()}) and the queue full "
            f"(MAX_QUEUE={ADMISSION_QUEUE}), {ADMISSION_FLOOD_CLIENTS} flooding clients",
            f"p50 {seconds(percentile(refused, 50))}, p95 {seconds(p95)}, "
            f"max {seconds(max(refused, default=math.nan))} over {len(refused)} refusals, "
            f"{flood.admitted} admitted once the queue moved; Retry-After said {hints}, the "
            f"queue cleared {cleared:.1f} s after the flood began; holders: "
            f"{held.failure_text()}",
            "",
            f"p95 <= {seconds(ADMISSION_LATENCY_TARGET)}",
            bool(refused) and p95 <= ADMISSION_LATENCY_TARGET and not held.failed,
        )
    )
