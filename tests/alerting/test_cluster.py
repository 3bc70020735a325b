"""Cluster rule where every engine's alarms meet: the recorder's transaction (real PostgreSQL)."""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg

from alerting.records import AlarmRecorded, apply
from tests.support.rows import add_household


def recorded(n: int, household_id: int) -> AlarmRecorded:
    return AlarmRecorded(
        alarm_id=f"A-{n}",
        household_id=household_id,
        severity="critical",
        alarm_state="high_alarm",
        lel=30.0,
        device_ts=datetime.now(UTC),
        received_at=datetime.now(UTC),
        commands=(),
        resident_sms_hold_s=0,
        hotline="0477-7212345",
    )


async def test_three_households_in_one_building_make_one_cluster_straight_to_emergency(db: asyncpg.Connection) -> None:
    homes = [await add_household(db, n) for n in range(1, 5)]
    for n, home in enumerate(homes[:2], start=1):
        await apply(db, recorded(n, home.id))
    assert await db.fetchval("SELECT count(*) FROM incident WHERE kind = 'cluster'") == 0
    await apply(db, recorded(3, homes[2].id))
    await apply(db, recorded(4, homes[3].id))
    [cluster] = await db.fetch("SELECT * FROM incident WHERE kind = 'cluster'")
    assert cluster["household_id"] is None and cluster["scope"].startswith("building:")
    assert cluster["severity"] == "critical"
    escalation = await db.fetchrow("SELECT * FROM escalation WHERE incident_id = $1", cluster["id"])
    first_em_step = await db.fetchval(
        "SELECT min(step) FROM escalation_policy_step WHERE severity = 'critical' AND 'emergency' = ANY(roles)"
    )
    assert escalation["next_step"] == first_em_step and escalation["next_step_at"] <= datetime.now(UTC)
