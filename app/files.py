"""Static files: generated images and the page assets, and nothing else."""

from __future__ import annotations

import math
import time

from flask import Blueprint, Response, abort, current_app, send_from_directory

from app.images import IMAGE_NAME
from app.retention import is_expired

bp = Blueprint("files", __name__)

# Images kept forever (IMAGE_TTL_SECONDS=0): names are 128-bit random and never reused,
# so a cached copy never goes stale.
FOREVER = 365 * 24 * 3600


def max_age(modified: float, ttl: float, now: float | None = None) -> int:
    """Seconds a cache may keep an image: what is left of its URL's life, never more."""
    if ttl <= 0:
        return FOREVER
    return max(0, math.floor(modified + ttl - (time.time() if now is None else now)))


@bp.get("/static/images/<name>")
def image(name: str) -> Response:
    """Serve one generated image by its unguessable name."""
    if not IMAGE_NAME.match(name):
        abort(404)
    store = current_app.extensions["image_store"]
    if store.kind != "local":
        abort(404)  # S3 URLs point at the bucket, never here
    path, ttl = store.directory / name, current_app.config["IMAGE_TTL_SECONDS"]
    if is_expired(path, ttl):
        abort(404)  # past IMAGE_TTL_SECONDS: gone, even before the sweeper deletes it
    try:
        age = max_age(path.stat().st_mtime, ttl)
    except OSError:
        abort(404)
    response = send_from_directory(store.directory, name, max_age=age)
    response.cache_control.immutable = True
    return response


@bp.get("/static/<path:filename>")
def asset(filename: str) -> Response:
    """Serve a page asset from static/, never a hidden file or the image directory."""
    parts = filename.split("/")
    if parts[0] == "images" or any(part.startswith(".") for part in parts):
        abort(404)
    return send_from_directory(current_app.static_folder, filename)
