"""Fixtures for ingest tests: a registry with devices, a publisher, and a way to run ingest in-process."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from gasguard.mqtt import MqttSession
from gasguard.protocol import (
    AlarmEvent,
    AlarmState,
    AlarmTelemetry,
    Channel,
    Power,
    PowerSource,
    Radio,
    Topics,
    ValveEvent,
    ValvePosition,
    ValveTelemetry,
    encode,
)
from gasguard.settings import MqttEndpoint
from ingest.service import Ingest
from ingest.settings import IngestSettings

TOWN = "150626100000"
COMMUNITY = "150626100001"
T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)

AddDevice = Callable[..., Awaitable[str]]


async def wait_until(predicate: Callable[[], Any], *, timeout: float = 10.0, interval: float = 0.02) -> None:
    """Poll ``predicate`` (sync or async) until it is truthy or fail the test."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)


@pytest.fixture
async def add_device(db: asyncpg.Connection) -> AddDevice:
    """Registers devices (creating town, community, household and models on first use)."""
    await db.execute("INSERT INTO town (code, name) VALUES ($1, '嘎鲁图镇')", TOWN)
    await db.execute(
        "INSERT INTO community (code, town_code, name, synthetic) VALUES ($1, $2, '测试社区', true)", COMMUNITY, TOWN
    )
    household_id = await db.fetchval(
        "INSERT INTO household (community_code, building, unit, room, gas_type, supplier)"
        " VALUES ($1, '1', '1', '101', 'NG', '乌审中燃') RETURNING id",
        COMMUNITY,
    )
    await db.execute(
        "INSERT INTO device_model (id, manufacturer, model, kind, gas_type, service_life_years) VALUES"
        " ('test-alarm', 'Test', 'A1', 'alarm', 'NG', 5), ('test-valve', 'Test', 'V1', 'shutoff_valve', 'NG', 10)"
    )

    async def add(device_id: str, *, kind: str = "alarm") -> str:
        model = {"alarm": "test-alarm", "shutoff_valve": "test-valve"}[kind]
        await db.execute(
            "INSERT INTO device (id, household_id, model_id, serial) VALUES ($1, $2, $3, $1)",
            device_id,
            household_id,
            model,
        )
        return device_id

    return add


@pytest.fixture
async def settings(
    database_url: str, mqtt_url: str, mqtt_endpoint: MqttEndpoint, topics: Topics, tmp_path: Path
) -> AsyncIterator[IngestSettings]:
    """Ingest settings for this test: its own client id, topic root, database and spool.

    Afterwards the persistent broker sessions left under its client ids are deleted.
    """
    settings = IngestSettings(
        mqtt_url=mqtt_url,
        database_url=database_url,
        topic_root=topics.root,
        client_id=f"ingest-{topics.root}",
        spool_dir=str(tmp_path / "spool"),
        batch_size=100,
        batch_max_age_s=0.02,
        db_retry_max_s=0.3,
        db_connect_timeout_s=2.0,
        directory_refresh_s=3600.0,
        shutdown_timeout_s=3.0,
    )
    yield settings
    for client_id in (settings.client_id, f"{settings.client_id}-b"):
        async with MqttSession(mqtt_endpoint, client_id=client_id, persistent=False):
            pass


@pytest.fixture
async def publisher(mqtt_endpoint: MqttEndpoint) -> AsyncIterator[MqttSession]:
    """A connected MQTT session to publish test traffic with."""
    async with MqttSession(mqtt_endpoint, client_id=f"pub-{uuid.uuid4().hex[:12]}") as session:
        yield session


@contextlib.asynccontextmanager
async def running(
    settings: IngestSettings, publisher: MqttSession | None = None, *, timeout: float = 10.0
) -> AsyncIterator[Ingest]:
    """Run ingest in-process until the block ends.

    With ``publisher``, also wait until a probe on an ignored topic comes back, which proves the
    subscription is in place before the test publishes (``ready`` means connected, not subscribed).
    """
    ingest = Ingest(settings)
    ready = asyncio.Event()
    task = asyncio.create_task(ingest.run(ready=ready))
    try:
        async with asyncio.timeout(timeout):
            await asyncio.wait({task, asyncio.create_task(ready.wait())}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        if publisher is not None:
            probe = Topics(settings.topic_root).gateway_availability("probe")
            before = ingest.stats().ignored
            publisher.publish(probe, b'{"v":1,"status":"online"}', qos=1)
            await wait_until(lambda: ingest.stats().ignored > before, timeout=timeout)
        yield ingest
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def alarm_telemetry(seq: int | None, *, at: datetime = T0, lel: float = 3.5) -> bytes:
    """A full alarm reading."""
    return encode(
        AlarmTelemetry(
            seq=seq,
            ts=at,
            lel=lel,
            state=AlarmState.NORMAL,
            power=Power(source=PowerSource.MAINS, battery_pct=87, mains_ok=True),
            radio=Radio(rssi=-71, rsrp=-95, snr=7.5, csq=18, ecl=1),
        )
    )


def valve_telemetry(seq: int | None, *, at: datetime = T0) -> bytes:
    """A minimal valve report."""
    return encode(ValveTelemetry(seq=seq, ts=at, position=ValvePosition.OPEN))


def alarm_event(seq: int | None, *, at: datetime = T0, state: AlarmState = AlarmState.HIGH_ALARM) -> bytes:
    """An alarm state change."""
    return encode(AlarmEvent(seq=seq, ts=at, state=state, lel=27.0))


def valve_event(seq: int | None, cmd_id: uuid.UUID, *, at: datetime = T0) -> bytes:
    """A valve closed by a command."""
    return encode(ValveEvent(seq=seq, ts=at, position=ValvePosition.CLOSED, cmd_id=cmd_id))


def stream(topics: Topics, device_id: str, count: int, *, start: int = 0) -> list[tuple[str, bytes]]:
    """``count`` numbered alarm readings one second apart."""
    topic = topics.device(device_id, Channel.TELEMETRY)
    return [(topic, alarm_telemetry(i, at=T0 + timedelta(seconds=i))) for i in range(start, start + count)]


def publish_all(publisher: MqttSession, messages: list[tuple[str, bytes]]) -> None:
    """Queue every message at QoS 1."""
    for topic, payload in messages:
        publisher.publish(topic, payload, qos=1)


async def count(db: asyncpg.Connection, table: str) -> int:
    """Rows in a table."""
    value = await db.fetchval(f"SELECT count(*) FROM {table}")
    assert isinstance(value, int)
    return value
