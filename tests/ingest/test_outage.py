"""Nothing is lost: database outages, a full spool, a spool left by a stopped run, ingest restarts."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from gasguard.mqtt import MqttSession
from gasguard.protocol import Topics
from ingest.settings import IngestSettings
from tests.ingest.conftest import AddDevice, count, publish_all, running, stream, wait_until
from tests.support.tcp_proxy import TcpProxy


def through(proxy: TcpProxy, dsn: str) -> str:
    """The same DSN, routed through the proxy."""
    parts = urlsplit(dsn)
    user = f"{parts.username}@" if parts.username else ""
    return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{proxy.port}"))


@pytest.fixture
async def proxy(database_url: str) -> AsyncIterator[TcpProxy]:
    """A cuttable path to the test database."""
    parts = urlsplit(database_url)
    async with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        yield proxy


@pytest.fixture
def proxied(settings: IngestSettings, proxy: TcpProxy) -> IngestSettings:
    """Settings whose every database connection goes through the proxy."""
    return settings.model_copy(update={"database_url": through(proxy, settings.dsn())})


def spool_files(settings: IngestSettings) -> list[Path]:
    """Segment files currently on disk."""
    return sorted(Path(settings.spool_dir).glob("segment-*.jsonl"))


async def test_database_outage_spools_then_replays_exactly_once(
    proxied: IngestSettings,
    proxy: TcpProxy,
    publisher: MqttSession,
    topics: Topics,
    db: asyncpg.Connection,
    add_device: AddDevice,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Test that messages published while PostgreSQL is unreachable all land once, via the spool."""
    alarm = await add_device("alarm-outage")
    caplog.set_level(logging.INFO, logger="ingest")
    async with running(proxied, publisher) as ingest:
        publish_all(publisher, stream(topics, alarm, 20))
        await wait_until(lambda: ingest.stats().rows_written == 20)

        await proxy.cut()
        publish_all(publisher, stream(topics, alarm, 300, start=20))
        # Acknowledged while the database is down: every message is in the spool, none waits.
        await wait_until(lambda: ingest.stats().rows_spooled == 300 and ingest.stats().in_flight == 0)
        during = ingest.stats()
        assert not during.database_available
        assert during.spool_bytes > 0
        assert spool_files(proxied)
        assert await count(db, "telemetry") == 20

        await proxy.restore()
        await wait_until(lambda: ingest.stats().database_available and ingest.stats().spool_bytes == 0)
        publish_all(publisher, stream(topics, alarm, 30, start=320))
        await wait_until(lambda: ingest.stats().rows_written == 350)
        after = ingest.stats()

    assert await count(db, "telemetry") == 350
    assert await db.fetchval("SELECT count(DISTINCT seq) FROM telemetry") == 350
    assert after.duplicates == 0
    assert after.spool_segments == 0
    assert not spool_files(proxied)
    messages = [r.getMessage() for r in caplog.records if r.name == "ingest.sink"]
    assert sum("database unreachable" in m for m in messages) == 1
    assert sum("recovered" in m for m in messages) == 1


async def test_full_spool_stops_acknowledging_instead_of_dropping(
    proxied: IngestSettings,
    proxy: TcpProxy,
    publisher: MqttSession,
    topics: Topics,
    db: asyncpg.Connection,
    add_device: AddDevice,
) -> None:
    """Test backpressure: with the spool full, handlers wait, and everything lands after recovery."""
    alarm = await add_device("alarm-full")
    tight = proxied.model_copy(update={"spool_max_bytes": 1, "batch_size": 10, "write_max_rows": 10})
    async with running(tight, publisher) as ingest:
        await proxy.cut()
        publish_all(publisher, stream(topics, alarm, 100))
        # An empty spool takes one batch whatever its size; then nothing more is acknowledged.
        await wait_until(lambda: ingest.stats().messages_in >= 101 and ingest.stats().rows_spooled == 10)
        await asyncio.sleep(0.5)
        held = ingest.stats()
        assert held.rows_spooled == 10
        assert held.in_flight == 90
        assert held.spool_segments == 1

        await proxy.restore()
        await wait_until(lambda: ingest.stats().rows_written == 100 and ingest.stats().in_flight == 0)
        assert ingest.stats().spool_bytes == 0
    assert await count(db, "telemetry") == 100


async def test_spool_left_by_a_stopped_run_is_replayed_on_start(
    settings: IngestSettings,
    proxied: IngestSettings,
    proxy: TcpProxy,
    publisher: MqttSession,
    topics: Topics,
    db: asyncpg.Connection,
    add_device: AddDevice,
) -> None:
    """Test that a restart drains the spool a previous run wrote while the database was down."""
    alarm = await add_device("alarm-leftover")
    async with running(proxied, publisher) as ingest:
        await proxy.cut()
        publish_all(publisher, stream(topics, alarm, 120))
        await wait_until(lambda: ingest.stats().rows_spooled == 120 and ingest.stats().in_flight == 0)
    assert spool_files(proxied)
    assert await count(db, "telemetry") == 0

    await proxy.restore()
    async with running(settings) as again:
        await wait_until(lambda: again.stats().rows_written == 120 and again.stats().spool_bytes == 0)
    assert not spool_files(settings)
    assert await count(db, "telemetry") == 120


async def test_database_down_at_start_uses_the_saved_registry(
    settings: IngestSettings,
    proxied: IngestSettings,
    proxy: TcpProxy,
    publisher: MqttSession,
    topics: Topics,
    db: asyncpg.Connection,
    add_device: AddDevice,
) -> None:
    """Test that ingest started during an outage still knows devices from its last run, and spools."""
    alarm = await add_device("alarm-cold")
    async with running(proxied, publisher) as ingest:
        assert ingest.stats().known_devices == 1
    await proxy.cut()
    async with running(proxied, publisher) as cold:
        assert cold.stats().known_devices == 1
        publish_all(publisher, stream(topics, alarm, 10))
        await wait_until(lambda: cold.stats().rows_spooled == 10)
        await proxy.restore()
        await wait_until(lambda: cold.stats().rows_written == 10)
    assert await count(db, "telemetry") == 10
    assert await count(db, "dead_letter") == 0


async def test_restart_while_publishing_loses_nothing(
    settings: IngestSettings, publisher: MqttSession, topics: Topics, db: asyncpg.Connection, add_device: AddDevice
) -> None:
    """Test that stopping ingest mid-stream and starting it again with the same client id loses nothing."""
    alarm = await add_device("alarm-restart")
    published = 0
    keep_publishing = True

    async def produce() -> None:
        nonlocal published
        while keep_publishing:
            publish_all(publisher, stream(topics, alarm, 10, start=published))
            published += 10
            await asyncio.sleep(0.01)

    async with running(settings, publisher) as first:
        producer = asyncio.create_task(produce())
        await wait_until(lambda: first.stats().messages_in > 200)
    stopped_at = published
    await asyncio.sleep(0.2)  # the broker queues for the persistent session meanwhile
    async with running(settings) as second:
        restarted_at = published
        await asyncio.sleep(0.2)
        keep_publishing = False
        await producer
        await wait_until(lambda: first.stats().rows_written + second.stats().rows_written >= published, timeout=15)

    assert restarted_at > stopped_at  # some messages were published while no ingest ran
    assert first.stats().messages_in < published
    assert await count(db, "telemetry") == published
    assert await db.fetchval("SELECT count(DISTINCT seq) FROM telemetry") == published


async def test_batches_the_database_refuses_for_other_reasons_are_kept_and_retried(
    settings: IngestSettings,
    publisher: MqttSession,
    topics: Topics,
    db: asyncpg.Connection,
    add_device: AddDevice,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Test that a missing table (say, a botched migration) spools batches loudly and replays them."""
    alarm = await add_device("alarm-migration")
    async with running(settings, publisher) as ingest:
        await db.execute("ALTER TABLE telemetry RENAME TO telemetry_moved")
        publish_all(publisher, stream(topics, alarm, 40))
        await wait_until(lambda: ingest.stats().rows_spooled == 40 and ingest.stats().in_flight == 0)
        assert any(r.levelno == logging.ERROR and r.name == "ingest.writer" for r in caplog.records)

        await db.execute("ALTER TABLE telemetry_moved RENAME TO telemetry")
        await wait_until(lambda: ingest.stats().rows_written == 40 and ingest.stats().spool_bytes == 0)
    assert await count(db, "telemetry") == 40
