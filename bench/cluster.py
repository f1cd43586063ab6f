"""Benchmark past one GPU: replicas behind nginx, S3 against the local store, Retry-After.

    .venv/bin/python bench/cluster.py            # CPU, tiny-random, ~6 minutes on 2 cores
    .venv/bin/python bench/cluster.py retry_after_section   # one section

Three measurements, each side by side on the same machine in the same run:
1. throughput of 2 replicas against 1 behind the same nginx (deploy/nginx-replicas.conf),
   torch at one thread per replica (target: at least 1.6x);
2. the latency of a `url` answer with IMAGE_STORE=s3 (a local SeaweedFS) against the local
   store at 256x256 / 16 steps, rounds alternating (target: ratio at most 1.05);
3. Retry-After against the real wait with mixed sizes: large requests queued after small
   ones, the promise a refused request got against when the queue really cleared
   (target: 0.7x-1.5x).
"""

from __future__ import annotations

import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __name__ == "__main__":
    sys.path[0] = str(ROOT)

import requests  # noqa: E402

from app.tiny_model import ensure_tiny_sd3  # noqa: E402
from bench.table import machine_line  # noqa: E402
from tests.support.gunicorn import GunicornServer  # noqa: E402
from tests.support.replicas import ReplicaNginx, lane_state, start_replicas  # noqa: E402
from tests.support.seaweedfs import SeaweedFS  # noqa: E402

GENERATIONS = "/v1/images/generations"
# Alternating rounds of the storage section (a p50 of 15 moved by 10% between quiet runs).
STORAGE_ROUNDS = 40
BASE = {"MODEL_ID": "tiny-random", "OMP_NUM_THREADS": 1, "ENCODE_THREADS": 1,
        "MAX_CONCURRENT_GENERATIONS": 1, "LOG_LEVEL": "WARNING"}  # fmt: skip


def post(base_url: str, body: dict) -> requests.Response:
    return requests.post(f"{base_url}{GENERATIONS}", json={"prompt": "bench", **body}, timeout=600)


def throughput(base_url: str, body: dict, clients: int, total: int) -> float:
    """Return images per second with `clients` closed-loop clients sending `total` requests."""
    left, lock, failed = [total], threading.Lock(), []

    def client() -> None:
        while True:
            with lock:
                if left[0] == 0:
                    return
                left[0] -= 1
            response = post(base_url, body)
            if response.status_code != 200:
                failed.append(response.status_code)

    started = time.monotonic()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failed, failed
    return total / (time.monotonic() - started)


def replicas_section(cache: Path, work: Path) -> str:
    # Long enough that the pipeline, not HTTP and encoding, is the work (2 s at 1 thread).
    body = {"size": "512x512", "num_inference_steps": 100, "response_format": "b64_json"}
    env = {**BASE, "MODEL_CACHE_DIR": cache, "IMAGE_DIR": work / "images", "MAX_QUEUE": 16}
    replicas = start_replicas(env, 2, name="bench-replica")
    try:
        rates: dict[int, list[float]] = {1: [], 2: []}
        for round_ in range(2):  # alternate, so both see the same background load
            for count in (1, 2) if round_ % 2 == 0 else (2, 1):
                ports = [r.port for r in replicas[:count]]
                with ReplicaNginx(work / f"nginx-{round_}-{count}", ports) as nginx:
                    post(nginx.base_url, body)  # warm connections
                    rates[count].append(throughput(nginx.base_url, body, 4, 12))
    finally:
        for replica in replicas:
            replica.stop()
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    return (
        f"| Throughput, 2 replicas vs 1 behind nginx (512x512/100 steps, 4 clients, 12 "
        f"requests, torch 1 thread each) | 1: {one:.3f} img/s, 2: {two:.3f} img/s (medians "
        f"of 2 alternating rounds) | {two / one:.2f}x | >= 1.6x | "
        f"{'yes' if two / one >= 1.6 else 'no'} |"
    )


def storage_section(cache: Path, work: Path) -> str:
    body = {"size": "256x256", "num_inference_steps": 16}
    with SeaweedFS(work / "s3") as store:
        local_env = {**BASE, "MODEL_CACHE_DIR": cache, "IMAGE_DIR": work / "local"}
        s3_env = {**local_env, **store.env()}
        with GunicornServer(local_env, name="bench-local") as local, \
                GunicornServer(s3_env, name="bench-s3") as s3:  # fmt: skip
            times: dict[str, list[float]] = {"local": [], "s3": [], "put": []}
            for server in (local, s3):
                post(server.base_url, body)
            # The store's own floor, timed in the same rounds: one PUT of an image of the
            # same size with a client configured as the server's.
            blob = requests.get(post(s3.base_url, body).json()["data"][0]["url"]).content
            put = _server_like_put(store, s3_env, blob)
            for _ in range(STORAGE_ROUNDS):
                for name, server in (("local", local), ("s3", s3)):
                    started = time.monotonic()
                    assert post(server.base_url, body).status_code == 200
                    times[name].append(time.monotonic() - started)
                started = time.monotonic()
                put()
                times["put"].append(time.monotonic() - started)
    p50 = {name: statistics.median(values) * 1000 for name, values in times.items()}
    ratio = p50["s3"] / p50["local"]
    return (
        f"| `url` latency, S3 (SeaweedFS on loopback) vs local store (256x256/16 steps, "
        f"p50 of {STORAGE_ROUNDS} alternating) | local {p50['local']:.0f} ms, "
        f"s3 {p50['s3']:.0f} ms "
        f"(+{p50['s3'] - p50['local']:.1f} ms; one PUT of the {len(blob) // 1000} kB image "
        f"alone: {p50['put']:.1f} ms) | {ratio:.2f}x | <= 1.05 | "
        f"{'yes' if ratio <= 1.05 else 'no'} |"
    )


def _server_like_put(store: SeaweedFS, env: dict, blob: bytes):  # noqa: ANN202
    """A PUT of `blob` through a client built as the server builds its own."""
    import os
    import secrets

    from app.storage.s3 import S3Settings, make_client

    os.environ.update({key: str(value) for key, value in env.items() if key.startswith("AWS_")})
    settings = S3Settings.from_config({
        "S3_BUCKET": store.bucket, "S3_PREFIX": "bench/", "S3_ENDPOINT_URL": store.endpoint,
        "S3_REGION": env["S3_REGION"], "S3_ADDRESSING_STYLE": env["S3_ADDRESSING_STYLE"],
        "S3_PUBLIC_BASE_URL": "", "IMAGE_TTL_SECONDS": 3600,
    })  # fmt: skip
    client = make_client(settings)

    def put() -> None:
        client.put_object(Bucket=store.bucket, Key=f"bench/{secrets.token_hex(16)}.png",
                          Body=blob, ContentType="image/png")  # fmt: skip

    put()
    return put


def retry_after_section(cache: Path, work: Path) -> str:
    small = {"size": "64x64", "num_inference_steps": 4, "response_format": "b64_json"}
    # The case: 1024x1024/28-step requests after small ones.
    large = {"size": "1024x1024", "num_inference_steps": 28, "response_format": "b64_json"}
    env = {**BASE, "MODEL_CACHE_DIR": cache, "IMAGE_DIR": work / "ra", "MAX_QUEUE": 8}
    rows = []
    with GunicornServer(env, name="bench-retry-after") as server:
        for body in (small, large, small, large, small):  # the model sees both sizes
            post(server.base_url, body)
        for _ in range(3):
            done: list[float] = []
            threads = []
            for body in (small, small, large, large, large, large):  # large after small
                before = sum(lane_state(server))
                thread = threading.Thread(
                    target=lambda b=body, d=done: (
                        post(server.base_url, b),
                        d.append(time.monotonic()),
                    )
                )
                thread.start()
                threads.append(thread)
                # Admitted (queued or running), or already done (a small one is quick).
                while sum(lane_state(server)) < before + 1 and thread.is_alive():
                    time.sleep(0.01)
            # n=9 is more than MAX_QUEUE: refused unless the lane is idle.
            refused = post(server.base_url, {**small, "n": 9})
            asked = time.monotonic()
            if refused.status_code != 429:
                print(f"retry-after trial skipped: the probe got {refused.status_code}")
                for thread in threads:
                    thread.join()
                continue
            promised = int(refused.headers["Retry-After"])
            for thread in threads:
                thread.join()
            real = max(done) - asked
            rows.append((promised, real))
    ratios = [p / r for p, r in rows]
    met = all(0.7 <= r <= 1.5 for r in ratios)
    figures = ", ".join(f"said {p} s, cleared in {r:.1f} s" for p, r in rows)
    return (
        f"| Retry-After vs real wait, 4 large (1024x1024/28) queued after 2 small (64x64/4), "
        f"MAX_QUEUE=8 | {figures} | {min(ratios):.2f}-{max(ratios):.2f}x | 0.7x-1.5x | "
        f"{'yes' if met else 'no'} |"
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the servers on the way out, as Ctrl-C does


def main() -> int:
    signal.signal(signal.SIGTERM, _interrupt)
    print(machine_line("tiny-random", "cpu", "float32"), flush=True)
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as tmp:
        work = Path(tmp)
        cache = work / "models"
        ensure_tiny_sd3(cache)
        print("| Measure | Figure | Ratio | Target | Met |\n| --- | --- | --- | --- | --- |")
        sections = (retry_after_section, storage_section, replicas_section)
        chosen = [f for f in sections if not sys.argv[1:] or f.__name__ in sys.argv[1:]]
        for section in chosen:
            try:
                print(section(cache, work), flush=True)
            except Exception as exc:  # one failed section must not hide the others
                print(f"| {section.__name__} failed: {exc!r} | | | | no |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
