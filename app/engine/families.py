"""What the served pipeline can do, decided in one place from its classes and config.

diffusers families differ in what their `__call__` takes: FLUX.2 and Kontext edit without
`strength`, FLUX.1 reads `negative_prompt` only with `true_cfg_scale` > 1, PixArt-Sigma
has no step-end callback. `describe` reads the signatures of the text-to-image,
image-to-image and inpainting classes of the served family once; `check` refuses (400
naming the field) what a request asks and the pipeline cannot honour, so no request is
answered 200 with a field silently ignored, and the runner passes only accepted arguments.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass
from typing import Any

from app.engine.work import GenerationSpec, Task
from app.exceptions import UnsupportedParameter

# Most input images per edit, for the pipelines whose `image` takes several reference
# images for one output (a signature cannot say it: every `image` accepts a list, which
# elsewhere means one image per prompt of a batch).
MULTI_REFERENCE: dict[str, int] = {
    "Flux2Pipeline": 10,
    "Flux2KleinPipeline": 10,
    "QwenImageEditPlusPipeline": 3,
}

# The features of the family x feature table in docs/api.md, in its column order.
FEATURES: dict[str, str] = {
    "negative_prompt": "negative prompt",
    "true_cfg": "negative prompt needs true CFG",
    "strength": "strength",
    "masks": "masks",
    "reference_images": "input images per edit",
    "step_callback": "step-end callback (previews)",
    "packed_latents": "packed latents",
}


@dataclass(frozen=True)
class Capabilities:
    """What one served pipeline family can do; `check` asks it for every request."""

    family: str  # the text-to-image class name
    negative_prompt: bool  # negative_prompt takes effect as it is sent
    true_cfg: bool  # negative_prompt only takes effect with true_cfg_scale > 1
    strength: bool  # its edits take `strength`
    masks: bool  # it has an inpainting pipeline
    reference_images: int  # input images per edit: 0 = no edits
    step_callback: bool  # callback_on_step_end: previews (stopping also works through `callback`)
    packed_latents: bool  # latents are packed 2x2 while denoising (FLUX)


@functools.cache
def call_parameters(pipeline_class: type | None) -> frozenset[str]:
    """Return the arguments a pipeline class's __call__ takes (looked up once per class)."""
    if pipeline_class is None:
        return frozenset()
    return frozenset(inspect.signature(pipeline_class.__call__).parameters)


def task_class(text_to_image: type, task: Task) -> type | None:
    """Return the family's pipeline class for `task`, or None when it has none."""
    if task == Task.TEXT_TO_IMAGE:
        return text_to_image
    from diffusers.pipelines import auto_pipeline

    mapping = {
        Task.IMAGE_TO_IMAGE: auto_pipeline.AUTO_IMAGE2IMAGE_PIPELINES_MAPPING,
        Task.INPAINT: auto_pipeline.AUTO_INPAINT_PIPELINES_MAPPING,
    }[task]
    return auto_pipeline._get_task_class(mapping, text_to_image.__name__, False)


@functools.cache
def describe(text_to_image: type) -> Capabilities:
    """Return what the family of the text-to-image class `text_to_image` can do."""
    generate = call_parameters(text_to_image)
    edit_class = task_class(text_to_image, Task.IMAGE_TO_IMAGE)
    edit = call_parameters(edit_class)
    inpaint = call_parameters(task_class(text_to_image, Task.INPAINT))
    true_cfg = "negative_prompt" in generate and "true_cfg_scale" in generate
    references = 0
    if edit_class is not None and "image" in edit:
        references = MULTI_REFERENCE.get(edit_class.__name__, 1)
    return Capabilities(
        family=text_to_image.__name__,
        negative_prompt="negative_prompt" in generate and not true_cfg,
        true_cfg=true_cfg,
        strength="strength" in edit,
        masks="mask_image" in inpaint,
        reference_images=references,
        step_callback="callback_on_step_end" in generate,
        packed_latents=hasattr(text_to_image, "_pack_latents"),
    )


def check(capabilities: Capabilities, spec: GenerationSpec) -> None:
    """Refuse (400 naming the field) what `spec` asks and the served pipeline cannot do."""
    family = capabilities.family
    if spec.negative_prompt and not capabilities.negative_prompt:
        why = (
            "reads it only with true classifier-free guidance (true_cfg_scale > 1), which "
            "this server does not run"
            if capabilities.true_cfg
            else "takes none"
        )
        raise UnsupportedParameter(
            "negative_prompt", f"The served model ({family}) {why}: leave out negative_prompt."
        )
    if spec.task != Task.TEXT_TO_IMAGE and not capabilities.reference_images:
        raise UnsupportedParameter(
            "image", f"The served model ({family}) has no image-to-image pipeline: no edits."
        )
    if "strength" in spec.sent and not capabilities.strength:
        raise UnsupportedParameter(
            "strength", f"The served model ({family}) edits without strength: leave it out."
        )
    if spec.task == Task.INPAINT and not capabilities.masks:
        raise UnsupportedParameter(
            "mask", f"The served model ({family}) has no inpainting pipeline: leave out the mask."
        )
    if len(spec.references) > max(1, capabilities.reference_images):
        raise UnsupportedParameter(
            "image",
            f"The served model ({family}) edits from one input image; {len(spec.references)} "
            "were sent (several images are reference images for one output, which it cannot "
            "use): send one image.",
        )
    if spec.partial_images and not capabilities.step_callback:
        raise UnsupportedParameter(
            "partial_images",
            f"The served model ({family}) has no step-end callback, so it cannot send partial "
            "images: use partial_images=0.",
        )


def takes_references(pipeline_class: type) -> bool:
    """Return whether `pipeline_class`'s `image` is several reference images for each output
    (FLUX.2): an edit passes them once, as one list, with `num_images_per_prompt`."""
    return pipeline_class.__name__ in MULTI_REFERENCE


def batchable(capabilities: Capabilities, spec: GenerationSpec) -> bool:
    """Return whether `spec` may share a pipeline call with other requests: not an edit of
    a family whose `image` takes reference images, which one call cannot keep apart."""
    return spec.task == Task.TEXT_TO_IMAGE or capabilities.reference_images <= 1


def accepted_arguments(pipeline: Any, arguments: dict[str, Any]) -> dict[str, Any]:
    """Return the arguments `pipeline`'s __call__ takes (defaults it lacks are dropped)."""
    accepted = call_parameters(type(pipeline))
    return {name: value for name, value in arguments.items() if name in accepted}


def latent_patch(shared: Any) -> int:
    """Return the side in pixels of one denoiser token: VAE downscale x patch size."""
    denoiser = getattr(shared, "transformer", None) or getattr(shared, "unet", None)
    patch = getattr(getattr(denoiser, "config", None), "patch_size", None) or 1
    if describe(type(shared)).packed_latents:
        patch *= 2  # FLUX and Qwen-Image pack 2x2 latent pixels into one token
    return int(getattr(shared, "vae_scale_factor", 8) or 8) * int(patch)


# The families of the docs table (docs/api.md#model-families), by text-to-image class.
DOCUMENTED = {
    "StableDiffusionPipeline": "SD 1.5",
    "StableDiffusionXLPipeline": "SDXL",
    "StableDiffusion3Pipeline": "SD3",
    "FluxPipeline": "FLUX.1",
    "Flux2KleinPipeline": "FLUX.2 [klein]",
    "PixArtSigmaPipeline": "PixArt-Sigma",
    "SanaPipeline": "SANA",
}


def render_table() -> str:
    """Return the family x feature table of docs/api.md, from `describe` of each family."""
    import diffusers

    def cell(value: bool | int) -> str:
        return str(value) if not isinstance(value, bool) else ("yes" if value else "no")

    rows = [
        "| Pipeline | " + " | ".join(FEATURES.values()) + " |",
        "| --- |" + " --- |" * len(FEATURES),
    ]
    for name, label in DOCUMENTED.items():
        capabilities = describe(getattr(diffusers, name))
        cells = [cell(getattr(capabilities, feature)) for feature in FEATURES]
        rows.append(f"| {label} (`{name}`) | " + " | ".join(cells) + " |")
    return "\n".join(rows)
