"""The bare baseline: the same model in-process, called in the loop a user would write."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from app.engine.loading import load_pipeline, resolve_device, resolve_dtype
from bench.common import PROMPT, Case


def load_bare(model_id: str, cache_dir: Path, device: str, dtype: str) -> Any:
    """Load the model exactly as the server's engine does."""
    resolved = resolve_device(device)
    return load_pipeline(model_id, resolved, resolve_dtype(dtype, resolved), cache_dir)


def bare_call(pipe: Any, case: Case, seed: int) -> float:
    """Time one bare pipeline call, the loop a user would write without the server."""
    started = time.perf_counter()
    pipe(
        PROMPT,
        height=case.height,
        width=case.width,
        num_inference_steps=case.steps,
        generator=torch.Generator("cpu").manual_seed(seed),
    ).images[0]
    return time.perf_counter() - started


class BareLoop:
    """Run bare pipeline calls one at a time, on a worker thread unless told otherwise.

    The server runs each pipeline call on a Gunicorn request thread, never the main
    thread, and so does this loop by default. It matters on a busy CPU: libgomp spins
    its waiting threads while the OpenMP threads it manages do not outnumber the cores,
    which a single main-thread loop satisfies and a multi-threaded server does not; when
    other processes take the cores, that spinning made the main-thread loop up to 10x
    slower here (0.75 s against 0.08 s for the same 64x64 call on a worker thread).
    """

    def __init__(self, pipe: Any, on_main_thread: bool = False) -> None:
        self.pipe: Any = pipe
        self.executor = None if on_main_thread else ThreadPoolExecutor(1, "bare-loop")

    def call(self, case: Case, seed: int) -> float:
        """Time one call."""
        if self.executor is None:
            return bare_call(self.pipe, case, seed)
        return self.executor.submit(bare_call, self.pipe, case, seed).result()

    def close(self) -> None:
        """Drop the pipeline; a call still running finishes on its own."""
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
        self.pipe = None
