"""Device-health sweep: offline, low battery and mains loss, derived from what ingest stored.

Alerting never subscribes to telemetry (the firehose measurably delays alarms). Instead this sweep
runs every ``health_sweep_s`` on its own connection, off the alarm path: it reads the latest
telemetry and event row per device that has a heartbeat in the catalogue, applies the pure
`alerting.rules.assess_health`, keeps ``device_state`` current (a silent device becomes 'unknown',
never 'normal') and opens one incident per household and kind (the unique index makes that safe
when several engines sweep).

When a whole community or gateway goes silent at once (a power cut, a dead gateway, a cut fibre),
one ``offline`` incident for the scope (no household) goes to the operators instead of thousands of per-device
incidents that would bury them; each device still reads 'unknown'.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from dataclasses import dataclass

import asyncpg

from alerting.recorder import TRANSIENT_DB_ERRORS
from alerting.records import DeviceNoted, apply_device, open_scope_incident
from alerting.rules import HealthInput, assess_health
from gasguard.db import connect

_LOGGER = logging.getLogger(__name__)

SEVERITY = {"offline": "info", "low_battery": "info", "mains_loss": "warning"}

_SWEEP_SQL = """
SELECT d.id, d.household_id, h.community_code, d.modbus_controller,
       m.heartbeat_s, m.offline_factor, m.low_battery_pct,
       extract(epoch FROM now() - greatest(t.received_at, e.received_at))::float8 AS seen_ago,
       extract(epoch FROM now() - d.created_at)::float8 AS installed_ago,
       t.battery_pct, t.mains_ok, s.status, now() AS now
FROM device d
JOIN device_model m ON m.id = d.model_id
JOIN household h ON h.id = d.household_id
LEFT JOIN LATERAL (SELECT received_at, battery_pct, mains_ok FROM telemetry
                   WHERE device_id = d.id ORDER BY device_ts DESC LIMIT 1) t ON true
LEFT JOIN LATERAL (SELECT received_at FROM device_event
                   WHERE device_id = d.id ORDER BY device_ts DESC LIMIT 1) e ON true
LEFT JOIN device_state s ON s.device_id = d.id
WHERE m.heartbeat_s IS NOT NULL
"""

# Only rows whose status changed: a concurrent change by the engine (alarm, fault) is not overwritten.
_SET_STATUS_SQL = """
INSERT INTO device_state (device_id, status, since, updated_at)
SELECT u.id, u.status, $3, now() FROM unnest($1::text[], $2::text[]) AS u(id, status)
ON CONFLICT (device_id) DO UPDATE SET
    since = CASE WHEN device_state.status = excluded.status THEN device_state.since ELSE excluded.since END,
    status = excluded.status, updated_at = now()
"""

_SET_HEALTH_SQL = """
UPDATE device_state s SET low_battery = u.low_battery, mains_lost = u.mains_lost,
    last_seen_at = CASE WHEN u.seen_ago IS NULL THEN NULL ELSE now() - make_interval(secs => u.seen_ago) END
FROM unnest($1::text[], $2::bool[], $3::bool[], $4::float8[]) AS u(id, low_battery, mains_lost, seen_ago)
WHERE s.device_id = u.id
"""


@dataclass(frozen=True, slots=True)
class ScopePolicy:
    """When silent devices of one community or gateway become one incident for the scope."""

    min_devices: int = 10
    share: float = 0.5


@dataclass(frozen=True, slots=True)
class SweepResult:
    """What one sweep found."""

    devices: int
    unknown: int
    opened: int
    #: Scopes (``community:<code>``, ``gateway:<controller>``) found silent as a whole.
    silent_scopes: tuple[str, ...] = ()


def offline_scope(community_code: str, controller: str | None) -> str:
    """The scope a device goes silent with: its gateway (Modbus controller) if it has one, else its community."""
    return f"gateway:{controller}" if controller else f"community:{community_code.strip()}"


def silent_scopes(unknown: Counter[str], total: Counter[str], policy: ScopePolicy) -> set[str]:
    """Scopes with enough of their devices unknown to count as silent as a whole (pure)."""
    return {
        scope
        for scope, count in unknown.items()
        if count >= policy.min_devices and count >= policy.share * total[scope]
    }


@dataclass(frozen=True, slots=True)
class _Finding:
    """A device whose health calls for an incident (offline, low battery, mains loss)."""

    device_id: str
    household_id: int
    community_code: str
    scope: str
    kinds: tuple[str, ...]


async def sweep(conn: asyncpg.Connection, policy: ScopePolicy | None = None) -> SweepResult:
    """One pass over every device with a heartbeat.

    The rows come through a cursor, a thousand at a time, and only what the writes need is kept: with
    80,000 devices, holding every row at once held the event loop (which the alarm path shares) while it
    decoded them and left alerting's memory some 80 MB larger for good.
    """
    policy = policy or ScopePolicy()
    changed_ids: list[str] = []
    changed_status: list[str] = []
    health: tuple[list[str], list[bool], list[bool], list[float | None]] = ([], [], [], [])
    findings: list[_Finding] = []
    total: Counter[str] = Counter()
    unknown_in: Counter[str] = Counter()
    at = None
    async with conn.transaction():
        async for r in conn.cursor(_SWEEP_SQL, prefetch=1000):
            at = r["now"]
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
            if status is not None and status != r["status"]:
                changed_ids.append(r["id"])
                changed_status.append(status)
            health[0].append(r["id"])
            health[1].append("low_battery" in verdict.kinds)
            health[2].append("mains_loss" in verdict.kinds)
            health[3].append(r["seen_ago"])
            scope = offline_scope(r["community_code"], r["modbus_controller"])
            total[scope] += 1
            if status == "unknown":
                unknown_in[scope] += 1
            if verdict.kinds:
                findings.append(_Finding(r["id"], r["household_id"], r["community_code"], scope, verdict.kinds))
    silent = silent_scopes(unknown_in, total, policy)
    opened = 0
    if at is None:
        return SweepResult(devices=0, unknown=0, opened=0)
    async with conn.transaction():
        await conn.execute(_SET_STATUS_SQL, changed_ids, changed_status, at)
        await conn.execute(_SET_HEALTH_SQL, *health)
    for finding in findings:
        for kind in finding.kinds:
            if kind == "offline" and finding.scope in silent:
                continue  # counted in the scope's incident
            async with conn.transaction():
                new = await apply_device(
                    conn,
                    DeviceNoted(
                        device_id=finding.device_id,
                        household_id=finding.household_id,
                        status=None,
                        kind=kind,
                        severity=SEVERITY[kind],
                        at=at,
                    ),
                )
            opened += new is not None
    for scope in sorted(silent):
        community = Counter(f.community_code for f in findings if f.scope == scope).most_common(1)[0][0]
        async with conn.transaction():
            new = await open_scope_incident(
                conn,
                scope=f"offline:{scope}",
                community_code=community,
                at=at,
                detail={"devices_unknown": unknown_in[scope], "devices": total[scope]},
            )
        opened += new is not None
    return SweepResult(
        devices=len(health[0]), unknown=sum(unknown_in.values()), opened=opened, silent_scopes=tuple(sorted(silent))
    )


async def sweep_loop(dsn: str, *, interval_s: float, policy: ScopePolicy | None = None) -> None:
    """Sweep forever; survives database outages."""
    while True:
        conn: asyncpg.Connection | None = None
        try:
            conn = await connect(dsn)
            while True:
                result = await sweep(conn, policy)
                _LOGGER.debug("health sweep: %s", result)
                await asyncio.sleep(interval_s)
        except TRANSIENT_DB_ERRORS as err:
            _LOGGER.warning("health sweep failed (%s); retrying", err)
            await asyncio.sleep(min(interval_s, 5.0))
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
