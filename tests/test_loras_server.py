"""LoRA adapters through the real Gunicorn server (`gunicorn -c gunicorn.conf.py wsgi:app`).

One server runs two pipeline calls at once (MAX_CONCURRENT_GENERATIONS=2), another
micro-batches (BATCH_MAX_SIZE=8); both read a LORA_DIR of tiny PEFT adapters made for the
tiny model (tests/support/lora_files.py). Every image is compared with the same request run alone.
A third, compiled server (COMPILE=true: adapters hot-swapped into slots) must not recompile.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from tests.support.apps import FAST
from tests.support.errors import assert_openai_error
from tests.support.gunicorn import GunicornServer
from tests.support.images import b64_pixels

pytestmark = pytest.mark.slow

TOLERANCE = 8  # batched against unbatched pixels (see tests/test_batching.py)
SETS: dict[str, list | None] = {
    "bare": None,
    "a": [{"name": "style_a"}],
    "b": [{"name": "style_b", "scale": 0.8}],
    "ab": [{"name": "style_a", "scale": 0.5}, {"name": "style_b", "scale": -1.0}],
}


def serve(model_cache: Path, lora_sources: Path, root: Path, **env: Any) -> GunicornServer:
    shutil.copytree(lora_sources, root / "loras")
    return GunicornServer({**FAST, "MODEL_CACHE_DIR": str(model_cache),
                           "IMAGE_DIR": str(root / "images"), "LORA_DIR": str(root / "loras"),
                           **env})  # fmt: skip


@pytest.fixture(scope="module")
def concurrent_server(
    model_cache: Path, lora_sources: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GunicornServer]:
    root = tmp_path_factory.mktemp("lora-server")
    with serve(model_cache, lora_sources, root, MAX_CONCURRENT_GENERATIONS=2) as server:
        yield server


@pytest.fixture(scope="module")
def batching_server(
    model_cache: Path, lora_sources: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GunicornServer]:
    root = tmp_path_factory.mktemp("lora-batching")
    with serve(model_cache, lora_sources, root, MAX_CONCURRENT_GENERATIONS=1,
               BATCH_MAX_SIZE=8, BATCH_WAIT_MS=400) as server:  # fmt: skip
        yield server


def post(server: GunicornServer, loras: Any = None, **body: Any) -> requests.Response:
    body = {"prompt": "a red fox", "seed": 7, "size": "64x64", "num_inference_steps": 2,
            "response_format": "b64_json", **body}  # fmt: skip
    if loras is not None:
        body["loras"] = loras
    return requests.post(f"{server.base_url}/v1/images/generations", json=body, timeout=120)


def image(server: GunicornServer, loras: Any = None, **body: Any) -> np.ndarray:
    response = post(server, loras, **body)
    assert response.status_code == 200, response.text
    return b64_pixels(response.json()["data"][0])


def test_an_adapter_changes_the_image_and_scale_zero_is_bare(
    concurrent_server: GunicornServer,
) -> None:
    bare = image(concurrent_server)
    styled = image(concurrent_server, SETS["a"])
    assert np.abs(styled.astype(int) - bare.astype(int)).max() > 20
    assert np.array_equal(image(concurrent_server, [{"name": "style_a", "scale": 0}]), bare)
    assert np.array_equal(image(concurrent_server), bare)


@pytest.mark.parametrize(
    ("loras", "code"),
    [
        ([{"name": "nobody"}], "lora_not_found"),
        ([{"name": "../style_a"}], "invalid_value"),
        ([{"name": "sub/style_a"}], "invalid_value"),
        ([{"name": "style_a", "scale": 9}], "invalid_value"),
        ([{"name": "style_a", "scale": "high"}], "invalid_value"),
        ([{"name": f"x{i}"} for i in range(5)], "invalid_value"),
        ([{"name": "style_a"}, {"name": "style_a"}], "invalid_value"),
        ([{"name": "wide"}], "invalid_lora"),
        ([{"name": "kohya"}], "invalid_lora"),
        ([{"name": "foreign"}], "invalid_lora"),
        ([{"name": "corrupt"}], "invalid_lora"),
    ],
)
def test_bad_adapters_are_400_and_the_server_keeps_serving(
    concurrent_server: GunicornServer, loras: Any, code: str
) -> None:
    bare = image(concurrent_server)
    styled = image(concurrent_server, SETS["a"])
    response = post(concurrent_server, loras)
    assert_openai_error(response, 400, param="loras", code=code)  # fmt: skip
    assert np.array_equal(image(concurrent_server), bare)
    assert np.array_equal(image(concurrent_server, SETS["a"]), styled)


def test_a_dropped_in_file_works_without_restart_and_a_corrupt_one_is_400(
    concurrent_server: GunicornServer,
) -> None:
    loras = Path(concurrent_server.env["LORA_DIR"])
    listing = requests.get(f"{concurrent_server.base_url}/v1/loras", timeout=10).json()
    assert "late" not in [item["name"] for item in listing["data"]]
    shutil.copyfile(loras / "style_b.safetensors", loras / "late.safetensors")
    listing = requests.get(f"{concurrent_server.base_url}/v1/loras", timeout=10).json()
    assert {"name": "late", "targets": ["transformer"]}.items() <= {
        **next(item for item in listing["data"] if item["name"] == "late")
    }.items()
    assert np.array_equal(image(concurrent_server, [{"name": "late", "scale": 0.8}]),
                          image(concurrent_server, SETS["b"]))  # fmt: skip
    (loras / "late_bad.safetensors").write_bytes(b"garbage, not safetensors")
    response = post(concurrent_server, [{"name": "late_bad"}])
    assert_openai_error(response, 400, param="loras", code="invalid_lora")  # fmt: skip
    assert post(concurrent_server, SETS["ab"]).status_code == 200


def alone(server: GunicornServer) -> dict[tuple[str, int], np.ndarray]:
    """Each adapter set and seed, one request at a time (one prompt for all: only the
    adapters tell the images apart, so a leaked adapter or scale would show)."""
    return {(label, seed): image(server, loras, seed=seed)
            for label, loras in SETS.items() for seed in (1, 2)}  # fmt: skip


def test_concurrent_mixtures_of_adapter_sets_equal_each_request_alone(
    concurrent_server: GunicornServer,
) -> None:
    expected = alone(concurrent_server)
    jobs = [key for _ in range(2) for key in expected]
    with ThreadPoolExecutor(len(jobs)) as pool:
        images = list(pool.map(lambda key: image(concurrent_server, SETS[key[0]],
                                                 seed=key[1]), jobs))  # fmt: skip
    for key, got in zip(jobs, images, strict=True):
        assert np.array_equal(got, expected[key]), key


def test_micro_batched_mixtures_of_adapter_sets_equal_each_request_alone(
    concurrent_server: GunicornServer, batching_server: GunicornServer
) -> None:
    expected = alone(concurrent_server)  # unbatched
    jobs = [key for _ in range(2) for key in expected]
    with ThreadPoolExecutor(len(jobs)) as pool:
        images = list(pool.map(lambda key: image(batching_server, SETS[key[0]],
                                                 seed=key[1]), jobs))  # fmt: skip
    for key, got in zip(jobs, images, strict=True):
        assert np.abs(got.astype(int) - expected[key].astype(int)).max() <= TOLERANCE, key
        others = [expected[(label, key[1])] for label in SETS if label != key[0]]
        assert all(np.abs(got.astype(int) - o.astype(int)).max() > TOLERANCE for o in others)


def compilations(server: GunicornServer) -> float:
    text = requests.get(f"{server.base_url}/metrics", timeout=10).text
    line = next(li for li in text.splitlines()
                if li.startswith("image_server_compilations_total"))  # fmt: skip
    return float(line.split()[-1])


def test_compiled_concurrent_adapter_sets_never_recompile(
    model_cache: Path, lora_sources: Path, tmp_path: Path
) -> None:
    # COMPILE=true: adapters are hot-swapped into 4 slots; the warm-up compiles 64x64.
    env = {"COMPILE": "true", "MAX_CONCURRENT_GENERATIONS": 2, "LORA_CACHE_SIZE": 4,
           "LORA_HOTSWAP_RANK": 4}  # fmt: skip
    server = serve(model_cache, lora_sources, tmp_path, **env)
    server.ready_timeout = 300  # the CPU inductor backend compiles at start
    with server:
        warmed = compilations(server)
        assert warmed > 0
        alone = {label: image(server, loras) for label, loras in SETS.items()}
        labels = list(SETS) * 3
        with ThreadPoolExecutor(len(labels)) as pool:
            images = list(pool.map(lambda label: image(server, SETS[label]), labels))
        for label, got in zip(labels, images, strict=True):
            assert np.array_equal(got, alone[label]), label
        assert np.array_equal(image(server, [{"name": "style_a", "scale": 0}]), alone["bare"])
        assert compilations(server) == warmed
