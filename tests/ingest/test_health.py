"""Hourly device health (migration 0007): the same columns with or without TimescaleDB."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from tests.ingest.conftest import AddDevice


async def test_hourly_device_health_counts_last_seen_min_battery_and_max_lel(
    db: asyncpg.Connection, add_device: AddDevice
) -> None:
    """Test that readings fold into one row per device and UTC hour, whatever the session time zone."""
    alarm = await add_device("alarm-health")
    hour = datetime(2026, 3, 1, 8, tzinfo=UTC)
    received = hour + timedelta(hours=1, minutes=5)
    rows = [
        (alarm, hour + timedelta(minutes=1), received, 1, "alarm", 2.0, 90),
        (alarm, hour + timedelta(minutes=59), received + timedelta(seconds=3), 2, "alarm", 7.5, 80),
        (alarm, hour + timedelta(hours=1), received, 3, "alarm", 1.0, 85),
    ]
    await db.copy_records_to_table(
        "telemetry",
        records=rows,
        columns=("device_id", "device_ts", "received_at", "seq", "kind", "lel", "battery_pct"),
    )
    await db.execute("SET TIME ZONE 'Asia/Shanghai'")
    if await db.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'"):
        await db.execute("CALL refresh_continuous_aggregate('device_health_hourly', NULL, NULL)")
    got = [
        dict(r)
        for r in await db.fetch(
            "SELECT hour, messages, last_seen, min_battery_pct, max_lel FROM device_health_hourly"
            " WHERE device_id = $1 ORDER BY hour",
            alarm,
        )
    ]
    assert got == [
        {
            "hour": hour,
            "messages": 2,
            "last_seen": received + timedelta(seconds=3),
            "min_battery_pct": 80,
            "max_lel": 7.5,
        },
        {
            "hour": hour + timedelta(hours=1),
            "messages": 1,
            "last_seen": received,
            "min_battery_pct": 85,
            "max_lel": 1.0,
        },
    ]
