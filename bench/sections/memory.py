"""Section 4, memory: the worker's resident set before and after many small requests."""

from __future__ import annotations

from bench.common import Case, ratio_text, say
from bench.harness import Bench
from bench.load import run_clients
from bench.table import Row

MEMORY_GROWTH_TARGET = 1.05


def run(bench: Bench) -> None:
    """Worker RSS after warm-up and after many small requests from a few clients."""
    args = bench.args
    case = Case.parse(args.memory_case)
    clients, total = args.memory_clients, args.memory_requests
    per_client = max(1, total // clients)
    with bench.server("memory", {}) as server:
        worker = server.worker()
        warm = run_clients(
            server.base_url, case, clients, max(1, args.memory_warmup // clients), 50_000
        )
        before = worker.memory_info().rss
        say(
            f"memory: worker {worker.pid} RSS after warm-up {before / 2**20:.1f} MiB; "
            f"sending {per_client * clients} requests"
        )
        results = run_clients(server.base_url, case, clients, per_client, 100_000)
        after = worker.memory_info().rss
    bench.failures += warm.failed + results.failed
    growth = after / before
    say(f"memory: RSS after {after / 2**20:.1f} MiB, growth {growth:.3f}")
    bench.rows.append(
        Row(
            f"Memory: worker RSS after warm-up vs after {per_client * clients} requests "
            f"({case.label()}, {clients} clients)",
            f"{before / 2**20:.1f} MiB -> {after / 2**20:.1f} MiB; "
            f"{len(results.latencies) / results.wall:.3g} img/s, {results.failure_text()}",
            ratio_text(growth),
            f"<= {MEMORY_GROWTH_TARGET:.2f}x",
            growth <= MEMORY_GROWTH_TARGET,
        )
    )
