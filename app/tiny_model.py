"""Tiny random-weight Stable Diffusion 3 pipeline for offline tests and demos.

The pipeline has the same components and layout as a real SD3 checkpoint (two CLIP text
encoders, a T5 encoder, an MMDiT transformer, a 16-channel VAE and a flow-matching scheduler),
but each module is a few thousand seeded random weights (about 3 MB saved, mostly the fixed
positional table) and the tokenizers are built locally from byte/character vocabularies.
Its images are noise; what it offers is the real loading and inference code path without
network access, a GPU or gigabytes of weights.
"""

import os
import pathlib
import shutil
import tempfile

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

TINY_MODEL_ID = "tiny-random"
TINY_MODEL_VERSION = 2  # bump when the architecture changes; part of the cache directory name

CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
CLIP_MAX_LENGTH = 77
T5_MAX_LENGTH = 512
CLIP_HIDDEN = 32
T5_HIDDEN = 64  # must be >= the two CLIP hidden sizes concatenated (SD3 pads CLIP up to T5)
# Real SD3 uses 192: latents up to 192 patches a side, i.e. images up to 3072x3072.
POS_EMBED_MAX_SIZE = 192


def _bytes_to_unicode() -> list[str]:
    """Return the 256 printable stand-ins GPT-2/CLIP byte-level BPE uses for bytes 0-255."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    chars: dict[int, str] = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def _clip_tokenizer() -> CLIPTokenizer:
    """Build a merge-free byte-level CLIP tokenizer: every byte is its own token."""
    symbols = _bytes_to_unicode()
    tokens = [*symbols, *(s + "</w>" for s in symbols), CLIP_BOS, CLIP_EOS]
    vocab = {token: i for i, token in enumerate(tokens)}
    return CLIPTokenizer(
        vocab=vocab,
        merges=[],
        bos_token=CLIP_BOS,
        eos_token=CLIP_EOS,
        unk_token=CLIP_EOS,
        pad_token=CLIP_EOS,  # SD3 pads its CLIP prompts with <|endoftext|>
        model_max_length=CLIP_MAX_LENGTH,
    )


def _t5_tokenizer() -> T5TokenizerFast:
    """Build a character-level Unigram T5 tokenizer (no sentencepiece model needed)."""
    # T5 layout: <pad>=0, </s>=1, <unk>=2, then single-character pieces; others map to <unk>.
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("ÿ") + 1)]
    vocab += [(chr(c), -3.0) for c in printable]
    return T5TokenizerFast(
        vocab=vocab,
        extra_ids=0,  # no sentinel tokens: this encoder is never used for span corruption
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        model_max_length=T5_MAX_LENGTH,
    )


def _clip_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModelWithProjection:
    """Create a small CLIP text encoder whose special token ids match the tokenizer."""
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=CLIP_HIDDEN,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        projection_dim=CLIP_HIDDEN,
        max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,  # pooling picks the first EOS position
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModelWithProjection(config)


def _t5_text_encoder(tokenizer: T5TokenizerFast) -> T5EncoderModel:
    """Create a small T5 encoder sized to the tokenizer."""
    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=T5_HIDDEN,
        d_kv=16,
        d_ff=64,
        num_layers=2,
        num_heads=4,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config)


def _transformer() -> SD3Transformer2DModel:
    """Create a one-block, one-head MMDiT with any zero-initialised weights made random."""
    # Joint attention over (H/16)*(W/16) image tokens plus 333 text tokens dominates CPU time
    # (4429 tokens at 1024x1024), so one block with one 16-wide head keeps 28 steps at seconds.
    model = SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,  # as in SD3: image sides must stay multiples of 16 pixels
        in_channels=16,
        out_channels=16,
        num_layers=1,
        attention_head_dim=16,
        num_attention_heads=1,
        joint_attention_dim=T5_HIDDEN,
        caption_projection_dim=16,  # must equal heads * head_dim
        pooled_projection_dim=2 * CLIP_HIDDEN,  # both CLIP pooled outputs concatenated
        pos_embed_max_size=POS_EMBED_MAX_SIZE,
    )
    # Any all-zero weight (adaLN-zero style init) would make the prediction ignore the prompt,
    # so give it small random values instead; the caller has seeded torch, keeping this stable.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("weight") and param.dim() > 1 and not param.any():
                param.normal_(std=0.02)
    return model


def _vae() -> AutoencoderKL:
    """Create a four-block (8x downscale) 16-channel VAE like SD3's, with tiny widths."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        # Full-resolution convolutions and mid-block attention over every latent pixel dominate
        # decoding large images on CPU, so keep the widths minimal and drop that attention.
        block_out_channels=(4, 4, 8, 8),
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=4,
        mid_block_add_attention=False,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5305,  # SD3's VAE value
    )


def build_tiny_sd3(seed: int = 0) -> StableDiffusion3Pipeline:
    """Build the tiny random-weight SD3 pipeline in memory (float32, CPU)."""
    tokenizer, tokenizer_2, tokenizer_3 = _clip_tokenizer(), _clip_tokenizer(), _t5_tokenizer()
    # Reseed before each module so its weights do not depend on what was built before it; the
    # offset keeps the two identically configured CLIP encoders from getting identical weights.
    modules = {}
    factories = {
        "text_encoder": lambda: _clip_text_encoder(tokenizer),
        "text_encoder_2": lambda: _clip_text_encoder(tokenizer_2),
        "text_encoder_3": lambda: _t5_text_encoder(tokenizer_3),
        "transformer": _transformer,
        "vae": _vae,
    }
    for offset, (name, factory) in enumerate(factories.items()):
        torch.manual_seed(seed + offset)
        modules[name] = factory().eval()
    return StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        tokenizer_3=tokenizer_3,
        **modules,
    )


def ensure_tiny_sd3(cache_dir: str | os.PathLike) -> pathlib.Path:
    """Return a directory holding the saved tiny pipeline, building it there once."""
    cache = pathlib.Path(cache_dir)
    target = cache / f"tiny-random-sd3-v{TINY_MODEL_VERSION}"
    if (target / "model_index.json").is_file():
        return target
    cache.mkdir(parents=True, exist_ok=True)
    # Save into a private sibling then rename, so concurrent workers never see a partial save.
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=cache))
    tmp.chmod(0o755)  # mkdtemp's private 0700 would otherwise outlive the rename
    try:
        build_tiny_sd3().save_pretrained(tmp)
        try:
            os.replace(tmp, target)
        except OSError:
            # Another process renamed its copy into place first (directory not empty): use it.
            if not (target / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
