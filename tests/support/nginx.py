"""The real nginx in the foreground on a loopback port, for the tests and the benchmark.

The site file under test (deploy/nginx.conf or deploy/nginx-replicas.conf, rendered with
the test's ports and paths) is included into a minimal main config whose every path lies
under a temporary prefix, so nginx runs without touching /etc or /var.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import requests

from tests.support.gunicorn import free_port

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
)


def substitute(site: str, name: str, replacements: tuple[tuple[str, str], ...]) -> str:
    """Replace each default of the deploy file `name` with the test's value; fail saying
    which default is gone if the file no longer has it."""
    for default, value in replacements:
        assert default in site, f"{name} no longer contains {default!r}"
        site = site.replace(default, value)
    return site


def main_config(prefix: Path, site: Path) -> str:
    """A minimal nginx.conf around the site file, with every path under `prefix`."""
    temp = "\n".join(
        f"    {kind}_temp_path {prefix}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
user root;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/main-error.log;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log off;
{temp}
    include {site};
}}
"""


class NginxProcess:
    """nginx running `render(port, logs)` as its site, started and stopped around a block."""

    def __init__(self, prefix: Path, render: Callable[[int, Path], str]) -> None:
        assert NGINX is not None, "nginx is missing"
        self.prefix = prefix
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        logs = prefix / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        site = prefix / "site.conf"
        site.write_text(render(self.port, logs))
        self.config = prefix / "nginx.conf"
        self.config.write_text(main_config(prefix, site))
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> NginxProcess:
        command = [str(NGINX), "-p", str(self.prefix), "-c", str(self.config)]
        check = subprocess.run([*command, "-t"], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        self.process = subprocess.Popen([*command, "-g", "daemon off;"])
        deadline = time.monotonic() + 20
        while True:
            assert self.process.poll() is None, self.error_log()
            try:
                requests.get(f"{self.base_url}/healthz", timeout=2)
                return self
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)

    def error_log(self) -> str:
        """Return what nginx has written to its error logs."""
        logs = self.prefix / "logs"
        return "\n".join(p.read_text(errors="replace") for p in logs.glob("*error.log"))

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=20)
