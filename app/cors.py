"""CORS: off unless `CORS_ORIGINS` names the origins whose pages may call the API.

Without it, no response carries `Access-Control-Allow-Origin`, so a page on another origin
cannot read answers (the playground is served by this server, same origin). With it,
exactly the named origins are allowed, preflights included; `*` only if configured.
flask-cors does the header logic (preflight, `Vary: Origin`, method and header lists).
"""

from __future__ import annotations

from flask import Flask
from flask_cors import CORS


def parse_origins(value: str) -> list[str]:
    """Return the origins of a comma-separated list, without trailing slashes."""
    return [origin.strip().rstrip("/") for origin in value.split(",") if origin.strip()]


def init_cors(app: Flask) -> None:
    """Allow the configured origins, if any."""
    origins = parse_origins(app.config["CORS_ORIGINS"])
    if not origins:
        return
    CORS(
        app,
        origins="*" if origins == ["*"] else origins,
        allow_headers=["Authorization", "Content-Type", "x-request-id"],
        expose_headers=["x-request-id", "Retry-After"],
        methods=["GET", "POST", "OPTIONS"],
        max_age=600,
    )
