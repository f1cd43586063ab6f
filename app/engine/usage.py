"""Token usage of a generation, as OpenAI's `usage` reports it for gpt-image models.

A diffusion pipeline has no billing tokens, so the counts follow an honest rule that a
client can check: text tokens are the prompt's (and negative prompt's) tokens by the
served pipeline's first tokenizer, special tokens included and nothing truncated; image
tokens are the denoiser's latent patches, (height / patch) x (width / patch) per image,
where `patch` is the VAE's downscale times the transformer's patch size (16 pixels for
SD3 and FLUX, 8 for UNet families). Input images of an edit count at the output size,
which is the size they are denoised at.
"""

from __future__ import annotations

from typing import Any

from app.engine.work import GenerationSpec


def text_tokens(tokenizer: Any, text: str | None) -> int:
    """Return the number of tokens `tokenizer` makes of `text` (0 without a tokenizer)."""
    if tokenizer is None or text is None:
        return 0
    # verbose=False: a prompt longer than the encoder's window is counted, not warned about.
    return len(tokenizer(text, truncation=False, verbose=False)["input_ids"])


def token_usage(spec: GenerationSpec, tokenizer: Any, patch: int) -> dict[str, Any]:
    """Return OpenAI's `usage` object for `spec`: input, output and total tokens."""
    per_image = (spec.height // patch) * (spec.width // patch)
    text = text_tokens(tokenizer, spec.prompt) + text_tokens(tokenizer, spec.negative_prompt)
    images = len(spec.references) * per_image
    output = len(spec.seeds) * per_image
    return {
        "input_tokens": text + images,
        "input_tokens_details": {"text_tokens": text, "image_tokens": images},
        "output_tokens": output,
        "total_tokens": text + images + output,
    }
