"""N real Gunicorn replicas behind the real nginx running deploy/nginx-replicas.conf."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path

import requests

from tests.support.gunicorn import ROOT, GunicornServer, free_port

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
)
DEFAULT_SERVERS = re.compile(r"(    server 127\.0\.0\.1:800\d max_fails=0;.*\n)+")


def render_site(port: int, upstreams: list[int], logs: Path) -> str:
    """Return deploy/nginx-replicas.conf with the test's ports and log paths."""
    site = (ROOT / "deploy" / "nginx-replicas.conf").read_text()
    servers = "".join(f"    server 127.0.0.1:{p} max_fails=0;\n" for p in upstreams)
    site, count = DEFAULT_SERVERS.subn(servers, site)
    assert count == 1, "deploy/nginx-replicas.conf no longer lists its servers as expected"
    for default, value in (
        ("listen 80;", f"listen 127.0.0.1:{port};"),
        ("/var/log/nginx/", f"{logs}/"),
        ("proxy_next_upstream_tries 3;", f"proxy_next_upstream_tries {len(upstreams)};"),
    ):
        assert default in site, f"deploy/nginx-replicas.conf no longer contains {default!r}"
        site = site.replace(default, value)
    return site


def main_config(prefix: Path, site: Path) -> str:
    """A minimal nginx.conf around the site file, with every path under `prefix`."""
    temp = "\n".join(
        f"    {kind}_temp_path {prefix}/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/main-error.log;
events {{ worker_connections 256; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
{temp}
    include {site};
}}
"""


class ReplicaNginx:
    """nginx in the foreground on a loopback port, in front of `upstreams`."""

    def __init__(self, prefix: Path, upstreams: list[int]) -> None:
        assert NGINX is not None, "nginx is missing"
        self.prefix = prefix
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        (prefix / "logs").mkdir(parents=True, exist_ok=True)
        site = prefix / "replicas.conf"
        site.write_text(render_site(self.port, upstreams, prefix / "logs"))
        self.config = prefix / "nginx.conf"
        self.config.write_text(main_config(prefix, site))
        self.process: subprocess.Popen[bytes] | None = None

    def access_log(self) -> list[str]:
        path = self.prefix / "logs" / "image-replicas.access.log"
        return path.read_text().splitlines() if path.exists() else []

    def __enter__(self) -> ReplicaNginx:
        command = [str(NGINX), "-p", str(self.prefix), "-c", str(self.config)]
        check = subprocess.run([*command, "-t"], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        self.process = subprocess.Popen([*command, "-g", "daemon off;"])
        deadline = time.monotonic() + 20
        while True:
            assert self.process.poll() is None, "nginx exited"
            try:
                requests.get(f"{self.base_url}/healthz", timeout=2)
                return self
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "nginx did not start"
                time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(timeout=20)


def start_replicas(
    env: Mapping[str, object], count: int, name: str = "replica"
) -> list[GunicornServer]:
    """Start `count` Gunicorn replicas at once and wait until every one is ready."""
    replicas = [GunicornServer(env, name=f"{name}-{i}", ready_timeout=180) for i in range(count)]
    try:
        for replica in replicas:
            replica.start(wait_ready=False)
        for replica in replicas:
            replica.wait_ready()
    except BaseException:
        for replica in replicas:
            replica.stop()
        raise
    return replicas


def lane_state(replica: GunicornServer) -> tuple[float, float]:
    """Return (queued images, running images) from a replica's /metrics."""
    text = requests.get(f"{replica.base_url}/metrics", timeout=10).text
    values = dict(re.findall(r"^image_server_(queued_images|inflight_generations) (\S+)$",
                             text, re.M))  # fmt: skip
    return float(values["queued_images"]), float(values["inflight_generations"])


def generations_answered(replica: GunicornServer, status: int) -> int:
    """Return how many generation requests a replica answered with `status`."""
    text = requests.get(f"{replica.base_url}/metrics", timeout=10).text
    pattern = (r'^image_server_requests_total\{endpoint="/v1/images/generations",'
               rf'status="{status}"\}} (\S+)$')  # fmt: skip
    found = re.search(pattern, text, re.M)
    return int(float(found.group(1))) if found else 0
