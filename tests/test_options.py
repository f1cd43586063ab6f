"""Speed and memory options: refused at start with what to set; on the CPU, the modes that
run here keep the shared-module guarantees (same seed, same pixels; concurrent requests
get what they get alone; shared modules keep their identity and dtype)."""

from __future__ import annotations

import json
import logging
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from flask import Flask

from app import create_app
from app.lane import Job
from app.tiny_model import ensure_tiny_sd3
from tests.support.apps import FAST, make_app
from tests.support.images import b64_pixels
from tests.test_concurrency import _snapshot


def _pixels(
    app: Flask, seed: int, prompt: str = "a red fox", size: str = "64x64", **extra: Any
) -> np.ndarray:
    body = {"prompt": prompt, "seed": seed, "size": size, "response_format": "b64_json",
            "num_inference_steps": 2, **extra}  # fmt: skip
    response = app.test_client().post("/v1/images/generations", json=body)
    assert response.status_code == 200, response.get_json()
    return b64_pixels(response.get_json()["data"][0])


@pytest.fixture(scope="module")
def plain(model_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Flask:
    """The tiny model with every option off: the images the options are compared with."""
    return make_app(model_cache, tmp_path_factory.mktemp("plain"))


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"OFFLOAD": "model"}, "OFFLOAD=model moves modules between the CPU and an accelerator"),
        ({"OFFLOAD": "sequential"}, "set OFFLOAD=none"),
        ({"OFFLOAD": "disk"}, "OFFLOAD must be one of none, model, sequential"),
        ({"QUANTIZE": "nf4"}, "QUANTIZE=nf4 .bitsandbytes. needs a CUDA GPU"),
        ({"QUANTIZE": "int4"}, "QUANTIZE must be one of none, int8, fp8, nf4"),
        ({"QUANTIZE": "int8", "QUANTIZE_COMPONENTS": "vae"}, "QUANTIZE_COMPONENTS: vae"),
        ({"QUANTIZE": "int8", "FUSE_QKV": True}, "FUSE_QKV=true fuses the denoiser"),
        (
            {"ATTENTION_BACKEND": "fastest"},
            "ATTENTION_BACKEND='fastest' is not a diffusers.*native",
        ),
        ({"ATTENTION_BACKEND": "sage"}, "ATTENTION_BACKEND=sage is not installed"),
        ({"ATTENTION_BACKEND": "flash"}, "ATTENTION_BACKEND=flash is not installed"),
        ({"ATTENTION_BACKEND": "_native_cudnn"}, "ATTENTION_BACKEND=_native_cudnn needs CUDA"),
        ({"COMPILE_SIZES": "512x500"}, "COMPILE_SIZES: '512x500' must be positive multiples"),
        ({"COMPILE_SIZES": "big"}, "COMPILE_SIZES: 'big' is not WxH"),
        ({"VAE_TILING_PIXELS": 100}, "VAE_TILING_PIXELS must be 0 .off. or at least 4096"),
        (
            {"COMPILE": True, "LORA_DIR": "loras", "LORA_CACHE_SIZE": 2},
            "LORA_CACHE_SIZE .2. is the number of hot-swap slots and must be at least "
            "MAX_LORAS_PER_REQUEST .4.",
        ),
        ({"COMPILE": True, "LORA_DIR": "loras", "LORA_HOTSWAP_RANK": 0}, "LORA_HOTSWAP_RANK must"),
        ({"COMPILE": True, "LORA_DIR": "loras", "LORA_HOTSWAP_LAYERS": " , "}, "LAYERS is empty"),
        ({"FUSE_QKV": True, "LORA_DIR": "loras"}, "FUSE_QKV=true with LORA_DIR set"),
        ({"LORA_DIR": "/no/such/loras"}, "LORA_DIR=/no/such/loras is not a directory"),
    ],
)
def test_options_that_cannot_work_here_stop_the_app_saying_what_to_set(
    model_cache: Path, tmp_path: Path, settings: dict[str, Any], message: str
) -> None:
    config = {**FAST, "MODEL_CACHE_DIR": str(model_cache), "IMAGE_DIR": str(tmp_path)}
    with pytest.raises(ValueError, match=message):
        create_app({**config, **settings}, load_model=False)


def test_offload_on_a_gpu_still_needs_a_lane_of_one() -> None:
    from app.engine.options import EngineOptions

    with pytest.raises(ValueError, match="MAX_CONCURRENT_GENERATIONS=1"):
        EngineOptions(offload="model").check(torch.device("cuda"), lane_width=0)


def test_dropping_t5_serves_images_that_still_follow_the_prompt(
    model_cache: Path, tmp_path: Path, plain: Flask
) -> None:
    app = make_app(model_cache, tmp_path, SD3_DROP_T5=True)
    shared = app.extensions["engine"].shared_pipeline()
    assert shared.text_encoder_3 is None and shared.tokenizer_3 is None
    assert shared.text_encoder is not None and shared.text_encoder_2 is not None
    first = _pixels(app, 5)
    np.testing.assert_array_equal(_pixels(app, 5), first)
    # The CLIP encoders still read the prompt: another prompt, another image.
    assert not np.array_equal(_pixels(app, 5, prompt="a blue whale"), first)
    # And without T5's embeddings the image differs from the full model's.
    assert not np.array_equal(_pixels(plain, 5), first)


def test_dropping_t5_of_a_model_without_t5_fails_the_load_saying_why(
    model_cache: Path, tmp_path: Path
) -> None:
    model = tmp_path / "no-t5"
    shutil.copytree(ensure_tiny_sd3(model_cache), model)
    index = json.loads((model / "model_index.json").read_text())
    index["text_encoder_3"] = index["tokenizer_3"] = [None, None]
    (model / "model_index.json").write_text(json.dumps(index))
    app = make_app(model_cache, tmp_path / "images", MODEL_ID=str(model), SD3_DROP_T5=True)
    engine = app.extensions["engine"]
    assert engine.state == "failed"
    assert "unset SD3_DROP_T5" in engine.reason


def test_int8_weights_give_the_same_image_per_seed_alone_and_concurrently(
    model_cache: Path, tmp_path: Path
) -> None:
    pytest.importorskip("torchao", reason="QUANTIZE=int8 needs torchao (requirements-dev.txt)")
    from torchao.utils import TorchAOBaseTensor

    app = make_app(model_cache, tmp_path, DTYPE="bfloat16", QUANTIZE="int8",
                   QUANTIZE_COMPONENTS="transformer,text_encoders",
                   MAX_CONCURRENT_GENERATIONS=0)  # fmt: skip
    shared = app.extensions["engine"].shared_pipeline()
    for name in ("transformer", "text_encoder", "text_encoder_2", "text_encoder_3"):
        # transformers keeps the output projection (CLIP's text_projection) unquantized.
        linears = [m for key, m in getattr(shared, name).named_modules()
                   if isinstance(m, torch.nn.Linear) and key != "text_projection"]  # fmt: skip
        assert linears and all(isinstance(m.weight, TorchAOBaseTensor) for m in linears), name
    assert not isinstance(shared.vae.decoder.conv_in.weight, TorchAOBaseTensor)
    before = _snapshot(app)
    seeds = list(range(40, 48))
    alone = {seed: _pixels(app, seed) for seed in seeds}
    with ThreadPoolExecutor(len(seeds)) as pool:
        together = dict(zip(seeds, pool.map(lambda s: _pixels(app, s), seeds), strict=True))
    for seed in seeds:
        np.testing.assert_array_equal(together[seed], alone[seed])
    assert len({image.tobytes() for image in alone.values()}) == len(seeds)
    assert _snapshot(app) == before
    assert shared.transformer.dtype == torch.bfloat16 and shared.vae.dtype == torch.bfloat16


def test_loras_apply_on_int8_weights(model_cache: Path, tmp_path: Path, lora_sources: Path) -> None:
    """PEFT wraps torchao's int8 linears: an adapter changes the image, scale 0 and no
    adapter give the bare quantized image, and the base weights stay int8."""
    pytest.importorskip("torchao", reason="QUANTIZE=int8 needs torchao (requirements-dev.txt)")
    from torchao.utils import TorchAOBaseTensor

    loras = tmp_path / "loras"
    loras.mkdir()
    shutil.copy(lora_sources / "style_a.safetensors", loras)
    app = make_app(model_cache, tmp_path / "images", QUANTIZE="int8", LORA_DIR=str(loras))
    bare = _pixels(app, 7)
    styled = _pixels(app, 7, loras=[{"name": "style_a"}])
    assert np.abs(styled.astype(int) - bare.astype(int)).max() > 20
    np.testing.assert_array_equal(_pixels(app, 7, loras=[{"name": "style_a", "scale": 0}]), bare)
    np.testing.assert_array_equal(_pixels(app, 7), bare)
    np.testing.assert_array_equal(_pixels(app, 7, loras=[{"name": "style_a"}]), styled)
    to_q = app.extensions["engine"].shared_pipeline().transformer.transformer_blocks[0].attn.to_q
    assert isinstance(to_q.base_layer.weight, TorchAOBaseTensor)  # PEFT's layer over int8


def test_fused_qkv_channels_last_and_native_attention_change_rounding_only(
    model_cache: Path, tmp_path: Path, plain: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="app.engine.options"):
        app = make_app(model_cache, tmp_path, FUSE_QKV=True, VAE_CHANNELS_LAST=True,
                       ATTENTION_BACKEND="native", MAX_CONCURRENT_GENERATIONS=0)  # fmt: skip
    # SD3's attention does not use diffusers' dispatcher: the setting says it has no effect.
    assert "ATTENTION_BACKEND=native has no effect" in caplog.text
    shared = app.extensions["engine"].shared_pipeline()
    attention = shared.transformer.transformer_blocks[0].attn
    assert attention.fused_projections and hasattr(attention, "to_qkv")
    assert shared.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    before = _snapshot(app)
    seeds = list(range(60, 66))
    with ThreadPoolExecutor(len(seeds)) as pool:
        together = dict(zip(seeds, pool.map(lambda s: _pixels(app, s), seeds), strict=True))
    for seed in seeds:
        np.testing.assert_array_equal(_pixels(app, seed), together[seed])
        # The same computation, grouped differently: a few levels at most, never another image.
        difference = np.abs(together[seed].astype(int) - _pixels(plain, seed).astype(int))
        assert difference.max() <= 3, (seed, difference.max())
    assert _snapshot(app) == before


def test_vae_tiling_applies_only_above_its_size(
    model_cache: Path, tmp_path: Path, plain: Flask
) -> None:
    app = make_app(model_cache, tmp_path, VAE_TILING_PIXELS=64 * 64 + 100)
    vae = app.extensions["engine"].shared_pipeline().vae
    assert vae.use_tiling and vae.tile_sample_min_size == 64
    # 64x64 fits one tile: decoded whole, exactly as without tiling.
    np.testing.assert_array_equal(_pixels(app, 3), _pixels(plain, 3))
    # 128x128 decodes in overlapping 64x64 tiles, blended: same seed, same (other) pixels.
    tiled = _pixels(app, 3, size="128x128")
    np.testing.assert_array_equal(_pixels(app, 3, size="128x128"), tiled)
    assert not np.array_equal(tiled, _pixels(plain, 3, size="128x128"))


@pytest.mark.slow
def test_compiled_pipeline_compiles_at_warm_up_and_logs_each_new_size(
    model_cache: Path, tmp_path: Path, plain: Flask, caplog: pytest.LogCaptureFixture
) -> None:
    # The CPU inductor backend (gcc); the tiny model compiles in a minute or two.
    with caplog.at_level(logging.WARNING, logger="app.engine.compile_watch"):
        app = make_app(model_cache, tmp_path, COMPILE=True, DEFAULT_GUIDANCE_SCALE=7.0)
        assert "64x64, 1 image(s) (warm-up)" in caplog.text
        metrics = app.extensions["metrics"]
        compiled = metrics.compilations._value.get()
        assert compiled > 0
        caplog.clear()
        # The warmed-up size, with CFG as warmed up: no compilation.
        first = _pixels(app, 9)
        assert metrics.compilations._value.get() == compiled and not caplog.text
        np.testing.assert_array_equal(_pixels(app, 9), first)
        difference = np.abs(first.astype(int) - _pixels(plain, 9).astype(int))
        assert difference.max() <= 3
        # A new size compiles on first use, and says so; Retry-After's cost model does not
        # learn the compile time as if every 80x80 image took that long.
        model = app.extensions["engine"].lane.cost_model
        promised = model.predict([Job(None, 1, 0.0, cost=80 * 80 * 2)])
        _pixels(app, 9, size="80x80")
    assert metrics.compilations._value.get() > compiled
    assert model.predict([Job(None, 1, 0.0, cost=80 * 80 * 2)]) == promised
    assert "80x80, 1 image(s) (first request of this shape)" in caplog.text
