"""Tiny LoRA adapter files for the tiny SD3 model, made with PEFT, and broken ones.

Real adapters: PEFT's LoraConfig on the tiny transformer's attention projections (and,
when asked, on the CLIP text encoder), random non-zero A and B so an adapter visibly
changes images, saved with diffusers' `StableDiffusion3Pipeline.save_lora_weights`: the
layout diffusers' `load_lora_weights` reads, as training scripts write it.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import torch

TRANSFORMER_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_ENCODER_TARGETS = ["q_proj", "v_proj"]
WEIGHTS = "pytorch_lora_weights.safetensors"


def make_lora(
    model_dir: Path,
    path: Path,
    *,
    seed: int,
    text_encoder: bool = False,
    rank: int = 4,
    targets: list[str] = TRANSFORMER_TARGETS,
) -> Path:
    """Write a PEFT LoRA for the tiny model to `path` (`<name>.safetensors`) on `targets`."""
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from transformers import CLIPTextModelWithProjection

    torch.manual_seed(seed)
    config = {"r": rank, "lora_alpha": rank, "init_lora_weights": False}
    transformer = SD3Transformer2DModel.from_pretrained(model_dir, subfolder="transformer")
    transformer.add_adapter(LoraConfig(target_modules=targets, **config))
    layers = {"transformer_lora_layers": get_peft_model_state_dict(transformer)}
    if text_encoder:
        encoder = CLIPTextModelWithProjection.from_pretrained(model_dir, subfolder="text_encoder")
        # PEFT directly: transformers 5's add_adapter wants a newer peft than the pinned one.
        inject_adapter_in_model(LoraConfig(target_modules=TEXT_ENCODER_TARGETS, **config), encoder)
        layers["text_encoder_lora_layers"] = get_peft_model_state_dict(encoder)
    with tempfile.TemporaryDirectory() as tmp:
        StableDiffusion3Pipeline.save_lora_weights(tmp, **layers)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(Path(tmp) / WEIGHTS, path)
    return path


def make_family_lora(pipeline_dir: Path, path: Path, *, seed: int, rank: int = 4) -> Path:
    """Write a PEFT LoRA on the attention projections of another family's denoiser (the
    UNet of SD 1.5 / SDXL, the transformer of FLUX), saved by that pipeline's class."""
    from diffusers import AutoPipelineForText2Image
    from peft import LoraConfig, get_peft_model_state_dict

    pipeline = AutoPipelineForText2Image.from_pretrained(pipeline_dir)
    name = "unet" if getattr(pipeline, "unet", None) is not None else "transformer"
    denoiser = getattr(pipeline, name)
    torch.manual_seed(seed)
    denoiser.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                                    target_modules=TRANSFORMER_TARGETS))  # fmt: skip
    layers = {f"{name}_lora_layers": get_peft_model_state_dict(denoiser)}
    with tempfile.TemporaryDirectory() as tmp:
        type(pipeline).save_lora_weights(tmp, **layers)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(Path(tmp) / WEIGHTS, path)
    return path


def make_wrong_shapes(source: Path, path: Path) -> Path:
    """Write `source`'s adapter with every lora_A widened: the layer sizes no longer fit."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(source)
    widened = {
        key: torch.cat([value, value[:, :8]], dim=1) if "lora_A" in key else value
        for key, value in tensors.items()
    }
    save_file(widened, path)
    return path


def make_kohya(source: Path, path: Path) -> Path:
    """Write `source`'s transformer adapter in kohya's layout (lora_unet_*.lora_down/up)."""
    from safetensors.torch import load_file, save_file

    tensors = {}
    for key, value in load_file(source).items():
        if not key.startswith("transformer."):
            continue
        module, kind = key.removeprefix("transformer.").rsplit(".lora_", 1)
        stem = "lora_unet_" + module.replace(".", "_")
        tensors[f"{stem}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = value
        tensors[f"{stem}.alpha"] = torch.tensor(float(value.shape[0 if "A" in kind else 1]))
    save_file(tensors, path)
    return path


def make_foreign(path: Path) -> Path:
    """Write a well-formed LoRA for layers the tiny model does not have."""
    from safetensors.torch import save_file

    save_file(
        {
            "transformer.no_such_block.proj.lora_A.weight": torch.randn(4, 32),
            "transformer.no_such_block.proj.lora_B.weight": torch.randn(32, 4),
        },
        path,
    )
    return path


def make_corrupt(path: Path) -> Path:
    """Write bytes that are no safetensors file at all."""
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json" + bytes(range(256)))
    return path
