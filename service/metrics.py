"""Prometheus metrics of one app (its own ``CollectorRegistry``, so apps never share series).

``MetricsMiddleware`` is a plain ASGI middleware (cheaper than ``BaseHTTPMiddleware``): it
times each HTTP request and labels it with the matched route template (``/v1/items/{id}``,
never the raw path, which would explode the label set).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """The service's metric families, registered in a private registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.request_latency = Histogram(
            "hashkd_request_duration_seconds",
            "HTTP request latency by route template, method and status code.",
            ["method", "route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.encode_batch = Histogram(
            "hashkd_encode_batch_size",
            "Images per encoder call (micro-batches of search queries, or one add request).",
            ["model"],
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.index_size = Gauge(
            "hashkd_index_size", "Items in the search index.", registry=self.registry
        )
        self.errors = Counter(
            "hashkd_request_errors",
            "Error answers by status code.",
            ["status"],
            registry=self.registry,
        )

    def track_index_size(self, size: Callable[[], float]) -> None:
        self.index_size.set_function(size)

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.request_latency.labels(
                scope.get("method", ""), template, str(status[0])
            ).observe(time.perf_counter() - start)
            if status[0] >= 400:
                self.metrics.errors.labels(str(status[0])).inc()
