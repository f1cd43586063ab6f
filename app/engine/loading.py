"""Loading the shared pipeline: device and dtype, the built-in random models, quiet logs.

The server's engine and the benchmark's bare baseline load a model through
`load_pipeline`, so both measure the same thing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

log = logging.getLogger(__name__)

_DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
}


def resolve_device(name: str) -> torch.device:
    """Pick CUDA, then MPS, then CPU for "auto"; otherwise use the named device."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """Pick bf16 on CUDA, fp16 on MPS, fp32 on CPU for "auto"; else the named dtype."""
    if name == "auto":
        return {"cuda": torch.bfloat16, "mps": torch.float16}.get(device.type, torch.float32)
    try:
        return _DTYPES[name.lower()]
    except KeyError:
        raise ValueError(
            f"DTYPE must be auto, bfloat16, float16 or float32, not {name!r}"
        ) from None


def _import_quietly() -> None:
    """Import diffusers with its import-time warnings and progress bars silenced."""
    from transformers.utils import logging as transformers_logging

    # Importing diffusers' pipelines warns once per image processor that torchvision is
    # absent; the server never uses those processors.
    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        from diffusers import AutoPipelineForText2Image  # noqa: F401 -- imports the pipelines
        from diffusers.utils import logging as diffusers_logging
    finally:
        transformers_logging.set_verbosity(verbosity)
    # Progress bars turn the server's log into noise.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def load_pipeline(
    model_id: str, device: torch.device, dtype: torch.dtype, cache_dir: str | Path
) -> Any:
    """Load `model_id` (a Hub id, a local directory or a built-in random model)."""
    _import_quietly()
    from diffusers import AutoPipelineForText2Image

    from app.sd3_medium_random import SD3_MEDIUM_RANDOM_ID, build_sd3_medium_random
    from app.tiny_model import TINY_MODEL_ID, ensure_tiny_sd3

    if model_id in (TINY_MODEL_ID, SD3_MEDIUM_RANDOM_ID):
        for _ in range(3):
            log.warning(
                "MODEL_ID=%s: RANDOM WEIGHTS, every image is NOISE. "
                "For tests, benchmarks and offline demos only.",
                model_id,
            )
    if model_id == SD3_MEDIUM_RANDOM_ID:
        # Built in place on the device, in the dtype: nothing to load.
        pipeline = build_sd3_medium_random(device, dtype)
    else:
        source: str | Path = ensure_tiny_sd3(cache_dir) if model_id == TINY_MODEL_ID else model_id
        log.info("loading model %r on %s in %s", model_id, device, dtype)
        # The generic loader picks the pipeline class from model_index.json, so SDXL or
        # FLUX are served by changing MODEL_ID.
        pipeline = AutoPipelineForText2Image.from_pretrained(source, dtype=dtype)
        pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def explain_load_failure(exc: BaseException) -> str:
    """Say why loading failed and what to set, without paths or tracebacks."""
    kind = type(exc).__name__
    if kind == "GatedRepoError":
        return (
            "The model set by MODEL_ID is gated on the Hugging Face Hub: accept its licence "
            "there and set HF_TOKEN to a token with access, or set MODEL_ID=tiny-random for "
            "an offline demo."
        )
    if isinstance(exc, torch.OutOfMemoryError):
        return "The model does not fit in device memory: set DTYPE=float16 or another DEVICE."
    if isinstance(exc, ValueError) and str(exc).startswith("DTYPE"):
        return str(exc)
    if isinstance(exc, OSError | ConnectionError) or kind.endswith(("NotFoundError", "HTTPError")):
        return (
            "The model set by MODEL_ID could not be found or downloaded: set MODEL_ID to a "
            "Hugging Face Hub id you can reach (HF_TOKEN for gated models, network access) "
            "or to a local diffusers directory, or MODEL_ID=tiny-random to run offline."
        )
    return f"The model set by MODEL_ID failed to load ({kind}); see the server log."
