"""The benchmark's sections, in the order a full run takes them; each adds its rows."""

from __future__ import annotations

from collections.abc import Callable

from bench.harness import Bench
from bench.sections import admission, concurrency, memory, overhead

SECTIONS: dict[str, Callable[[Bench], None]] = {
    "overhead": overhead.run,
    "concurrency": concurrency.run,
    "admission": admission.run,
    "memory": memory.run,
}
