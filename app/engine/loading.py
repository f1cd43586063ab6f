"""Loading the shared pipeline: device and dtype, the built-in random models, quiet logs.

The server's engine and the benchmark's bare baseline load a model through
`load_pipeline`, so both measure the same thing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from app.engine.options import EngineOptions, OptionError, quantization_config, quantize_in_place

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


# Loggers that warn while diffusers is imported, about nothing the server uses.
_NOISY_AT_IMPORT = ("torchao", "torch.utils._pytree")


def _import_quietly() -> None:
    """Import diffusers with its import-time warnings and progress bars silenced."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    # Importing diffusers' pipelines warns once per image processor that torchvision is
    # absent; the server never uses those processors.
    # With torchao installed (QUANTIZE), diffusers imports it: torchao, diffusers and
    # torch's pytree then warn about kernels and checkpoint formats the server never uses.
    verbosity = transformers_logging.get_verbosity(), diffusers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    diffusers_logging.set_verbosity_error()
    quieted = [logging.getLogger(name) for name in _NOISY_AT_IMPORT]
    levels = [logger.level for logger in quieted]
    for logger in quieted:
        logger.setLevel(logging.ERROR)
    try:
        from diffusers import AutoPipelineForText2Image  # noqa: F401 -- imports the pipelines
    finally:
        transformers_logging.set_verbosity(verbosity[0])
        diffusers_logging.set_verbosity(verbosity[1])
        for logger, level in zip(quieted, levels, strict=True):
            logger.setLevel(level)
    # Progress bars turn the server's log into noise.
    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def load_pipeline(
    model_id: str,
    device: torch.device,
    dtype: torch.dtype,
    cache_dir: str | Path,
    options: EngineOptions | None = None,
) -> Any:
    """Load `model_id` (a Hub id, a local directory or a built-in random model).

    `options` brings the load-time choices: SD3 without T5, quantization, and CPU offload
    (which keeps the modules off the device: its hooks move them in when they run).
    """
    options = options or EngineOptions()
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
        # Built in place on the device, in the dtype: nothing to load. Offload moves it off
        # the device afterwards (apply_options), so building it needs the full memory once.
        pipeline = build_sd3_medium_random(device, dtype, drop_t5=options.drop_t5)
        quantize_in_place(pipeline, options)
    else:
        source: str | Path = ensure_tiny_sd3(cache_dir) if model_id == TINY_MODEL_ID else model_id
        log.info("loading model %r on %s in %s", model_id, device, dtype)
        # The generic loader picks the pipeline class from model_index.json, so SDXL or
        # FLUX are served by changing MODEL_ID.
        pipeline = AutoPipelineForText2Image.from_pretrained(
            source, dtype=dtype, **load_arguments(source, options)
        )
        if options.offload == "none":
            pipeline.to(device)
    pipeline.set_progress_bar_config(disable=True)
    settle_vae_upcast(pipeline)
    return pipeline


def settle_vae_upcast(pipeline: Any) -> None:
    """Decide once, at load, the dtype the VAE runs in, so no call changes it.

    A VAE whose config says `force_upcast` (SDXL's, SD 1.5's) makes diffusers' pipelines
    cast the SHARED VAE to float32 and back around their VAE calls, in place (a race with
    calls running beside it: one call's decode meets the weights another just cast) and
    with a warning each time. Only float16 overflows in such a VAE: in bfloat16 or float32
    the upcast is switched off; in float16 the VAE is kept in float32 for good (its
    weights take twice the memory, tens of MB for SDXL's) and its inputs are cast on the
    way in, so the pipelines see a VAE that needs no upcast.
    """
    vae = getattr(pipeline, "vae", None)
    if not getattr(getattr(vae, "config", None), "force_upcast", False):
        return
    if vae.dtype == torch.float16:
        vae.to(torch.float32)
        _run_in_float32(vae)
        log.info("VAE kept in float32 (float16 overflows in it): no per-call upcast")
    vae.register_to_config(force_upcast=False)


def _run_in_float32(vae: Any) -> None:
    """Cast the float inputs of the VAE's parts to float32, and what the encoder side
    hands back (the latent distribution's moments) to float16, as the pipelines expect."""

    def to_float32(module: Any, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        def cast(value: Any) -> Any:
            is_float = isinstance(value, torch.Tensor) and value.is_floating_point()
            return value.to(torch.float32) if is_float else value

        return tuple(cast(a) for a in args), {k: cast(v) for k, v in kwargs.items()}

    parts = ("encoder", "quant_conv", "post_quant_conv", "decoder")
    for part in filter(None, (getattr(vae, name, None) for name in parts)):
        part.register_forward_pre_hook(to_float32, with_kwargs=True)
    last_encoder_part = getattr(vae, "quant_conv", None) or vae.encoder
    last_encoder_part.register_forward_hook(lambda module, args, out: out.to(torch.float16))


def load_arguments(source: str | Path, options: EngineOptions) -> dict[str, Any]:
    """Return from_pretrained's extra arguments for the load-time options."""
    if not options.drop_t5 and options.quantize == "none":
        return {}
    from diffusers import DiffusionPipeline

    present = {name for name, value in DiffusionPipeline.load_config(source).items()
               if not name.startswith("_") and isinstance(value, list | tuple)
               and value[0] is not None}  # fmt: skip
    arguments: dict[str, Any] = {}
    if options.drop_t5:
        if "text_encoder_3" not in present:
            raise OptionError(
                "SD3_DROP_T5=true drops Stable Diffusion 3's T5 encoder (text_encoder_3), "
                "which the model set by MODEL_ID does not have: unset SD3_DROP_T5."
            )
        arguments.update(text_encoder_3=None, tokenizer_3=None)
        present -= {"text_encoder_3", "tokenizer_3"}
    config = quantization_config(options, present)
    if config is not None:
        arguments["quantization_config"] = config
    return arguments


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
    if isinstance(exc, ValueError) and (
        isinstance(exc, OptionError) or str(exc).startswith("DTYPE")
    ):
        return str(exc)
    if isinstance(exc, OSError | ConnectionError) or kind.endswith(("NotFoundError", "HTTPError")):
        return (
            "The model set by MODEL_ID could not be found or downloaded: set MODEL_ID to a "
            "Hugging Face Hub id you can reach (HF_TOKEN for gated models, network access) "
            "or to a local diffusers directory, or MODEL_ID=tiny-random to run offline."
        )
    return f"The model set by MODEL_ID failed to load ({kind}); see the server log."
