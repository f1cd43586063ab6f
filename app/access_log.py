"""Access lines: one per request, written once its response has been sent.

One line per request, logged by `app.access` once the response has been sent (so a
streamed response counts its whole duration): request id, client, method, path, status,
latency, time spent waiting for the GPU lane, and images delivered. It replaces
Gunicorn's access log. With `LOG_FORMAT=json` (app/logs.py) each access line is a JSON
object with these fields.
"""

from __future__ import annotations

import logging
import time
from typing import Any
from urllib.parse import quote

from flask import Flask, Response, g, has_request_context, request

from app.lane import Job

access_log = logging.getLogger("app.access")

# Characters a path keeps as they are in a log line; anything else (spaces, control
# characters, quotes, non-ASCII) is percent-encoded, so a path cannot forge a line.
_PATH_SAFE = "/:@!$&'()*+,;=-._~"


def record_job(job: Job) -> None:
    """Remember a job admitted for the current request (the engine's `on_submit` hook)."""
    if has_request_context():
        g.setdefault("jobs", []).append(job)


def _queue_wait(jobs: list[Job]) -> float | None:
    waits = [job.started_at - job.enqueued_at for job in jobs if job.started_at is not None]
    return max(waits) if waits else None


def _fields(status: int, started: float, context: Any) -> dict[str, Any]:
    jobs: list[Job] = context.get("jobs", [])
    wait = _queue_wait(jobs)
    delivered = status < 400 and all(job.done and job.error is None for job in jobs)
    return {
        "status": status,
        "latency_ms": round((time.monotonic() - started) * 1000, 1),
        "queue_wait_ms": None if wait is None else round(wait * 1000, 1),
        "images": sum(job.images for job in jobs) if delivered else 0,
    }


def _log_access(base: dict[str, Any], status: int, started: float, context: Any) -> None:
    fields = {**base, **_fields(status, started, context)}
    wait = fields["queue_wait_ms"]
    access_log.info(
        '%s "%s %s" %d %.1fms queue_wait=%s images=%d',
        fields["remote_addr"], fields["method"], fields["path"], fields["status"],
        fields["latency_ms"], "-" if wait is None else f"{wait:.1f}ms", fields["images"],
        extra={**fields, "request_id": base["request_id"]},
    )  # fmt: skip


def init_access_log(app: Flask) -> None:
    """Log one access line per request, after its response has been sent."""
    app.extensions["engine"].on_submit = record_job

    @app.before_request
    def start_clock() -> None:
        g.access_started = time.monotonic()

    @app.after_request
    def log_when_sent(response: Response) -> Response:
        base = {
            "request_id": getattr(g, "request_id", "-"),
            "remote_addr": request.remote_addr or "-",
            "method": request.method,
            "path": quote(request.path, safe=_PATH_SAFE),
        }
        started = g.get("access_started", time.monotonic())
        # The same `g` object is kept: a streamed response's jobs finish after this point.
        context = g._get_current_object()
        status = response.status_code
        response.call_on_close(lambda: _log_access(base, status, started, context))
        return response
