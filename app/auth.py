"""API keys: `Authorization: Bearer <key>` on every /v1/ request when keys are configured.

Keys come from `API_KEYS` (comma-separated) and `API_KEYS_FILE` (one key a line, `#`
comments). With neither, the server is open, as before. Probes, the OpenAPI document,
the playground and generated images (by their unguessable URLs) never need a key;
`/metrics` does only with `METRICS_REQUIRE_KEY=true`. Keys are compared in constant
time and never logged.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from flask import Flask, current_app, request

from app.exceptions import APIError

# Where a key is needed: the OpenAI API, and /metrics when the operator asks for it.
_API_PREFIX = "/v1/"
_METRICS_PATH = "/metrics"


def load_keys(keys: str, keys_file: str) -> tuple[bytes, ...]:
    """Return the configured keys from the comma-separated list and the key file."""
    found = [key.strip() for key in keys.split(",")]
    if keys_file:
        for line in Path(keys_file).read_text(encoding="utf-8").splitlines():
            if not line.lstrip().startswith("#"):
                found.append(line.strip())
    return tuple(dict.fromkeys(key.encode("utf-8") for key in found if key))


def keys_required(app: Flask) -> bool:
    """Return whether this app asks for an API key."""
    return bool(app.extensions.get("api_keys"))


def needs_key(path: str, app: Flask) -> bool:
    """Return whether a request for `path` must carry a key."""
    if path.startswith(_API_PREFIX):
        return True
    return path == _METRICS_PATH and app.config["METRICS_REQUIRE_KEY"]


def _is_valid(presented: bytes, keys: tuple[bytes, ...]) -> bool:
    """Compare against every key in constant time, so timing tells nothing about any."""
    valid = False
    for key in keys:
        valid |= hmac.compare_digest(presented, key)
    return valid


def _presented_key() -> bytes | None:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        return None
    return credentials.strip().encode("utf-8", "surrogateescape")


def init_auth(app: Flask) -> None:
    """Load the keys and check them before every request that needs one."""
    keys = load_keys(app.config["API_KEYS"], app.config["API_KEYS_FILE"])
    app.extensions["api_keys"] = keys
    if not keys:
        return

    @app.before_request
    def require_api_key() -> None:
        # A CORS preflight never carries credentials; the real request that follows does.
        if request.method == "OPTIONS" or not needs_key(request.path, current_app):
            return
        presented = _presented_key()
        if presented is None:
            raise APIError(
                "Missing API key: send it as 'Authorization: Bearer <key>'.",
                status=401,
                code="invalid_api_key",
            )
        if not _is_valid(presented, keys):
            raise APIError("Incorrect API key provided.", status=401, code="invalid_api_key")
