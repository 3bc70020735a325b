"""The shared Prometheus helper (gasguard.metrics) that ingest uses and other services will adopt."""

from __future__ import annotations

import asyncio
import contextlib

import httpx
import pytest

from gasguard.metrics import ServiceMetrics, SnapshotCollector, serve_metrics
from tests.conftest import free_port


async def test_service_registry_serves_its_own_metrics_only() -> None:
    """Test counters with labels, histograms and scrape-time samples, served over HTTP per service."""
    gateway = ServiceMetrics("gateway")
    other = ServiceMetrics("other")
    errors = gateway.counter("poll_errors", "Modbus polls that failed", labels=("controller",))
    errors.labels(controller="boiler-3").inc(2)
    gateway.histogram("poll_seconds", "Poll duration").observe(0.003)
    gateway.register(SnapshotCollector(gateway, lambda: [("gauge", "controllers", "Controllers polled", 7)]))
    other.counter("things", "Not the gateway's").inc()

    port = free_port()
    ready = asyncio.Event()
    task = asyncio.create_task(serve_metrics(gateway, host="127.0.0.1", port=port, ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    assert 'gasguard_gateway_poll_errors_total{controller="boiler-3"} 2.0' in text
    assert 'gasguard_gateway_poll_seconds_bucket{le="0.005"} 1.0' in text
    assert "gasguard_gateway_controllers 7.0" in text
    assert "gasguard_other_things" not in text
    assert gateway.exposition().decode() == text


def test_service_name_must_be_an_identifier() -> None:
    """Test that a name that would make invalid metric names is refused."""
    with pytest.raises(ValueError, match="identifier"):
        ServiceMetrics("gate-way")
