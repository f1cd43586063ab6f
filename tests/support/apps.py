"""Build apps and server settings on the tiny random model, small and fast."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Flask

from app import create_app
from app.engine import PipelineCall

# Small and fast defaults for every app and server the tests start.
FAST: dict[str, Any] = {"MODEL_ID": "tiny-random", "DEFAULT_SIZE": "64x64", "DEFAULT_STEPS": 2}


def make_app(
    model_cache: Path,
    image_dir: Path,
    *,
    pipeline_call: PipelineCall | None = None,
    **overrides: Any,
) -> Flask:
    """Create an app on the tiny model and wait until the model has loaded.

    `pipeline_call` replaces the engine's pipeline-call seam (to spy or inject faults).
    """
    config = {**FAST, "MODEL_CACHE_DIR": str(model_cache), "IMAGE_DIR": str(image_dir)}
    app = create_app({**config, **overrides}, pipeline_call=pipeline_call)
    assert app.extensions["engine"].wait_until_loaded(120), "model did not load"
    return app


def idle_app(directory: Path, **overrides: Any) -> Flask:
    """Create an app whose model is never loaded: for what happens before the engine."""
    config = {
        **FAST,
        "IMAGE_DIR": str(directory / "images"),
        "MODEL_CACHE_DIR": str(directory / "models"),
    }
    return create_app({**config, **overrides}, load_model=False)


def server_env(model_cache: Path, image_dir: Path, **extra: object) -> dict[str, object]:
    """Return the environment of a real server on the tiny model; `extra` adds settings."""
    return {**FAST, "MODEL_CACHE_DIR": model_cache, "IMAGE_DIR": image_dir, **extra}
