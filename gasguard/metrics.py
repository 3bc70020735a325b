"""Prometheus metrics for a service: one registry per service and an HTTP ``/metrics`` endpoint.

Every service builds one `ServiceMetrics` in its ``run``, registers its counters, gauges and
histograms on it (or a scrape-time `Collector` that reads counters the service already keeps, which
costs the hot path nothing), and serves it with `serve_metrics` on its own port::

    metrics = ServiceMetrics("gateway")
    poll_errors = metrics.counter("poll_errors", "Modbus polls that failed", labels=("controller",))
    ...
    poll_errors.labels(controller="boiler-3").inc()
    tg.create_task(serve_metrics(metrics, host="0.0.0.0", port=settings.metrics_port))

Names are prefixed ``gasguard_<service>_``; counters get Prometheus' ``_total`` suffix automatically.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterable, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, make_asgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Receive, Scope, Send

from gasguard.web import serve_asgi

_LOGGER = logging.getLogger(__name__)

#: Seconds; from a sub-millisecond COPY to a write that waited out a slow database.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServiceMetrics:
    """The metric registry of one service (never the process-global default registry)."""

    def __init__(self, service: str) -> None:
        if not service.isidentifier():
            raise ValueError(f"service name must be an identifier, got {service!r}")
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        self.prefix = f"gasguard_{service}_"

    def name(self, short: str) -> str:
        """The full metric name for ``short``."""
        return f"{self.prefix}{short}"

    def counter(self, short: str, documentation: str, *, labels: Sequence[str] = ()) -> Counter:
        """A counter registered on this service's registry."""
        return Counter(self.name(short), documentation, labelnames=labels, registry=self.registry)

    def gauge(self, short: str, documentation: str, *, labels: Sequence[str] = ()) -> Gauge:
        """A gauge registered on this service's registry."""
        return Gauge(self.name(short), documentation, labelnames=labels, registry=self.registry)

    def histogram(
        self,
        short: str,
        documentation: str,
        *,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> Histogram:
        """A histogram registered on this service's registry (latency buckets in seconds by default)."""
        return Histogram(
            self.name(short), documentation, labelnames=labels, buckets=tuple(buckets), registry=self.registry
        )

    def register(self, collector: Collector) -> None:
        """Add a scrape-time collector (see `SnapshotCollector`)."""
        self.registry.register(collector)

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (what ``/metrics`` serves)."""
        return generate_latest(self.registry)


#: ``(kind, short name, documentation, value)``; kind is ``"counter"`` or ``"gauge"``.
Sample = tuple[str, str, str, float]


class SnapshotCollector(Collector):
    """Reads counters a service already keeps, at scrape time only: nothing extra on the hot path."""

    def __init__(self, metrics: ServiceMetrics, read: Callable[[], Iterable[Sample]]) -> None:
        self._metrics = metrics
        self._read = read

    def collect(self) -> Iterable[Metric]:
        """One metric family per sample."""
        for kind, short, documentation, value in self._read():
            name = self._metrics.name(short)
            if kind == "counter":
                yield CounterMetricFamily(name, documentation, value=value)
            else:
                yield GaugeMetricFamily(name, documentation, value=value)

    def describe(self) -> Iterable[Metric]:
        """Same as `collect` (the values are cheap to read)."""
        return self.collect()


def metrics_app(metrics: ServiceMetrics) -> ASGIApp:
    """An ASGI app serving ``GET /metrics`` (404 elsewhere); it also answers the lifespan protocol."""
    prometheus = make_asgi_app(registry=metrics.registry)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope.get("path") == "/metrics":
            await prometheus(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 404, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"not found; metrics are at /metrics\n"})

    return app


def check_bindable(host: str, port: int) -> None:
    """Raise `OSError` if ``host:port`` cannot be listened on right now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))


async def serve_metrics(
    metrics: ServiceMetrics, *, host: str = "0.0.0.0", port: int, ready: asyncio.Event | None = None
) -> None:
    """Serve ``/metrics`` on ``host:port`` until cancelled; ``ready`` is set once it listens.

    Raises:
        OSError: the port cannot be bound (checked first: uvicorn would exit the whole process instead).
    """
    check_bindable(host, port)
    _LOGGER.info("%s metrics on http://%s:%d/metrics", metrics.service, host, port)
    await serve_asgi(metrics_app(metrics), host=host, port=port, ready=ready)
