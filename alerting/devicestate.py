"""Device-health sweep: offline, low battery and mains loss, derived from what ingest stored.

Alerting never subscribes to telemetry (the firehose measurably delays alarms). Instead this sweep
runs every ``health_sweep_s`` on its own connection, off the alarm path: it reads the latest
telemetry and event row per device that has a heartbeat in the catalogue, applies the pure
`alerting.rules.assess_health`, keeps ``device_state`` current (a silent device becomes 'unknown',
never 'normal') and opens one incident per household and kind (the unique index makes that safe
when several engines sweep).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

import asyncpg

from alerting.recorder import TRANSIENT_DB_ERRORS
from alerting.records import DeviceNoted, apply_device
from alerting.rules import HealthInput, assess_health
from gasguard.db import connect

_LOGGER = logging.getLogger(__name__)

SEVERITY = {"offline": "info", "low_battery": "info", "mains_loss": "warning"}

_SWEEP_SQL = """
SELECT d.id, d.household_id, m.heartbeat_s, m.offline_factor, m.low_battery_pct,
       extract(epoch FROM now() - greatest(t.received_at, e.received_at))::float8 AS seen_ago,
       extract(epoch FROM now() - d.created_at)::float8 AS installed_ago,
       t.battery_pct, t.mains_ok, s.status, now() AS now
FROM device d
JOIN device_model m ON m.id = d.model_id
LEFT JOIN LATERAL (SELECT received_at, battery_pct, mains_ok FROM telemetry
                   WHERE device_id = d.id ORDER BY device_ts DESC LIMIT 1) t ON true
LEFT JOIN LATERAL (SELECT received_at FROM device_event
                   WHERE device_id = d.id ORDER BY device_ts DESC LIMIT 1) e ON true
LEFT JOIN device_state s ON s.device_id = d.id
WHERE m.heartbeat_s IS NOT NULL
"""


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What one sweep found."""

    devices: int
    unknown: int
    opened: int


async def sweep(conn: asyncpg.Connection) -> SweepResult:
    """One pass over every device with a heartbeat."""
    rows = await conn.fetch(_SWEEP_SQL)
    unknown = opened = 0
    for r in rows:
        verdict = assess_health(
            HealthInput(
                device_id=r["id"],
                household_id=r["household_id"],
                heartbeat_s=r["heartbeat_s"],
                offline_factor=r["offline_factor"],
                low_battery_pct=r["low_battery_pct"],
                last_seen_s_ago=r["seen_ago"],
                installed_s_ago=r["installed_ago"],
                battery_pct=r["battery_pct"],
                mains_ok=r["mains_ok"],
            )
        )
        status = verdict.status
        if status is None and r["status"] in (None, "unknown") and r["seen_ago"] is not None:
            status = "normal"  # heard from again within the window
        if status == "unknown":
            unknown += 1
        async with conn.transaction():
            if status is not None and status != r["status"]:
                await apply_device(
                    conn, DeviceNoted(device_id=r["id"], household_id=r["household_id"], status=status, at=r["now"])
                )
            await conn.execute(
                "UPDATE device_state SET low_battery = $2, mains_lost = $3,"
                " last_seen_at = CASE WHEN $4::float8 IS NULL THEN NULL ELSE now() - make_interval(secs => $4) END"
                " WHERE device_id = $1",
                r["id"],
                "low_battery" in verdict.kinds,
                "mains_loss" in verdict.kinds,
                r["seen_ago"],
            )
            for kind in verdict.kinds:
                new = await apply_device(
                    conn,
                    DeviceNoted(
                        device_id=r["id"],
                        household_id=r["household_id"],
                        status=None,
                        kind=kind,
                        severity=SEVERITY[kind],
                        at=r["now"],
                    ),
                )
                opened += new is not None
    return SweepResult(devices=len(rows), unknown=unknown, opened=opened)


async def sweep_loop(dsn: str, *, interval_s: float) -> None:
    """Sweep forever; survives database outages."""
    while True:
        conn: asyncpg.Connection | None = None
        try:
            conn = await connect(dsn)
            while True:
                result = await sweep(conn)
                _LOGGER.debug("health sweep: %s", result)
                await asyncio.sleep(interval_s)
        except TRANSIENT_DB_ERRORS as err:
            _LOGGER.warning("health sweep failed (%s); retrying", err)
            await asyncio.sleep(min(interval_s, 5.0))
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
