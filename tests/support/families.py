"""Tiny random SD 1.5, SDXL, FLUX.1 and PixArt-Sigma pipelines, built locally like `tiny-random`.

Each is built from small configs with seeded random weights, saved with `save_pretrained`
and served by pointing MODEL_ID at the directory, so the server loads it with
`from_pretrained` through AutoPipelineForText2Image, as it would a real checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from app.tiny_model import _clip_tokenizer, _t5_text_encoder, _t5_tokenizer

HIDDEN = 32


def _clip_config(tokenizer: object) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=HIDDEN, intermediate_size=37,
        num_attention_heads=4, num_hidden_layers=2, projection_dim=HIDDEN,
        max_position_embeddings=77, hidden_act="gelu", bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip


def _vae(latent_channels: int, scaling: float, shift: float | None) -> AutoencoderKL:
    """A four-block (8x downscale) VAE with tiny widths."""
    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(4, 4, 8, 8), layers_per_block=1, latent_channels=latent_channels,
        norm_num_groups=4, mid_block_add_attention=False, scaling_factor=scaling,
        shift_factor=shift,
    )  # fmt: skip


def build_sd15() -> StableDiffusionPipeline:
    """A tiny SD 1.5: one CLIP encoder, a small UNet, saved without a safety checker (as
    many community SD 1.5 repositories are)."""
    tokenizer = _clip_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        norm_num_groups=4, cross_attention_dim=HIDDEN,
    )  # fmt: skip
    torch.manual_seed(1)
    text_encoder = CLIPTextModel(_clip_config(tokenizer))
    torch.manual_seed(3)
    return StableDiffusionPipeline(
        vae=_vae(4, 0.18215, None), text_encoder=text_encoder, tokenizer=tokenizer,
        unet=unet.eval(), scheduler=PNDMScheduler(skip_prk_steps=True, steps_offset=1),
        safety_checker=None, feature_extractor=None, requires_safety_checker=True,
    )  # fmt: skip


def build_sdxl() -> StableDiffusionXLPipeline:
    """A tiny SDXL: two CLIP encoders (the second with projection), a small UNet."""
    tokenizer, tokenizer_2 = _clip_tokenizer(), _clip_tokenizer()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=8, in_channels=4,
        out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
        norm_num_groups=4, use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=6 * 8 + HIDDEN, cross_attention_dim=2 * HIDDEN,
    )  # fmt: skip
    torch.manual_seed(1)
    text_encoder = CLIPTextModel(_clip_config(tokenizer))
    torch.manual_seed(2)
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(tokenizer_2))
    torch.manual_seed(3)
    return StableDiffusionXLPipeline(
        vae=_vae(4, 0.13025, None), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet.eval(),
        scheduler=EulerDiscreteScheduler(timestep_spacing="leading", steps_offset=1),
    )  # fmt: skip


def build_flux() -> FluxPipeline:
    """A tiny FLUX.1 (schnell-like: no guidance embedding): CLIP + T5, a small MMDiT."""
    tokenizer, tokenizer_2 = _clip_tokenizer(), _t5_tokenizer()
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * 4, num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64,
        pooled_projection_dim=HIDDEN, axes_dims_rope=(4, 4, 8),
    )  # fmt: skip
    torch.manual_seed(1)
    text_encoder = CLIPTextModel(_clip_config(tokenizer))
    torch.manual_seed(2)
    text_encoder_2 = _t5_text_encoder(tokenizer_2)
    torch.manual_seed(3)
    return FluxPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=_vae(4, 0.3611, 0.1159),
        text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2, transformer=transformer.eval(),
    )  # fmt: skip


def build_pixart_sigma() -> PixArtSigmaPipeline:
    """A tiny PixArt-Sigma: T5, a small DiT with sample size 64 (it bins requests to its
    512-pixel aspect-ratio table and resizes back), no step-end callback."""
    tokenizer = _t5_tokenizer()
    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(
        num_attention_heads=4, attention_head_dim=16, in_channels=4, out_channels=8,
        num_layers=2, cross_attention_dim=64, sample_size=64, patch_size=2,
        caption_channels=64, use_additional_conditions=False, norm_num_groups=4,
    )  # fmt: skip
    torch.manual_seed(2)
    text_encoder = _t5_text_encoder(tokenizer)
    torch.manual_seed(3)
    return PixArtSigmaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=_vae(4, 0.13025, None),
        transformer=transformer.eval(), scheduler=DPMSolverMultistepScheduler(),
    )  # fmt: skip


BUILDERS = {
    "sd15": build_sd15,
    "sdxl": build_sdxl,
    "flux": build_flux,
    "pixart-sigma": build_pixart_sigma,
}


def ensure_family(name: str, cache: Path) -> Path:
    """Return a directory holding the saved tiny pipeline `name`, building it once."""
    target = cache / f"tiny-{name}"
    if not (target / "model_index.json").is_file():
        BUILDERS[name]().save_pretrained(target)
    return target
