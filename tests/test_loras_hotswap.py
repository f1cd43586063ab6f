"""LoRA hot-swap slots (COMPILE=true with LORA_DIR), in-process on the real tiny pipeline.

The slot logic runs the same eagerly, so most tests use an eager app whose adapters go
through `HotswapSlots` (seconds); the compiled ones (marked slow) show that nothing
recompiles once warmed up, whatever adapters and scales requests use.
"""

from __future__ import annotations

import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from safetensors.torch import load_file, save_file

from app import create_app
from app.config import SETTINGS
from app.engine.compile_watch import compiled_graphs
from app.engine.hotswap import HotswapSlots, layer_names
from app.tiny_model import ensure_tiny_sd3
from tests.support.apps import FAST, make_app
from tests.support.errors import assert_openai_error
from tests.support.families import ensure_family
from tests.support.lora_files import make_family_lora, make_lora
from tests.test_loras import AB, A, B, differs, generate, post

RANK = 8
# Two slots: a third adapter evicts the least recently used one.
SLOTS = {"LORA_CACHE_SIZE": 2, "MAX_LORAS_PER_REQUEST": 2, "LORA_HOTSWAP_RANK": RANK}
# Padding the rank with zeros changes float rounding only.
PADDED = 2


@pytest.fixture(scope="module")
def hotswap_sources(
    model_cache: Path, lora_sources: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The shared adapter files, plus ones the slots cannot take."""
    root = tmp_path_factory.mktemp("hotswap-sources") / "loras"
    shutil.copytree(lora_sources, root)
    model_dir = ensure_tiny_sd3(model_cache)
    make_lora(model_dir, root / "high_rank.safetensors", seed=4, rank=2 * RANK)
    make_lora(model_dir, root / "feed_forward.safetensors", seed=5, targets=["ff.net.2"])
    make_lora(model_dir, root / "style_c.safetensors", seed=6, rank=RANK)
    # One layer at rank 2, the others at 4: diffusers then gives alphas per layer.
    tensors = load_file(root / "style_a.safetensors")
    layer = next(key for key in tensors if key.endswith("to_q.lora_A.weight"))[: -len("A.weight")]
    tensors[f"{layer}A.weight"] = tensors[f"{layer}A.weight"][:2].contiguous()
    tensors[f"{layer}B.weight"] = tensors[f"{layer}B.weight"][:, :2].contiguous()
    save_file(tensors, root / "mixed_ranks.safetensors")
    return root


def eager_hotswap_app(model_cache: Path, loras: Path, images: Path, **overrides: Any) -> Flask:
    """An eager app whose adapters go through the hot-swap slots, as compiled ones do."""
    config = {**FAST, "MODEL_CACHE_DIR": str(model_cache), "IMAGE_DIR": str(images),
              "LORA_DIR": str(loras), **SLOTS, **overrides}  # fmt: skip
    app = create_app(config, load_model=False)
    engine = app.extensions["engine"]
    layers = layer_names(SETTINGS["LORA_HOTSWAP_LAYERS"].default)
    engine.adapters = HotswapSlots(app.extensions["loras"], 2, RANK, layers)
    engine.start()
    assert engine.wait_until_loaded(120)
    return app


def slot_state(app: Flask) -> tuple[list[str], dict[str, int]]:
    """The slots' adapter names and the storage of every parameter: fixed for good."""
    transformer = app.extensions["engine"].shared_pipeline().transformer
    parameters = {name: p.data_ptr() for name, p in transformer.named_parameters()}
    return sorted(transformer.peft_config), parameters


@pytest.fixture(scope="module")
def eager(model_cache: Path, hotswap_sources: Path, tmp_path_factory: pytest.TempPathFactory):
    """The ordinary eager adapters: the images the slots must give."""
    loras = tmp_path_factory.mktemp("eager") / "loras"
    shutil.copytree(hotswap_sources, loras)
    return make_app(model_cache, tmp_path_factory.mktemp("eager-images"), LORA_DIR=str(loras))


@pytest.fixture
def swapped(model_cache: Path, hotswap_sources: Path, tmp_path: Path) -> Flask:
    loras = tmp_path / "loras"
    shutil.copytree(hotswap_sources, loras)
    return eager_hotswap_app(model_cache, loras, tmp_path / "images")


@pytest.fixture(scope="module")
def shared_swapped(
    model_cache: Path, hotswap_sources: Path, tmp_path_factory: pytest.TempPathFactory
) -> Flask:
    root = tmp_path_factory.mktemp("shared-swapped")
    shutil.copytree(hotswap_sources, root / "loras")
    return eager_hotswap_app(model_cache, root / "loras", root / "images")


REQUESTS: list[list | None] = [
    A, None, AB, [{"name": "style_a", "scale": -0.7}], B, [], A, AB,
]  # fmt: skip


def test_slots_give_the_eager_adapters_images(swapped: Flask, eager: Flask) -> None:
    before = slot_state(swapped)
    bare = generate(swapped)
    assert np.array_equal(bare, generate(eager))
    seen = {}
    for loras in REQUESTS:
        image = generate(swapped, loras)
        assert differs(image, generate(eager, loras)) <= PADDED, loras
        key = repr(loras or [])
        assert key not in seen or np.array_equal(seen[key], image), loras
        seen[key] = image
    assert differs(seen[repr(A)], bare) > 20
    assert np.array_equal(generate(swapped, [{"name": "style_b", "scale": 0}]), bare)
    assert np.array_equal(generate(swapped, [{"name": "style_a", "scale": 0},
                                             {"name": "style_b", "scale": 0}]), bare)  # fmt: skip
    assert slot_state(swapped) == before  # nothing added, deleted or reallocated


def test_a_third_adapter_is_swapped_into_the_least_recently_used_slot(
    swapped: Flask, eager: Flask
) -> None:
    adapters = swapped.extensions["engine"].adapters
    before = slot_state(swapped)
    styled_a = generate(swapped, A)
    generate(swapped, B)
    assert adapters.loaded() == ["style_a", "style_b"]
    # A file dropped in later, at the slots' full rank, replaces style_a (least recent).
    loras = Path(swapped.config["LORA_DIR"])
    shutil.copyfile(loras / "style_c.safetensors", loras / "dropped_in.safetensors")
    dropped = [{"name": "dropped_in", "scale": 0.6}]
    eager_dir = Path(eager.config["LORA_DIR"])
    shutil.copyfile(eager_dir / "style_c.safetensors", eager_dir / "dropped_in.safetensors")
    assert differs(generate(swapped, dropped), generate(eager, dropped)) <= PADDED
    assert adapters.loaded() == ["style_b", "dropped_in"]
    assert np.array_equal(generate(swapped, A), styled_a)  # back in, evicting style_b
    assert adapters.loaded() == ["dropped_in", "style_a"]
    assert slot_state(swapped) == before


def test_a_set_gives_the_same_pixels_whichever_slots_its_adapters_were_in(
    model_cache: Path, hotswap_sources: Path, tmp_path: Path, swapped: Flask
) -> None:
    shutil.copytree(hotswap_sources, tmp_path / "other")
    other = eager_hotswap_app(model_cache, tmp_path / "other", tmp_path / "other-images")
    generate(swapped, A)
    generate(swapped, B)  # style_a in the first slot, style_b in the second
    generate(other, B)
    generate(other, A)  # the other way round
    assert np.array_equal(generate(other, AB), generate(swapped, AB))
    adapters = other.extensions["engine"].adapters
    assert [adapters._loaded[name][0] for name in ("style_a", "style_b")] == adapters.slots


def test_concurrent_requests_with_different_slots_each_get_their_own_image(
    model_cache: Path, hotswap_sources: Path, tmp_path: Path, shared_swapped: Flask
) -> None:
    shutil.copytree(hotswap_sources, tmp_path / "loras")
    app = eager_hotswap_app(model_cache, tmp_path / "loras", tmp_path / "images",
                            MAX_CONCURRENT_GENERATIONS=4)  # fmt: skip
    sets = [None, A, B, AB]
    alone = [generate(shared_swapped, loras) for loras in sets]
    with ThreadPoolExecutor(8) as pool:
        images = list(pool.map(lambda i: generate(app, sets[i % 4]), range(8)))
    for i, image in enumerate(images):
        assert np.array_equal(image, alone[i % 4]), sets[i % 4]


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("high_rank", "rank 16 is above the hot-swap slots' LORA_HOTSWAP_RANK=8"),
        ("feed_forward", "outside the hot-swap slots' layers (LORA_HOTSWAP_LAYERS="),
        ("with_te", "text-encoder weights, which diffusers cannot hot-swap"),
        ("wide", "wrong shapes"),
        ("mixed_ranks", "LoRA settings differ from the slots'"),
        ("foreign", "names layers the served model does not have"),
        ("kohya", "none of its weights match"),
        ("corrupt", "not a readable safetensors file"),
    ],
)
def test_a_file_the_slots_cannot_take_is_400_and_changes_nothing(
    shared_swapped: Flask, name: str, says: str
) -> None:
    swapped = shared_swapped
    styled = generate(swapped, A)
    bare = generate(swapped)
    before = slot_state(swapped)
    for _ in range(2):  # remembered: the second refusal is immediate
        started = time.monotonic()
        response = post(swapped, [{"name": "style_a"}, {"name": name}])
        error = assert_openai_error(response, 400, param="loras", code="invalid_lora")
        assert name in error["message"] and says in error["message"], error["message"]
    assert time.monotonic() - started < 1.0
    assert slot_state(swapped) == before
    assert np.array_equal(generate(swapped), bare)
    assert np.array_equal(generate(swapped, A), styled)


def test_a_hot_swap_that_fails_part_way_rebuilds_its_slot(
    swapped: Flask, eager: Flask, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # An injected fault after the checks: diffusers then deletes the slot's layers.
    import peft.utils.hotswap

    bare = generate(swapped)
    styled = generate(swapped, A)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("injected")

    monkeypatch.setattr(peft.utils.hotswap, "hotswap_adapter_from_state_dict", broken)
    with caplog.at_level(logging.WARNING, logger="app.engine.hotswap"):
        refused = post(swapped, [{"name": "style_c"}])
        assert_openai_error(refused, 400, param="loras", code="invalid_lora")
    assert "was lost by a failed hot-swap; rebuilding it" in caplog.text
    monkeypatch.undo()
    names, _ = slot_state(swapped)
    assert names == swapped.extensions["engine"].adapters.slots
    assert np.array_equal(generate(swapped), bare)
    assert np.array_equal(generate(swapped, A), styled)
    # The rebuilt slot takes the adapter; the other slot kept its own.
    assert differs(generate(swapped, AB), generate(eager, AB)) <= PADDED


@pytest.mark.parametrize(
    ("family", "settings"),
    [("sd15", {}), ("flux", {"QUANTIZE": "int8"})],
    ids=["sd15-unet", "flux-int8"],
)
def test_slots_serve_other_families_and_quantized_weights(
    family: str, settings: dict, tmp_path: Path
) -> None:
    """SD 1.5's loader answers three values (alphas too) and FLUX's first parameter is a
    Linear weight, which QUANTIZE makes a torchao tensor: the slots take both."""
    if settings.get("QUANTIZE"):
        pytest.importorskip("torchao", reason="QUANTIZE=int8 needs torchao")
    model = ensure_family(family, tmp_path)
    make_family_lora(model, tmp_path / "loras" / "style.safetensors", seed=3)
    app = eager_hotswap_app(tmp_path, tmp_path / "loras", tmp_path / "images",
                            MODEL_ID=str(model), DEFAULT_GUIDANCE_SCALE=2.0,
                            **settings)  # fmt: skip
    bare = generate(app)
    styled = generate(app, [{"name": "style"}])
    assert differs(styled, bare) > 0
    assert np.array_equal(generate(app, [{"name": "style", "scale": 0}]), bare)
    assert np.array_equal(generate(app, [{"name": "style"}]), styled)
    assert np.array_equal(generate(app), bare)


def test_layers_that_match_nothing_fail_the_load_saying_what_to_set(
    model_cache: Path, tmp_path: Path
) -> None:
    (tmp_path / "loras").mkdir()
    config = {**FAST, "MODEL_CACHE_DIR": str(model_cache), "IMAGE_DIR": str(tmp_path / "i"),
              "LORA_DIR": str(tmp_path / "loras"), "COMPILE": True,
              "LORA_HOTSWAP_LAYERS": "no_such_layer"}  # fmt: skip
    app = create_app(config)
    engine = app.extensions["engine"]
    assert engine.wait_until_loaded(120)
    assert engine.state == "failed"
    assert "LORA_HOTSWAP_LAYERS=no_such_layer names no linear layer" in engine.reason


# -- compiled ---------------------------------------------------------------------------


@pytest.mark.slow
def test_compiled_adapter_switches_never_recompile(
    model_cache: Path,
    hotswap_sources: Path,
    eager: Flask,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The CPU inductor backend: the warm-up compiles the tiny model with its slots.
    loras = tmp_path / "loras"
    shutil.copytree(hotswap_sources, loras)
    compiled = make_app(model_cache, tmp_path / "images", COMPILE=True, LORA_DIR=str(loras),
                        **SLOTS)  # fmt: skip
    assert compiled.extensions["engine"].state == "ready"
    graphs = compiled_graphs()
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="app.engine.compile_watch"):
        bare = generate(compiled)
        first = {}
        for _ in range(2):  # alternating adapter sets and scales, and bare requests
            for loras_ in REQUESTS:
                image = generate(compiled, loras_)
                key = repr(loras_ or [])
                if key in first:
                    assert np.array_equal(first[key], image), loras_
                else:
                    first[key] = image
                    # Compiled against eager numerics: a few levels at most.
                    assert differs(image, generate(eager, loras_)) <= 4, loras_
        assert np.array_equal(first["[]"], bare)
        assert np.array_equal(generate(compiled, [{"name": "style_a", "scale": 0}]), bare)
        # Dropped in later: hot-swapped into the least recently used slot.
        shutil.copyfile(loras / "style_c.safetensors", loras / "late.safetensors")
        eager_dir = Path(eager.config["LORA_DIR"])
        shutil.copyfile(eager_dir / "style_c.safetensors", eager_dir / "late.safetensors")
        late = [{"name": "late", "scale": 0.9}]
        assert differs(generate(compiled, late), generate(eager, late)) <= 4
        assert "late" in compiled.extensions["engine"].adapters.loaded()
        # Refused files leave the compiled slots alone too.
        for name in ("high_rank", "feed_forward", "wide"):
            assert_openai_error(post(compiled, [{"name": name}]), 400, param="loras",
                                code="invalid_lora")  # fmt: skip
        # The same set in the other order moves adapters between slots, in place.
        ba = [{"name": "style_b", "scale": -1.0}, {"name": "style_a", "scale": 0.5}]
        reversed_ = generate(compiled, ba)
        assert differs(reversed_, generate(eager, ba)) <= 4
        assert np.array_equal(generate(compiled, AB), first[repr(AB)])
        assert np.array_equal(generate(compiled, ba), reversed_)
        assert np.array_equal(generate(compiled, A), first[repr(A)])
    assert compiled_graphs() == graphs, "an adapter switch recompiled"
    assert compiled.extensions["metrics"].compilations._value.get() > 0  # the warm-up's
    warned = [r.getMessage() for r in caplog.records if r.name == "app.engine.compile_watch"]
    assert not warned, warned
