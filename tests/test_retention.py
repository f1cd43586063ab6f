"""Image retention: TTL, the size cap, the background sweeper and the cron command (slow)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from flask import Flask

from app.retention import sweep
from tests.support.apps import FAST, make_app
from tests.support.client import GENERATIONS
from tests.support.gunicorn import ROOT
from tests.support.waiting import wait_until

SMALL = {"size": "64x64", "num_inference_steps": 1}
HOUR = 3600


def _image(directory: Path, index: int, age: float, size: int = 100) -> Path:
    """Write an image-named file `age` seconds old."""
    path = directory / f"{index:032x}.png"
    path.write_bytes(b"\0" * size)
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def test_sweep_removes_expired_images_and_never_touches_other_files(tmp_path: Path) -> None:
    old, fresh = _image(tmp_path, 1, 2 * HOUR), _image(tmp_path, 2, 60)
    partial = tmp_path / ".tmp-abc123.part"  # an image being written
    other = tmp_path / "notes.txt"
    for path in (partial, other):
        path.write_bytes(b"x")
        os.utime(path, (0, 0))  # older than any TTL
    result = sweep(tmp_path, ttl=HOUR, max_bytes=0)
    assert (result.expired, result.evicted, result.kept) == (1, 0, 1)
    assert not old.exists() and fresh.exists() and partial.exists() and other.exists()


def test_sweep_over_the_cap_removes_the_oldest_first(tmp_path: Path) -> None:
    images = [_image(tmp_path, i, age=1000 - i * 100, size=100) for i in range(5)]
    result = sweep(tmp_path, ttl=0, max_bytes=250)  # ttl 0: kept forever, but capped
    assert (result.evicted, result.kept, result.kept_bytes) == (3, 2, 200)
    assert [path.exists() for path in images] == [False, False, False, True, True]


def test_ttl_zero_and_no_cap_keep_everything(tmp_path: Path) -> None:
    image = _image(tmp_path, 1, 10 * 365 * 24 * HOUR)
    assert sweep(tmp_path, ttl=0, max_bytes=0).kept == 1 and image.exists()


@pytest.fixture(scope="module")
def slow_sweeper(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Flask:
    """An app whose sweeper is too slow to run during a test: expiry is the view's alone."""
    return make_app(model_cache, tmp_path_factory.mktemp("expiry"), IMAGE_TTL_SECONDS=HOUR,
                    IMAGE_SWEEP_INTERVAL_SECONDS=HOUR)  # fmt: skip


def test_expired_url_is_404_even_before_the_sweeper_removes_the_file(slow_sweeper: Flask) -> None:
    client = slow_sweeper.test_client()
    body = client.post(GENERATIONS, json={"prompt": "x", **SMALL}).json
    path = body["data"][0]["url"].removeprefix("http://localhost")
    assert client.get(path).status_code == 200
    file = Path(slow_sweeper.config["IMAGE_DIR"]) / path.rsplit("/", 1)[1]
    os.utime(file, (time.time() - 2 * HOUR,) * 2)  # as if generated two hours ago
    response = client.get(path)
    assert response.status_code == 404 and response.json["error"]["code"] == "not_found"
    assert file.exists()
    assert slow_sweeper.extensions["image_sweeper"].sweep_once().expired == 1
    assert not file.exists()


def test_caches_may_keep_an_image_only_for_what_is_left_of_its_url_life(
    slow_sweeper: Flask,
) -> None:
    client = slow_sweeper.test_client()
    body = client.post("/v1/images/generations", json={"prompt": "x", **SMALL}).json
    path = body["data"][0]["url"].removeprefix("http://localhost")
    fresh = client.get(path).headers["Cache-Control"]
    assert "max-age=3600" in fresh or "max-age=3599" in fresh, fresh
    file = Path(slow_sweeper.config["IMAGE_DIR"]) / path.rsplit("/", 1)[1]
    os.utime(file, (time.time() - HOUR + 100,) * 2)  # 100 s of its hour left
    cache = client.get(path).headers["Cache-Control"]
    max_age = int(cache.split("max-age=")[1].split(",")[0])
    assert 95 <= max_age <= 100, cache


def test_images_kept_forever_may_be_cached_for_long(model_cache: Path, tmp_path: Path) -> None:
    app = make_app(model_cache, tmp_path, IMAGE_TTL_SECONDS=0)
    client = app.test_client()
    body = client.post("/v1/images/generations", json={"prompt": "x", **SMALL}).json
    cache = client.get(body["data"][0]["url"].removeprefix("http://localhost")).headers
    assert "max-age=31536000" in cache["Cache-Control"]


def test_short_ttl_images_expire_and_the_worker_sweeper_deletes_them(
    model_cache: Path, tmp_path: Path
) -> None:
    app = make_app(model_cache, tmp_path, IMAGE_TTL_SECONDS=1)
    try:
        client = app.test_client()
        body = client.post(GENERATIONS, json={"prompt": "x", "n": 2, **SMALL}).json
        names = [item["url"].rsplit("/", 1)[1] for item in body["data"]]
        wait_until(lambda: not any((tmp_path / name).exists() for name in names), "the sweeper")
        for name in names:
            assert client.get(f"/static/images/{name}").status_code == 404
    finally:
        app.extensions["image_sweeper"].stop()


def test_the_sweeper_keeps_the_store_under_its_cap(model_cache: Path, tmp_path: Path) -> None:
    images = [_image(tmp_path, i, age=300 - i, size=4000) for i in range(3)]
    app = make_app(model_cache, tmp_path, IMAGE_STORE_MAX_BYTES=10_000,
                   IMAGE_SWEEP_INTERVAL_SECONDS=0.1)  # fmt: skip
    try:
        wait_until(lambda: not images[0].exists(), "eviction")
        assert images[1].exists() and images[2].exists()  # 8000 bytes: under the cap
        images.append(_image(tmp_path, 3, age=0, size=4000))
        wait_until(lambda: not images[1].exists(), "eviction of the next oldest")
        assert images[2].exists() and images[3].exists()
    finally:
        app.extensions["image_sweeper"].stop()


@pytest.mark.slow
def test_cleanup_command_for_cron_runs_without_loading_the_model(tmp_path: Path) -> None:
    expired, fresh = _image(tmp_path, 1, 2 * HOUR), _image(tmp_path, 2, 10)
    settings = {**FAST, "IMAGE_DIR": tmp_path, "IMAGE_TTL_SECONDS": HOUR,
                "MODEL_CACHE_DIR": tmp_path / "no-model-here"}  # fmt: skip
    env = {**os.environ, **{key: str(value) for key, value in settings.items()}}
    # The exact line the README gives for cron.
    command = [sys.executable, "-m", "flask", "--app", "app:create_app(load_model=False)",
               "cleanup-images"]  # fmt: skip
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "removed 1 expired and 0 over the cap (100 bytes); kept 1" in done.stdout
    assert not expired.exists() and fresh.exists()
    assert not (tmp_path / "no-model-here").exists()  # the model was never built or loaded
