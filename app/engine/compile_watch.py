"""Say when torch.compile compiles during a generation, and how long that call took.

With COMPILE=true each new image size or batch shape compiles new graphs on its first
call, which can take from seconds to minutes. The watch reads dynamo's graph counter
around each pipeline call, so no recompile goes unnoticed: each one is logged as a
warning with the size, the batch and the seconds the call took, and counted.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

log = logging.getLogger(__name__)


def compiled_graphs() -> int:
    """Return how many graphs torch.compile has compiled in this process."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


class CompiledCall:
    """What one watched call compiled: `graphs` is set when the call is over."""

    graphs: int = 0


class CompileWatch:
    """Log and count the compilations that happen during pipeline calls."""

    def __init__(self, on_compile: Callable[[int], None] | None = None) -> None:
        self._on_compile = on_compile
        self.shapes: list[str] = []  # the shapes whose calls compiled, in order

    @contextlib.contextmanager
    def call(
        self, shape: str, reason: str = "first request of this shape"
    ) -> Iterator[CompiledCall]:
        """Watch one pipeline call of `shape` (e.g. "1024x1024, batch 2"); what it yields
        says, once the call is over, how many graphs the call compiled."""
        seen = CompiledCall()
        before, started = compiled_graphs(), time.monotonic()
        yield seen
        new = seen.graphs = compiled_graphs() - before
        if new <= 0:
            return
        self.shapes.append(shape)
        took = time.monotonic() - started
        log.warning(
            "torch.compile compiled %d graph(s) for %s (%s): that call took %.1fs; "
            "%d shape(s) compiled so far. Add frequent sizes to COMPILE_SIZES.",
            new, shape, reason, took, len(self.shapes),
        )  # fmt: skip
        if self._on_compile:
            self._on_compile(new)
