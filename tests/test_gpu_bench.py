"""The GPU run's script (bench/gpu.py) runs end to end on the CPU, shrunk (--tiny)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_gpu_script_dry_run_records_every_figure(tmp_path: Path) -> None:
    # Compiling is covered by tests/test_options.py; here it would only add minutes.
    command = [sys.executable, str(ROOT / "bench" / "gpu.py"), "all", "--tiny", "--no-compile",
               "--out", str(tmp_path)]  # fmt: skip
    subprocess.run(command, check=True, timeout=600, capture_output=True)
    rows = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    names = {row["name"]: row for row in rows}
    for name in ("bare eager", "server eager (lane)", "streaming, 2 partial images",
                 "lane, 8 clients", "unbounded threads, 8 clients", "micro-batching 64x64",
                 "mode: full (bf16)", "mode: no T5", "mode: int8 transformer", "done"):  # fmt: skip
        assert name in names, name
    assert names["server eager (lane)"]["mean_s"] > 0
    assert names["streaming, 2 partial images"]["first_partial_s"] > 0
    assert names["mode: model offload"]["skipped"] == "offload needs a GPU"
    assert "| bare eager |" in (tmp_path / "summary.md").read_text()
