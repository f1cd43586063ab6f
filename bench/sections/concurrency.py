"""Section 2, concurrency: three server designs under 1 to 16 clients, and in bursts."""

from __future__ import annotations

import contextlib
import math
import statistics

from bench.common import Case, percentile, plural, ratio_text, say, seconds
from bench.harness import Bench
from bench.load import Results, run_clients
from bench.table import Row
from tests.support.gunicorn import GunicornServer

# Server designs compared: (label, environment).
DESIGNS: list[tuple[str, dict[str, str]]] = [
    ("(a) unbounded", {"MAX_CONCURRENT_GENERATIONS": "0"}),
    ("(b) lane", {"MAX_CONCURRENT_GENERATIONS": "1"}),
    (
        "(c) lane + batching",
        {"MAX_CONCURRENT_GENERATIONS": "1", "BATCH_MAX_SIZE": "8", "BATCH_WAIT_MS": "10"},
    ),
]
LABELS = [label for label, _ in DESIGNS]
TARGET_CLIENTS = 8
LANE_LATENCY_TARGET = 0.60  # (b) mean latency / (a) mean latency
LANE_THROUGHPUT_TARGET = 1.0  # (b) throughput / (a) throughput
BATCH_THROUGHPUT_TARGET = 1.4  # (c) throughput / (b) throughput

# What one turn measures: a client count, or "bursts" of TARGET_CLIENTS requests.
Load = int | str


class DesignServers:
    """The section's servers, one per design: all up at once (side by side) or one at a
    time, started (and warmed up) when first asked for and stopped on the way out.
    """

    def __init__(self, bench: Bench, case: Case, clients: int, side_by_side: bool) -> None:
        self.bench, self.case, self.clients = bench, case, clients
        self.side_by_side = side_by_side
        self.stack = contextlib.ExitStack()
        self.running: dict[str, GunicornServer] = {}

    def __enter__(self) -> DesignServers:
        if self.side_by_side:
            for label in LABELS:
                self.get(label)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stack.close()

    def get(self, label: str) -> GunicornServer:
        """Return the design's running server, starting it (and stopping others) if need be."""
        if label not in self.running:
            if not self.side_by_side:
                self.stack.close()
                self.running.clear()
            server = self.stack.enter_context(self.bench.server(label, dict(DESIGNS)[label]))
            self.bench.warm_up(server, self.case, self.clients)
            self.running[label] = server
        return self.running[label]


def rotated(r: int) -> list[str]:
    """Return the designs in round r's order: the first one moves on each round."""
    return LABELS[r % 3 :] + LABELS[: r % 3]


def run(bench: Bench) -> None:
    """Throughput and latency of the three designs at each number of clients.

    With --rounds above 1 the three servers run side by side and take turns: each
    round measures every design at one client count before the next round starts,
    the design order rotating, so a drift in machine load hits the three alike (on
    a shared CPU it moved single throughput figures by 30 % within minutes). With 1
    round they run one after the other, one server up at a time (less GPU memory).
    """
    case = Case.parse(bench.args.concurrency_case)
    clients = [int(c) for c in bench.args.clients.split(",")]
    per_client, rounds = bench.args.requests_per_client, bench.args.rounds
    # (label, load, round), in the order they are measured.
    turns: list[tuple[str, Load, int]] = [
        (label, count, r) for count in clients for r in range(rounds) for label in rotated(r)
    ]
    if TARGET_CLIENTS in clients:
        # Bursts: TARGET_CLIENTS requests at the same instant, the next burst after all
        # are answered. With closed-loop clients (each sending its next request as soon
        # as the last one answers) mean latency is clients / throughput whatever the
        # design (Little's law); in bursts FIFO answers the first after one service
        # time, while unbounded threads answer all of them together at the end.
        turns += [(label, "bursts", r) for r in range(per_client * rounds) for label in rotated(r)]
    if rounds == 1:
        turns.sort(key=lambda turn: LABELS.index(turn[0]))  # stable: design by design
    measured: dict[tuple[str, Load], Results] = {}
    with DesignServers(bench, case, max(clients), side_by_side=rounds > 1) as servers:
        for label, load, r in turns:
            base_url = servers.get(label).base_url
            if load == "bursts":
                seed = 10**6 + r * TARGET_CLIENTS
                results = run_clients(base_url, case, TARGET_CLIENTS, 1, seed)
            else:
                assert isinstance(load, int)
                seed = 10**5 + r * 10_000  # apart from the warm-up seeds
                results = run_clients(base_url, case, load, per_client, seed)
            measured.setdefault((label, load), Results(wall=0.0)).merge(results)
            bench.failures += results.failed
    for label in LABELS:
        for count in clients:
            results = measured[label, count]
            say(f"{label}, {count} clients: {describe(results)}")
            bench.rows.append(
                Row(
                    f"Concurrency, {case.label()}: {label}, {plural(count, 'client')}"
                    f" x {plural(per_client * rounds, 'request')}",
                    describe(results),
                )
            )
        if (label, "bursts") in measured:
            results = measured[label, "bursts"]
            say(f"{label}, {TARGET_CLIENTS}-request bursts: {describe(results)}")
            bench.rows.append(
                Row(
                    f"Bursts, {case.label()}: {label}, {TARGET_CLIENTS} requests at once"
                    f" x {plural(per_client * rounds, 'round')}",
                    describe(results),
                )
            )
    bench.rows += ratio_rows(measured)


def throughput(results: Results) -> float:
    """Return successful images per second of wall time."""
    return len(results.latencies) / results.wall if results.latencies else math.nan


def mean(results: Results) -> float:
    """Return the mean latency of successful requests."""
    return statistics.fmean(results.latencies) if results.latencies else math.nan


def describe(results: Results) -> str:
    """Format throughput, mean and p95 latency, failures."""
    return (
        f"{len(results.latencies) / results.wall:.3g} img/s, mean {seconds(mean(results))}, "
        f"p95 {seconds(percentile(results.latencies, 95))}, {results.failure_text()}"
    )


def ratio_rows(measured: dict[tuple[str, Load], Results]) -> list[Row]:
    """Return the target rows at TARGET_CLIENTS clients."""
    if any((label, TARGET_CLIENTS) not in measured for label in LABELS):
        return [
            Row(
                f"Concurrency ratios at {TARGET_CLIENTS} clients",
                f"not measured ({TARGET_CLIENTS} is not in --clients)",
            )
        ]
    a, b, c = (measured[label, TARGET_CLIENTS] for label in LABELS)
    rows = []
    if (LABELS[0], "bursts") in measured and (LABELS[1], "bursts") in measured:
        burst_a, burst_b = measured[LABELS[0], "bursts"], measured[LABELS[1], "bursts"]
        latency, speed = mean(burst_b) / mean(burst_a), throughput(b) / throughput(a)
        rows.append(
            Row(
                f"Lane vs unbounded, {TARGET_CLIENTS}-request bursts: (b)/(a) mean latency;"
                f" closed-loop throughput at {TARGET_CLIENTS} clients",
                f"mean {seconds(mean(burst_b))} vs {seconds(mean(burst_a))}; "
                f"{throughput(b):.3g} vs {throughput(a):.3g} img/s",
                f"{ratio_text(latency)}; {ratio_text(speed)}",
                f"<= {LANE_LATENCY_TARGET:.2f}x; >= {LANE_THROUGHPUT_TARGET:.2f}x",
                latency <= LANE_LATENCY_TARGET and speed >= LANE_THROUGHPUT_TARGET,
            )
        )
    latency, speed = mean(b) / mean(a), throughput(b) / throughput(a)
    rows.append(
        Row(
            f"Lane vs unbounded at {TARGET_CLIENTS} closed-loop clients (equal means by"
            " Little's law, shown for reference): (b)/(a) mean latency; throughput",
            f"mean {seconds(mean(b))} vs {seconds(mean(a))}; "
            f"{throughput(b):.3g} vs {throughput(a):.3g} img/s",
            f"{ratio_text(latency)}; {ratio_text(speed)}",
        )
    )
    gain = throughput(c) / throughput(b)
    rows.append(
        Row(
            f"Batching vs lane at {TARGET_CLIENTS} clients: (c)/(b) throughput",
            f"{throughput(c):.3g} vs {throughput(b):.3g} img/s",
            ratio_text(gain),
            f">= {BATCH_THROUGHPUT_TARGET:.2f}x",
            gain >= BATCH_THROUGHPUT_TARGET,
        )
    )
    return rows
