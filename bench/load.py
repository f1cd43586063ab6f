"""Load generators: clients sending generation requests, and what their answers were."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests

from bench.common import PROMPT, REQUEST_TIMEOUT, Case


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
    base_url: str, condition: Callable[[dict[str, float]], bool], timeout: float = REQUEST_TIMEOUT
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
