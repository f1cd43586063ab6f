"""Tiny random SD 1.5, SDXL, FLUX.1, FLUX.2 [klein], PixArt-Sigma and SANA pipelines, built
locally like `tiny-random`.

Each is built from small configs with seeded random weights, saved with `save_pretrained`
and served by pointing MODEL_ID at the directory, so the server loads it with
`from_pretrained` through AutoPipelineForText2Image, as it would a real checkpoint.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderDC,
    AutoencoderKL,
    AutoencoderKLFlux2,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Transformer2DModel,
    FluxPipeline,
    FluxTransformer2DModel,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    PNDMScheduler,
    SanaPipeline,
    SanaTransformer2DModel,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    Gemma2Config,
    Gemma2Model,
    GemmaTokenizer,
    Qwen2TokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from app.tiny_model import _bytes_to_unicode, _clip_tokenizer, _t5_text_encoder, _t5_tokenizer

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


# Qwen's chat format, which FLUX.2 [klein] applies to every prompt.
QWEN_CHAT = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _qwen_tokenizer() -> Qwen2TokenizerFast:
    """A merge-free byte-level Qwen2 tokenizer (every byte a token) with Qwen's chat template."""
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {token: i for i, token in enumerate([*_bytes_to_unicode(), *specials])}
    tokenizer = Qwen2TokenizerFast(
        vocab=vocab, merges=[], chat_template=QWEN_CHAT, model_max_length=512
    )
    tokenizer.add_special_tokens({"additional_special_tokens": specials[1:]})
    return tokenizer


def _gemma_tokenizer() -> GemmaTokenizer:
    """A merge-free Gemma tokenizer: every character falls back to its UTF-8 bytes."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    pieces = [f"<0x{byte:02X}>" for byte in range(256)] + ["\u2581"]
    vocab = {token: i for i, token in enumerate([*specials, *pieces])}
    return GemmaTokenizer(vocab=vocab, merges=[], model_max_length=8192)


def build_flux2_klein() -> Flux2KleinPipeline:
    """A tiny FLUX.2 [klein]: a Qwen3 text encoder (27 layers: the pipeline reads hidden
    states 9, 18 and 27), a small FLUX.2 transformer, a VAE with batch-norm latent statistics
    and no scaling factor. Edits take reference images and no strength; no inpainting."""
    tokenizer = _qwen_tokenizer()
    torch.manual_seed(0)
    transformer = Flux2Transformer2DModel(
        patch_size=1, in_channels=4 * 4, num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=3 * 16,
        timestep_guidance_channels=32, axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False,
    )  # fmt: skip
    torch.manual_seed(1)
    text_encoder = Qwen3ForCausalLM(Qwen3Config(
        hidden_size=16, intermediate_size=16, num_hidden_layers=27, num_attention_heads=2,
        num_key_value_heads=2, head_dim=8, vocab_size=len(tokenizer),
        max_position_embeddings=512, tie_word_embeddings=True,
    ))  # fmt: skip
    torch.manual_seed(2)
    vae = AutoencoderKLFlux2(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(4, 4, 8, 8), layers_per_block=1, latent_channels=4,
        norm_num_groups=4, sample_size=64, use_quant_conv=False, use_post_quant_conv=False,
        mid_block_add_attention=False,
    )  # fmt: skip
    return Flux2KleinPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=text_encoder,
        tokenizer=tokenizer, transformer=transformer.eval(),
    )  # fmt: skip


def build_sana() -> SanaPipeline:
    """A tiny SANA: a Gemma2 text encoder, a small linear-attention DiT with sample size 16
    (it bins requests to its 512-pixel aspect-ratio table and resizes back), a six-block
    (32x downscale) DC-AE. Text-to-image only."""
    tokenizer = _gemma_tokenizer()
    torch.manual_seed(0)
    transformer = SanaTransformer2DModel(
        patch_size=1, in_channels=4, out_channels=4, num_layers=1, num_attention_heads=2,
        attention_head_dim=4, num_cross_attention_heads=2, cross_attention_head_dim=4,
        cross_attention_dim=8, caption_channels=8, sample_size=16,
    )  # fmt: skip
    torch.manual_seed(1)
    vae = AutoencoderDC(
        in_channels=3, latent_channels=4, attention_head_dim=2, encoder_block_types="ResBlock",
        decoder_block_types="ResBlock", encoder_block_out_channels=(4,) * 6,
        decoder_block_out_channels=(4,) * 6, encoder_qkv_multiscales=((),) * 6,
        decoder_qkv_multiscales=((),) * 6, encoder_layers_per_block=(1,) * 6,
        decoder_layers_per_block=(1,) * 6, downsample_block_type="conv",
        upsample_block_type="interpolate", scaling_factor=0.41407,
    )  # fmt: skip
    torch.manual_seed(2)
    text_encoder = Gemma2Model(Gemma2Config(
        head_dim=16, hidden_size=8, intermediate_size=16, num_attention_heads=2,
        num_hidden_layers=1, num_key_value_heads=2, vocab_size=len(tokenizer),
        max_position_embeddings=8192, attn_implementation="eager",
    ))  # fmt: skip
    return SanaPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=transformer.eval(),
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
    )  # fmt: skip


BUILDERS = {
    "sd15": build_sd15,
    "sdxl": build_sdxl,
    "flux": build_flux,
    "flux2-klein": build_flux2_klein,
    "pixart-sigma": build_pixart_sigma,
    "sana": build_sana,
}


def ensure_family(name: str, cache: Path) -> Path:
    """Return a directory holding the saved tiny pipeline `name`, building it once."""
    target = cache / f"tiny-{name}"
    if not (target / "model_index.json").is_file():
        BUILDERS[name]().save_pretrained(target)
    return target
