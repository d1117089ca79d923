"""Prometheus metrics of one server (``GET /metrics``), in a registry of its own (several apps in one
process, as tests make them, do not share counters).

- ``pe_requests_total{route, status}`` and ``pe_request_seconds{route}`` (latency histogram);
- ``pe_batch_size{modality}`` (items per model batch: batching at work shows as batches above 1) and
  ``pe_batch_seconds{modality}`` (the model's time per batch);
- ``pe_queue_depth{modality}``: items admitted and not yet in a batch;
- ``pe_rejected_total{reason}``: requests refused before the model (``overloaded``, ``unauthorized``,
  ``too_large``, ``invalid``, ``not_ready``).
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("pe_requests", "HTTP requests answered", ["route", "status"], registry=r)
        self.latency = Histogram(
            "pe_request_seconds", "Time to answer a request", ["route"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "pe_batch_size", "Items per model batch", ["modality"], buckets=BATCH_BUCKETS, registry=r
        )
        self.batch_seconds = Histogram(
            "pe_batch_seconds", "Model time per batch", ["modality"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue_depth = Gauge(
            "pe_queue_depth", "Items admitted, not yet in a batch", ["modality"], registry=r
        )
        self.rejected = Counter("pe_rejected", "Requests refused before the model", ["reason"], registry=r)

    def observe_batch(self, modality: str, size: int, seconds: float) -> None:
        self.batch_size.labels(modality).observe(size)
        self.batch_seconds.labels(modality).observe(seconds)

    def track_depth(self, modality: str, depth: Callable[[], float]) -> None:
        self.queue_depth.labels(modality).set_function(depth)

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route, str(status)).inc()
        self.latency.labels(route).observe(seconds)
        reason = rejection_reason(status)
        if reason is not None:
            self.rejected.labels(reason).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


def rejection_reason(status: int) -> str | None:
    return {429: "overloaded", 401: "unauthorized", 413: "too_large", 503: "not_ready"}.get(
        status, "invalid" if 400 <= status < 500 and status != 404 else None
    )
