"""Per-request pipelines built around the shared modules.

Each request gets its own pipeline object holding the SHARED modules (never copied,
converted or moved), a fresh scheduler (schedulers keep step state) and its thread's own
copies of the tokenizers (fast tokenizers mutate their settings on every call). The
pipeline is constructed directly, not with `from_pipe`, which converts the shared modules
to float32 in place when no dtype is given.
"""

from __future__ import annotations

import copy
import functools
import inspect
import threading
from typing import Any

from app.engine.families import task_class
from app.engine.work import Task
from app.exceptions import UnsupportedParameter


class PipelineDeriver:
    """Derive per-request pipelines for any task of the shared pipeline's family."""

    def __init__(self) -> None:
        self._local = threading.local()

    def derive(self, shared: Any, task: Task = Task.TEXT_TO_IMAGE) -> Any:
        """Return a pipeline for `task` around the shared modules, with per-request parts."""
        components = dict(shared.components)
        components["scheduler"] = type(shared.scheduler).from_config(shared.scheduler.config)
        components.update(self._thread_tokenizers(shared))
        pipeline_class = task_pipeline_class(shared, task)
        accepted = _init_parameters(pipeline_class)
        arguments = {k: v for k, v in components.items() if k in accepted}
        if "requires_safety_checker" in accepted and arguments.get("safety_checker") is None:
            # Loading a model without a safety checker already warned, once; every derived
            # pipeline would repeat the long warning on each request.
            arguments["requires_safety_checker"] = False
        pipeline = pipeline_class(**arguments)
        pipeline.set_progress_bar_config(disable=True)
        return pipeline

    def _thread_tokenizers(self, shared: Any) -> dict[str, Any]:
        """Return this thread's own copies of the shared tokenizers, made once per thread."""
        tokenizers = getattr(self._local, "tokenizers", None)
        if tokenizers is None:
            tokenizers = {
                name: copy.deepcopy(component)
                for name, component in shared.components.items()
                if name.startswith("tokenizer") and component is not None
            }
            self._local.tokenizers = tokenizers
        return tokenizers


def task_pipeline_class(shared: Any, task: Task) -> type:
    """Return the pipeline class for `task` in the shared pipeline's model family."""
    found = task_class(type(shared), task)
    if found is None:
        raise UnsupportedParameter(
            "image", f"The served model has no {task} pipeline; edits are not available."
        )
    return found


@functools.cache
def _init_parameters(pipeline_class: type) -> frozenset[str]:
    """Return the component names a pipeline class takes (looked up once per class)."""
    return frozenset(inspect.signature(pipeline_class.__init__).parameters)
