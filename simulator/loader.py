"""Reads the NG households to simulate from the registry tables (plain SQL, read-only)."""

from __future__ import annotations

import logging

import asyncpg

from simulator.household import SimHousehold

_LOGGER = logging.getLogger(__name__)

# One row per alarm: its household, set points from its model, and the one shut-off valve it closes in
# the same household. An alarm linked to several valves is simulated with the first of them.
_HOUSEHOLDS_SQL = """
SELECT DISTINCT ON (h.id, a.id)
       h.id AS household_id, h.community_code, a.id AS alarm_id, v.id AS valve_id,
       am.low_alarm_lel, am.high_alarm_lel, am.heartbeat_s
FROM household h
JOIN device a ON a.household_id = h.id
JOIN device_model am ON am.id = a.model_id AND am.kind = 'alarm'
JOIN alarm_valve_link l ON l.alarm_id = a.id
JOIN device v ON v.id = l.valve_id AND v.household_id = h.id
JOIN device_model vm ON vm.id = v.model_id AND vm.kind = 'shutoff_valve'
WHERE h.gas_type = 'NG'
ORDER BY h.id, a.id, v.id
"""


async def load_households(conn: asyncpg.Connection, *, limit: int | None = None) -> list[SimHousehold]:
    """Load NG households that have an alarm linked to a shut-off valve, ordered by household id.

    Alarms whose model has no set points are skipped (with a warning): the simulator never invents
    thresholds, which are per-model data.
    """
    sql = _HOUSEHOLDS_SQL if limit is None else f"{_HOUSEHOLDS_SQL} LIMIT $1"
    rows = await (conn.fetch(sql) if limit is None else conn.fetch(sql, limit))
    households: list[SimHousehold] = []
    skipped = 0
    for row in rows:
        if row["low_alarm_lel"] is None or row["high_alarm_lel"] is None:
            skipped += 1
            continue
        households.append(
            SimHousehold(
                household_id=row["household_id"],
                community_code=row["community_code"].strip(),
                alarm_id=row["alarm_id"],
                valve_id=row["valve_id"],
                low_alarm_lel=float(row["low_alarm_lel"]),
                high_alarm_lel=float(row["high_alarm_lel"]),
                heartbeat_s=row["heartbeat_s"],
            )
        )
    if skipped:
        _LOGGER.warning("skipped %d alarm(s) whose model has no set points", skipped)
    return households
