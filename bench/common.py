"""What every part of the benchmark shares: the request, cases, statistics and formatting."""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass

PROMPT = "a lighthouse on a cliff at dusk, oil painting, warm light"
REQUEST_TIMEOUT = 900.0


@dataclass(frozen=True)
class Case:
    """An image size and step count, written `WxH:steps`."""

    width: int
    height: int
    steps: int

    @classmethod
    def parse(cls, text: str) -> Case:
        """Parse `WxH:steps`."""
        size, _, steps = text.partition(":")
        width, _, height = size.partition("x")
        return cls(int(width), int(height), int(steps))

    @property
    def size(self) -> str:
        """Return `WxH`, as the API's `size` field."""
        return f"{self.width}x{self.height}"

    def __str__(self) -> str:
        return f"{self.size}:{self.steps}"

    def label(self) -> str:
        """Return a human label such as `256x256, 16 steps`."""
        return f"{self.size}, {plural(self.steps, 'step')}"


def plural(count: int, noun: str) -> str:
    """Return e.g. `1 client` or `8 clients`."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def percentile(values: list[float], q: float) -> float:
    """Return the q-th percentile (0..100) with linear interpolation, NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def seconds(value: float) -> str:
    """Format seconds with three significant digits."""
    return "n/a" if math.isnan(value) else f"{value:.3g} s"


def ratio_text(value: float) -> str:
    """Format a ratio such as `1.23x`."""
    return "n/a" if math.isnan(value) else f"{value:.2f}x"


def say(message: str) -> None:
    """Print progress to stderr, so stdout holds only the table."""
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
