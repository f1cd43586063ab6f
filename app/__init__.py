"""OpenAI-compatible image generation server: the Flask application factory."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from app.config import load_config

if TYPE_CHECKING:
    from app.engine import Loader, PipelineCall

PROJECT_ROOT = Path(__file__).resolve().parent.parent

log = logging.getLogger(__name__)


def _model_name(model_id: str) -> str:
    """Name a model for clients: a local path is shown by its last part only."""
    looks_local = model_id.startswith(("/", ".", "~")) or Path(model_id).exists()
    return Path(model_id).name if looks_local else model_id


def _live_state(engine: Any) -> dict[str, float]:
    """Read what /metrics reports about the lane, readiness and GPU memory."""
    import torch

    state = {
        "queue_depth": engine.lane.queued_requests,
        "queued_images": engine.lane.queued_images,
        "inflight_generations": engine.lane.running_images,
        "model_loaded": float(engine.state == "ready"),
    }
    if engine.device is not None and engine.device.type == "cuda":
        state["gpu_memory_allocated_bytes"] = torch.cuda.memory_allocated(engine.device)
        state["gpu_memory_reserved_bytes"] = torch.cuda.memory_reserved(engine.device)
    return state


def drain(app: Flask) -> None:
    """Stop admitting generations; readiness turns false, admitted work still finishes."""
    app.extensions["engine"].lane.drain()
    log.info("draining: no new generations are admitted")


def create_app(
    test_config: Mapping[str, Any] | None = None,
    *,
    load_model: bool = True,
    loader: Loader | None = None,
    pipeline_call: PipelineCall | None = None,
) -> Flask:
    """Create the app: config, logging, engine, image store, blueprints, error handlers.

    `loader` and `pipeline_call` replace the engine's seams (tests inject faults there).
    """
    from app import api, files, playground, probes
    from app import metrics as metrics_module
    from app.access_log import init_access_log
    from app.auth import init_auth
    from app.cors import init_cors
    from app.engine import Engine
    from app.engine.hotswap import check_hotswap_settings, layer_names
    from app.engine.loading import resolve_device
    from app.engine.options import EngineOptions, OptionError
    from app.errors import register_error_handlers
    from app.images import ImageEncoder
    from app.lane import Lane
    from app.logs import configure_logging
    from app.loras import LoraLibrary
    from app.metrics import Metrics, init_request_metrics
    from app.openapi import init_openapi
    from app.request_ids import init_request_ids
    from app.retention import init_retention
    from app.storage import create_store

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

    configure_logging(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])
    if app.config["TRUSTED_PROXIES"] > 0:
        hops = app.config["TRUSTED_PROXIES"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops,
                                x_port=hops, x_prefix=hops)  # fmt: skip

    store = create_store(app.config)  # refuses settings that cannot work, at start
    encoder = ImageEncoder(app.config["PNG_COMPRESS_LEVEL"], app.config["ENCODE_THREADS"])
    metrics = Metrics()
    lane = Lane(
        app.config["MAX_CONCURRENT_GENERATIONS"],
        app.config["MAX_QUEUE"],
        batch_max_images=app.config["BATCH_MAX_SIZE"],
        batch_wait=app.config["BATCH_WAIT_MS"] / 1000,
    )
    # Speed and memory options are refused here, at start, not in the loading thread.
    options = EngineOptions.from_config(app.config)
    options.check(resolve_device(app.config["DEVICE"]), app.config["MAX_CONCURRENT_GENERATIONS"])
    if options.compile and app.config["LORA_DIR"]:
        check_hotswap_settings(app.config)  # adapters are hot-swapped into fixed slots
    if options.fuse_qkv and app.config["LORA_DIR"]:
        # Fused attention runs through to_qkv: adapters on to_q/to_k/to_v would be ignored.
        raise OptionError(
            "FUSE_QKV=true with LORA_DIR set would silently skip the adapters' query, key and "
            "value layers; unset one of them."
        )
    if app.config["LORA_DIR"] and not Path(app.config["LORA_DIR"]).is_dir():
        # A typo would otherwise list no adapters and answer every name with a 400.
        raise OptionError(
            f"LORA_DIR={app.config['LORA_DIR']} is not a directory; create it or unset it."
        )
    loras = LoraLibrary(app.config["LORA_DIR"]) if app.config["LORA_DIR"] else None
    seams = {"loader": loader, "pipeline_call": pipeline_call}
    engine = Engine(
        app.config["MODEL_ID"],
        lane,
        device=app.config["DEVICE"],
        dtype=app.config["DTYPE"],
        cache_dir=app.config["MODEL_CACHE_DIR"],
        retry_after=app.config["LOAD_RETRY_AFTER_SECONDS"],
        warmup=app.config["WARMUP"],
        # Compiled, the warm-up runs each size with CFG as requests will (batch shapes).
        warmup_sizes=options.warmup_sizes(app.config["DEFAULT_SIZE"]),
        warmup_guidance=app.config["DEFAULT_GUIDANCE_SCALE"] if options.compile else 1.0,
        options=options,
        metrics=metrics,
        loras=loras,
        lora_cache_size=app.config["LORA_CACHE_SIZE"],
        lora_hotswap=(
            app.config["LORA_HOTSWAP_RANK"],
            layer_names(app.config["LORA_HOTSWAP_LAYERS"]),
        ),
        **{name: seam for name, seam in seams.items() if seam is not None},
    )
    metrics.watch(lambda: _live_state(engine))
    app.extensions["image_store"] = store
    app.extensions["image_encoder"] = encoder
    app.extensions["engine"] = engine
    app.extensions["loras"] = loras
    app.extensions["metrics"] = metrics

    init_request_ids(app)
    init_access_log(app)  # before auth: a refused request is logged too
    init_auth(app)
    init_cors(app)
    sweeper = init_retention(app)
    init_request_metrics(app, metrics)
    register_error_handlers(app)
    for blueprint in (api.bp, files.bp, probes.bp, metrics_module.bp):
        app.register_blueprint(blueprint)
    app.register_blueprint(playground.bp)
    init_openapi(app)

    if load_model:
        engine.start()
        store.start()
        if store.kind == "local":  # S3 objects expire by the bucket's lifecycle rule
            sweeper.start()
    return app
