"""Three real Gunicorn replicas behind the real nginx (deploy/nginx-replicas.conf).

Each replica runs one generation at a time (MAX_CONCURRENT_GENERATIONS=1) and queues
MAX_QUEUE more, with torch on one thread; images go to a real SeaweedFS. Generations are
made long (512x512, 100 steps of the tiny model: seconds each) so that requests overlap.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from tests.support.apps import FAST
from tests.support.gunicorn import GunicornServer
from tests.support.nginx import NGINX
from tests.support.replicas import (
    ReplicaNginx,
    generations_answered,
    lane_state,
    start_replicas,
)
from tests.support.seaweedfs import SeaweedFS

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(NGINX is None, reason="nginx is missing (.ci/run installs it)"),
]

REPLICAS, QUEUE = 3, 2
CAPACITY = REPLICAS * (1 + QUEUE)  # one running and QUEUE queued on each
LONG = {"prompt": "a long one", "size": "512x512", "num_inference_steps": 100}


class Cluster:
    """Replicas, nginx in front, and the requests sent through it."""

    def __init__(self, replicas: list[GunicornServer], nginx: ReplicaNginx) -> None:
        self.replicas = replicas
        self.nginx = nginx
        self.answers: list[requests.Response | BaseException] = []
        self.threads: list[threading.Thread] = []

    def admitted(self) -> float:
        total = 0.0
        for replica in self.replicas:
            try:
                total += sum(lane_state(replica))
            except requests.ConnectionError:  # killed, or draining with its listener closed
                pass
        return total

    def send(self, body: dict, wait_admitted: bool = True) -> None:
        """POST in a thread; wait until one more image is queued or running somewhere."""
        before = self.admitted() if wait_admitted else 0

        def post() -> None:
            try:
                url = f"{self.nginx.base_url}/v1/images/generations"
                self.answers.append(requests.post(url, json=body, timeout=300))
            except BaseException as exc:  # recorded: the test reports what each got
                self.answers.append(exc)

        self.threads.append(threading.Thread(target=post))
        self.threads[-1].start()
        if wait_admitted:
            deadline = time.monotonic() + 30
            while self.admitted() < before + 1:
                assert time.monotonic() < deadline, "the request was never admitted"
                time.sleep(0.02)

    def wait(self) -> list[requests.Response | BaseException]:
        for thread in self.threads:
            thread.join(300)
        answers, self.answers, self.threads = self.answers, [], []
        return answers


@pytest.fixture
def cluster(
    model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Cluster, SeaweedFS]]:
    with SeaweedFS(tmp_path_factory.mktemp("replicas-s3")) as store:
        env = {**FAST, **store.env(), "MODEL_CACHE_DIR": model_cache, "TRUSTED_PROXIES": 1,
               "MAX_CONCURRENT_GENERATIONS": 1, "MAX_QUEUE": QUEUE, "OMP_NUM_THREADS": 1,
               "ENCODE_THREADS": 1, "GUNICORN_GRACEFUL_TIMEOUT": 120,
               "IMAGE_DIR": tmp_path_factory.mktemp("unused")}  # fmt: skip
        replicas = start_replicas(env, REPLICAS)
        try:
            upstreams = [replica.port for replica in replicas]
            with ReplicaNginx(tmp_path_factory.mktemp("nginx-replicas"), upstreams) as nginx:
                yield Cluster(replicas, nginx), store
        finally:
            for replica in replicas:
                replica.stop()


def statuses(answers: list[requests.Response | BaseException]) -> list[int | str]:
    return sorted(a.status_code if isinstance(a, requests.Response) else type(a).__name__
                  for a in answers)  # fmt: skip


def test_full_capacity_is_all_200_spread_over_replicas_and_only_the_excess_429(
    cluster: tuple[Cluster, SeaweedFS],
) -> None:
    c, _ = cluster
    for _ in range(CAPACITY):
        c.send({**LONG, "response_format": "b64_json"})
    assert c.admitted() == CAPACITY
    # Every replica is full now: one more request is refused, after nginx tried them all.
    excess = requests.post(f"{c.nginx.base_url}/v1/images/generations",
                           json={**LONG, "response_format": "b64_json"}, timeout=60)  # fmt: skip
    assert excess.status_code == 429
    assert int(excess.headers["Retry-After"]) >= 1
    assert excess.json()["error"]["code"] == "server_overloaded"
    answers = c.wait()
    assert statuses(answers) == [200] * CAPACITY
    per_replica = [generations_answered(replica, 200) for replica in c.replicas]
    assert per_replica == [1 + QUEUE] * REPLICAS, per_replica
    assert [generations_answered(replica, 429) for replica in c.replicas] == [1] * REPLICAS
    refused = [line for line in c.nginx.access_log() if '" 429 ' in line]
    assert len(refused) == 1 and "status=429, 429, 429" in refused[0], refused


def test_sigkill_of_a_replica_under_load_leaves_the_others_answering(
    cluster: tuple[Cluster, SeaweedFS],
) -> None:
    c, _ = cluster
    for _ in range(2 * REPLICAS):
        c.send({**LONG, "response_format": "b64_json"})
    victim = c.replicas[0]
    assert victim.process is not None
    workers = psutil.Process(victim.process.pid).children()
    for process in [victim.process.pid, *(w.pid for w in workers)]:
        os.kill(process, signal.SIGKILL)
    victim.process.wait()
    answers = c.wait()
    got = statuses(answers)
    print(f"\nSIGKILL under load: the {len(answers)} requests in flight got {got}")
    # The four on the live replicas succeed. The two on the killed one (one running, one
    # queued) were retried by nginx on the others (non_idempotent, within
    # proxy_next_upstream_timeout): 200 where there was room, the live replica's 429
    # where there was not, or 502 once the retry window had passed. Never a hang.
    assert got.count(200) >= 2 * (REPLICAS - 1)
    assert set(got) <= {200, 429, 502}, got
    # New work goes to the live replicas: a refused connection is retried at once.
    for _ in range(4):
        small = {"prompt": "after the kill", "size": "64x64", "num_inference_steps": 1}
        after = requests.post(f"{c.nginx.base_url}/v1/images/generations", json=small,
                              timeout=60)  # fmt: skip
        assert after.status_code == 200, after.text


def test_sigterm_of_a_replica_drains_it_with_no_client_error_and_its_urls_live_on(
    cluster: tuple[Cluster, SeaweedFS],
) -> None:
    c, _ = cluster
    for _ in range(2 * REPLICAS):
        c.send(LONG)
    leaving = c.replicas[0]
    assert leaving.process is not None
    leaving.process.send_signal(signal.SIGTERM)
    # While it drains (503 to new work) and after it is gone, new work goes elsewhere.
    for _ in range(2):
        c.send({"prompt": "during the drain", "size": "64x64", "num_inference_steps": 1},
               wait_admitted=False)  # fmt: skip
    answers = c.wait()
    assert statuses(answers) == [200] * (2 * REPLICAS + 2)
    leaving.process.wait(120)
    # Its work finished (it answered 200 before exiting), and its image URLs still work:
    # they point at the shared store, not at the replica.
    urls = [a.json()["data"][0]["url"] for a in answers]
    for url in urls:
        assert requests.get(url, timeout=10).status_code == 200
    log = c.nginx.access_log()
    drained_ports = f"127.0.0.1:{leaving.port}"
    served_by_leaving = [line for line in log if f"upstream={drained_ports} status=200" in line]
    assert served_by_leaving, "\n".join(log)
    # No client got a 502: a request nginx sent to the leaving replica after it closed its
    # listener was refused at once and retried (`status=502, 200` in nginx's log).
    assert not [line for line in log if line.split('"')[2].split()[0] != "200"], "\n".join(log)
