"""wsgi:app with a model load slowed down by TEST_LOAD_DELAY seconds (injected fault)."""

import os
import time

from app.engine import Engine

_load_pipeline = Engine._load_pipeline


def _slow_load_pipeline(self: Engine) -> object:
    time.sleep(float(os.environ["TEST_LOAD_DELAY"]))
    return _load_pipeline(self)


Engine._load_pipeline = _slow_load_pipeline

from wsgi import app  # noqa: E402

__all__ = ["app"]
