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
    """Answer 200 once the model is loaded and warm and the image store answers; 503 with
    the reason otherwise."""
    engine = current_app.extensions["engine"]
    if engine.state != "ready":
        return {"status": engine.state, "reason": engine.reason}, 503
    problem = current_app.extensions["image_store"].problem
    if problem is not None:
        return {"status": "storage_unavailable", "reason": problem}, 503
    return {"status": "ready", "reason": None}, 200
