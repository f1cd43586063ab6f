"""wsgi:app whose model load is slowed down by TEST_LOAD_DELAY seconds (injected fault).

The delay goes through the engine's `loader` seam.
"""

import os
import time
from pathlib import Path
from typing import Any

import torch

from app import create_app
from app.engine.loading import load_pipeline


def slow_loader(model_id: str, device: torch.device, dtype: torch.dtype, cache_dir: Path) -> Any:
    """Wait TEST_LOAD_DELAY seconds, then load as the server does."""
    time.sleep(float(os.environ["TEST_LOAD_DELAY"]))
    return load_pipeline(model_id, device, dtype, cache_dir)


app = create_app(loader=slow_loader)
