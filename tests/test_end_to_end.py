"""The whole path on real Mosquitto and PostgreSQL: simulated leak -> valve closed -> incident -> SMS.

The simulator, ingest and alerting run as they do in production (their own MQTT connections, their
own database connections); only the SMS provider is a local HTTP server speaking its API.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from gasguard.protocol import Topics, ValvePosition
from registry.demo_county import seed_demo_county
from simulator.loader import load_households
from tests.support.stack import stack, wait_for
from tests.support.tcp_proxy import TcpProxy

pytestmark = pytest.mark.slow


def through_proxy(dsn: str, port: int) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(netloc=f"{parts.username}@127.0.0.1:{port}"))


async def seeded(db: asyncpg.Connection, count: int) -> list:
    await seed_demo_county(db, households=count, seed=7, lpg_share=0.1)
    return await load_households(db)


async def test_leak_closes_that_valve_and_texts_that_resident(
    db: asyncpg.Connection, database_url: str, mqtt_url: str, topics: Topics, sms_sandbox, tmp_path: Path
) -> None:
    households = await seeded(db, 20)
    victim, *others = households
    async with stack(
        dsn=database_url,
        mqtt_url=mqtt_url,
        topics=topics,
        sms=sms_sandbox,
        spool=tmp_path,
        households=households,
        telemetry_period_s=None,
    ) as s:
        leak = await s.fleet.start_leak(victim.alarm_id)
        await asyncio.wait_for(leak.wait_valve_closed(), 20)

        async def texted() -> bool:
            return len(sms_sandbox.platform.received) == 1

        await wait_for(texted)
        positions = s.fleet.valve_positions()

    assert positions[victim.valve_id] is ValvePosition.CLOSED
    assert all(positions[h.valve_id] is ValvePosition.OPEN for h in others)
    incident = await db.fetchrow("SELECT * FROM incident WHERE kind = 'gas_alarm'")
    assert incident["household_id"] == victim.household_id
    assert incident["alarm_device_id"] == victim.alarm_id
    assert incident["alarm_received_at"] is not None
    assert incident["command_sent_at"] is not None
    assert incident["valve_closed_at"] is not None
    assert incident["alarm_received_at"] <= incident["command_sent_at"] < incident["valve_closed_at"]
    assert await db.fetchval("SELECT count(*) FROM incident") == 1
    commands = await db.fetch("SELECT valve_id, state FROM valve_command")
    assert [(c["valve_id"], c["state"]) for c in commands] == [(victim.valve_id, "confirmed")]
    phone = await db.fetchval("SELECT resident_phone FROM household WHERE id = $1", victim.household_id)
    [sms] = sms_sandbox.platform.received
    assert sms.phone == phone
    assert sms.template_code == "SMS_GG_ALARM_RESIDENT"
    assert sms.params["valve"] == "已关闭"
    assert sms.params["hotline"]
    assert sms.params["time"]
    # Ingest kept the device's own account of it, with both clocks.
    events = await db.fetch(
        "SELECT device_id, alarm_state, valve_position, device_ts, received_at FROM device_event ORDER BY received_at"
    )
    assert any(e["device_id"] == victim.alarm_id and e["alarm_state"] == "low_alarm" for e in events)
    assert any(e["device_id"] == victim.valve_id and e["valve_position"] == "closed" for e in events)


async def test_database_outage_loses_no_alarm_and_no_telemetry(
    db: asyncpg.Connection, database_url: str, mqtt_url: str, topics: Topics, sms_sandbox, tmp_path: Path
) -> None:
    households = await seeded(db, 20)
    victim = households[0]
    upstream = urlsplit(database_url)
    async with TcpProxy(upstream.hostname or "127.0.0.1", upstream.port or 5432) as proxy:
        dsn = through_proxy(database_url, proxy.port)
        async with stack(
            dsn=dsn,
            mqtt_url=mqtt_url,
            topics=topics,
            sms=sms_sandbox,
            spool=tmp_path,
            households=households,
            telemetry_period_s=None,
        ) as s:
            sent_telemetry = s.fleet.publish_telemetry_round()
            await asyncio.sleep(0.5)
            await proxy.cut()

            # With the database gone, an alarm still closes the valve at once.
            leak = await s.fleet.start_leak(victim.alarm_id)
            await asyncio.wait_for(leak.wait_valve_closed(), 20)
            assert await db.fetchval("SELECT count(*) FROM incident") == 0
            # Telemetry keeps flowing; ingest spools it.
            for _ in range(3):
                sent_telemetry += s.fleet.publish_telemetry_round()
                await asyncio.sleep(0.3)

            async def spooled() -> bool:
                return s.ingest.stats().rows_spooled > 0

            await wait_for(spooled)
            await proxy.restore()
            sent_telemetry += s.fleet.publish_telemetry_round()

            async def texted() -> bool:
                return len(sms_sandbox.platform.received) == 1

            await wait_for(texted, timeout=30)

            async def all_telemetry_stored() -> bool:
                return await db.fetchval("SELECT count(*) FROM telemetry") >= sent_telemetry

            await wait_for(all_telemetry_stored, timeout=30)

    assert await db.fetchval("SELECT count(*) FROM telemetry") == sent_telemetry, "no loss and no duplicates"
    incident = await db.fetchrow("SELECT * FROM incident WHERE kind = 'gas_alarm'")
    assert incident["household_id"] == victim.household_id
    assert incident["valve_closed_at"] is not None
    assert incident["command_sent_at"] is not None
    [sms] = sms_sandbox.platform.received
    assert sms.params["valve"] == "已关闭"
