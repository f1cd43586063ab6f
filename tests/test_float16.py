"""Float16 with a VAE that overflows in it (SDXL's, SD 1.5's): the VAE runs in float32 for
good, decided at load (app/engine/loading.py:settle_vae_upcast), so no request casts the
shared VAE: concurrent generations, edits and inpainting keep their seeded images, and
nothing is upcast or warned about per request. torch runs float16 on the CPU, slowly."""

from __future__ import annotations

import io
import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pytest
import torch
from flask import Flask

from tests.support.apps import make_app
from tests.support.families import ensure_family
from tests.support.images import b64_pixels, opaque_png, striped_png


def answer(app: Flask, kind: str, seed: int) -> np.ndarray:
    if kind == "generation":
        body: dict[str, Any] = {
            "prompt": "a fox",
            "size": "64x64",
            "seed": seed,  # fmt: skip
            "num_inference_steps": 3,
            "response_format": "b64_json",
        }
        response = app.test_client().post("/v1/images/generations", json=body)
    else:
        form: dict[str, Any] = {"prompt": "moss", "seed": str(seed), "num_inference_steps": "3",
                                "response_format": "b64_json",
                                "image": (io.BytesIO(opaque_png()), "a.png")}  # fmt: skip
        if kind == "inpaint":
            form["mask"] = (io.BytesIO(striped_png(hole=(16, 16, 48, 48))), "m.png")
        response = app.test_client().post("/v1/images/edits", data=form)
    assert response.status_code == 200, response.get_json()
    return b64_pixels(response.get_json()["data"][0])


@pytest.mark.parametrize("family", ["sdxl", "sd15"])
def test_float16_keeps_the_vae_in_float32_and_requests_independent(
    family: str, tmp_path_factory: pytest.TempPathFactory, caplog: pytest.LogCaptureFixture
) -> None:
    cache = tmp_path_factory.mktemp("families")
    app = make_app(cache, cache / "images", MODEL_ID=str(ensure_family(family, cache)),
                   DTYPE="float16", DEFAULT_GUIDANCE_SCALE=2.0,
                   MAX_CONCURRENT_GENERATIONS=0)  # fmt: skip
    shared = app.extensions["engine"].shared_pipeline()
    assert shared.unet.dtype == torch.float16 and shared.vae.dtype == torch.float32
    weights = {name: p.clone() for name, p in shared.vae.named_parameters()}
    asks = [(kind, seed) for kind in ("generation", "edit", "inpaint") for seed in (1, 2)]
    caplog.clear()  # what loading said is not per request
    with warnings.catch_warnings(record=True) as warned, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        alone = [answer(app, kind, seed) for kind, seed in asks]
        with ThreadPoolExecutor(len(asks)) as pool:
            together = list(pool.map(lambda ask: answer(app, *ask), asks))
    for one, other in zip(alone, together, strict=True):
        np.testing.assert_array_equal(one, other)
    assert not np.array_equal(alone[0], alone[1])  # seeds still matter
    assert all(p.dtype == torch.float32 and torch.equal(p, weights[name])
               for name, p in shared.vae.named_parameters())  # fmt: skip
    said = [str(w.message) for w in warned] + [
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
    ]
    assert not [line for line in said if "upcast" in line or "float32" in line], said
