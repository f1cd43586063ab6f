"""OpenAI-compatible image generation server: the Flask application factory."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from app.config import load_config

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def _model_name(model_id: str) -> str:
    """Name a model for clients: a local path is shown by its last part only."""
    looks_local = model_id.startswith(("/", ".", "~")) or Path(model_id).exists()
    return Path(model_id).name if looks_local else model_id


def create_app(test_config: Mapping[str, Any] | None = None, *, load_model: bool = True) -> Flask:
    """Create the app: config, logging, engine, image store, blueprints, error handlers."""
    from app import api, files, probes
    from app.engine import Engine
    from app.errors import register_error_handlers
    from app.images import ImageStore
    from app.request_ids import configure_logging, init_request_ids

    # No built-in static route: app/files.py decides what under static/ may be served.
    app = Flask(__name__, static_folder=None, instance_path=str(PROJECT_ROOT / "instance"))
    app.static_folder = str(PROJECT_ROOT / "static")
    config = load_config(overrides=test_config)
    config["IMAGE_DIR"] = config["IMAGE_DIR"] or str(PROJECT_ROOT / "static" / "images")
    config["MODEL_CACHE_DIR"] = config["MODEL_CACHE_DIR"] or str(Path(app.instance_path) / "models")
    config["MODEL_NAME"] = config["MODEL_NAME"] or _model_name(config["MODEL_ID"])
    config["STARTED_AT"] = int(time.time())
    config["MAX_CONTENT_LENGTH"] = config["MAX_REQUEST_BYTES"]
    app.config.from_mapping(config)

    configure_logging(app.config["LOG_LEVEL"])
    if app.config["TRUSTED_PROXIES"] > 0:
        hops = app.config["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops,
                                x_port=hops, x_prefix=hops)  # fmt: skip

    store = ImageStore(app.config["IMAGE_DIR"])
    store.ensure_directory()
    engine = Engine(
        app.config["MODEL_ID"],
        device=app.config["DEVICE"],
        dtype=app.config["DTYPE"],
        cache_dir=app.config["MODEL_CACHE_DIR"],
        max_concurrent=app.config["MAX_CONCURRENT_GENERATIONS"],
        retry_after=app.config["LOAD_RETRY_AFTER_SECONDS"],
    )
    app.extensions["image_store"] = store
    app.extensions["engine"] = engine

    init_request_ids(app)
    register_error_handlers(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(files.bp)
    app.register_blueprint(probes.bp)

    if load_model:
        engine.start()
    return app
