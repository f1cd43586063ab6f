"""Configuration: one table of settings; defaults, then the environment, then a test mapping.

`SETTINGS` names every setting with its default, its parser, its group and what it means;
docs/configuration.md is generated from it (`.venv/bin/python scripts/gen_config_docs.py`)
and a test fails when the two differ. Nothing here runs at import time beyond defining the
tables: `create_app()` calls `load_config()`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

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


class Setting(NamedTuple):
    """One environment variable the app reads: `default` and `parse` come first, as before."""

    default: Any
    parse: Callable[[str], Any]
    group: str
    doc: str  # what it means, for users (markdown)
    shown: str | None = None  # the default as the docs show it, where the value says too little


class Documented(NamedTuple):
    """An environment variable read outside `load_config()`, listed in the docs only."""

    shown: str  # the default, as the docs show it
    doc: str


MODEL = "Model"
LIMITS = "Generation limits and defaults"
EDITS = "Edits and variations"
LOAD = "Load: the GPU lane, its queue, deadlines and micro-batching"
OUTPUT = "Output encoding"
HTTP = "HTTP and logs"
KEYS = "API keys"
RETENTION = "Image retention"
STORAGE = "Image storage: a local directory or S3-compatible object storage"

SETTINGS: dict[str, Setting] = {
    "MODEL_ID": Setting(
        DEFAULT_MODEL_ID, str, MODEL,
        "Hub id, local diffusers directory (holding `model_index.json`), `tiny-random` "
        "(offline, small, random weights) or `sd3-medium-random` (SD3 Medium's architecture "
        "with random weights, built on the device: for GPU benchmarks). Any diffusers "
        "text-to-image model works (`stabilityai/stable-diffusion-xl-base-1.0`, a FLUX "
        "repository).",
    ),
    "MODEL_NAME": Setting(
        "", str, MODEL,
        "Model id shown by `GET /v1/models`.",
        "`MODEL_ID` (a local path's last part)",
    ),
    "ACCEPT_ANY_MODEL": Setting(
        True, _parse_bool, MODEL,
        "When `false`, a request's `model` must equal `MODEL_NAME` (else 404 "
        "`model_not_found`). The `model` field is always logged.",
    ),
    "DEVICE": Setting(
        "auto", str, MODEL,
        "`auto` picks `cuda`, then `mps`, then `cpu`; or name one (`cuda`, `cuda:1`, `mps`, "
        "`cpu`).",
    ),
    "DTYPE": Setting(
        "auto", str, MODEL,
        "`auto` is bfloat16 on CUDA, float16 on MPS, float32 on CPU; or `bfloat16`, "
        "`float16`, `float32`.",
    ),
    "MODEL_CACHE_DIR": Setting(
        "", str, MODEL,
        "Where `tiny-random` is built and saved (once).",
        "`instance/models`",
    ),
    "LOAD_RETRY_AFTER_SECONDS": Setting(
        10, int, MODEL, "`Retry-After` sent with 503 while the model loads."
    ),
    "DEFAULT_SIZE": Setting(
        "1024x1024", str, LIMITS, "Size used when `size` is absent or `auto`."
    ),
    "MAX_IMAGE_SIDE": Setting(2048, int, LIMITS, "Largest width or height."),
    "MAX_IMAGE_PIXELS": Setting(
        1536 * 1536, int, LIMITS, "Largest width × height.", "`2359296` (1536²)"
    ),
    "MAX_PROMPT_CHARS": Setting(4000, int, LIMITS, "Longest `prompt` and `negative_prompt`."),
    "MAX_IMAGES_PER_REQUEST": Setting(
        10, int, LIMITS, "Largest `n` (for edits, `n` × the number of input images)."
    ),
    "DEFAULT_STEPS": Setting(
        28, int, LIMITS,
        "Denoising steps for `quality=auto`; the other `quality` values are multiples of it "
        "(see [the API notes](api.md#quality-and-steps)).",
    ),
    "MAX_STEPS": Setting(100, int, LIMITS, "Largest `num_inference_steps`."),
    "DEFAULT_GUIDANCE_SCALE": Setting(
        7.0, float, LIMITS, "Classifier-free guidance when `guidance_scale` is absent."
    ),
    "MAX_GUIDANCE_SCALE": Setting(30.0, float, LIMITS, "Largest `guidance_scale`."),
    "MAX_UPLOAD_BYTES": Setting(
        25 * 1024 * 1024, int, EDITS,
        "Largest multipart body for edits and variations, its images included (413 above).",
        "`26214400` (25 MiB)",
    ),
    "MAX_UPLOAD_PIXELS": Setting(
        4096 * 4096, int, EDITS,
        "Largest uploaded image; larger inputs are refused before decoding.",
        "`16777216` (4096²)",
    ),
    "DEFAULT_STRENGTH": Setting(
        0.8, float, EDITS,
        "Edit strength when none is sent: how much of an edited image is re-noised.",
    ),
    "VARIATIONS_PROMPT": Setting(
        "", str, EDITS, "Prompt used for variations (which take no prompt).", "empty"
    ),
    "VARIATIONS_STRENGTH": Setting(0.6, float, EDITS, "Variation strength when none is sent."),
    "MAX_CONCURRENT_GENERATIONS": Setting(
        1, int, LOAD,
        "Pipeline calls running at once (the GPU lane); `0` means unbounded. Parallel calls "
        "on one GPU add latency, not throughput.",
    ),
    "MAX_QUEUE": Setting(
        32, int, LOAD,
        "Images (not requests: `n` counts) that may wait for the lane; beyond it, 429. The "
        "default: a queue of 1024² SD3 images on one H100 clears well within the request "
        "timeout.",
    ),
    "REQUEST_TIMEOUT_SECONDS": Setting(
        300.0, float, LOAD,
        "Deadline from arrival: a queued request past it never runs, a running one stops at "
        "the next denoising step; both answer 504. Behind nginx, keep `proxy_read_timeout` "
        "above it.",
    ),
    "BATCH_MAX_SIZE": Setting(
        1, int, LOAD,
        "Images merged into one pipeline call from compatible waiting requests "
        "(micro-batching); `1` turns batching off.",
        "`1` (off)",
    ),
    "BATCH_WAIT_MS": Setting(
        10.0, float, LOAD, "How long the first request of a batch waits for company."
    ),
    "WARMUP": Setting(
        True, _parse_bool, LOAD,
        "Run one small generation after loading, before `/readyz` answers 200.",
    ),
    "PNG_COMPRESS_LEVEL": Setting(
        1, int, OUTPUT,
        "zlib level of PNG output, 0 (no compression) to 9 (smallest, slowest); 1 is fast. "
        "Sizes and times per level: [bench/README.md](../bench/README.md#png-encoding-benchpngpy).",
    ),
    "ENCODE_THREADS": Setting(
        0, int, OUTPUT,
        "Threads that deflate one PNG at once. `1` encodes on the request thread only. "
        "\"Usable\" is the CPU affinity, which a container's CPU quota does not change: under a "
        "quota, set this to it.",
        "`0` (usable CPUs, at most 8)",
    ),
    "IMAGE_DIR": Setting(
        "", str, HTTP,
        "Where generated images are written and served from.",
        "`static/images` (next to the `app` package)",
    ),
    "PUBLIC_BASE_URL": Setting(
        "", str, HTTP,
        "Base of image URLs (`https://img.example.com`); unset, URLs are built from the request.",
        "unset",
    ),
    "TRUSTED_PROXIES": Setting(
        0, int, HTTP,
        "Number of proxies in front whose `X-Forwarded-For/Proto/Host/Port/Prefix` headers are "
        "trusted (werkzeug's `ProxyFix`). `0` ignores them, so clients cannot forge image URLs.",
    ),
    "MAX_REQUEST_BYTES": Setting(
        1024 * 1024, int, HTTP,
        "Largest request body (413 above it). Behind nginx, keep `client_max_body_size` in "
        "step (`deploy/nginx.conf`).",
        "`1048576` (1 MiB)",
    ),
    "LOG_LEVEL": Setting(
        "INFO", str, HTTP, "Application log level (`WARNING` also hides the access lines)."
    ),
    "LOG_FORMAT": Setting(
        "text", str, HTTP,
        "`text` or `json`: with `json` every log line, the app's and Gunicorn's, is one JSON "
        "object (see [Logs](deployment.md#logs)).",
    ),
    "CORS_ORIGINS": Setting(
        "", str, HTTP,
        "Comma-separated origins (`https://app.example`) whose pages may call the API from a "
        "browser; exactly these are allowed, preflights included. `*` allows any, only if you "
        "set it.",
        "unset (CORS off)",
    ),
    "API_KEYS": Setting(
        "", str, KEYS,
        "Comma-separated API keys. With any key here or in `API_KEYS_FILE`, every `/v1/*` "
        "request needs `Authorization: Bearer <key>` (else 401 `invalid_api_key`).",
        "unset",
    ),
    "API_KEYS_FILE": Setting(
        "", str, KEYS,
        "A file with one key per line (blank lines and `#` comments ignored), read at start.",
        "unset",
    ),
    "METRICS_REQUIRE_KEY": Setting(
        False, _parse_bool, KEYS,
        "With keys set, `/metrics` needs one too. Probes, `/openapi.json`, the playground page "
        "and image URLs never do.",
    ),
    "IMAGE_TTL_SECONDS": Setting(
        3600.0, float, RETENTION,
        "How long an image URL lives, like OpenAI's 60-minute URLs; after it the URL answers "
        "404 and the file is deleted, and no cache keeps it longer. `0` keeps images forever "
        "(local store, or S3 with `S3_PUBLIC_BASE_URL`). With `IMAGE_STORE=s3` and presigned "
        "URLs, at most `604800` (7 days).",
    ),
    "IMAGE_STORE_MAX_BYTES": Setting(
        0, int, RETENTION,
        "Largest total size of the image directory (local store only); over it, the oldest "
        "images are deleted first. Keep it far above one request's images.",
        "`0` (no cap)",
    ),
    "IMAGE_SWEEP_INTERVAL_SECONDS": Setting(
        60.0, float, RETENTION,
        "Most time between two sweeps of the image directory (at least ten sweeps per TTL).",
    ),
    "IMAGE_STORE": Setting(
        "local", str, STORAGE,
        "`local`: images are files in `IMAGE_DIR`, served by nginx or the app. `s3`: one "
        "object per image in `S3_BUCKET`, answered with a presigned URL valid "
        "`IMAGE_TTL_SECONDS` (at most 7 days), so every replica's URLs work anywhere (see "
        "[S3](deployment.md#images-in-s3-compatible-storage)). Credentials come from boto3's "
        "chain (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, "
        "`AWS_PROFILE`, instance or pod roles) and are never logged.",
    ),
    "S3_BUCKET": Setting(
        "", str, STORAGE, "The bucket (required with `IMAGE_STORE=s3`).", "unset"
    ),
    "S3_PREFIX": Setting(
        "images/", str, STORAGE,
        "Key prefix of the images; the lifecycle rule (`apply-s3-lifecycle`) expires it.",
    ),
    "S3_ENDPOINT_URL": Setting(
        "", str, STORAGE,
        "Unset for AWS; the endpoint of MinIO, SeaweedFS, Cloudflare R2, Ceph "
        "(`http://127.0.0.1:8333`).",
        "unset (AWS)",
    ),
    "S3_REGION": Setting("us-east-1", str, STORAGE, "Region the requests are signed for."),
    "S3_ADDRESSING_STYLE": Setting(
        "auto", str, STORAGE,
        "`auto`, `path` (`endpoint/bucket/key`: most self-hosted stores) or `virtual` "
        "(`bucket.endpoint/key`).",
    ),
    "S3_PUBLIC_BASE_URL": Setting(
        "", str, STORAGE,
        "A public bucket or a CDN in front of it (`https://cdn.example.com`): URLs become "
        "`<base>/<key>`, unsigned; they live until the lifecycle rule deletes the object "
        "(whole days).",
        "unset (presigned URLs)",
    ),
}  # fmt: skip

# Read by gunicorn.conf.py in the Gunicorn master, not by the app. tests/test_docs.py
# checks that this list and what gunicorn.conf.py reads agree, defaults included.
GUNICORN_SETTINGS: dict[str, Documented] = {
    "GUNICORN_BIND": Documented(
        "`0.0.0.0:8000`", "Listen address (`-b` on the command line also works)."
    ),
    "GUNICORN_THREADS": Documented(
        "lane + `MAX_QUEUE` + 16",
        "Request threads of the one worker process; must exceed lane + queue so that "
        "admission happens in the app, not in a connection backlog.",
    ),
    "GUNICORN_TIMEOUT": Documented(
        "`60`", "Worker heartbeat timeout; neither model loading nor long generations trip it."
    ),
    "GUNICORN_GRACEFUL_TIMEOUT": Documented(
        "`330`",
        "Time running and queued requests get to finish on SIGTERM; keep it above "
        "`REQUEST_TIMEOUT_SECONDS`.",
    ),
    "GUNICORN_LOG_LEVEL": Documented(
        "`info`",
        "Level of Gunicorn's own error log (its lines are JSON too with `LOG_FORMAT=json`).",
    ),
}

# Read by libraries, not by this code.
LIBRARY_SETTINGS: dict[str, Documented] = {
    "HF_TOKEN": Documented(
        "unset",
        "Hugging Face token, for gated models such as SD3 (read by `huggingface_hub`).",
    ),
    "CUDA_VISIBLE_DEVICES": Documented(
        "unset (every GPU)",
        "GPUs the process may see (read by CUDA); one per replica, with `DEVICE=cuda:0`.",
    ),
    "AWS_ACCESS_KEY_ID": Documented(
        "unset", "S3 access key, with `IMAGE_STORE=s3` (read by boto3; never logged)."
    ),
    "AWS_SECRET_ACCESS_KEY": Documented(
        "unset", "S3 secret key, with `IMAGE_STORE=s3` (read by boto3; never logged)."
    ),
    "AWS_SESSION_TOKEN": Documented("unset", "Temporary S3 credentials' token (read by boto3)."),
    "AWS_PROFILE": Documented(
        "unset",
        "A profile of `~/.aws/credentials` (read by boto3). Without any of these, boto3 asks "
        "the instance or pod role (IRSA, EKS Pod Identity).",
    ),
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
    for name, setting in SETTINGS.items():
        config[name] = setting.default
        raw = environ.get(name)
        if raw is not None:
            try:
                config[name] = setting.parse(raw)
            except ValueError as exc:
                raise ValueError(f"environment variable {name}: {exc}") from exc
    config.update(overrides or {})
    return config


def quality_steps(quality: str, default_steps: int) -> int:
    """Return the step count that a `quality` value asks for."""
    return max(1, round(default_steps * QUALITY_STEP_FACTORS[quality]))


# -- docs/configuration.md --------------------------------------------------------------

CONFIG_DOCS_COMMAND = ".venv/bin/python scripts/gen_config_docs.py"


def _shown(value: Any) -> str:
    """Render a default value as the docs show it."""
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    return f"`{value}`" if value != "" else "empty"


def _table(rows: list[tuple[str, str, str]]) -> list[str]:
    lines = ["| Variable | Default | Meaning |", "| --- | --- | --- |"]
    lines += [f"| `{name}` | {default} | {doc} |" for name, default, doc in rows]
    return lines


def render_configuration_docs() -> str:
    """Return docs/configuration.md, generated from the tables above."""
    lines = [
        "# Configuration",
        "",
        f"<!-- Generated from app/config.py by `{CONFIG_DOCS_COMMAND}`; do not edit. -->",
        "",
        "Environment variables, read when the app is created (never at import time). A value",
        "that does not parse stops the start with an error naming the variable. Booleans take",
        f"{', '.join(f'`{v}`' for v in sorted(_TRUE))} or "
        f"{', '.join(f'`{v}`' for v in sorted(_FALSE - {''}))} (empty is false).",
    ]
    groups: dict[str, list[tuple[str, str, str]]] = {}
    for name, setting in SETTINGS.items():
        shown = setting.shown if setting.shown is not None else _shown(setting.default)
        groups.setdefault(setting.group, []).append((name, shown, setting.doc))
    for group, rows in groups.items():
        lines += ["", f"## {group}", "", *_table(rows)]
    lines += [
        "",
        "## Gunicorn",
        "",
        "Read by `gunicorn.conf.py` in the Gunicorn master, not by the app; Gunicorn's command",
        "line (`bash scripts/serve.sh -b 127.0.0.1:9000`) overrides them.",
        "",
        *_table([(name, var.shown, var.doc) for name, var in GUNICORN_SETTINGS.items()]),
        "",
        "## Read by libraries",
        "",
        *_table([(name, var.shown, var.doc) for name, var in LIBRARY_SETTINGS.items()]),
    ]
    return "\n".join(lines) + "\n"
