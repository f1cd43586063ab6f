"""Start the real Gunicorn server on a free loopback port: for black-box tests and the benchmark."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

import requests

if TYPE_CHECKING:
    import psutil

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """Return a TCP port that is free on the loopback interface right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM `process` if it still runs, SIGKILL it after `timeout` seconds, reap it."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class GunicornServer:
    """`gunicorn -c gunicorn.conf.py wsgi:app`, started and stopped around a block.

    Its log goes to `log_dir` (the repository root unless told) and is removed on stop.
    `own_session` puts Gunicorn in a session of its own, so a Ctrl-C reaches only the
    caller, which then stops it (the benchmark); without it a Ctrl-C stops both at once.
    """

    def __init__(
        self,
        env: Mapping[str, object],
        ready_timeout: float = 120,
        app: str = "wsgi:app",
        *,
        name: str = "test",
        log_dir: Path = ROOT,
        own_session: bool = False,
        stop_timeout: float = 30,
    ) -> None:
        self.app = app
        self.name = name
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **{key: str(value) for key, value in env.items()}}
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.own_session = own_session
        self.log_path = log_dir / f".gunicorn-{name.replace(' ', '_')}-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True) -> GunicornServer:
        """Start Gunicorn; by default wait until /readyz answers 200."""
        command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py",
                   "-b", f"127.0.0.1:{self.port}", self.app]  # fmt: skip
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=log,
                start_new_session=self.own_session,
            )
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
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"server {self.name} exited:\n{self.log()}")
            try:
                if requests.get(f"{self.base_url}/readyz", timeout=10).status_code == 200:
                    return
            except (requests.ConnectionError, requests.Timeout):
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server {self.name} not ready in {self.ready_timeout}s:\n{self.log()}")

    def log(self) -> str:
        """Return what the server has logged so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_for_log(self, condition: Callable[[str], bool], timeout: float = 10.0) -> str:
        """Return the log once `condition(log)` holds. Access lines are written after
        their response has been sent, so a client can have its answer before the line."""
        deadline = time.monotonic() + timeout
        while not condition(log := self.log()):
            if time.monotonic() > deadline:
                raise RuntimeError(f"the log did not get there in {timeout}s:\n{log}")
            time.sleep(0.05)
        return log

    def worker(self) -> psutil.Process:
        """Return the Gunicorn worker: the master's one child process."""
        import psutil  # only the benchmark reads the worker

        assert self.process is not None, "the server is not started"
        children = psutil.Process(self.process.pid).children()
        if len(children) != 1:
            raise RuntimeError(f"expected one Gunicorn worker, found {len(children)}")
        return children[0]

    def stop(self) -> None:
        """Stop the server (SIGTERM: it drains; SIGKILL after `stop_timeout`), remove its log."""
        if self.process:
            stop_process(self.process, self.stop_timeout)
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
