"""Partial images of a streamed generation: which steps yield one, and how to decode it."""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image


def partial_steps(steps: int, partial_images: int) -> list[int]:
    """Return the step indices, evenly spaced and before the last, that yield partials."""
    if partial_images <= 0 or steps < 2:
        return []
    picks = {round((i + 1) * steps / (partial_images + 1)) - 1 for i in range(partial_images)}
    return sorted(step for step in picks if 0 <= step < steps - 1)


def decode_latents(
    pipeline: Any, latents: torch.Tensor, width: int, height: int
) -> list[Image.Image]:
    """Decode intermediate latents to preview images, as the pipeline's last step does."""
    vae = pipeline.vae
    if latents.dim() == 3 and hasattr(pipeline, "_unpack_latents"):
        # FLUX.1 denoises packed (batch, tokens, channels x 2 x 2) latents: unpack them to
        # the VAE's (batch, channels, h, w), as its final decode does.
        latents = pipeline._unpack_latents(latents, height, width, pipeline.vae_scale_factor)
    latents = latents / vae.config.scaling_factor + (getattr(vae.config, "shift_factor", 0) or 0)
    with torch.no_grad():
        decoded = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
    return pipeline.image_processor.postprocess(decoded, output_type="pil")
