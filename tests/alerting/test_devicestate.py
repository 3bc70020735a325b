"""Health sweep over what ingest stored: offline, low battery, mains loss (real PostgreSQL)."""

from __future__ import annotations

import asyncpg

from alerting.devicestate import sweep
from tests.support.rows import add_household


async def telemetry(
    db: asyncpg.Connection, device_id: str, *, ago_s: int, battery: int | None, mains: bool | None
) -> None:
    await db.execute(
        "INSERT INTO telemetry (device_id, device_ts, received_at, seq, kind, lel, alarm_state, power_source,"
        " battery_pct, mains_ok) VALUES ($1, now() - make_interval(secs => $2), now() - make_interval(secs => $2),"
        " 1, 'alarm', 0, 'normal', 'mains', $3, $4)",
        device_id,
        float(ago_s),
        battery,
        mains,
    )


async def test_silent_device_becomes_unknown_and_opens_one_offline_incident(db: asyncpg.Connection) -> None:
    silent = await add_household(db, 1)
    fresh = await add_household(db, 2)
    await telemetry(db, silent.alarm_id, ago_s=int(3600 * 1.5) + 60, battery=90, mains=True)
    await telemetry(db, fresh.alarm_id, ago_s=int(3600 * 1.4), battery=90, mains=True)
    result = await sweep(db)
    again = await sweep(db)
    assert result.opened == 1 and again.opened == 0
    states = dict(await db.fetch("SELECT device_id, status FROM device_state"))
    assert states == {silent.alarm_id: "unknown", fresh.alarm_id: "normal"}
    [incident] = await db.fetch("SELECT * FROM incident")
    assert incident["kind"] == "offline" and incident["household_id"] == silent.id
    assert incident["device_id"] == silent.alarm_id
    assert await db.fetchval("SELECT count(*) FROM escalation WHERE incident_id = $1", incident["id"]) == 1


async def test_low_battery_and_mains_loss_come_from_the_latest_power_block(db: asyncpg.Connection) -> None:
    home = await add_household(db, 1)
    await telemetry(db, home.alarm_id, ago_s=600, battery=80, mains=True)
    await telemetry(db, home.alarm_id, ago_s=60, battery=15, mains=False)
    await sweep(db)
    kinds = sorted(r["kind"] for r in await db.fetch("SELECT kind FROM incident"))
    assert kinds == ["low_battery", "mains_loss"]
    row = await db.fetchrow("SELECT * FROM device_state WHERE device_id = $1", home.alarm_id)
    assert row["low_battery"] and row["mains_lost"] and row["status"] == "normal"


async def test_a_device_never_heard_from_is_unknown_once_past_the_window(db: asyncpg.Connection) -> None:
    home = await add_household(db, 1)
    await sweep(db)
    assert await db.fetchval("SELECT count(*) FROM device_state") == 0
    await db.execute("UPDATE device SET created_at = now() - interval '2 hours' WHERE id = $1", home.alarm_id)
    await sweep(db)
    assert await db.fetchval("SELECT status FROM device_state WHERE device_id = $1", home.alarm_id) == "unknown"
