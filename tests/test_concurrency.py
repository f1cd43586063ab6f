"""Concurrent requests on one shared pipeline: race-free, seed-exact, shared state intact."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flask import Flask

from tests.support.apps import make_app
from tests.support.client import generate
from tests.support.images import b64_pixels

CONCURRENT = 16


def _generate(app: Flask, seed: int, **extra: Any) -> dict[str, Any]:
    """Generate `seed`'s image in 3 steps, one of three prompts; `extra` adds fields."""
    fields = {"prompt": f"prompt {seed % 3}", "seed": seed, "num_inference_steps": 3, **extra}
    return generate(app.test_client(), **fields)


def _snapshot(app: Flask) -> dict[str, Any]:
    """Record identity, dtype and device of every shared module and its parameters."""
    shared = app.extensions["engine"].shared_pipeline()
    state: dict[str, Any] = {"pipeline": id(shared)}
    for name, component in shared.components.items():
        state[name] = id(component)
        if isinstance(component, torch.nn.Module):
            for pname, param in component.named_parameters():
                state[f"{name}.{pname}"] = (id(param), param.dtype, param.device, param.data_ptr())
    return state


def test_concurrent_requests_each_get_exactly_their_seeds_image(app: Flask) -> None:
    seeds = [1000 + i for i in range(CONCURRENT)]
    alone = {seed: b64_pixels(_generate(app, seed)["data"][0]) for seed in seeds}
    with ThreadPoolExecutor(CONCURRENT) as pool:
        together = list(pool.map(lambda s: _generate(app, s), seeds))
    for seed, body in zip(seeds, together, strict=True):
        assert body["data"][0]["seed"] == seed
        np.testing.assert_array_equal(b64_pixels(body["data"][0]), alone[seed])
    # Distinct seeds give distinct images, so the equality above means something.
    assert len({alone[s].tobytes() for s in seeds}) == CONCURRENT


def test_concurrent_requests_with_cfg_and_negative_prompts_match_their_images_alone(
    app: Flask,
) -> None:
    # Different prompts, negative prompts and step counts stress tokenizers and schedulers:
    # a race there would hand a request another's tokens or timesteps, and other pixels.
    def run(i: int) -> np.ndarray:
        body = _generate(app, 7 + i, negative_prompt="blurry" * (i % 3),
                         num_inference_steps=2 + i % 4, guidance_scale=1.0 + i % 3)  # fmt: skip
        return b64_pixels(body["data"][0])

    requests = range(CONCURRENT * 2)
    alone = [run(i) for i in requests]
    with ThreadPoolExecutor(CONCURRENT) as pool:
        together = list(pool.map(run, requests))
    for i, expected, got in zip(requests, alone, together, strict=True):
        np.testing.assert_array_equal(got, expected, err_msg=f"request {i} differs when concurrent")
    # The requests' images differ from each other, so the equality above means something.
    assert len({image.tobytes() for image in alone}) == len(requests)


# Speed and memory modes that run on a CPU (tests/test_options.py covers each further).
MODES = {
    "plain": {},
    "no T5": {"SD3_DROP_T5": True},
    "fused, channels-last, tiled": {"FUSE_QKV": True, "VAE_CHANNELS_LAST": True,
                                    "VAE_TILING_PIXELS": 4096},
    "int8": {"QUANTIZE": "int8", "QUANTIZE_COMPONENTS": "transformer,text_encoders"},
}  # fmt: skip


@pytest.mark.parametrize("mode", MODES)
def test_requests_leave_shared_modules_unconverted_in_bfloat16(
    model_cache: Path, tmp_path: Path, mode: str
) -> None:
    if mode == "int8":
        pytest.importorskip("torchao", reason="QUANTIZE=int8 needs torchao")
    app = make_app(
        model_cache, tmp_path, DTYPE="bfloat16", MAX_CONCURRENT_GENERATIONS=0, **MODES[mode]
    )
    before = _snapshot(app)
    assert app.extensions["engine"].shared_pipeline().transformer.dtype == torch.bfloat16
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda s: _generate(app, s, num_inference_steps=2), range(8)))
    _generate(app, 99, n=2)
    assert _snapshot(app) == before
    shared = app.extensions["engine"].shared_pipeline()
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2", "text_encoder_3"):
        if getattr(shared, name) is not None:  # SD3_DROP_T5 leaves text_encoder_3 out
            assert getattr(shared, name).dtype == torch.bfloat16, name


def test_each_request_gets_its_own_scheduler_and_tokenizers(app: Flask) -> None:
    engine = app.extensions["engine"]
    first, second = engine.derive_pipeline(), engine.derive_pipeline()
    shared = engine.shared_pipeline()
    assert first.scheduler is not second.scheduler
    assert first.scheduler is not shared.scheduler
    assert first.transformer is shared.transformer and first.vae is shared.vae
    with ThreadPoolExecutor(1) as pool:
        other = pool.submit(engine.derive_pipeline).result()
    for name in ("tokenizer", "tokenizer_2", "tokenizer_3"):
        assert getattr(first, name) is not getattr(shared, name)
        assert getattr(other, name) is not getattr(first, name)


@pytest.mark.parametrize("n", [2, 3])
def test_multi_image_request_gives_consecutive_seeds(app: Flask, n: int) -> None:
    body = _generate(app, 500, n=n)
    assert [item["seed"] for item in body["data"]] == [500 + i for i in range(n)]
