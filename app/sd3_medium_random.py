"""Stable Diffusion 3 Medium's architecture with random weights, for GPU benchmarks.

`MODEL_ID=sd3-medium-random` builds the published SD3-medium configuration (MMDiT with 24
blocks, CLIP-L, CLIP-G, T5-XXL encoder, 16-channel VAE) directly on the target device in
the target dtype: no download, no licence, and no float32 copy of T5-XXL's 4.7B weights
on the way. Every matrix has the real model's shape and every prompt the real model's
token counts (77 CLIP tokens, 256 T5 tokens), so a pipeline call does the same work as
the real checkpoint; only the weights, and so the images, are noise. The tokenizers are
the locally built ones of `app.tiny_model`: their token ids fit inside the real
vocabularies, so the embedding tables keep the real sizes and the parameter counts match.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from app.tiny_model import _clip_tokenizer, _t5_tokenizer

SD3_MEDIUM_RANDOM_ID = "sd3-medium-random"

# Token counts per prompt, as the real model: CLIP's window, and the SD3 pipeline's
# default `max_sequence_length` for T5 (it pads every prompt to exactly this many).
CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 256

# Reseed before each module so its weights depend on the seed alone, not build order.
_MODULE_ORDER = ("text_encoder", "text_encoder_2", "text_encoder_3", "transformer", "vae")


def sd3_medium_tokenizers() -> dict[str, Any]:
    """Return the locally built tokenizers: byte-level CLIP (twice) and character-level T5."""
    return {"tokenizer": _clip_tokenizer(), "tokenizer_2": _clip_tokenizer(),
            "tokenizer_3": _t5_tokenizer()}  # fmt: skip


def sd3_medium_configs() -> dict[str, Any]:
    """Return SD3-medium's published module configurations, keyed by pipeline component."""
    # Special token ids follow the local tokenizers (CLIP pools at its first EOS token).
    clip, t5 = _clip_tokenizer(), _t5_tokenizer()
    clip_ids = {"bos_token_id": clip.bos_token_id, "eos_token_id": clip.eos_token_id,
                "pad_token_id": clip.pad_token_id}  # fmt: skip
    clip_common = {"vocab_size": 49408, "max_position_embeddings": CLIP_MAX_LENGTH,
                   "layer_norm_eps": 1e-5, **clip_ids}  # fmt: skip
    return {
        "transformer": {
            "sample_size": 128,
            "patch_size": 2,
            "in_channels": 16,
            "num_layers": 24,
            "attention_head_dim": 64,
            "num_attention_heads": 24,
            "joint_attention_dim": 4096,
            "caption_projection_dim": 1536,
            "pooled_projection_dim": 2048,
            "out_channels": 16,
            "pos_embed_max_size": 192,
        },
        # CLIP ViT-L/14 text tower.
        "text_encoder": CLIPTextConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            projection_dim=768,
            hidden_act="quick_gelu",
            **clip_common,
        ),
        # OpenCLIP ViT-bigG/14 text tower.
        "text_encoder_2": CLIPTextConfig(
            hidden_size=1280,
            intermediate_size=5120,
            num_hidden_layers=32,
            num_attention_heads=20,
            projection_dim=1280,
            hidden_act="gelu",
            **clip_common,
        ),
        # T5 v1.1 XXL, encoder only.
        "text_encoder_3": T5Config(
            d_model=4096,
            d_ff=10240,
            d_kv=64,
            num_heads=64,
            num_layers=24,
            feed_forward_proj="gated-gelu",
            vocab_size=32128,
            relative_attention_num_buckets=32,
            relative_attention_max_distance=128,
            layer_norm_epsilon=1e-6,
            tie_word_embeddings=False,
            pad_token_id=t5.pad_token_id,
            eos_token_id=t5.eos_token_id,
            decoder_start_token_id=t5.pad_token_id,
        ),
        "vae": {
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ("DownEncoderBlock2D",) * 4,
            "up_block_types": ("UpDecoderBlock2D",) * 4,
            "block_out_channels": (128, 256, 512, 512),
            "layers_per_block": 2,
            "latent_channels": 16,
            "norm_num_groups": 32,
            "act_fn": "silu",
            "sample_size": 1024,
            "scaling_factor": 1.5305,
            "shift_factor": 0.0609,
            "force_upcast": True,
            "use_quant_conv": False,
            "use_post_quant_conv": False,
        },
        "scheduler": {"num_train_timesteps": 1000, "shift": 3.0},
    }


@contextlib.contextmanager
def _created_on(device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Create every new tensor on `device` in `dtype` (floating ones) inside the block."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def _module(name: str, config: Any) -> torch.nn.Module:
    """Instantiate one pipeline module from its configuration."""
    if name == "transformer":
        return SD3Transformer2DModel(**config)
    if name == "vae":
        return AutoencoderKL(**config)
    if name == "text_encoder_3":
        return T5EncoderModel(config)
    return CLIPTextModelWithProjection(config)


def _as_loaded(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Match what from_pretrained(dtype=...) gives: dtypes, fp32 islands, eval mode."""
    # Floating buffers built in float32 on purpose (SD3's positional table) are loaded in
    # `dtype` from a checkpoint. Parameters are already in `dtype`: only buffers are cast.
    for sub in module.modules():
        for key, buffer in sub._buffers.items():
            if buffer is not None and buffer.is_floating_point() and buffer.dtype != dtype:
                sub._buffers[key] = buffer.to(dtype)
    # transformers keeps these (T5's `wo`) in float32 when loading in float16 only.
    keep = getattr(module, "_keep_in_fp32_modules", None) or ()
    if dtype == torch.float16 and keep:
        for name, sub in module.named_modules():
            if set(name.split(".")) & set(keep):
                sub.float()
    return module.eval()


def build_sd3_pipeline(
    configs: dict[str, Any],
    device: torch.device,
    dtype: torch.dtype,
    seed: int = 0,
    drop_t5: bool = False,
) -> StableDiffusion3Pipeline:
    """Build an SD3 pipeline from `configs` with random weights on `device` in `dtype`.

    `drop_t5` leaves out the T5 encoder and its tokenizer (SD3_DROP_T5), never building it.
    """
    device = torch.device(device)
    tokenizers = sd3_medium_tokenizers()
    for encoder, tokenizer in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"),
                               ("text_encoder_3", "tokenizer_3")):  # fmt: skip
        if len(tokenizers[tokenizer]) > configs[encoder].vocab_size:
            raise ValueError(f"{tokenizer} has more tokens than {encoder}'s vocabulary")
    modules: dict[str, torch.nn.Module | None] = {}
    with torch.no_grad():
        for offset, name in enumerate(_MODULE_ORDER):
            if drop_t5 and name == "text_encoder_3":
                modules[name] = None
                continue
            torch.manual_seed(seed + offset)  # seeds the CPU and every CUDA generator
            with _created_on(device, dtype):
                module = _module(name, configs[name])
            modules[name] = _as_loaded(module, dtype)
    if drop_t5:
        tokenizers["tokenizer_3"] = None
    return StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**configs["scheduler"]),
        **tokenizers,
        **modules,
    )


def build_sd3_medium_random(
    device: torch.device, dtype: torch.dtype, seed: int = 0, drop_t5: bool = False
) -> StableDiffusion3Pipeline:
    """Build SD3-medium's architecture with random weights on `device` in `dtype`."""
    return build_sd3_pipeline(sd3_medium_configs(), device, dtype, seed, drop_t5)
