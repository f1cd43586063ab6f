"""Static files: generated images and the page assets, and nothing else."""

from __future__ import annotations

from flask import Blueprint, Response, abort, current_app, send_from_directory

from app.images import IMAGE_NAME
from app.retention import is_expired

bp = Blueprint("files", __name__)

# Names are 128-bit random and never reused, so a cached copy never goes stale.
IMAGE_MAX_AGE = 365 * 24 * 3600


@bp.get("/static/images/<name>")
def image(name: str) -> Response:
    """Serve one generated image by its unguessable name."""
    if not IMAGE_NAME.match(name):
        abort(404)
    store = current_app.extensions["image_store"]
    if is_expired(store.directory / name, current_app.config["IMAGE_TTL_SECONDS"]):
        abort(404)  # past IMAGE_TTL_SECONDS: gone, even before the sweeper deletes it
    return send_from_directory(store.directory, name, max_age=IMAGE_MAX_AGE)


@bp.get("/static/<path:filename>")
def asset(filename: str) -> Response:
    """Serve a page asset from static/, never a hidden file or the image directory."""
    parts = filename.split("/")
    if parts[0] == "images" or any(part.startswith(".") for part in parts):
        abort(404)
    return send_from_directory(current_app.static_folder, filename)
