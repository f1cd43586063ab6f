"""Wait for something another thread or process does, with a bound and a reason."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(
    predicate: Callable[[], bool], what: str, timeout: float = 60.0, interval: float = 0.05
) -> None:
    """Poll `predicate` until it holds; fail naming `what` after `timeout` seconds."""
    give_up = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < give_up, f"timed out after {timeout}s waiting for {what}"
        time.sleep(interval)
