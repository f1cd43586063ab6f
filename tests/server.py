"""Start the real Gunicorn server on a free loopback port for black-box tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import requests

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """Return a TCP port that is free on the loopback interface right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class GunicornServer:
    """`gunicorn -c gunicorn.conf.py wsgi:app`, started and stopped around a block."""

    def __init__(
        self, env: dict[str, str | int], ready_timeout: float = 120, app: str = "wsgi:app"
    ) -> None:
        self.app = app
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **{key: str(value) for key, value in env.items()}}
        self.ready_timeout = ready_timeout
        self.log_path: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True) -> GunicornServer:
        """Start Gunicorn; by default wait until /readyz answers 200."""
        log = open(ROOT / f".gunicorn-test-{self.port}.log", "wb")  # noqa: SIM115
        self.log_path = Path(log.name)
        command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
                   "-b", f"127.0.0.1:{self.port}", self.app]  # fmt: skip
        self.process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log, stderr=log)
        log.close()
        if wait_ready:
            try:
                self.wait_ready()
            except BaseException:
                self.stop()  # never leave a server running behind a failed start
                raise
        return self

    def wait_ready(self) -> None:
        """Poll /readyz until it answers 200, or fail with the server's log."""
        deadline = time.monotonic() + self.ready_timeout
        while time.monotonic() < deadline:
            assert self.process is not None and self.process.poll() is None, self.log()
            try:
                if requests.get(f"{self.base_url}/readyz", timeout=10).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not ready in {self.ready_timeout}s:\n{self.log()}")

    def log(self) -> str:
        """Return what the server has logged so far."""
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def wait_for_log(self, condition: Callable[[str], bool], timeout: float = 10.0) -> str:
        """Return the log once `condition(log)` holds. Access lines are written after
        their response has been sent, so a client can have its answer before the line."""
        deadline = time.monotonic() + timeout
        while not condition(log := self.log()):
            assert time.monotonic() < deadline, f"the log did not get there in {timeout}s:\n{log}"
            time.sleep(0.05)
        return log

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL) and remove its log file."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.log_path:
            self.log_path.unlink(missing_ok=True)

    def __enter__(self) -> GunicornServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
