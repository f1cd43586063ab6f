"""Speed and memory options of the shared pipeline: parsed and refused at start, then applied.

`EngineOptions.from_config` parses the settings (app/config.py, group "Speed and memory")
and `check` refuses, when the app is created, what cannot work on the resolved device or
with the installed packages, raising ValueError naming the setting and what to set. Two
kinds of option follow:

- at load time (app/engine/loading.py): dropping SD3's T5 encoder and quantization, which
  change what `from_pretrained` builds;
- after loading (`apply_options`): fused QKV, channels-last VAE, the attention backend, VAE
  tiling, CPU offload and torch.compile. Each changes the SHARED modules once, before any
  request derives a pipeline from them, so derived pipelines see the same modules and hooks.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

log = logging.getLogger(__name__)

OFFLOAD_MODES = ("none", "model", "sequential")
QUANTIZE_MODES = ("none", "int8", "fp8", "nf4")
# Components QUANTIZE_COMPONENTS may name; `text_encoders` stands for every text encoder.
DENOISERS = ("transformer", "unet")
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
QUANTIZABLE = (*DENOISERS, *TEXT_ENCODERS, "text_encoders")
# Attention backends that run on a CPU; every other one needs CUDA kernels.
CPU_ATTENTION_BACKENDS = ("native", "_native_math", "flex")
# Sizes compiled per module before torch.compile gives up and runs that module eagerly
# (torch's default is 8): sizes × batch shapes (CFG, `n`, micro-batches) add up quickly.
RECOMPILE_LIMIT = 64


class OptionError(ValueError):
    """A speed or memory setting that cannot work here; its message says what to set."""


def parse_size(text: str, setting: str = "COMPILE_SIZES") -> tuple[int, int]:
    """Parse `WxH` into (width, height), multiples of 16; raise OptionError naming `setting`."""
    try:
        width, height = (int(part) for part in text.strip().lower().split("x"))
    except ValueError:
        raise OptionError(f"{setting}: {text!r} is not WxH (e.g. 1024x1024)") from None
    if width <= 0 or height <= 0 or width % 16 or height % 16:
        raise OptionError(f"{setting}: {text!r} must be positive multiples of 16")
    return width, height


def _names(text: str) -> tuple[str, ...]:
    """Split a comma-separated list, dropping blanks."""
    return tuple(part.strip() for part in text.split(",") if part.strip())


@dataclass(frozen=True)
class EngineOptions:
    """The speed and memory options of the shared pipeline (all off by default)."""

    compile: bool = False
    compile_sizes: tuple[tuple[int, int], ...] = ()
    fuse_qkv: bool = False
    vae_channels_last: bool = False
    attention_backend: str = ""
    offload: str = "none"
    drop_t5: bool = False
    quantize: str = "none"
    quantize_components: tuple[str, ...] = ("transformer",)
    vae_tiling_pixels: int = 0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> EngineOptions:
        """Parse the settings; raise OptionError naming a malformed one."""
        offload = str(config["OFFLOAD"]).strip().lower()
        if offload not in OFFLOAD_MODES:
            raise OptionError(f"OFFLOAD must be one of {', '.join(OFFLOAD_MODES)}, not {offload!r}")
        quantize = str(config["QUANTIZE"]).strip().lower()
        if quantize not in QUANTIZE_MODES:
            raise OptionError(
                f"QUANTIZE must be one of {', '.join(QUANTIZE_MODES)}, not {quantize!r}"
            )
        components = _names(str(config["QUANTIZE_COMPONENTS"]))
        unknown = [name for name in components if name not in QUANTIZABLE]
        if unknown or not components:
            raise OptionError(
                f"QUANTIZE_COMPONENTS: {', '.join(unknown) or 'empty'} is not one of "
                f"{', '.join(QUANTIZABLE)}"
            )
        tiling = int(config["VAE_TILING_PIXELS"])
        if tiling < 0 or 0 < tiling < 64 * 64:
            raise OptionError(
                f"VAE_TILING_PIXELS must be 0 (off) or at least 4096 (64x64), not {tiling}"
            )
        return cls(
            compile=bool(config["COMPILE"]),
            compile_sizes=tuple(parse_size(s) for s in _names(str(config["COMPILE_SIZES"]))),
            fuse_qkv=bool(config["FUSE_QKV"]),
            vae_channels_last=bool(config["VAE_CHANNELS_LAST"]),
            attention_backend=str(config["ATTENTION_BACKEND"]).strip().lower(),
            offload=offload,
            drop_t5=bool(config["SD3_DROP_T5"]),
            quantize=quantize,
            quantize_components=components,
            vae_tiling_pixels=tiling,
        )

    def warmup_sizes(self, default_size: str) -> tuple[tuple[int, int], ...]:
        """Return the sizes the warm-up runs: 64x64, or with COMPILE every size to compile."""
        if not self.compile:
            return ((64, 64),)
        sizes = [parse_size(default_size, "DEFAULT_SIZE"), *self.compile_sizes]
        return tuple(dict.fromkeys(sizes))

    @property
    def quantized_components(self) -> tuple[str, ...]:
        """Return the component names to quantize, `text_encoders` expanded."""
        if self.quantize == "none":
            return ()
        names: list[str] = []
        for name in self.quantize_components:
            for part in TEXT_ENCODERS if name == "text_encoders" else (name,):
                if part not in names:
                    names.append(part)
        return tuple(names)

    def check(self, device: torch.device, lane_width: int) -> None:
        """Refuse combinations that cannot work on `device`; raise OptionError saying why."""
        accelerated = device.type in ("cuda", "xpu", "mps")
        if self.offload != "none":
            if not accelerated:
                raise OptionError(
                    f"OFFLOAD={self.offload} moves modules between the CPU and an accelerator, "
                    f"but the device is {device}: set OFFLOAD=none (or run on a GPU)."
                )
            if lane_width != 1:
                raise OptionError(
                    f"OFFLOAD={self.offload} moves the shared modules in and out of the GPU "
                    "during a call, so calls must not overlap: set MAX_CONCURRENT_GENERATIONS=1."
                )
            if self.offload == "sequential" and self.compile:
                raise OptionError(
                    "OFFLOAD=sequential and COMPILE=true do not work together: set one of them."
                )
        if self.quantize in ("int8", "fp8") and importlib.util.find_spec("torchao") is None:
            raise OptionError(
                f"QUANTIZE={self.quantize} needs the torchao package: `pip install torchao`, "
                "or set QUANTIZE=none."
            )
        if self.quantize == "fp8" and device.type == "cuda":
            if torch.cuda.get_device_capability(device) < (8, 9):
                raise OptionError(
                    "QUANTIZE=fp8 needs a GPU with float8 support (Ada or Hopper, compute "
                    "capability 8.9+): set QUANTIZE=int8."
                )
        if self.quantize == "nf4":
            if device.type != "cuda":
                raise OptionError(
                    f"QUANTIZE=nf4 (bitsandbytes) needs a CUDA GPU, but the device is {device}: "
                    "set QUANTIZE=int8 or none."
                )
            if importlib.util.find_spec("bitsandbytes") is None:
                raise OptionError(
                    "QUANTIZE=nf4 needs the bitsandbytes package: `pip install bitsandbytes`, "
                    "or set QUANTIZE=int8."
                )
        if self.fuse_qkv and set(self.quantized_components) & set(DENOISERS):
            raise OptionError(
                "FUSE_QKV=true fuses the denoiser's weights, which QUANTIZE replaces: drop "
                "transformer/unet from QUANTIZE_COMPONENTS or set FUSE_QKV=false."
            )
        if self.attention_backend:
            _check_attention_backend(self.attention_backend, device)


def _check_attention_backend(name: str, device: torch.device) -> None:
    """Refuse an attention backend that diffusers does not know or cannot use here."""
    from diffusers.models.attention_dispatch import (
        AttentionBackendName,
        _check_attention_backend_requirements,
    )

    known = sorted(member.value for member in AttentionBackendName)
    if name not in known:
        raise OptionError(
            f"ATTENTION_BACKEND={name!r} is not a diffusers attention backend; use one of: "
            f"{', '.join(known)} (or leave it unset)."
        )
    try:
        _check_attention_backend_requirements(AttentionBackendName(name))
    except (RuntimeError, ImportError) as exc:
        raise OptionError(
            f"ATTENTION_BACKEND={name} is not installed ({exc}); install it or leave "
            "ATTENTION_BACKEND unset."
        ) from None
    if device.type != "cuda" and name not in CPU_ATTENTION_BACKENDS:
        raise OptionError(
            f"ATTENTION_BACKEND={name} needs CUDA, but the device is {device}: use one of "
            f"{', '.join(CPU_ATTENTION_BACKENDS)} (or leave it unset)."
        )


# -- load time ---------------------------------------------------------------------------


def quantization_config(options: EngineOptions, present: set[str]) -> Any:
    """Return diffusers' PipelineQuantizationConfig for `options`, or None."""
    components = [name for name in options.quantized_components if name in present]
    missing = sorted(set(options.quantized_components) - present)
    if missing and options.quantize != "none":
        log.warning("QUANTIZE_COMPONENTS: the model has no %s; not quantized", ", ".join(missing))
    if not components:
        return None
    import diffusers
    import transformers
    from diffusers import PipelineQuantizationConfig

    # One config per component, from the library that loads it (diffusers for the
    # denoiser, transformers for the text encoders): their signatures differ.
    mapping = {}
    for name in components:
        library = diffusers if name in DENOISERS else transformers
        if options.quantize == "nf4":
            mapping[name] = library.BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16
            )
        else:
            mapping[name] = library.TorchAoConfig(torchao_config(options.quantize))
    return PipelineQuantizationConfig(quant_mapping=mapping)


def torchao_config(mode: str) -> Any:
    """Return torchao's weight-only config for QUANTIZE=int8 or fp8."""
    from torchao.quantization import Float8WeightOnlyConfig, Int8WeightOnlyConfig

    return Int8WeightOnlyConfig() if mode == "int8" else Float8WeightOnlyConfig()


def quantize_in_place(pipeline: Any, options: EngineOptions) -> None:
    """Quantize a pipeline built in memory (no from_pretrained) with torchao's quantize_."""
    if options.quantize == "none":
        return
    if options.quantize == "nf4":
        raise OptionError(
            "QUANTIZE=nf4 applies to models loaded from files; this built-in model is built "
            "in memory: set QUANTIZE=int8 or fp8."
        )
    from torchao.quantization import quantize_

    for name in options.quantized_components:
        module = getattr(pipeline, name, None)
        if isinstance(module, torch.nn.Module):
            quantize_(module, torchao_config(options.quantize))


# -- after loading -----------------------------------------------------------------------


def denoiser(pipeline: Any) -> torch.nn.Module | None:
    """Return the pipeline's denoiser (transformer or UNet), if any."""
    for name in DENOISERS:
        module = getattr(pipeline, name, None)
        if isinstance(module, torch.nn.Module):
            return module
    return None


def apply_options(pipeline: Any, options: EngineOptions, device: torch.device) -> None:
    """Apply the after-load options to the shared pipeline, once, before any request."""
    model = denoiser(pipeline)
    vae = getattr(pipeline, "vae", None)
    if options.fuse_qkv:
        fused = [name for name, module in (("denoiser", model), ("vae", vae))
                 if hasattr(module, "fuse_qkv_projections")]  # fmt: skip
        for name in fused:
            (model if name == "denoiser" else vae).fuse_qkv_projections()
        log.info("FUSE_QKV: fused the QKV projections of %s", ", ".join(fused) or "nothing")
    if options.vae_channels_last and vae is not None:
        vae.to(memory_format=torch.channels_last)
    if options.attention_backend and model is not None:
        _set_attention_backend(model, options.attention_backend)
    if options.vae_tiling_pixels and vae is not None:
        _enable_vae_tiling(vae, options.vae_tiling_pixels)
    if options.offload == "model":
        pipeline.enable_model_cpu_offload(device=device)
    elif options.offload == "sequential":
        pipeline.enable_sequential_cpu_offload(device=device)
    if options.compile:
        _compile(pipeline)


def _set_attention_backend(model: torch.nn.Module, name: str) -> None:
    """Set diffusers' attention backend; warn when the model's attention ignores it."""
    model.set_attention_backend(name)
    dispatched = sum(hasattr(getattr(m, "processor", None), "_attention_backend")
                     for m in model.modules())  # fmt: skip
    if not dispatched:
        log.warning(
            "ATTENTION_BACKEND=%s has no effect: %s's attention does not go through diffusers' "
            "attention dispatcher (PyTorch's scaled_dot_product_attention picks its kernel)",
            name, type(model).__name__,
        )  # fmt: skip
    else:
        log.info("ATTENTION_BACKEND=%s: %d attention modules use it", name, dispatched)


def _enable_vae_tiling(vae: Any, pixels: int) -> None:
    """Decode images with a side above √pixels in overlapping tiles of that side.

    Tiling is a flag on the shared VAE, so it is set once here and never per request
    (a per-request toggle would race between threads and with streamed previews).
    diffusers tiles only a latent larger than its tile, so smaller images decode whole.
    """
    side = max(64, int(math.isqrt(pixels)) // 64 * 64)
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    vae.enable_tiling()
    vae.tile_sample_min_size = side
    vae.tile_latent_min_size = side // scale
    log.info("VAE_TILING_PIXELS=%d: images wider or taller than %d decode in tiles", pixels, side)


def _compile(pipeline: Any) -> None:
    """torch.compile the denoiser and the VAE decoder in place (modules keep their identity)."""
    import torch._dynamo

    # One graph per shape: the fastest code, compiled once per size and batch shape.
    limit_name = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else (
        "cache_size_limit")  # fmt: skip
    setattr(torch._dynamo.config, limit_name,
            max(getattr(torch._dynamo.config, limit_name), RECOMPILE_LIMIT))  # fmt: skip
    model = denoiser(pipeline)
    if model is not None:
        model.compile(dynamic=False)
    vae = getattr(pipeline, "vae", None)
    if vae is not None and hasattr(vae, "decoder"):
        vae.decoder.compile(dynamic=False)
    log.info("COMPILE: the denoiser and the VAE decoder compile for each new shape on first use")


def release_offloaded(pipeline: Any) -> None:
    """Move every model-offloaded module back to the CPU after a call.

    diffusers does this in `maybe_free_model_hooks` of the pipeline that enabled offload;
    derived pipelines hold the same hooked modules but not the hook list, so the engine
    calls this on the shared pipeline after each call, inside the lane.
    """
    for hook in getattr(pipeline, "_all_hooks", ()):
        hook.offload()
