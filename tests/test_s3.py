"""Images in S3-compatible storage: a real SeaweedFS, the real tiny pipeline, real Gunicorn."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
import requests
from flask import Flask

from app import create_app
from tests.support.apps import FAST, make_app
from tests.support.errors import assert_openai_error
from tests.support.gunicorn import ROOT, GunicornServer, free_port
from tests.support.images import b64_pixels, pixels
from tests.support.seaweedfs import SECRET_KEY, SeaweedFS

pytestmark = pytest.mark.slow

GENERATIONS = "/v1/images/generations"
SMALL = {"prompt": "a lighthouse", "size": "64x64", "num_inference_steps": 1, "seed": 7}


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    with SeaweedFS(tmp_path_factory.mktemp("seaweedfs")) as running:
        yield running


@pytest.fixture
def credentials(store: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's credentials where boto3's chain finds them: the environment."""
    for key, value in store.env().items():
        if key.startswith("AWS_"):
            monkeypatch.setenv(key, value)


def s3_app(model_cache: Path, tmp_path: Path, store: SeaweedFS, **overrides: Any) -> Flask:
    """An in-process app writing to `store` (credentials from the `credentials` fixture)."""
    settings = {key: value for key, value in store.env().items() if not key.startswith("AWS_")}
    return make_app(model_cache, tmp_path / "unused", **{**settings, **overrides})


def wait_ready(client: Any, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while (response := client.get("/readyz")).status_code != 200:
        assert time.monotonic() < deadline, response.get_json()
        time.sleep(0.1)
    return response.get_json()


def test_url_is_a_presigned_get_of_one_object_with_its_type_and_cache_life(
    model_cache: Path, tmp_path: Path, store: SeaweedFS, credentials: None
) -> None:
    app = s3_app(model_cache, tmp_path, store, IMAGE_TTL_SECONDS=600)
    client = app.test_client()
    wait_ready(client)
    before = {
        o["Key"] for o in store.client().list_objects_v2(Bucket=store.bucket).get("Contents", [])
    }
    url = client.post(GENERATIONS, json=SMALL).get_json()["data"][0]["url"]
    inline = client.post(GENERATIONS, json={**SMALL, "response_format": "b64_json"}).get_json()
    after = {
        o["Key"] for o in store.client().list_objects_v2(Bucket=store.bucket).get("Contents", [])
    }

    new = after - before
    assert len(new) == 1  # one PUT for the url request; b64_json never touched the store
    (key,) = new
    assert key.startswith("images/") and len(key.removeprefix("images/")) == 32 + len(".png")
    query = dict(parse_qsl(urlsplit(url).query))
    assert urlsplit(url).path == f"/{store.bucket}/{key}"
    assert query["X-Amz-Expires"] == "600" and "X-Amz-Signature" in query
    assert not (tmp_path / "unused").exists() or not any((tmp_path / "unused").iterdir())

    download = requests.get(url, timeout=10)
    assert download.status_code == 200
    assert download.headers["Content-Type"] == "image/png"
    assert download.headers["Cache-Control"] == "public, max-age=600, immutable"
    assert (pixels(download.content) == b64_pixels(inline["data"][0])).all()


@pytest.mark.parametrize("setting", [None, "when_supported"])
def test_puts_carry_no_optional_checksum_unless_boto3_is_told_to(
    model_cache: Path, tmp_path: Path, store: SeaweedFS, credentials: None,
    monkeypatch: pytest.MonkeyPatch, setting: str | None,
) -> None:  # fmt: skip
    """botocore >= 1.36 adds a CRC32 checksum header to every PUT, which MinIO versions,
    Backblaze B2 and other S3-compatible stores refuse: send none unless asked."""
    if setting:
        monkeypatch.setenv("AWS_REQUEST_CHECKSUM_CALCULATION", setting)
    app = s3_app(model_cache, tmp_path, store)
    client = app.test_client()
    wait_ready(client)
    sent: list[dict[str, str]] = []
    s3 = app.extensions["image_store"].client
    s3.meta.events.register(
        "before-send.s3.PutObject",
        lambda request, **_: sent.append({k.lower(): v for k, v in request.headers.items()}),
    )
    response = client.post(GENERATIONS, json=SMALL)
    assert response.status_code == 200 and requests.get(response.get_json()["data"][0]["url"],
                                                        timeout=10).status_code == 200  # fmt: skip
    [headers] = sent
    checksums = {name for name in headers if name.startswith(("x-amz-checksum-",
                                                               "x-amz-sdk-checksum"))}  # fmt: skip
    assert bool(checksums) == (setting == "when_supported"), headers


def test_tampered_and_expired_urls_are_refused_by_the_store(
    model_cache: Path, tmp_path: Path, store: SeaweedFS, credentials: None
) -> None:
    app = s3_app(model_cache, tmp_path, store, IMAGE_TTL_SECONDS=2)
    client = app.test_client()
    wait_ready(client)
    url = client.post(GENERATIONS, json=SMALL).get_json()["data"][0]["url"]
    assert requests.get(url, timeout=10).status_code == 200
    parts = urlsplit(url)
    other_key = parts._replace(
        path=parts.path[:-5] + ("0" if parts.path[-5] != "0" else "1") + ".png"
    )
    query = dict(parse_qsl(parts.query))
    longer = parts._replace(query=urlencode({**query, "X-Amz-Expires": "604800"}))
    for tampered in (urlunsplit(other_key), urlunsplit(longer)):
        assert requests.get(tampered, timeout=10).status_code == 403, tampered
    time.sleep(3)
    expired = requests.get(url, timeout=10)
    assert expired.status_code == 403 and b"expired" in expired.content


@pytest.mark.parametrize("ttl", [0, 7 * 24 * 3600 + 1])
def test_a_ttl_no_presigned_url_can_have_is_refused_at_start(
    model_cache: Path, tmp_path: Path, store: SeaweedFS, ttl: int
) -> None:
    config = {**FAST, **store.env(), "IMAGE_TTL_SECONDS": ttl, "MODEL_CACHE_DIR": model_cache}
    with pytest.raises(ValueError, match="7 days"):
        create_app(config, load_model=False)
    # An unsigned public base URL may live as long as the object does.
    create_app({**config, "S3_PUBLIC_BASE_URL": "https://cdn.example"}, load_model=False)


def test_public_base_url_gives_unsigned_urls(
    model_cache: Path, tmp_path: Path, store: SeaweedFS, credentials: None
) -> None:
    app = s3_app(model_cache, tmp_path, store, S3_PUBLIC_BASE_URL="https://cdn.example/i/")
    client = app.test_client()
    wait_ready(client)
    url = client.post(GENERATIONS, json=SMALL).get_json()["data"][0]["url"]
    assert url.startswith("https://cdn.example/i/images/") and "?" not in url


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"S3_BUCKET": "no-such-bucket"}, "does not exist"),
        ({"AWS_SECRET_ACCESS_KEY": "wrong-secret"}, "credentials were refused"),
        ({"S3_ENDPOINT_URL": "http://127.0.0.1:{port}"}, "unreachable"),
    ],
)
def test_a_store_that_fails_at_start_keeps_readyz_503_with_the_reason(
    model_cache: Path, store: SeaweedFS, change: dict[str, str], reason: str, tmp_path: Path
) -> None:
    env = {**FAST, **store.env(), "MODEL_CACHE_DIR": model_cache, "IMAGE_DIR": tmp_path}
    env.update({k: v.format(port=free_port()) for k, v in change.items()})
    server = GunicornServer(env)
    server.start(wait_ready=False)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                probe = requests.get(f"{server.base_url}/readyz", timeout=5)
                if probe.json().get("status") == "storage_unavailable":
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.2)
        assert probe.status_code == 503 and reason in probe.json()["reason"], probe.json()
        body = {**SMALL, "response_format": "b64_json"}
        inline = requests.post(f"{server.base_url}{GENERATIONS}", json=body, timeout=60)
        assert inline.status_code == 200  # b64_json never needs the store
        log = server.log()
        assert SECRET_KEY not in log and "wrong-secret" not in log
        assert reason in log
    finally:
        server.stop()


def test_store_down_gives_503_for_urls_200_for_b64_and_recovers_without_restart(
    model_cache: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    with SeaweedFS(tmp_path_factory.mktemp("seaweedfs-outage")) as store:
        env = {**FAST, **store.env(), "MODEL_CACHE_DIR": model_cache,
               "IMAGE_DIR": tmp_path_factory.mktemp("unused")}  # fmt: skip
        with GunicornServer(env) as server:
            url = f"{server.base_url}{GENERATIONS}"
            assert requests.post(url, json=SMALL, timeout=60).status_code == 200
            objects = len(store.client().list_objects_v2(Bucket=store.bucket)["Contents"])
            store.stop()

            refused = requests.post(url, json={**SMALL, "n": 2}, timeout=60)
            assert_openai_error(refused, 503, code="storage_unavailable")  # fmt: skip
            assert int(refused.headers["Retry-After"]) > 0
            inline = requests.post(url, json={**SMALL, "response_format": "b64_json"}, timeout=60)
            assert inline.status_code == 200 and inline.json()["data"][0]["b64_json"]
            assert requests.get(f"{server.base_url}/healthz", timeout=5).status_code == 200

            store.start()
            again = requests.post(url, json=SMALL, timeout=60)
            assert again.status_code == 200, again.text
            assert requests.get(again.json()["data"][0]["url"], timeout=10).status_code == 200
            # Nothing half-written: the refused request left no object behind.
            contents = store.client().list_objects_v2(Bucket=store.bucket)["Contents"]
            assert len(contents) == objects + 1
            assert "Traceback" not in refused.text and SECRET_KEY not in server.log()


def test_an_image_url_outlives_the_replica_that_made_it(
    model_cache: Path, tmp_path: Path, store: SeaweedFS
) -> None:
    env = {**FAST, **store.env(), "MODEL_CACHE_DIR": model_cache, "IMAGE_DIR": tmp_path}
    with GunicornServer(env) as server:
        made = requests.post(f"{server.base_url}{GENERATIONS}", json=SMALL, timeout=60).json()
    assert server.process is not None and server.process.poll() is not None  # gone
    download = requests.get(made["data"][0]["url"], timeout=10)
    assert download.status_code == 200 and download.content.startswith(b"\x89PNG")


def test_lifecycle_command_puts_a_rule_on_the_prefix_and_keeps_other_rules(
    store: SeaweedFS, tmp_path: Path
) -> None:
    client = store.client()
    other = {"ID": "someone-elses", "Filter": {"Prefix": "logs/"}, "Status": "Enabled",
             "Expiration": {"Days": 30}}  # fmt: skip
    client.put_bucket_lifecycle_configuration(
        Bucket=store.bucket, LifecycleConfiguration={"Rules": [other]}
    )
    settings = {**FAST, **store.env(), "IMAGE_TTL_SECONDS": 3600,
                "MODEL_CACHE_DIR": tmp_path / "no-model", "IMAGE_DIR": tmp_path}  # fmt: skip
    env = {**os.environ, **{key: str(value) for key, value in settings.items()}}
    command = [sys.executable, "-m", "flask", "--app", "app:create_app(load_model=False)",
               "apply-s3-lifecycle"]  # fmt: skip
    for _ in range(2):  # applying twice leaves one rule of ours
        done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr
    assert "objects expire after 1 day(s)" in done.stdout
    rules = {
        r["ID"]: r for r in client.get_bucket_lifecycle_configuration(Bucket=store.bucket)["Rules"]
    }
    assert set(rules) == {"someone-elses", "image-server-expire-images/"}
    ours = rules["image-server-expire-images/"]
    assert ours["Filter"] == {"Prefix": "images/"} and ours["Expiration"] == {"Days": 1}
    assert SECRET_KEY not in done.stdout + done.stderr


def test_cleanup_command_deletes_expired_objects_for_stores_without_lifecycle(
    store: SeaweedFS, tmp_path: Path, credentials: None
) -> None:
    client = store.client()
    for name in ("old", "new"):
        client.put_object(Bucket=store.bucket, Key=f"sweep/{name}.png", Body=b"x")
    client.put_object(Bucket=store.bucket, Key="elsewhere/old.png", Body=b"x")
    app = create_app({**FAST, **store.env(), "S3_PREFIX": "sweep/", "IMAGE_TTL_SECONDS": 60,
                      "MODEL_CACHE_DIR": tmp_path}, load_model=False)  # fmt: skip
    s3 = app.extensions["image_store"]
    assert s3.sweep_expired(now=time.time()) == (0, 2)  # both fresh
    assert s3.sweep_expired(now=time.time() + 120) == (2, 0)
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=store.bucket)["Contents"]}
    assert "elsewhere/old.png" in keys and not any(k.startswith("sweep/") for k in keys)
