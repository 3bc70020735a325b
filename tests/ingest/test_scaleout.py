"""Scale-out through an MQTT 5 shared subscription, and the Prometheus endpoint of a worker."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from gasguard.mqtt import MqttSession
from gasguard.protocol import Topics
from ingest.service import Ingest
from ingest.settings import IngestSettings
from tests.conftest import free_port
from tests.ingest.conftest import AddDevice, count, publish_all, running, stream, wait_until


@contextlib.asynccontextmanager
async def started(settings: IngestSettings) -> AsyncIterator[Ingest]:
    """Run one worker in-process until the block ends (readiness is checked by the caller)."""
    ingest = Ingest(settings)
    ready = asyncio.Event()
    task = asyncio.create_task(ingest.run(ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), 10)
        yield ingest
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_two_workers_on_a_shared_subscription_store_every_message_exactly_once(
    settings: IngestSettings, publisher: MqttSession, topics: Topics, db: asyncpg.Connection, add_device: AddDevice
) -> None:
    """Test that two workers in one share group split the stream and store every message once."""
    devices = [await add_device(f"alarm-share-{i}") for i in range(4)]
    first = settings.model_copy(update={"share_group": "ingest"})
    second = first.model_copy(update={"client_id": f"{settings.client_id}-b", "spool_dir": f"{settings.spool_dir}-b"})
    async with started(first) as a, started(second) as b:
        # Probes on an ignored topic until both have one: both subscriptions are live.
        probe = topics.gateway_availability("probe")

        def both_subscribed() -> bool:
            publisher.publish(probe, b'{"v":1,"status":"online"}', qos=1)
            return a.stats().ignored > 0 and b.stats().ignored > 0

        await wait_until(both_subscribed, timeout=15, interval=0.1)
        for device in devices:
            publish_all(publisher, stream(topics, device, 500))
        await wait_until(lambda: a.stats().rows_written + b.stats().rows_written >= 2000, timeout=30)
        await asyncio.sleep(0.3)  # a message delivered to both would land now
        sa, sb = a.stats(), b.stats()

    assert await count(db, "telemetry") == 2000
    assert await db.fetchval("SELECT count(DISTINCT (device_id, seq)) FROM telemetry") == 2000
    assert sa.rows_written > 0
    assert sb.rows_written > 0
    assert sa.rows_written + sb.rows_written == 2000
    assert sa.duplicates == sb.duplicates == 0


async def test_metrics_endpoint_reports_messages_batches_spool_and_dead_letters(
    settings: IngestSettings, publisher: MqttSession, topics: Topics, add_device: AddDevice
) -> None:
    """Test that ``/metrics`` serves the worker's counters, batch latency histogram and spool depth."""
    alarm = await add_device("alarm-metrics")
    port = free_port()
    async with started(settings.model_copy(update={"metrics_port": port})) as ingest:
        probe = topics.gateway_availability("probe")

        def subscribed() -> bool:
            publisher.publish(probe, b'{"v":1,"status":"online"}', qos=1)
            return ingest.stats().ignored > 0

        await wait_until(subscribed, timeout=15, interval=0.1)
        publish_all(publisher, stream(topics, alarm, 30))
        publisher.publish(f"{topics.root}/not/a/protocol/topic", b"junk", qos=1)
        await wait_until(lambda: ingest.stats().rows_out >= 31)
        async with httpx.AsyncClient() as http:
            response = await http.get(f"http://127.0.0.1:{port}/metrics")
            missing = await http.get(f"http://127.0.0.1:{port}/")

    assert response.status_code == 200
    samples = {
        line.split(" ")[0]: float(line.split(" ")[1])
        for line in response.text.splitlines()
        if line and not line.startswith("#")
    }
    assert samples["gasguard_ingest_telemetry_rows_total"] == 30
    assert samples["gasguard_ingest_dead_letters_total"] == 1
    assert samples["gasguard_ingest_rows_out_total"] == 31
    assert samples["gasguard_ingest_messages_in_total"] >= 32
    assert samples["gasguard_ingest_spool_bytes"] == 0
    assert samples["gasguard_ingest_database_available"] == 1
    assert samples["gasguard_ingest_known_devices"] == 1
    assert samples["gasguard_ingest_batch_seconds_count"] >= 1
    assert 'gasguard_ingest_batch_seconds_bucket{le="+Inf"}' in samples
    assert missing.status_code == 404


def test_metrics_port_is_off_by_default() -> None:
    """Test that no endpoint is served unless a port is configured."""
    assert IngestSettings.model_fields["metrics_port"].default == 0


async def test_a_metrics_port_in_use_does_not_stop_ingest(
    settings: IngestSettings,
    publisher: MqttSession,
    topics: Topics,
    db: asyncpg.Connection,
    add_device: AddDevice,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Test that ingest logs the clash and keeps storing readings when its metrics port is taken."""
    alarm = await add_device("alarm-port-clash")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        async with running(settings.model_copy(update={"metrics_port": port}), publisher) as ingest:
            publish_all(publisher, stream(topics, alarm, 10))
            await wait_until(lambda: ingest.stats().rows_written == 10)
    assert await count(db, "telemetry") == 10
    assert any("cannot serve metrics" in r.getMessage() for r in caplog.records)
