"""Liveness and readiness probes."""

from __future__ import annotations

from flask import Blueprint, current_app

bp = Blueprint("probes", __name__)


@bp.get("/healthz")
def healthz() -> dict[str, str]:
    """Answer while the process is alive, even while the model loads."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz() -> tuple[dict[str, str | None], int]:
    """Answer 200 once the model is loaded, 503 with the reason before or on failure."""
    engine = current_app.extensions["engine"]
    state = engine.state
    if state == "ready":
        return {"status": "ready", "reason": None}, 200
    reason = "model is loading" if state == "loading" else engine.failure
    return {"status": state, "reason": reason}, 503
