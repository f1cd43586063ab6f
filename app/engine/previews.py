"""Partial images of a streamed generation: which steps yield one, and how to decode it.

A preview decodes the latents of a step as the pipeline's own last step does, for each
family: FLUX.1's packed latents are unpacked; FLUX.2's are unpacked, denormalised with its
VAE's batch-norm statistics (its VAE has no scaling factor) and unpatchified; the other
families divide by the VAE's scaling factor (and add its shift). Pipelines that bin the
requested size to an aspect-ratio table (SANA, PixArt) denoise at the binned size and
resize back at the end; so does a preview, so every preview has the requested size.
"""

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
    """Decode intermediate latents to preview images of `width` x `height`."""
    vae = pipeline.vae
    if latents.dim() == 3 and hasattr(pipeline, "_unpack_latents_with_ids"):
        latents = _flux2_latents(pipeline, latents, width, height)
    else:
        if latents.dim() == 3 and hasattr(pipeline, "_unpack_latents"):
            # FLUX.1 denoises packed (batch, tokens, channels x 2 x 2) latents: unpack them
            # to the VAE's (batch, channels, h, w), as its final decode does.
            latents = pipeline._unpack_latents(latents, height, width, pipeline.vae_scale_factor)
        shift = getattr(vae.config, "shift_factor", 0) or 0
        latents = latents / vae.config.scaling_factor + shift
    with torch.no_grad():
        decoded = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
    if tuple(decoded.shape[-2:]) != (height, width):
        decoded = _resized(pipeline, decoded, width, height)
    return pipeline.image_processor.postprocess(decoded, output_type="pil")


def _flux2_latents(pipeline: Any, latents: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Return FLUX.2's packed (batch, tokens, channels) latents as its VAE decodes them."""
    side = pipeline.vae_scale_factor * 2  # a token covers 2x2 latent pixels
    rows, columns = height // side, width // side
    ids = pipeline._prepare_latent_ids(latents.new_empty(latents.shape[0], 1, rows, columns))
    latents = pipeline._unpack_latents_with_ids(latents, ids.to(latents.device), rows, columns)
    statistics = pipeline.vae.bn
    mean = statistics.running_mean.view(1, -1, 1, 1).to(latents.device, latents.dtype)
    variance = statistics.running_var.view(1, -1, 1, 1) + pipeline.vae.config.batch_norm_eps
    latents = latents * torch.sqrt(variance).to(latents.device, latents.dtype) + mean
    return pipeline._unpatchify_latents(latents)


def _resized(pipeline: Any, decoded: torch.Tensor, width: int, height: int) -> torch.Tensor:
    """Resize a preview decoded at a binned size back to the requested size, as the
    pipeline resizes its final images (PixArt's image processor), else by interpolation."""
    processor = pipeline.image_processor
    if hasattr(processor, "resize_and_crop_tensor"):
        return processor.resize_and_crop_tensor(decoded, width, height)
    return torch.nn.functional.interpolate(decoded, size=(height, width), mode="bilinear")
