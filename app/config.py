"""Configuration: one table of settings; defaults, then the environment, then a test mapping.

`SETTINGS` names every setting with its default, its parser, its group and what it means;
docs/configuration.md is generated from it by app/config_docs.py, and a test fails when
the two differ. Nothing here runs at import time beyond defining the
tables: `create_app()` calls `load_config()`.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

DEFAULT_MODEL_ID = "stabilityai/stable-diffusion-3-medium-diffusers"

TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off", ""}


def _parse_bool(raw: str) -> bool:
    """Parse a boolean environment value, refusing anything ambiguous."""
    value = raw.strip().lower()
    if value in TRUE_WORDS:
        return True
    if value in FALSE_WORDS:
        return False
    raise ValueError(f"expected one of {sorted(TRUE_WORDS | FALSE_WORDS)}, got {raw!r}")


class Setting(NamedTuple):
    """One environment variable the app reads: `default` and `parse` come first, as before."""

    default: Any
    parse: Callable[[str], Any]
    group: str
    doc: str  # what it means, for users (markdown)
    shown: str | None = None  # the default as the docs show it, where the value says too little


MODEL = "Model"
LIMITS = "Generation limits and defaults"
EDITS = "Edits and variations"
LOAD = "Load: the GPU lane, its queue, deadlines and micro-batching"
SPEED = "Speed and memory (see [GPU options](deployment.md#gpu-options))"
LORAS = "LoRA adapters"
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
        10, int, LIMITS, "Largest `n`."
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
    "COMPILE": Setting(
        False, _parse_bool, SPEED,
        "`torch.compile` the denoiser and the VAE decoder. The warm-up compiles `DEFAULT_SIZE` "
        "and `COMPILE_SIZES`; any other size, or batch shape, compiles on its first request "
        "(logged with the seconds it took, counted in `image_server_compilations_total`).",
    ),
    "COMPILE_SIZES": Setting(
        "", str, SPEED,
        "Comma-separated `WxH` sizes the warm-up compiles besides `DEFAULT_SIZE` "
        "(`512x512,768x1344`).",
        "empty",
    ),
    "FUSE_QKV": Setting(
        False, _parse_bool, SPEED,
        "Fuse the attention's query, key and value projections into one matrix product "
        "(denoiser and VAE, where the model supports it). Keeps the unfused weights too.",
    ),
    "VAE_CHANNELS_LAST": Setting(
        False, _parse_bool, SPEED, "Store the VAE's weights channels-last (faster convolutions)."
    ),
    "ATTENTION_BACKEND": Setting(
        "", str, SPEED,
        "diffusers' attention backend (`native`, `flash`, `_native_cudnn`, `sage`, ...); one that "
        "is unknown, not installed, or needs CUDA on a CPU stops the start. Models whose attention "
        "does not use the dispatcher (SD3 on diffusers 0.42) ignore it, with a warning.",
        "unset (PyTorch's SDPA)",
    ),
    "OFFLOAD": Setting(
        "none", str, SPEED,
        "`none`, `model` (each module moves to the GPU while it runs) or `sequential` (each "
        "layer does: least memory, slowest). Needs a GPU and `MAX_CONCURRENT_GENERATIONS=1`.",
    ),
    "SD3_DROP_T5": Setting(
        False, _parse_bool, SPEED,
        "Load Stable Diffusion 3 without its T5 encoder: far less memory, somewhat weaker "
        "prompt following. Other models refuse it.",
    ),
    "QUANTIZE": Setting(
        "none", str, SPEED,
        "`none`, `int8` or `fp8` (torchao weight-only: `pip install torchao`; fp8 needs an "
        "Ada or Hopper GPU) or `nf4` (bitsandbytes, CUDA only), applied while loading.",
    ),
    "QUANTIZE_COMPONENTS": Setting(
        "transformer", str, SPEED,
        "Comma-separated components `QUANTIZE` applies to: `transformer` (or `unet`), "
        "`text_encoder`, `text_encoder_2`, `text_encoder_3`, or `text_encoders` for all three.",
    ),
    "VAE_TILING_PIXELS": Setting(
        0, int, SPEED,
        "Decode images with a side above √N in overlapping tiles of √N×√N (rounded down to a "
        "multiple of 64): caps the VAE's memory near that of an N-pixel image; `0` is off.",
        "`0` (off)",
    ),
    "LORA_DIR": Setting(
        "", str, LORAS,
        "Directory of LoRA adapter files (`<name>.safetensors`, the diffusers/PEFT layout) that "
        "requests name in `loras`; looked at on every request, so new files need no restart "
        "(it must exist at start). Unset, adapters are off and a request naming one gets 400. "
        "With `COMPILE`, adapters are hot-swapped into fixed slots (`LORA_HOTSWAP_RANK`, "
        "`LORA_HOTSWAP_LAYERS`); not with `FUSE_QKV` (refused at start).",
        "unset (off)",
    ),
    "LORA_CACHE_SIZE": Setting(
        8, int, LORAS,
        "Adapters kept loaded on the model's device; beyond it the least recently used one is "
        "unloaded (a request's own adapters always stay while it runs). With `COMPILE` it is the "
        "number of hot-swap slots, at least `MAX_LORAS_PER_REQUEST`: every call runs every "
        "slot's LoRA layers (unused ones at scale 0), so keep it small.",
    ),
    "MAX_LORAS_PER_REQUEST": Setting(4, int, LORAS, "Most adapters one request may name."),
    "LORA_HOTSWAP_RANK": Setting(
        64, int, LORAS,
        "With `COMPILE`: the rank of the hot-swap slots, the largest adapter rank served "
        "(smaller ranks are zero-padded; a larger one is a 400). Slot memory and time grow "
        "with it.",
    ),
    "LORA_HOTSWAP_LAYERS": Setting(
        "to_q,to_k,to_v,to_out.0,add_q_proj,add_k_proj,add_v_proj,to_add_out", str, LORAS,
        "With `COMPILE`: comma-separated denoiser layers (module-name suffixes, as PEFT's "
        "`target_modules`) the hot-swap slots cover; an adapter of any other layer is a 400. "
        "The default is every attention projection, what diffusers' LoRA training scripts "
        "target.",
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
