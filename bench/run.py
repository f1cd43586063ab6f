"""Benchmark the image server against the bare diffusers pipeline, in one run.

Sections: overhead (server p50 vs bare pipeline p50), concurrency (three server designs
under 1 to 16 clients), admission (how fast a full queue answers 429), memory (worker RSS
growth over many requests). The result is one markdown table with every figure, its
ratio, the target and whether it was met.

    .venv/bin/python bench/run.py            # CPU: tiny-random, ~10 minutes on 2 cores
    .venv/bin/python bench/run.py --quick    # smoke run, ~2 minutes
    .venv/bin/python bench/run.py --gpu      # sd3-medium-random at 1024x1024, 28 steps
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # `python bench/run.py` imports `app` from the repo root

TINY_MODEL_ID = "tiny-random"
SD3_MEDIUM_RANDOM_ID = "sd3-medium-random"
PROMPT = "a lighthouse on a cliff at dusk, oil painting, warm light"
REQUEST_TIMEOUT = 900.0
KEEPALIVE_REUSE_SECONDS = 4.0  # below gunicorn.conf.py's keepalive of 5 s

# Server designs compared under concurrency: (label, environment).
DESIGNS: list[tuple[str, dict[str, str]]] = [
    ("(a) unbounded", {"MAX_CONCURRENT_GENERATIONS": "0"}),
    ("(b) lane", {"MAX_CONCURRENT_GENERATIONS": "1"}),
    (
        "(c) lane + batching",
        {"MAX_CONCURRENT_GENERATIONS": "1", "BATCH_MAX_SIZE": "8", "BATCH_WAIT_MS": "10"},
    ),
]

# Overhead targets, server p50 / bare p50, by case; GPU mode states it as throughput.
OVERHEAD_TARGETS = {"64x64:4": 1.30, "256x256:16": 1.05}
GPU_THROUGHPUT_TARGET = 0.97  # bare p50 / server p50 at 1024x1024, 28 steps
TARGET_CLIENTS = 8
LANE_LATENCY_TARGET = 0.60  # (b) mean latency / (a) mean latency
LANE_THROUGHPUT_TARGET = 1.0  # (b) throughput / (a) throughput
BATCH_THROUGHPUT_TARGET = 1.4  # (c) throughput / (b) throughput
MEMORY_GROWTH_TARGET = 1.05
ADMISSION_LATENCY_TARGET = 0.050  # p95 seconds of a 429 with the lane busy, queue full
ADMISSION_QUEUE = 4  # MAX_QUEUE of the admission section's server, in images
ADMISSION_FLOOD_CLIENTS = 8


# -- small helpers -----------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """An image size and step count, written `WxH:steps`."""

    width: int
    height: int
    steps: int

    @classmethod
    def parse(cls, text: str) -> Case:
        """Parse `WxH:steps`."""
        size, _, steps = text.partition(":")
        width, _, height = size.partition("x")
        return cls(int(width), int(height), int(steps))

    @property
    def size(self) -> str:
        """Return `WxH`, as the API's `size` field."""
        return f"{self.width}x{self.height}"

    def __str__(self) -> str:
        return f"{self.size}:{self.steps}"

    def label(self) -> str:
        """Return a human label such as `256x256, 16 steps`."""
        return f"{self.size}, {plural(self.steps, 'step')}"


def plural(count: int, noun: str) -> str:
    """Return e.g. `1 client` or `8 clients`."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def percentile(values: list[float], q: float) -> float:
    """Return the q-th percentile (0..100) with linear interpolation, NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def seconds(value: float) -> str:
    """Format seconds with three significant digits."""
    return "n/a" if math.isnan(value) else f"{value:.3g} s"


def ratio_text(value: float) -> str:
    """Format a ratio such as `1.23x`."""
    return "n/a" if math.isnan(value) else f"{value:.2f}x"


def say(message: str) -> None:
    """Print progress to stderr, so stdout holds only the table."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    """Return a TCP port that is free on the loopback interface right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def machine_line(model_id: str, device: str, dtype: str) -> str:
    """Describe the machine: CPU model, cores, GPU, library versions, model, date."""
    import diffusers
    import torch

    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"Machine: {cpu}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__}, "
        f"diffusers {diffusers.__version__}, Python {platform.python_version()}; "
        f"model {model_id} on {device} in {dtype}, {torch.get_num_threads()} torch threads; "
        f"{now}; load average at start {load:.2f}"
    )


# -- the server --------------------------------------------------------------------------


class Server:
    """`gunicorn -c gunicorn.conf.py wsgi:app` on a free loopback port (as tests/server.py)."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path, ready_timeout: float):
        self.name = name
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **env}
        self.log_path = log_dir / f"gunicorn-{name.replace(' ', '_')}-{self.port}.log"
        self.ready_timeout = ready_timeout
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        """Start Gunicorn and wait until /readyz answers 200."""
        say(f"starting server {self.name} on port {self.port}")
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "-c",
            "gunicorn.conf.py",
            "-b",
            f"127.0.0.1:{self.port}",
            "wsgi:app",
        ]
        with open(self.log_path, "wb") as log:
            # Its own session: a Ctrl-C reaches only this script, which stops the server.
            self.process = subprocess.Popen(
                command, cwd=ROOT, env=self.env, stdout=log, stderr=log, start_new_session=True
            )
        started = time.monotonic()
        while time.monotonic() - started < self.ready_timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"server {self.name} exited:\n{self.log_tail()}")
            try:
                if requests.get(f"{self.base_url}/readyz", timeout=10).status_code == 200:
                    say(f"server {self.name} ready in {time.monotonic() - started:.1f}s")
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(
            f"server {self.name} not ready in {self.ready_timeout}s:\n{self.log_tail()}"
        )

    def log_tail(self, lines: int = 40) -> str:
        """Return the last lines the server logged."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def worker(self) -> psutil.Process:
        """Return the Gunicorn worker: the master's one child process."""
        assert self.process is not None
        children = psutil.Process(self.process.pid).children()
        if len(children) != 1:
            raise RuntimeError(f"expected one Gunicorn worker, found {len(children)}")
        return children[0]

    def stop(self) -> None:
        """Stop the server: SIGTERM (it drains), then SIGKILL after 60 s."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            say(f"stopped server {self.name}")


@dataclass
class Results:
    """Latencies of successful requests, and failures by status (0: no response)."""

    latencies: list[float] = field(default_factory=list)
    failures: dict[int, int] = field(default_factory=dict)
    wall: float = math.nan
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, latency: float, status: int) -> None:
        """Record one request."""
        with self.lock:
            if status == 200:
                self.latencies.append(latency)
            else:
                self.failures[status] = self.failures.get(status, 0) + 1

    def merge(self, other: Results) -> None:
        """Add another run's requests; wall times add up, as the runs did not overlap."""
        self.latencies += other.latencies
        for status, count in other.failures.items():
            self.failures[status] = self.failures.get(status, 0) + count
        self.wall += other.wall

    @property
    def failed(self) -> int:
        """Return the number of failed requests."""
        return sum(self.failures.values())

    def failure_text(self) -> str:
        """Describe failures, e.g. `2 failures (429: 2)`."""
        if not self.failed:
            return "0 failures"
        by_status = ", ".join(
            f"{k or 'no response'}: {v}" for k, v in sorted(self.failures.items())
        )
        return f"{self.failed} failures ({by_status})"


def send_generation(
    session: requests.Session, base_url: str, case: Case, seed: int
) -> requests.Response | None:
    """Ask for one image (response_format url: the image is not downloaded); None: no answer."""
    body = {
        "model": "bench",
        "prompt": PROMPT,
        "size": case.size,
        "num_inference_steps": case.steps,
        "seed": seed,
        "response_format": "url",
    }
    try:
        return session.post(f"{base_url}/v1/images/generations", json=body, timeout=REQUEST_TIMEOUT)
    except requests.RequestException:
        return None


def post_generation(session: requests.Session, base_url: str, case: Case, seed: int) -> int:
    """Ask for one image; return the status (0: no answer, -1: a 200 without one image)."""
    response = send_generation(session, base_url, case, seed)
    if response is None:
        return 0
    if response.status_code == 200 and len(response.json().get("data", ())) != 1:
        return -1  # a 200 without exactly one image counts as a failure too
    return response.status_code


def run_clients(base_url: str, case: Case, clients: int, per_client: int, seed: int) -> Results:
    """Run `clients` threads, each sending `per_client` requests back to back."""
    results = Results()
    barrier = threading.Barrier(clients + 1)

    def client(index: int) -> None:
        with requests.Session() as session:
            barrier.wait()
            for j in range(per_client):
                started = time.perf_counter()
                status = post_generation(session, base_url, case, seed + index * per_client + j)
                results.add(time.perf_counter() - started, status)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    results.wall = time.perf_counter() - started
    return results


def timed_generation(base_url: str, case: Case, seed: int) -> tuple[float, int]:
    """Send one generation on a fresh connection; return (latency, status)."""
    with requests.Session() as session:
        started = time.perf_counter()
        status = post_generation(session, base_url, case, seed)
        return time.perf_counter() - started, status


def wait_for_metrics(
    base_url: str, condition: Any, timeout: float = REQUEST_TIMEOUT
) -> dict[str, float]:
    """Poll /metrics until `condition` holds for its `image_server_*` gauges (prefix cut)."""
    deadline = time.monotonic() + timeout
    while True:
        text = requests.get(f"{base_url}/metrics", timeout=10).text
        gauges = {
            name.removeprefix("image_server_"): float(value)
            for name, value in (line.split(" ", 1) for line in text.splitlines()
                                if line.startswith("image_server_") and "{" not in line)
        }  # fmt: skip
        if condition(gauges):
            return gauges
        if time.monotonic() > deadline:
            raise RuntimeError(f"/metrics never got there: {gauges}")
        time.sleep(0.01)


@dataclass
class Flood:
    """Clients sending small generations back to back at a server whose queue is full."""

    base_url: str
    case: Case
    refused: list[float] = field(default_factory=list)  # latencies of 429 answers
    retry_after: list[int] = field(default_factory=list)
    admitted: int = 0
    failed: int = 0  # anything but 200 or a well-formed 429
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def run(self, clients: int, total: int) -> None:
        """Send `total` requests from `clients` threads, each on one keep-alive session."""
        per_client = max(1, total // clients)
        threads = [
            threading.Thread(target=self._client, args=(index, per_client), daemon=True)
            for index in range(clients)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _client(self, index: int, count: int) -> None:
        with requests.Session() as session:
            for j in range(count):
                started = time.perf_counter()
                seed = 80_000 + index * count + j
                response = send_generation(session, self.base_url, self.case, seed)
                latency = time.perf_counter() - started
                with self.lock:
                    if response is not None and response.status_code == 429:
                        error = response.json().get("error", {})
                        hint = response.headers.get("Retry-After", "")
                        if error.get("type") == "server_overloaded" and hint.isdigit():
                            self.refused.append(latency)
                            self.retry_after.append(int(hint))
                            continue
                    if response is not None and response.status_code == 200:
                        self.admitted += 1
                    else:
                        self.failed += 1


# -- the bare pipeline -------------------------------------------------------------------


def load_bare(model_id: str, cache_dir: Path, device: str, dtype_name: str) -> Any:
    """Load the same model in-process, as the server does, with progress bars off."""
    import torch
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()
    dtype = getattr(torch, dtype_name)
    if model_id == SD3_MEDIUM_RANDOM_ID:
        from app.sd3_medium_random import build_sd3_medium_random

        pipe = build_sd3_medium_random(torch.device(device), dtype)
    else:
        from diffusers import AutoPipelineForText2Image

        source: Any = model_id
        if model_id == TINY_MODEL_ID:
            from app.tiny_model import ensure_tiny_sd3

            source = ensure_tiny_sd3(cache_dir)
        pipe = AutoPipelineForText2Image.from_pretrained(source, dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def bare_call(pipe: Any, case: Case, seed: int) -> float:
    """Time one bare pipeline call, the loop a user would write without the server."""
    import torch

    started = time.perf_counter()
    pipe(
        PROMPT,
        height=case.height,
        width=case.width,
        num_inference_steps=case.steps,
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]
    return time.perf_counter() - started


class BareLoop:
    """Run bare pipeline calls one at a time, on a worker thread unless told otherwise.

    The server runs each pipeline call on a Gunicorn request thread, never the main
    thread, and so does this loop by default. It matters on a busy CPU: libgomp spins
    its waiting threads while the OpenMP threads it manages do not outnumber the cores,
    which a single main-thread loop satisfies and a multi-threaded server does not; when
    other processes take the cores, that spinning made the main-thread loop up to 10x
    slower here (0.75 s against 0.08 s for the same 64x64 call on a worker thread).
    """

    def __init__(self, pipe: Any, on_main_thread: bool = False) -> None:
        self.pipe: Any = pipe
        self.executor = None if on_main_thread else ThreadPoolExecutor(1, "bare-loop")

    def call(self, case: Case, seed: int) -> float:
        """Time one call."""
        if self.executor is None:
            return bare_call(self.pipe, case, seed)
        return self.executor.submit(bare_call, self.pipe, case, seed).result()

    def close(self) -> None:
        """Drop the pipeline; a call still running finishes on its own."""
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
        self.pipe = None


# -- the benchmark -----------------------------------------------------------------------


@dataclass
class Row:
    """One line of the final table."""

    measure: str
    figure: str
    ratio: str = ""
    target: str = ""
    met: bool | None = None


class DesignServers:
    """The concurrency section's servers, one per design: all up at once (side by side) or
    one at a time, started (and warmed up) when first asked for and stopped on the way out.
    """

    def __init__(self, bench: Bench, case: Case, clients: int, side_by_side: bool) -> None:
        self.bench, self.case, self.clients = bench, case, clients
        self.side_by_side = side_by_side
        self.stack = contextlib.ExitStack()
        self.running: dict[str, Server] = {}

    def __enter__(self) -> DesignServers:
        if self.side_by_side:
            for label, _ in DESIGNS:
                self.get(label)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stack.close()

    def get(self, label: str) -> Server:
        """Return the design's running server, starting it (and stopping others) if need be."""
        if label not in self.running:
            if not self.side_by_side:
                self.stack.close()
                self.running.clear()
            extra = dict(DESIGNS)[label]
            server = self.stack.enter_context(self.bench.server(label, extra))
            self.bench.warm_up(server, self.case, self.clients)
            self.running[label] = server
        return self.running[label]


@dataclass
class Bench:
    """The run's settings, its servers' common environment and the rows it produces."""

    args: argparse.Namespace
    workdir: Path
    device: str
    dtype: str
    rows: list[Row] = field(default_factory=list)
    failures: int = 0
    servers: list[Server] = field(default_factory=list)

    def server_env(self, extra: dict[str, str]) -> dict[str, str]:
        """Return a server's environment: model, directories, admission sized to never 429."""
        env = {
            "MODEL_ID": self.args.model_id,
            "MODEL_CACHE_DIR": str(self.workdir / "models"),
            "IMAGE_DIR": str(self.workdir / "images"),
            "DEVICE": self.device,
            "DTYPE": self.dtype,
            "MAX_QUEUE": "256",
            "GUNICORN_THREADS": "64",
            "GUNICORN_GRACEFUL_TIMEOUT": "60",
            "REQUEST_TIMEOUT_SECONDS": str(REQUEST_TIMEOUT),
            "MAX_CONCURRENT_GENERATIONS": "1",
            "BATCH_MAX_SIZE": "1",
        }
        if self.args.threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.args.threads)
        return {**env, **extra}

    @contextlib.contextmanager
    def server(self, name: str, extra: dict[str, str]) -> Iterator[Server]:
        """Run a server for the block; always stop it."""
        server = Server(name, self.server_env(extra), self.workdir, self.args.ready_timeout)
        self.servers.append(server)
        try:
            yield server.start()
        finally:
            server.stop()
            self.servers.remove(server)

    def warm_up(self, server: Server, case: Case, clients: int) -> None:
        """Warm a server: sequential requests, then one burst to create every client thread."""
        with requests.Session() as session:
            for i in range(self.args.warmup):
                post_generation(session, server.base_url, case, 10_000 + i)
        if clients > 1:
            run_clients(server.base_url, case, clients, 1, 20_000)

    # -- 1. overhead ---------------------------------------------------------------------

    def overhead(self) -> None:
        """Compare p50 latency of sequential server requests with the bare pipeline loop."""
        cases = [Case.parse(text) for text in self.args.overhead_cases.split(",")]
        say(f"overhead: loading the bare pipeline ({self.args.model_id})")
        pipe = load_bare(self.args.model_id, self.workdir / "models", self.device, self.dtype)
        bare = BareLoop(pipe, on_main_thread=self.args.bare_main_thread)
        del pipe
        try:
            with self.server("overhead", {}) as server:
                for case in cases:
                    self.overhead_case(bare, server, case)
        finally:
            bare.close()
            gc.collect()
            self.release_device_memory()

    def overhead_case(self, loop: BareLoop, server: Server, case: Case) -> None:
        """Measure one case, bare and server taking turns; never both computing at once."""
        n, chunk = self.args.overhead_requests, max(1, self.args.overhead_chunk)
        say(f"overhead {case.label()}: warm-up, then {n} bare and {n} server requests")
        for i in range(self.args.warmup):
            loop.call(case, 10_000 + i)
        self.warm_up(server, case, 1)
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
        self.failures += served.failed
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
        if self.args.gpu:
            value = bare_p50 / server_p50
            self.rows.append(
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
        self.rows.append(
            Row(
                f"Overhead, {case.label()}: server p50 / bare p50",
                figure,
                ratio_text(value),
                f"<= {limit:.2f}x" if limit else "",
                None if limit is None else value <= limit,
            )
        )

    def release_device_memory(self) -> None:
        """Give cached CUDA memory back, so the servers that follow have all of it."""
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- 2. concurrency ------------------------------------------------------------------

    def concurrency(self) -> None:
        """Throughput and latency of the three designs at each number of clients.

        With --rounds above 1 the three servers run side by side and take turns: each
        round measures every design at one client count before the next round starts,
        the design order rotating, so a drift in machine load hits the three alike (on
        a shared CPU it moved single throughput figures by 30 % within minutes). With 1
        round they run one after the other, one server up at a time (less GPU memory).
        """
        case = Case.parse(self.args.concurrency_case)
        clients = [int(c) for c in self.args.clients.split(",")]
        per_client, rounds = self.args.requests_per_client, self.args.rounds
        labels = [label for label, _ in DESIGNS]
        # (label, clients or "bursts", round), in the order they are measured.
        turns: list[tuple[str, int | str, int]] = [
            (label, count, r)
            for count in clients
            for r in range(rounds)
            for label in labels[r % 3 :] + labels[: r % 3]
        ]
        if TARGET_CLIENTS in clients:
            # Bursts: TARGET_CLIENTS requests at the same instant, the next burst after all
            # are answered. With closed-loop clients (each sending its next request as soon
            # as the last one answers) mean latency is clients / throughput whatever the
            # design (Little's law); in bursts FIFO answers the first after one service
            # time, while unbounded threads answer all of them together at the end.
            turns += [
                (label, "bursts", r)
                for r in range(per_client * rounds)
                for label in labels[r % 3 :] + labels[: r % 3]
            ]
        if rounds == 1:
            turns.sort(key=lambda turn: labels.index(turn[0]))  # stable: design by design
        measured: dict[tuple[str, int | str], Results] = {}
        with DesignServers(self, case, max(clients), side_by_side=rounds > 1) as servers:
            for label, count, r in turns:
                base_url = servers.get(label).base_url
                if count == "bursts":
                    seed = 10**6 + r * TARGET_CLIENTS
                    results = run_clients(base_url, case, TARGET_CLIENTS, 1, seed)
                else:
                    assert isinstance(count, int)
                    seed = 10**5 + r * 10_000  # apart from the warm-up seeds
                    results = run_clients(base_url, case, count, per_client, seed)
                measured.setdefault((label, count), Results(wall=0.0)).merge(results)
                self.failures += results.failed
        for label in labels:
            for count in clients:
                results = measured[label, count]
                say(f"{label}, {count} clients: {self.describe(results)}")
                self.rows.append(
                    Row(
                        f"Concurrency, {case.label()}: {label}, {plural(count, 'client')}"
                        f" x {plural(per_client * rounds, 'request')}",
                        self.describe(results),
                    )
                )
            if (label, "bursts") in measured:
                results = measured[label, "bursts"]
                say(f"{label}, {TARGET_CLIENTS}-request bursts: {self.describe(results)}")
                self.rows.append(
                    Row(
                        f"Bursts, {case.label()}: {label}, {TARGET_CLIENTS} requests at once"
                        f" x {plural(per_client * rounds, 'round')}",
                        self.describe(results),
                    )
                )
        self.concurrency_ratios(measured)

    @staticmethod
    def describe(results: Results) -> str:
        """Format throughput, mean and p95 latency, failures."""
        done = len(results.latencies)
        mean = statistics.fmean(results.latencies) if done else math.nan
        return (
            f"{done / results.wall:.3g} img/s, mean {seconds(mean)}, "
            f"p95 {seconds(percentile(results.latencies, 95))}, {results.failure_text()}"
        )

    def concurrency_ratios(self, measured: dict[tuple[str, int], Results]) -> None:
        """Add the target rows at TARGET_CLIENTS clients."""
        labels = [label for label, _ in DESIGNS]
        if any((label, TARGET_CLIENTS) not in measured for label in labels):
            self.rows.append(
                Row(
                    f"Concurrency ratios at {TARGET_CLIENTS} clients",
                    f"not measured ({TARGET_CLIENTS} is not in --clients)",
                )
            )
            return
        a, b, c = (measured[label, TARGET_CLIENTS] for label in labels)

        def throughput(r: Results) -> float:
            return len(r.latencies) / r.wall if r.latencies else math.nan

        def mean(r: Results) -> float:
            return statistics.fmean(r.latencies) if r.latencies else math.nan

        if (labels[0], "bursts") in measured and (labels[1], "bursts") in measured:
            burst_a, burst_b = measured[labels[0], "bursts"], measured[labels[1], "bursts"]
            latency, speed = mean(burst_b) / mean(burst_a), throughput(b) / throughput(a)
            self.rows.append(
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
        self.rows.append(
            Row(
                f"Lane vs unbounded at {TARGET_CLIENTS} closed-loop clients (equal means by"
                " Little's law, shown for reference): (b)/(a) mean latency; throughput",
                f"mean {seconds(mean(b))} vs {seconds(mean(a))}; "
                f"{throughput(b):.3g} vs {throughput(a):.3g} img/s",
                f"{ratio_text(latency)}; {ratio_text(speed)}",
            )
        )
        gain = throughput(c) / throughput(b)
        self.rows.append(
            Row(
                f"Batching vs lane at {TARGET_CLIENTS} clients: (c)/(b) throughput",
                f"{throughput(c):.3g} vs {throughput(b):.3g} img/s",
                ratio_text(gain),
                f">= {BATCH_THROUGHPUT_TARGET:.2f}x",
                gain >= BATCH_THROUGHPUT_TARGET,
            )
        )

    # -- 3. admission --------------------------------------------------------------------

    def admission(self) -> None:
        """With the lane busy and the queue full, time the 429s a flood of requests gets."""
        case, small = Case.parse(self.args.admission_case), Case(64, 64, 1)
        holding = 1 + ADMISSION_QUEUE  # one image running, the queue full behind it
        with self.server("admission", {"MAX_QUEUE": str(ADMISSION_QUEUE)}) as server:
            # Recent service times are the holders' kind, as under a steady load.
            self.warm_up(server, case, 1)
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
            flood.run(ADMISSION_FLOOD_CLIENTS, self.args.admission_requests)
            for holder in holders:
                holder.join()
        self.failures += held.failed + flood.failed
        refused = flood.refused
        p95 = percentile(refused, 95)
        cleared = max(finished, default=math.nan) - flood_started
        say(f"admission: {len(refused)} refused, p95 {seconds(p95)}; holders {held.failure_text()}")
        hints = f"{min(flood.retry_after)}-{max(flood.retry_after)} s" if refused else "-"
        self.rows.append(
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

    # -- 4. memory -----------------------------------------------------------------------

    def memory(self) -> None:
        """Worker RSS after warm-up and after many small requests from a few clients."""
        case = Case.parse(self.args.memory_case)
        clients, total = self.args.memory_clients, self.args.memory_requests
        per_client = max(1, total // clients)
        with self.server("memory", {}) as server:
            worker = server.worker()
            warm = run_clients(
                server.base_url, case, clients, max(1, self.args.memory_warmup // clients), 50_000
            )
            before = worker.memory_info().rss
            say(
                f"memory: worker {worker.pid} RSS after warm-up {before / 2**20:.1f} MiB; "
                f"sending {per_client * clients} requests"
            )
            results = run_clients(server.base_url, case, clients, per_client, 100_000)
            after = worker.memory_info().rss
        self.failures += warm.failed + results.failed
        growth = after / before
        say(f"memory: RSS after {after / 2**20:.1f} MiB, growth {growth:.3f}")
        self.rows.append(
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

    # -- the report ----------------------------------------------------------------------

    def table(self, header: str) -> str:
        """Render the rows as one markdown table under the machine line."""
        lines = [
            header,
            "",
            "| Measurement | Figures | Ratio | Target | Met |",
            "| --- | --- | --- | --- | --- |",
        ]
        for row in self.rows:
            met = "" if row.met is None else ("yes" if row.met else "**no**")
            lines.append(f"| {row.measure} | {row.figure} | {row.ratio} | {row.target} | {met} |")
        return "\n".join(lines) + "\n"


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
SECTIONS = ("overhead", "concurrency", "admission", "memory")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; defaults depend on --quick and on GPU mode."""
    import torch

    def by_mode(index: int) -> str:
        counts = ", ".join(f"{mode} {values[index]}" for mode, values in MODE_COUNTS.items())
        return f"(default by mode: {counts})"

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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


def _interrupt(signum: int, frame: Any) -> None:
    """Turn SIGTERM into KeyboardInterrupt so the servers are stopped on the way out."""
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the selected sections and print the table; stop every server whatever happens."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _interrupt)
    # Ctrl-C stops the run even when started in the background, where SIGINT is ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    sections = {s.strip() for s in args.sections.split(",") if s.strip()}
    unknown = sections - set(SECTIONS)
    if unknown:
        raise SystemExit(f"unknown section(s): {', '.join(sorted(unknown))}")
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
            from app.tiny_model import ensure_tiny_sd3

            ensure_tiny_sd3(bench.workdir / "models")  # built once, before any server
        try:
            if "overhead" in sections:
                bench.overhead()
            if "concurrency" in sections:
                bench.concurrency()
            if "admission" in sections:
                bench.admission()
            if "memory" in sections:
                bench.memory()
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
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    header += (
        f"; load average at end {load:.2f}; mode {args.mode}; "
        f"run took {(time.monotonic() - started) / 60:.1f} min"
    )
    table = bench.table(header)
    print(table)
    if args.out:
        args.out.write_text(table)
        say(f"table written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
