"""The playground: a browser page at / for trying the server without writing code."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, send_from_directory

bp = Blueprint("playground", __name__)


@bp.get("/")
def index() -> Response:
    """Serve the playground page; its script and styles come from /static/."""
    return send_from_directory(current_app.static_folder, "index.html")
