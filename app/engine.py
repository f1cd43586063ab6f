"""The engine: one shared diffusers pipeline per worker, a derived pipeline per request.

The shared pipeline is loaded once, in a background thread, so the worker answers
(with 503 "model is loading") while weights load and Gunicorn never kills it for being
slow. Each request builds its own pipeline object around the SHARED modules (never
copied, converted or moved), with its own scheduler, its own copies of the tokenizers
(fast tokenizers mutate themselves on every call) and its own CPU generators, so the same
seed gives the same image whatever runs beside it.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

log = logging.getLogger(__name__)

_DTYPES = {
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "float32": torch.float32,
    "fp32": torch.float32,
}


class ModelLoading(Exception):
    """The shared pipeline is still loading."""

    def __init__(self, retry_after: int) -> None:
        super().__init__("model is loading")
        self.retry_after = retry_after


class ModelLoadFailed(Exception):
    """The shared pipeline could not be loaded; the message says what to set."""


class GenerationError(Exception):
    """The pipeline call failed; the cause is chained for the log."""


class GenerationOutOfMemory(GenerationError):
    """The pipeline call ran out of device memory; retrying may succeed."""


class UnsupportedParameter(Exception):
    """The served pipeline cannot honour a request parameter."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class GenerationSpec:
    """What the pipeline needs for one request: one image per seed."""

    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    guidance_scale: float
    seeds: tuple[int, ...]


def resolve_device(name: str) -> torch.device:
    """Pick CUDA, then MPS, then CPU for "auto"; otherwise use the named device."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """Pick bf16 on CUDA, fp16 on MPS, fp32 on CPU for "auto"; else the named dtype."""
    if name == "auto":
        return {"cuda": torch.bfloat16, "mps": torch.float16}.get(device.type, torch.float32)
    try:
        return _DTYPES[name.lower()]
    except KeyError:
        raise ValueError(
            f"DTYPE must be auto, bfloat16, float16 or float32, not {name!r}"
        ) from None


def _explain_load_failure(exc: BaseException) -> str:
    """Say why loading failed and what to set, without paths or tracebacks."""
    kind = type(exc).__name__
    if kind == "GatedRepoError":
        return (
            "The model set by MODEL_ID is gated on the Hugging Face Hub: accept its licence "
            "there and set HF_TOKEN to a token with access, or set MODEL_ID=tiny-random for "
            "an offline demo."
        )
    if isinstance(exc, torch.OutOfMemoryError):
        return "The model does not fit in device memory: set DTYPE=float16 or another DEVICE."
    if isinstance(exc, ValueError) and str(exc).startswith("DTYPE"):
        return str(exc)
    if isinstance(exc, OSError | ConnectionError) or kind.endswith(("NotFoundError", "HTTPError")):
        return (
            "The model set by MODEL_ID could not be found or downloaded: set MODEL_ID to a "
            "Hugging Face Hub id you can reach (HF_TOKEN for gated models, network access) "
            "or to a local diffusers directory, or MODEL_ID=tiny-random to run offline."
        )
    return f"The model set by MODEL_ID failed to load ({kind}); see the server log."


class Engine:
    """Hold the shared pipeline and run generations on pipelines derived from it."""

    def __init__(
        self,
        model_id: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        cache_dir: str | Path = "instance/models",
        max_concurrent: int = 1,
        retry_after: int = 10,
    ) -> None:
        self.model_id = model_id
        self._device_name = device
        self._dtype_name = dtype
        self._cache_dir = Path(cache_dir)
        self._retry_after = retry_after
        # Pipeline calls in parallel on one device add no throughput, only latency.
        self._lane = (
            threading.BoundedSemaphore(max_concurrent)
            if max_concurrent > 0
            else contextlib.nullcontext()
        )
        self._shared: Any = None
        self._failure: str | None = None
        self._loaded = threading.Event()
        self._local = threading.local()
        self._call_parameters: frozenset[str] = frozenset()
        self.device: torch.device | None = None
        self.dtype: torch.dtype | None = None

    # -- loading ---------------------------------------------------------------------

    def start(self) -> None:
        """Load the shared pipeline in a background thread."""
        threading.Thread(target=self.load, name="model-loader", daemon=True).start()

    def load(self) -> None:
        """Load the shared pipeline now; record a readable reason if it fails."""
        started = time.monotonic()
        try:
            self._shared = self._load_pipeline()
        except Exception as exc:  # any failure must leave a reason, not a dead thread
            self._failure = _explain_load_failure(exc)
            log.error("model %r failed to load: %s", self.model_id, self._failure, exc_info=exc)
        else:
            self._call_parameters = frozenset(
                inspect.signature(type(self._shared).__call__).parameters
            )
            log.info(
                "model %r loaded as %s on %s in %s in %.1fs",
                self.model_id,
                type(self._shared).__name__,
                self.device,
                self.dtype,
                time.monotonic() - started,
            )
        finally:
            self._loaded.set()

    def _load_pipeline(self) -> Any:
        # Imported here, in the loader thread, so the worker answers while they import.
        from transformers.utils import logging as transformers_logging

        # Importing diffusers' pipelines warns once per image processor that torchvision is
        # absent; the server never uses those processors.
        verbosity = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()
        try:
            from diffusers import AutoPipelineForText2Image
            from diffusers.utils import logging as diffusers_logging

            from app.tiny_model import TINY_MODEL_ID, ensure_tiny_sd3
        finally:
            transformers_logging.set_verbosity(verbosity)

        # Progress bars turn the server's log into noise.
        diffusers_logging.disable_progress_bar()
        transformers_logging.disable_progress_bar()
        self.device = resolve_device(self._device_name)
        self.dtype = resolve_dtype(self._dtype_name, self.device)
        source: str | Path = self.model_id
        if self.model_id == TINY_MODEL_ID:
            for _ in range(3):
                log.warning(
                    "MODEL_ID=tiny-random: RANDOM WEIGHTS, every image is NOISE. "
                    "For tests and offline demos only."
                )
            source = ensure_tiny_sd3(self._cache_dir)
        log.info("loading model %r on %s in %s", self.model_id, self.device, self.dtype)
        # The generic loader picks the pipeline class from model_index.json, so SDXL or
        # FLUX are served by changing MODEL_ID.
        pipeline = AutoPipelineForText2Image.from_pretrained(source, dtype=self.dtype)
        pipeline.to(self.device)
        return pipeline

    def wait_until_loaded(self, timeout: float | None = None) -> bool:
        """Block until loading has finished, either way; return whether it finished."""
        return self._loaded.wait(timeout)

    @property
    def state(self) -> str:
        """Return "loading", "ready" or "failed"."""
        if not self._loaded.is_set():
            return "loading"
        return "failed" if self._failure else "ready"

    @property
    def failure(self) -> str | None:
        """Return why loading failed, if it did."""
        return self._failure

    @property
    def shared(self) -> Any:
        """Return the shared pipeline, or raise why there is none."""
        if not self._loaded.is_set():
            raise ModelLoading(self._retry_after)
        if self._failure:
            raise ModelLoadFailed(self._failure)
        return self._shared

    # -- generation ------------------------------------------------------------------

    def derive_pipeline(self) -> Any:
        """Build a pipeline around the shared modules with per-request mutable parts."""
        shared = self.shared
        components = dict(shared.components)
        # Schedulers keep step state: a fresh one per request, from the shared config.
        components["scheduler"] = type(shared.scheduler).from_config(shared.scheduler.config)
        components.update(self._thread_tokenizers(shared))
        # Built directly (not with from_pipe), which would convert the shared modules'
        # dtype in place when none is given.
        pipeline = type(shared)(**components)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def _thread_tokenizers(self, shared: Any) -> dict[str, Any]:
        """Return this thread's own copies of the shared tokenizers."""
        tokenizers = getattr(self._local, "tokenizers", None)
        if tokenizers is None:
            tokenizers = {
                name: copy.deepcopy(component)
                for name, component in shared.components.items()
                if name.startswith("tokenizer") and component is not None
            }
            self._local.tokenizers = tokenizers
        return tokenizers

    def generate(self, spec: GenerationSpec) -> list[Image.Image]:
        """Run the pipeline for `spec`; return one PIL image per seed, in order."""
        pipeline = self.derive_pipeline()
        kwargs: dict[str, Any] = {
            "prompt": spec.prompt,
            "num_images_per_prompt": len(spec.seeds),
            "height": spec.height,
            "width": spec.width,
            "num_inference_steps": spec.steps,
            "guidance_scale": spec.guidance_scale,
            # CPU generators: the same seed gives the same noise on any device.
            "generator": [torch.Generator("cpu").manual_seed(seed) for seed in spec.seeds],
            "output_type": "pil",
        }
        if spec.negative_prompt:
            if "negative_prompt" not in self._call_parameters:
                raise UnsupportedParameter(
                    "negative_prompt", "The served model does not support negative_prompt."
                )
            kwargs["negative_prompt"] = spec.negative_prompt
        try:
            with self._lane:
                return list(pipeline(**kwargs).images)
        except torch.OutOfMemoryError as exc:
            self._release_memory()
            raise GenerationOutOfMemory(str(exc)) from exc
        except Exception as exc:
            raise GenerationError(f"{type(exc).__name__} during generation") from exc

    def _release_memory(self) -> None:
        if self.device is not None and self.device.type == "cuda":
            torch.cuda.empty_cache()
