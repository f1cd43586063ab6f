"""wsgi:app whose pipeline raises injected faults for marked prompts (test only).

Faults that cannot be produced on a CPU otherwise: a prompt starting with "inject:oom"
raises torch.OutOfMemoryError inside the pipeline call, "inject:error" a RuntimeError
with a path in it, "inject:fatal" CUDA's illegal-memory-access error.
"""

from typing import Any

import torch

from app.engine import Engine

FAULTS = {
    "inject:oom": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
    "inject:error": lambda: RuntimeError("boom in /srv/secret/module.py"),
    "inject:fatal": lambda: RuntimeError("CUDA error: an illegal memory access was encountered"),
}


class _FaultyPipeline:
    """Delegate to the real derived pipeline unless the prompt asks for a fault."""

    def __init__(self, pipeline: Any) -> None:
        self._pipeline = pipeline

    def __call__(self, **kwargs: Any) -> Any:
        prompts = kwargs["prompt"] if isinstance(kwargs["prompt"], list) else [kwargs["prompt"]]
        for marker, make in FAULTS.items():
            if any(prompt.startswith(marker) for prompt in prompts):
                raise make()
        return self._pipeline(**kwargs)


_derive = Engine._derive
Engine._derive = lambda self, *args: _FaultyPipeline(_derive(self, *args))

from wsgi import app  # noqa: E402

__all__ = ["app"]
