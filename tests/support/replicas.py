"""N real Gunicorn replicas behind the real nginx running deploy/nginx-replicas.conf."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import requests

from tests.support.gunicorn import ROOT, GunicornServer
from tests.support.nginx import NginxProcess, substitute

DEFAULT_SERVERS = re.compile(r"(    server 127\.0\.0\.1:800\d max_fails=0;.*\n)+")


def render_site(port: int, upstreams: list[int], logs: Path) -> str:
    """Return deploy/nginx-replicas.conf with the test's ports and log paths."""
    site = (ROOT / "deploy" / "nginx-replicas.conf").read_text()
    servers = "".join(f"    server 127.0.0.1:{p} max_fails=0;\n" for p in upstreams)
    site, count = DEFAULT_SERVERS.subn(servers, site)
    assert count == 1, "deploy/nginx-replicas.conf no longer lists its servers as expected"
    return substitute(site, "deploy/nginx-replicas.conf", (
        ("listen 80;", f"listen 127.0.0.1:{port};"),
        ("/var/log/nginx/", f"{logs}/"),
        ("proxy_next_upstream_tries 3;", f"proxy_next_upstream_tries {len(upstreams)};"),
    ))  # fmt: skip


class ReplicaNginx(NginxProcess):
    """nginx with deploy/nginx-replicas.conf on a loopback port, in front of `upstreams`."""

    def __init__(self, prefix: Path, upstreams: list[int]) -> None:
        super().__init__(prefix, lambda port, logs: render_site(port, upstreams, logs))

    def access_log(self) -> list[str]:
        path = self.prefix / "logs" / "image-replicas.access.log"
        return path.read_text().splitlines() if path.exists() else []


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
