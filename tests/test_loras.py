"""LoRA adapters per request, in-process on the real tiny pipeline.

Adapters are tiny PEFT LoRAs of the tiny SD3 model (tests/support/lora_files.py). Every image is
compared with the one the same request gives alone: adapters must change images, scale
0 must give the bare model's pixels, and no adapter or scale may leak into a request
that runs beside, before or after another one.
"""

from __future__ import annotations

import base64
import io
import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import peft
import pytest
import torch
from flask import Flask
from packaging.version import Version
from PIL import Image

from app.engine.runner import call_pipeline
from tests.support.apps import make_app
from tests.support.errors import assert_openai_error
from tests.support.images import b64_pixels

TOLERANCE = 8  # batched against unbatched pixels (see tests/test_batching.py)
A = [{"name": "style_a"}]
B = [{"name": "style_b", "scale": 0.8}]
AB = [{"name": "style_a", "scale": 0.5}, {"name": "style_b", "scale": -1.0}]


def lora_dir_with(sources: Path, target: Path) -> Path:
    """Copy the adapter files into a fresh LORA_DIR (tests may change what is in it)."""
    shutil.copytree(sources, target)
    return target


@pytest.fixture(scope="module")
def lora_app(
    model_cache: Path, lora_sources: Path, tmp_path_factory: pytest.TempPathFactory
) -> Flask:
    loras = lora_dir_with(lora_sources, tmp_path_factory.mktemp("lora-app") / "loras")
    return make_app(model_cache, tmp_path_factory.mktemp("lora-images"), LORA_DIR=str(loras))


def generate(app: Flask, loras: list | None = None, **body: Any) -> np.ndarray:
    body = {"prompt": "a red fox", "seed": 7, "size": "64x64", "num_inference_steps": 2,
            "response_format": "b64_json", **body}  # fmt: skip
    if loras is not None:
        body["loras"] = loras
    response = app.test_client().post("/v1/images/generations", json=body)
    assert response.status_code == 200, response.get_json()
    return b64_pixels(response.get_json()["data"][0])


def post(app: Flask, loras: Any) -> Any:
    body = {"prompt": "a red fox", "seed": 7, "size": "64x64", "num_inference_steps": 2,
            "response_format": "b64_json", "loras": loras}  # fmt: skip
    return app.test_client().post("/v1/images/generations", json=body)


def shared_state(app: Flask) -> tuple[dict, list[str]]:
    """Return what adapter state the shared modules hold: adapters per component, and
    every parameter name (LoRA layers add parameters)."""
    shared = app.extensions["engine"].shared_pipeline()
    names = [
        f"{component}.{name}"
        for component in ("transformer", "text_encoder", "text_encoder_2")
        for name, _ in getattr(shared, component).named_parameters()
    ]
    return shared.get_list_adapters(), names


def differs(one: np.ndarray, other: np.ndarray) -> int:
    return int(np.abs(one.astype(int) - other.astype(int)).max())


def test_an_adapter_changes_the_image_and_scale_zero_gives_the_bare_image(
    lora_app: Flask,
) -> None:
    bare = generate(lora_app)
    styled = generate(lora_app, A)
    assert differs(styled, bare) > 20
    assert np.array_equal(generate(lora_app, [{"name": "style_a", "scale": 0}]), bare)
    assert np.array_equal(generate(lora_app, [{"name": "style_a", "scale": 1.0}]), styled)
    assert differs(generate(lora_app, [{"name": "style_a", "scale": 0.5}]), styled) > 0
    # After adapters ran, a request without them is the bare model again, and [] too.
    assert np.array_equal(generate(lora_app), bare)
    assert np.array_equal(generate(lora_app, []), bare)


def test_two_adapters_with_their_scales(lora_app: Flask) -> None:
    both = generate(lora_app, AB)
    assert differs(both, generate(lora_app, [{"name": "style_a", "scale": 0.5}])) > 0
    assert differs(both, generate(lora_app, [{"name": "style_b", "scale": -1.0}])) > 0
    assert np.array_equal(generate(lora_app, AB), both)


def test_text_encoder_weights_load_or_are_refused_cleanly(lora_app: Flask) -> None:
    bare = generate(lora_app)
    before = shared_state(lora_app)
    response = post(lora_app, [{"name": "with_te"}])
    if response.status_code == 200:
        assert differs(b64_pixels(response.get_json()["data"][0]), bare) > 0
        assert "with_te" in lora_app.extensions["engine"].adapters.loaded()
    else:  # a peft that transformers' text-encoder adapters do not take
        assert Version(peft.__version__) < Version("0.22")
        assert_openai_error(response, 400, param="loras", code="invalid_lora")  # fmt: skip
        assert shared_state(lora_app) == before
    assert np.array_equal(generate(lora_app), bare)


def png_parameters(app: Flask, loras: list) -> dict[str, Any]:
    body = {"prompt": "a red fox", "seed": 7, "size": "64x64", "num_inference_steps": 2,
            "response_format": "b64_json", "loras": loras}  # fmt: skip
    item = app.test_client().post("/v1/images/generations", json=body).get_json()["data"][0]
    return json.loads(Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).text["parameters"])


def test_png_metadata_records_adapters_and_scales(lora_app: Flask) -> None:
    assert png_parameters(lora_app, AB)["loras"] == [
        {"name": "style_a", "scale": 0.5},
        {"name": "style_b", "scale": -1.0},
    ]
    assert png_parameters(lora_app, A)["loras"] == [{"name": "style_a", "scale": 1.0}]
    assert "loras" not in png_parameters(lora_app, [])


@pytest.mark.parametrize(
    ("loras", "code"),
    [
        ([{"name": "nobody"}], "lora_not_found"),
        ([{"name": "../style_a"}], "invalid_value"),
        ([{"name": "sub/style_a"}], "invalid_value"),
        ([{"name": "sub\\style_a"}], "invalid_value"),
        ([{"name": ".hidden"}], "invalid_value"),
        ([{"name": ""}], "invalid_value"),
        ([{"name": "style_a", "scale": 2.5}], "invalid_value"),
        ([{"name": "style_a", "scale": -3}], "invalid_value"),
        ([{"name": "style_a", "scale": "1"}], "invalid_value"),
        ([{"name": "style_a", "scale": True}], "invalid_value"),
        ([{"name": "style_a", "scale": None, "weight": 1}], "invalid_value"),
        ([{"name": "style_a"}, {"name": "style_a", "scale": 0.5}], "invalid_value"),
        ([{"name": f"x{i}"} for i in range(5)], "invalid_value"),
        ([{"scale": 1}], "invalid_value"),
        (["style_a"], "invalid_value"),
        ({"name": "style_a"}, "invalid_value"),
        ("style_a", "invalid_value"),
    ],
)
def test_bad_loras_are_400_naming_loras(lora_app: Flask, loras: Any, code: str) -> None:
    before = shared_state(lora_app)
    response = post(lora_app, loras)
    assert_openai_error(response, 400, param="loras", code=code)  # fmt: skip
    assert shared_state(lora_app) == before


def test_without_lora_dir_adapters_are_a_clear_400(app: Flask) -> None:
    response = post(app, A)
    error = assert_openai_error(response, 400, param="loras", code="lora_not_found")  # fmt: skip
    assert "LORA_DIR" in error["message"]
    assert app.test_client().get("/v1/loras").get_json() == {"object": "list", "data": []}


def test_the_listing_names_size_and_targets(lora_app: Flask) -> None:
    listing = lora_app.test_client().get("/v1/loras").get_json()
    assert listing["object"] == "list"
    by_name = {item["name"]: item for item in listing["data"]}
    loras = Path(lora_app.config["LORA_DIR"])
    assert by_name["style_a"] == {
        "name": "style_a", "object": "lora", "layout": "diffusers", "targets": ["transformer"],
        "size_bytes": (loras / "style_a.safetensors").stat().st_size,
    }  # fmt: skip
    assert by_name["with_te"]["targets"] == ["text_encoder", "transformer"]
    assert by_name["kohya"]["layout"] == "kohya"
    assert by_name["corrupt"]["targets"] == []


@pytest.mark.parametrize("broken", ["wide", "kohya", "foreign", "corrupt"])
def test_a_file_that_is_no_lora_for_this_model_is_400_and_changes_nothing(
    lora_app: Flask, broken: str
) -> None:
    styled = generate(lora_app, A)  # an adapter is loaded and active beforehand
    bare = generate(lora_app)
    before = shared_state(lora_app)
    for _ in range(2):  # the same file keeps failing, quickly, the second time
        started = time.monotonic()
        response = post(lora_app, [{"name": "style_a"}, {"name": broken}])
        error = assert_openai_error(response, 400, param="loras", code="invalid_lora")  # fmt: skip
        assert broken in error["message"]
    assert time.monotonic() - started < 1.0
    assert shared_state(lora_app) == before
    assert np.array_equal(generate(lora_app), bare)
    assert np.array_equal(generate(lora_app, A), styled)


def test_a_fixed_file_loads_once_it_changes(
    model_cache: Path, lora_sources: Path, tmp_path: Path
) -> None:
    loras = lora_dir_with(lora_sources, tmp_path / "loras")
    app = make_app(model_cache, tmp_path / "images", LORA_DIR=str(loras))
    assert post(app, [{"name": "corrupt"}]).status_code == 400
    assert post(app, [{"name": "corrupt"}]).status_code == 400
    shutil.copyfile(loras / "style_a.safetensors", loras / "corrupt.safetensors")
    assert np.array_equal(generate(app, [{"name": "corrupt"}]), generate(app, A))


def test_a_new_file_is_found_without_a_restart(lora_app: Flask) -> None:
    loras = Path(lora_app.config["LORA_DIR"])
    assert post(lora_app, [{"name": "dropped_in"}]).status_code == 400
    shutil.copyfile(loras / "style_b.safetensors", loras / "dropped_in.safetensors")
    names = [item["name"] for item in lora_app.test_client().get("/v1/loras").get_json()["data"]]
    assert "dropped_in" in names
    assert np.array_equal(generate(lora_app, [{"name": "dropped_in", "scale": 0.8}]),
                          generate(lora_app, B))  # fmt: skip


def test_out_of_memory_while_loading_an_adapter_is_a_retryable_503_not_a_bad_file(
    lora_app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An injected fault: a CPU cannot run out of accelerator memory on demand.
    directory = Path(lora_app.config["LORA_DIR"])
    shutil.copyfile(directory / "style_b.safetensors", directory / "memory_tight.safetensors")
    shared = lora_app.extensions["engine"].shared_pipeline()
    real_load = shared.load_lora_weights
    calls = []

    def load_once_out_of_memory(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        if len(calls) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        return real_load(*args, **kwargs)

    monkeypatch.setattr(shared, "load_lora_weights", load_once_out_of_memory)
    before = shared_state(lora_app)
    refused = post(lora_app, [{"name": "memory_tight"}])
    assert_openai_error(refused, 503, code="out_of_memory")
    assert refused.headers["Retry-After"]
    assert shared_state(lora_app) == before
    # Not remembered as a bad file: the next request loads it and it changes the image.
    assert not np.array_equal(generate(lora_app, [{"name": "memory_tight"}]), generate(lora_app))
    assert len(calls) == 2


def test_least_recently_used_adapters_are_unloaded(
    model_cache: Path, lora_sources: Path, tmp_path: Path
) -> None:
    loras = lora_dir_with(lora_sources, tmp_path / "loras")
    app = make_app(model_cache, tmp_path / "images", LORA_DIR=str(loras), LORA_CACHE_SIZE=1)
    adapters = app.extensions["engine"].adapters
    styled = generate(app, A)
    assert adapters.loaded() == ["style_a"]
    generate(app, B)
    assert adapters.loaded() == ["style_b"]
    shared = app.extensions["engine"].shared_pipeline()
    assert len(shared.get_list_adapters()["transformer"]) == 1
    both = generate(app, AB)  # a request's own adapters stay, beyond the cache size
    assert adapters.loaded() == ["style_a", "style_b"]
    assert np.array_equal(generate(app, A), styled)
    assert adapters.loaded() == ["style_a"]
    assert np.array_equal(generate(app, AB), both)


def test_edits_take_loras_as_a_json_string(lora_app: Flask) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (30, 120, 200)).save(buffer, "PNG")

    def edit(loras: str | None) -> Any:
        form = {"prompt": "a red fox", "seed": "3", "num_inference_steps": "4",
                "response_format": "b64_json",
                "image": (io.BytesIO(buffer.getvalue()), "a.png")}  # fmt: skip
        if loras is not None:
            form["loras"] = loras
        return lora_app.test_client().post("/v1/images/edits", data=form,
                                           content_type="multipart/form-data")  # fmt: skip

    plain = b64_pixels(edit(None).get_json()["data"][0])
    styled = b64_pixels(edit(json.dumps(A)).get_json()["data"][0])
    assert differs(styled, plain) > 0
    zero = edit(json.dumps([{"name": "style_a", "scale": 0}]))
    assert np.array_equal(b64_pixels(zero.get_json()["data"][0]), plain)
    for bad in ("[{", "style_a", json.dumps([{"name": "../x"}])):
        response = edit(bad)
        assert_openai_error(response, 400, param="loras")  # fmt: skip


# -- concurrency and batching --------------------------------------------------------


class OverlapSpy:
    """Call the real pipeline; record which adapter sets (named by prompt) overlapped."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: list[str] = []
        self.overlaps: set[tuple[str, str]] = set()
        self.calls: list[list[str]] = []
        self.hold: threading.Event | None = None
        self.holding = threading.Event()

    def __call__(self, pipeline: Any, arguments: dict[str, Any]) -> list[Image.Image]:
        prompts = arguments["prompt"]
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        with self.lock:
            self.calls.append(prompts)
            for other in self.running:
                self.overlaps.add((other, prompts[0]))
            self.running.append(prompts[0])
        try:
            if prompts[0] == "holder" and self.hold is not None:
                self.holding.set()
                assert self.hold.wait(60), "the holder was never released"
            time.sleep(0.05)  # widen the window in which another call could start
            return call_pipeline(pipeline, arguments)
        finally:
            with self.lock:
                self.running.remove(prompts[0])


SETS: dict[str, list | None] = {"bare": None, "a": A, "b": B, "ab": AB}


def images_alone(model_cache: Path, loras: Path, image_dir: Path) -> dict[tuple, np.ndarray]:
    """Return each adapter set's image per seed, generated one request at a time."""
    alone = make_app(model_cache, image_dir, LORA_DIR=str(loras))
    return {(label, seed): generate(alone, adapters, prompt=label, seed=seed)
            for label, adapters in SETS.items() for seed in (1, 2)}  # fmt: skip


def test_concurrent_requests_with_different_adapters_each_get_their_own_image(
    model_cache: Path, lora_sources: Path, tmp_path: Path
) -> None:
    loras = lora_dir_with(lora_sources, tmp_path / "loras")
    expected = images_alone(model_cache, loras, tmp_path / "alone")
    spy = OverlapSpy()
    app = make_app(model_cache, tmp_path / "images", LORA_DIR=str(loras),
                   MAX_CONCURRENT_GENERATIONS=4, pipeline_call=spy)  # fmt: skip
    jobs = [(label, seed) for _ in range(2) for label in SETS for seed in (1, 2)]
    with ThreadPoolExecutor(len(jobs)) as pool:
        images = list(pool.map(lambda job: generate(app, SETS[job[0]], prompt=job[0],
                                                    seed=job[1]), jobs))  # fmt: skip
    for job, image in zip(jobs, images, strict=True):
        assert np.array_equal(image, expected[job]), job
    # Calls with different adapter sets never ran at the same time.
    assert all(first == second for first, second in spy.overlaps), spy.overlaps


def test_micro_batches_never_mix_adapter_sets(
    model_cache: Path, lora_sources: Path, tmp_path: Path
) -> None:
    loras = lora_dir_with(lora_sources, tmp_path / "loras")
    expected = images_alone(model_cache, loras, tmp_path / "alone")
    spy = OverlapSpy()
    spy.hold = threading.Event()
    app = make_app(model_cache, tmp_path / "images", LORA_DIR=str(loras), pipeline_call=spy,
                   MAX_CONCURRENT_GENERATIONS=1, BATCH_MAX_SIZE=8, BATCH_WAIT_MS=300)  # fmt: skip
    jobs = [(label, seed) for label in SETS for seed in (1, 2)]
    with ThreadPoolExecutor(len(jobs) + 1) as pool:
        holder = pool.submit(generate, app, None, prompt="holder", size="128x128")
        assert spy.holding.wait(60)
        futures = [pool.submit(generate, app, SETS[label], prompt=label, seed=seed)
                   for label, seed in jobs]  # fmt: skip
        lane = app.extensions["engine"].lane
        deadline = time.monotonic() + 60
        while lane.queued_requests < len(jobs):
            assert time.monotonic() < deadline, "requests did not queue"
            time.sleep(0.01)
        spy.hold.set()
        holder.result(60)
        images = [future.result(60) for future in futures]
    batches = [call for call in spy.calls if call[0] in SETS]
    # Each adapter set ran as one batch of its two requests, alone with its set.
    assert sorted(sorted(call) for call in batches) == [[label] * 2 for label in sorted(SETS)]
    for job, image in zip(jobs, images, strict=True):
        assert differs(image, expected[job]) <= TOLERANCE, job


def test_a_streamed_request_gets_its_adapters(lora_app: Flask) -> None:
    body = {"prompt": "a red fox", "seed": 7, "size": "64x64", "num_inference_steps": 2,
            "stream": True, "loras": A}  # fmt: skip
    response = lora_app.test_client().post("/v1/images/generations", json=body)
    events = [json.loads(line[len("data: "):]) for line in response.get_data(as_text=True)
              .splitlines() if line.startswith("data: ")]  # fmt: skip
    final = next(e for e in events if e["type"] == "image_generation.completed")
    assert np.array_equal(b64_pixels(final), generate(lora_app, A))


def test_the_openapi_document_describes_loras(lora_app: Flask) -> None:
    document = lora_app.test_client().get("/openapi.json").get_json()
    assert "/v1/loras" in document["paths"]
    listing = document["components"]["schemas"]["LoraList"]
    assert listing["properties"]["data"]["items"]["$ref"].endswith("/Lora")
    loras = document["components"]["schemas"]["ImageGenerationRequest"]["properties"]["loras"]
    assert loras["maxItems"] == lora_app.config["MAX_LORAS_PER_REQUEST"]
    assert loras["items"]["properties"]["scale"]["maximum"] == 2.0
    form = document["components"]["schemas"]["ImageEditRequest"]["properties"]["loras"]
    assert form["type"] == "string" and form["contentMediaType"] == "application/json"
