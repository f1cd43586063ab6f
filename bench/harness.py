"""The run's shared state: its settings, the servers it started, its rows and failures."""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests

from bench.common import REQUEST_TIMEOUT, Case, say
from bench.load import post_generation, run_clients
from bench.table import Row
from tests.support.gunicorn import GunicornServer


@dataclass
class Bench:
    """The run's settings, its servers' common environment and the rows it produces."""

    args: argparse.Namespace
    workdir: Path
    device: str
    dtype: str
    rows: list[Row] = field(default_factory=list)
    failures: int = 0
    servers: list[GunicornServer] = field(default_factory=list)

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
    def server(self, name: str, extra: dict[str, str]) -> Iterator[GunicornServer]:
        """Run a server for the block; always stop it."""
        server = GunicornServer(
            self.server_env(extra),
            self.args.ready_timeout,
            name=name,
            log_dir=self.workdir,
            # Its own session: a Ctrl-C reaches only this run, which stops the server.
            own_session=True,
            stop_timeout=60,  # GUNICORN_GRACEFUL_TIMEOUT: it drains first
        )
        self.servers.append(server)
        say(f"starting server {name} on port {server.port}")
        started = time.monotonic()
        try:
            server.start()
            say(f"server {name} ready in {time.monotonic() - started:.1f}s")
            yield server
        finally:
            server.stop()
            self.servers.remove(server)
            say(f"stopped server {name}")

    def warm_up(self, server: GunicornServer, case: Case, clients: int) -> None:
        """Warm a server: sequential requests, then one burst to create every client thread."""
        with requests.Session() as session:
            for i in range(self.args.warmup):
                post_generation(session, server.base_url, case, 10_000 + i)
        if clients > 1:
            run_clients(server.base_url, case, clients, 1, 20_000)
