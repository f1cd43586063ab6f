"""Configuration: defaults, then environment variables, then a test mapping.

Every setting is documented in the README's configuration table. Nothing here runs at
import time beyond defining the table: `create_app()` calls `load_config()`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

DEFAULT_MODEL_ID = "stabilityai/stable-diffusion-3-medium-diffusers"

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def _parse_bool(raw: str) -> bool:
    """Parse a boolean environment value, refusing anything ambiguous."""
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"expected one of {sorted(_TRUE | _FALSE)}, got {raw!r}")


# name -> (default, parser). The parser turns an environment string into the value.
SETTINGS: dict[str, tuple[Any, Any]] = {
    # Model
    "MODEL_ID": (DEFAULT_MODEL_ID, str),
    "MODEL_NAME": ("", str),  # name shown by /v1/models; empty means MODEL_ID
    "ACCEPT_ANY_MODEL": (True, _parse_bool),  # False: `model` must equal the served name
    "DEVICE": ("auto", str),  # auto | cuda | cuda:N | mps | cpu
    "DTYPE": ("auto", str),  # auto | bfloat16 | float16 | float32
    "MODEL_CACHE_DIR": ("", str),  # where tiny-random is built; empty means instance/models
    "LOAD_RETRY_AFTER_SECONDS": (10, int),
    # Generation limits and defaults
    "DEFAULT_SIZE": ("1024x1024", str),
    "MAX_IMAGE_SIDE": (2048, int),
    "MAX_IMAGE_PIXELS": (1536 * 1536, int),
    "MAX_PROMPT_CHARS": (4000, int),
    "MAX_IMAGES_PER_REQUEST": (10, int),
    "DEFAULT_STEPS": (28, int),
    "MAX_STEPS": (100, int),
    "DEFAULT_GUIDANCE_SCALE": (7.0, float),
    "MAX_GUIDANCE_SCALE": (30.0, float),
    # Edits and variations
    "MAX_UPLOAD_BYTES": (25 * 1024 * 1024, int),  # a multipart body with its images
    "MAX_UPLOAD_PIXELS": (4096 * 4096, int),  # larger inputs are refused before decoding
    "DEFAULT_STRENGTH": (0.8, float),  # how much of an edited image is re-noised
    "VARIATIONS_PROMPT": ("", str),  # variations take no prompt; this one is used
    "VARIATIONS_STRENGTH": (0.6, float),
    # Load: the GPU lane, its queue, deadlines and micro-batching
    "MAX_CONCURRENT_GENERATIONS": (1, int),  # pipeline calls at once; 0 means unbounded
    "MAX_QUEUE": (32, int),  # images waiting for the lane before 429
    "REQUEST_TIMEOUT_SECONDS": (300.0, float),
    "BATCH_MAX_SIZE": (1, int),  # images per pipeline call; 1 turns batching off
    "BATCH_WAIT_MS": (10.0, float),  # how long a batch leader waits for company
    "WARMUP": (True, _parse_bool),  # one small generation before /readyz says ready
    # Output encoding
    "PNG_COMPRESS_LEVEL": (1, int),  # zlib level 0..9: 1 is fast, 9 smallest and slowest
    "ENCODE_THREADS": (0, int),  # threads deflating one PNG; 0: the usable CPUs, at most 8
    # HTTP
    "IMAGE_DIR": ("", str),  # empty means static/images next to the app package
    "PUBLIC_BASE_URL": ("", str),
    "TRUSTED_PROXIES": (0, int),  # proxies whose X-Forwarded-* headers are honoured
    "MAX_REQUEST_BYTES": (1024 * 1024, int),
    "LOG_LEVEL": ("INFO", str),
    "LOG_FORMAT": ("text", str),  # text | json (one JSON object per line)
    "CORS_ORIGINS": ("", str),  # comma-separated origins allowed to call the API; empty: none
    # API keys: with any configured, /v1/* needs `Authorization: Bearer <key>`
    "API_KEYS": ("", str),  # comma-separated keys
    "API_KEYS_FILE": ("", str),  # a file with one key per line (`#` comments)
    "METRICS_REQUIRE_KEY": (False, _parse_bool),  # /metrics needs a key too
    # Image retention
    "IMAGE_TTL_SECONDS": (3600.0, float),  # an image's URL lives this long; 0 keeps forever
    "IMAGE_STORE_MAX_BYTES": (0, int),  # over it, the oldest images go first; 0: no cap
    "IMAGE_SWEEP_INTERVAL_SECONDS": (60.0, float),  # at most; at least ten sweeps per TTL
}

# Step counts for OpenAI's `quality` values, as multiples of DEFAULT_STEPS.
QUALITY_STEP_FACTORS: dict[str, float] = {
    "low": 0.5,
    "medium": 1.0,
    "standard": 1.0,
    "auto": 1.0,
    "high": 1.5,
    "hd": 1.5,
}


def load_config(
    environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Return the settings: defaults, then `environ`, then `overrides`."""
    environ = os.environ if environ is None else environ
    config: dict[str, Any] = {}
    for name, (default, parse) in SETTINGS.items():
        config[name] = default
        raw = environ.get(name)
        if raw is not None:
            try:
                config[name] = parse(raw)
            except ValueError as exc:
                raise ValueError(f"environment variable {name}: {exc}") from exc
    config.update(overrides or {})
    return config


def quality_steps(quality: str, default_steps: int) -> int:
    """Return the step count that a `quality` value asks for."""
    return max(1, round(default_steps * QUALITY_STEP_FACTORS[quality]))
