"""The engine package: load the shared pipeline, derive one per request, run batches.

Modules, in the order a request meets them: work.py (what is asked), engine.py (state,
submit, complete), derive.py (the per-request pipeline), runner.py (one pipeline call),
previews.py (partial images), loading.py (the shared pipeline), adapters.py (LoRA
adapters on the shared modules).
"""

from app.engine.engine import Engine, Loader
from app.engine.runner import PipelineCall
from app.engine.work import GenerationSpec, PartialCallback, Task, Work

__all__ = ["Engine", "GenerationSpec", "Loader", "PartialCallback", "PipelineCall", "Task", "Work"]
