"""wsgi:app whose pipeline calls raise injected faults for marked prompts (test only).

Faults that cannot be produced on a CPU otherwise: a prompt starting with "inject:oom"
raises torch.OutOfMemoryError inside the pipeline call, "inject:error" a RuntimeError
with a path in it, "inject:fatal" CUDA's illegal-memory-access error. They are injected
through the engine's `pipeline_call` seam.
"""

from typing import Any

import torch
from PIL import Image

from app import create_app
from app.engine.runner import call_pipeline

FAULTS = {
    "inject:oom": lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"),
    "inject:error": lambda: RuntimeError("boom in /srv/secret/module.py"),
    "inject:fatal": lambda: RuntimeError("CUDA error: an illegal memory access was encountered"),
}


def faulty_call(pipeline: Any, arguments: dict[str, Any]) -> list[Image.Image]:
    """Call the real pipeline unless a prompt of the batch asks for a fault."""
    prompts = arguments["prompt"]
    for marker, make in FAULTS.items():
        if any(
            prompt.startswith(marker)
            for prompt in ([prompts] if isinstance(prompts, str) else prompts)
        ):
            raise make()
    return call_pipeline(pipeline, arguments)


app = create_app(pipeline_call=faulty_call)
