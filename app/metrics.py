"""Prometheus metrics, one registry per app, served at GET /metrics."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from flask import Blueprint, Flask, Response, current_app, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

bp = Blueprint("metrics", __name__)

# Seconds: from a fraction of a step on a GPU to a long queue.
_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)


class _LiveState(Collector):
    """Read queue depth, in-flight work, readiness and GPU memory when scraped."""

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self._read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self._read()
        for name, help_text in (
            ("queue_depth", "Requests waiting for the GPU lane."),
            ("queued_images", "Images waiting for the GPU lane."),
            ("inflight_generations", "Images being generated right now."),
            ("model_loaded", "1 when the model is loaded and warmed up."),
        ):
            yield GaugeMetricFamily(f"image_server_{name}", help_text, value=state[name])
        if "gpu_memory_allocated_bytes" in state:
            for kind in ("allocated", "reserved"):
                yield GaugeMetricFamily(
                    f"image_server_gpu_memory_{kind}_bytes",
                    f"CUDA memory {kind} by PyTorch.",
                    value=state[f"gpu_memory_{kind}_bytes"],
                )


class Metrics:
    """The server's counters and histograms, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "image_server_requests", "HTTP requests.", ["endpoint", "status"], registry=r
        )
        self.images = Counter("image_server_images_generated", "Images generated.", registry=r)
        self.rejections = Counter(
            "image_server_rejections", "Requests refused by admission.", ["reason"], registry=r
        )
        self.errors = Counter("image_server_errors", "Failed requests.", ["kind"], registry=r)
        self.compilations = Counter(
            "image_server_compilations", "Graphs torch.compile compiled (COMPILE=true).",
            registry=r,
        )  # fmt: skip
        self.queue_wait = Histogram(
            "image_server_queue_wait_seconds", "Time waiting for the lane.",
            buckets=_BUCKETS, registry=r,
        )  # fmt: skip
        self.generation_time = Histogram(
            "image_server_generation_seconds", "Time of one pipeline call.",
            buckets=_BUCKETS, registry=r,
        )  # fmt: skip

    def watch(self, read: Callable[[], dict[str, float]]) -> None:
        """Report the live state that `read` returns at each scrape."""
        self.registry.register(_LiveState(read))


def init_request_metrics(app: Flask, metrics: Metrics) -> None:
    """Count every response by endpoint and status."""

    @app.after_request
    def count(response: Response) -> Response:
        endpoint = request.url_rule.rule if request.url_rule else "unmatched"
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        return response


@bp.get("/metrics")
def metrics() -> Response:
    """Expose the metrics in Prometheus' text format."""
    registry = current_app.extensions["metrics"].registry
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
