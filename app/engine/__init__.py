"""The engine: one shared diffusers pipeline per worker, a derived pipeline per request."""

from app.engine.core import *  # noqa: F403
from app.engine.core import Engine, GenerationSpec  # noqa: F401
