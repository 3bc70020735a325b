"""Incident lifecycle: a pure state machine and the SQL that applies it, shared by alerting and registry.

States run NEW → NOTIFIED → ACKNOWLEDGED → DISPATCHED → ON_SITE → RESOLVED → CLOSED. Every change
appends an ``incident_event`` (server timestamp from ``now()``, the actor) in the same transaction as
the change itself; the timeline is append-only (a trigger refuses UPDATE and DELETE). Acknowledging
(or dispatching, or a call-back that reached someone) stops the escalation timers. Closing needs a
disposition and, where a valve closed for the incident, an on-site record.

Example (from an authenticated route)::

    async with pool.acquire() as conn:
        incident = await acknowledge(conn, 17, actor="operator:zhang", note="已电话联系住户")
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg


class IncidentState(enum.StrEnum):
    """Where an incident stands."""

    NEW = "NEW"
    NOTIFIED = "NOTIFIED"
    ACKNOWLEDGED = "ACKNOWLEDGED"
    DISPATCHED = "DISPATCHED"
    ON_SITE = "ON_SITE"
    RESOLVED = "RESOLVED"
    CLOSED = "CLOSED"


class Disposition(enum.StrEnum):
    """How an incident ended, recorded when it is closed."""

    REAL_LEAK = "real_leak"
    APPLIANCE_FAULT = "appliance_fault"
    FALSE_ALARM_COOKING = "false_alarm_cooking"
    DEVICE_FAULT = "device_fault"
    TEST = "test"


class Action(enum.StrEnum):
    """What someone (or the escalation) does to an incident."""

    NOTIFY = "notified"
    ACKNOWLEDGE = "acknowledged"
    CALLBACK = "callback"
    DISPATCH = "dispatched"
    ON_SITE = "on_site"
    RESOLVE = "resolved"
    CLOSE = "closed"


class IncidentError(Exception):
    """An incident operation was refused."""


class IncidentNotFound(IncidentError):
    """No incident with that id."""


class InvalidTransition(IncidentError):
    """The action is not allowed in the incident's current state."""


class DispositionRequired(InvalidTransition):
    """Closing needs a disposition."""


class OnSiteRecordRequired(IncidentError):
    """A valve closed for this incident, so closing needs an on-site record first."""


_S = IncidentState
_OPEN_UNOWNED = frozenset({_S.NEW, _S.NOTIFIED})
_OWNED = frozenset({_S.ACKNOWLEDGED, _S.DISPATCHED, _S.ON_SITE, _S.RESOLVED})

#: Allowed source states per action; the target is in `_TARGET` (None: the state does not change).
ALLOWED_FROM: dict[Action, frozenset[IncidentState]] = {
    Action.NOTIFY: frozenset({_S.NEW}),
    Action.ACKNOWLEDGE: _OPEN_UNOWNED,
    Action.CALLBACK: _OPEN_UNOWNED | _OWNED,
    Action.DISPATCH: _OPEN_UNOWNED | {_S.ACKNOWLEDGED},
    Action.ON_SITE: frozenset({_S.ACKNOWLEDGED, _S.DISPATCHED, _S.ON_SITE}),
    Action.RESOLVE: frozenset({_S.ACKNOWLEDGED, _S.DISPATCHED, _S.ON_SITE}),
    Action.CLOSE: _OWNED,
}
_TARGET: dict[Action, IncidentState | None] = {
    Action.NOTIFY: _S.NOTIFIED,
    Action.ACKNOWLEDGE: _S.ACKNOWLEDGED,
    Action.CALLBACK: None,
    Action.DISPATCH: _S.DISPATCHED,
    Action.ON_SITE: _S.ON_SITE,
    Action.RESOLVE: _S.RESOLVED,
    Action.CLOSE: _S.CLOSED,
}


def next_state(current: IncidentState, action: Action, *, reached: bool = False) -> IncidentState:
    """The state after ``action``; raises `InvalidTransition` when it is not allowed.

    A call-back that reached the resident while nobody owns the incident counts as acknowledgement.
    """
    if current not in ALLOWED_FROM[action]:
        raise InvalidTransition(f"cannot {action.value} an incident that is {current.value}")
    if action is Action.CALLBACK:
        return _S.ACKNOWLEDGED if reached and current in _OPEN_UNOWNED else current
    target = _TARGET[action]
    assert target is not None
    return target


def stops_escalation(before: IncidentState, after: IncidentState) -> bool:
    """Whether a change means a human owns the incident now (escalation stops)."""
    return before in _OPEN_UNOWNED and after not in _OPEN_UNOWNED


@dataclass(frozen=True)
class OnSiteRecord:
    """What the technician found and did on site."""

    technician: str
    arrived_at: datetime
    detector_lel: float
    cause: str
    action: str
    valve_reopened_on_site: bool
    resident_present: bool
    notes: str | None = None


@dataclass(frozen=True, slots=True)
class Incident:
    """An incident's current row."""

    id: int
    household_id: int | None
    kind: str
    severity: str
    state: IncidentState
    scope: str | None
    community_code: str | None
    device_id: str | None
    alarm_device_id: str | None
    alarm_lel: float | None
    alarm_received_at: datetime
    command_sent_at: datetime | None
    valve_closed_at: datetime | None
    opened_at: datetime
    acknowledged_at: datetime | None
    resolved_at: datetime | None
    closed_at: datetime | None
    disposition: Disposition | None


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    """One append-only entry of an incident's timeline."""

    id: int
    at: datetime
    actor: str
    type: str
    detail: dict[str, Any]


_COLUMNS = (
    "id, household_id, kind, severity, state, scope, community_code, device_id, alarm_device_id, alarm_lel,"
    " alarm_received_at, command_sent_at, valve_closed_at, opened_at, acknowledged_at, resolved_at, closed_at,"
    " disposition"
)


def _incident(row: asyncpg.Record) -> Incident:
    values = dict(row)
    values["state"] = IncidentState(values["state"])
    values["community_code"] = values["community_code"].strip() if values["community_code"] else None
    values["disposition"] = Disposition(values["disposition"]) if values["disposition"] else None
    return Incident(**values)


async def get_incident(conn: asyncpg.Connection, incident_id: int) -> Incident:
    """The incident's current row; raises `IncidentNotFound`."""
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM incident WHERE id = $1", incident_id)
    if row is None:
        raise IncidentNotFound(f"incident {incident_id} not found")
    return _incident(row)


async def list_incidents(
    conn: asyncpg.Connection,
    *,
    states: frozenset[IncidentState] | None = None,
    kinds: frozenset[str] | None = None,
    household_id: int | None = None,
    limit: int = 100,
    before_id: int | None = None,
) -> list[Incident]:
    """Incidents newest first, filtered by state, kind and household; page with ``before_id``."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM incident"
        " WHERE ($1::text[] IS NULL OR state = ANY($1)) AND ($2::text[] IS NULL OR kind = ANY($2))"
        " AND ($3::bigint IS NULL OR household_id = $3) AND ($4::bigint IS NULL OR id < $4)"
        " ORDER BY id DESC LIMIT $5",
        sorted(s.value for s in states) if states is not None else None,
        sorted(kinds) if kinds is not None else None,
        household_id,
        before_id,
        limit,
    )
    return [_incident(r) for r in rows]


async def timeline(conn: asyncpg.Connection, incident_id: int) -> list[TimelineEntry]:
    """The incident's timeline, oldest first."""
    rows = await conn.fetch(
        "SELECT id, at, actor, type, detail FROM incident_event WHERE incident_id = $1 ORDER BY id", incident_id
    )
    return [TimelineEntry(id=r["id"], at=r["at"], actor=r["actor"], type=r["type"], detail=r["detail"]) for r in rows]


async def _transition(
    conn: asyncpg.Connection,
    incident_id: int,
    action: Action,
    *,
    actor: str,
    detail: dict[str, Any],
    reached: bool = False,
) -> tuple[IncidentState, IncidentState]:
    """Lock the row, check the transition, apply it and append the timeline entry; returns (before, after)."""
    if not actor:
        raise IncidentError("an actor is required")
    current = await conn.fetchval("SELECT state FROM incident WHERE id = $1 FOR UPDATE", incident_id)
    if current is None:
        raise IncidentNotFound(f"incident {incident_id} not found")
    before = IncidentState(current)
    after = next_state(before, action, reached=reached)
    if after is not before:
        await conn.execute(
            "UPDATE incident SET state = $2,"
            " acknowledged_at = CASE WHEN $3 THEN coalesce(acknowledged_at, now()) ELSE acknowledged_at END,"
            " resolved_at = CASE WHEN $2 = 'RESOLVED' THEN now() ELSE resolved_at END,"
            " closed_at = CASE WHEN $2 = 'CLOSED' THEN now() ELSE closed_at END"
            " WHERE id = $1",
            incident_id,
            after.value,
            stops_escalation(before, after),
        )
    if stops_escalation(before, after) or after is IncidentState.CLOSED:
        await conn.execute(
            "UPDATE escalation SET stopped_at = now(), stopped_reason = $2"
            " WHERE incident_id = $1 AND stopped_at IS NULL",
            incident_id,
            action.value,
        )
    await conn.execute(
        "INSERT INTO incident_event (incident_id, at, actor, type, detail) VALUES ($1, now(), $2, $3, $4)",
        incident_id,
        actor,
        action.value,
        {**detail, "from": before.value, "to": after.value},
    )
    return before, after


async def mark_notified(conn: asyncpg.Connection, incident_id: int, *, actor: str) -> bool:
    """NEW → NOTIFIED when the first escalation step went out; False when already past NEW."""
    async with conn.transaction():
        state = await conn.fetchval("SELECT state FROM incident WHERE id = $1 FOR UPDATE", incident_id)
        if state != IncidentState.NEW.value:
            return False
        await _transition(conn, incident_id, Action.NOTIFY, actor=actor, detail={})
        return True


async def acknowledge(conn: asyncpg.Connection, incident_id: int, *, actor: str, note: str | None = None) -> Incident:
    """A human takes ownership; stops escalation."""
    async with conn.transaction():
        await _transition(conn, incident_id, Action.ACKNOWLEDGE, actor=actor, detail={"note": note})
        return await get_incident(conn, incident_id)


async def record_callback(
    conn: asyncpg.Connection, incident_id: int, *, actor: str, reached: bool, outcome: str
) -> Incident:
    """Record a call-back to the resident; one that reached someone acknowledges an unowned incident."""
    async with conn.transaction():
        await _transition(
            conn,
            incident_id,
            Action.CALLBACK,
            actor=actor,
            detail={"reached": reached, "outcome": outcome},
            reached=reached,
        )
        return await get_incident(conn, incident_id)


async def dispatch(
    conn: asyncpg.Connection, incident_id: int, *, actor: str, crew: str, eta_minutes: int | None = None
) -> Incident:
    """Send a crew; implies ownership, so it stops escalation too."""
    if not crew:
        raise IncidentError("a crew is required")
    if eta_minutes is not None and eta_minutes < 0:
        raise IncidentError("eta_minutes must not be negative")
    async with conn.transaction():
        await _transition(
            conn, incident_id, Action.DISPATCH, actor=actor, detail={"crew": crew, "eta_minutes": eta_minutes}
        )
        return await get_incident(conn, incident_id)


async def record_on_site(conn: asyncpg.Connection, incident_id: int, *, actor: str, record: OnSiteRecord) -> Incident:
    """Store the on-site record (append-only) and move to ON_SITE."""
    if not 0 <= record.detector_lel <= 100:
        raise IncidentError("detector_lel must be between 0 and 100 %LEL")
    if record.arrived_at.tzinfo is None:
        raise IncidentError("arrived_at must carry a time zone")
    for name in ("technician", "cause", "action"):
        if not getattr(record, name).strip():
            raise IncidentError(f"{name} is required")
    async with conn.transaction():
        await _transition(
            conn,
            incident_id,
            Action.ON_SITE,
            actor=actor,
            detail={
                "technician": record.technician,
                "arrived_at": record.arrived_at.isoformat(),
                "detector_lel": record.detector_lel,
                "valve_reopened_on_site": record.valve_reopened_on_site,
            },
        )
        await conn.execute(
            "INSERT INTO incident_on_site_record (incident_id, technician, arrived_at, detector_lel, cause, action,"
            " valve_reopened_on_site, resident_present, notes, recorded_by) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)",
            incident_id,
            record.technician,
            record.arrived_at,
            record.detector_lel,
            record.cause,
            record.action,
            record.valve_reopened_on_site,
            record.resident_present,
            record.notes,
            actor,
        )
        return await get_incident(conn, incident_id)


async def resolve(conn: asyncpg.Connection, incident_id: int, *, actor: str, note: str | None = None) -> Incident:
    """The hazard is over (the incident stays open until it is closed with a disposition)."""
    async with conn.transaction():
        await _transition(conn, incident_id, Action.RESOLVE, actor=actor, detail={"note": note})
        return await get_incident(conn, incident_id)


async def valve_closed_for(conn: asyncpg.Connection, incident_id: int) -> bool:
    """Whether a valve reported closed for this incident."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM incident WHERE id = $1 AND valve_closed_at IS NOT NULL)"
            " OR EXISTS (SELECT 1 FROM valve_command WHERE incident_id = $1 AND state = 'confirmed')",
            incident_id,
        )
    )


async def close(
    conn: asyncpg.Connection,
    incident_id: int,
    *,
    actor: str,
    disposition: Disposition | None,
    note: str | None = None,
) -> Incident:
    """Close with a disposition; refused without an on-site record where a valve closed."""
    if disposition is None:
        raise DispositionRequired("closing needs a disposition")
    disposition = Disposition(disposition)
    async with conn.transaction():
        await get_incident(conn, incident_id)
        if await valve_closed_for(conn, incident_id) and not await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM incident_on_site_record WHERE incident_id = $1)", incident_id
        ):
            raise OnSiteRecordRequired(f"a valve closed for incident {incident_id}: record the on-site visit first")
        await conn.execute("UPDATE incident SET disposition = $2 WHERE id = $1", incident_id, disposition.value)
        await _transition(
            conn, incident_id, Action.CLOSE, actor=actor, detail={"disposition": disposition.value, "note": note}
        )
        return await get_incident(conn, incident_id)
