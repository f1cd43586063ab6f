"""The report: the machine line and one markdown table of every row the sections added."""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Row:
    """One line of the final table."""

    measure: str
    figure: str
    ratio: str = ""
    target: str = ""
    met: bool | None = None


def load_average() -> float:
    """Return the one-minute load average, NaN where the system has none."""
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan


def machine_line(model_id: str, device: str, dtype: str) -> str:
    """Describe the machine: CPU model, cores, GPU, library versions, model, date."""
    import diffusers
    import torch

    cpu = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        f"Machine: {cpu}, {os.cpu_count()} cores, {gpu}; torch {torch.__version__}, "
        f"diffusers {diffusers.__version__}, Python {platform.python_version()}; "
        f"model {model_id} on {device} in {dtype}, {torch.get_num_threads()} torch threads; "
        f"{now}; load average at start {load_average():.2f}"
    )


def render(header: str, rows: list[Row]) -> str:
    """Render the rows as one markdown table under the machine line."""
    lines = [
        header,
        "",
        "| Measurement | Figures | Ratio | Target | Met |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        met = "" if row.met is None else ("yes" if row.met else "**no**")
        lines.append(f"| {row.measure} | {row.figure} | {row.ratio} | {row.target} | {met} |")
    return "\n".join(lines) + "\n"
