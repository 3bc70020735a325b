"""What alerting writes to the database, as self-contained records applied idempotently.

The alarm path never waits for these: it publishes the close command first and hands a record to the
recorder, which applies it when the database answers (and journals it to disk while it does not).
Every record carries the server time at which the thing happened, so a late write still tells the
truth. Applying a record twice changes nothing, which makes replay after a crash safe.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Annotated, Literal

import asyncpg
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, TypeAdapter

from alerting.rules import ClusterPolicy, cluster_scopes
from alerting.templates import ALARM_RESIDENT, VALVE_NOT_CLOSED_OPERATOR, county_time

ACTOR = "alerting"


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SentCommand(_Record):
    """A close command as it went out."""

    cmd_id: uuid.UUID
    valve_id: str
    issued_at: AwareDatetime
    expires_at: AwareDatetime


class AlarmRecorded(_Record):
    """An alarm arrived and these close commands were published for it."""

    op: Literal["alarm"] = "alarm"
    alarm_id: str
    household_id: int
    severity: str
    alarm_state: str
    lel: float
    device_ts: AwareDatetime
    received_at: AwareDatetime
    commands: tuple[SentCommand, ...]
    resident_sms_hold_s: float
    hotline: str


class CommandResent(_Record):
    """A close command was published again because the device had not answered."""

    op: Literal["resent"] = "resent"
    cmd_id: uuid.UUID
    attempt: int
    sent_at: AwareDatetime


class CommandAcked(_Record):
    """The device acknowledged (or refused) a command; not a statement about the valve."""

    op: Literal["acked"] = "acked"
    cmd_id: uuid.UUID
    accepted: bool
    at: AwareDatetime


class ValveReported(_Record):
    """The valve reported a position from its own limit switch."""

    op: Literal["valve"] = "valve"
    valve_id: str
    household_id: int
    position: str
    cmd_id: uuid.UUID | None
    at: AwareDatetime


class ValveNotClosed(_Record):
    """No closed report within the model's confirmation timeout: a critical incident."""

    op: Literal["not_closed"] = "not_closed"
    valve_id: str
    household_id: int
    cmd_id: uuid.UUID
    timeout_s: float
    reason: str
    at: AwareDatetime
    operator_phones: tuple[str, ...]


class Rejected(_Record):
    """A message alerting could not use, kept as a dead letter."""

    op: Literal["rejected"] = "rejected"
    topic: str
    device_id: str | None
    reason: str
    payload: bytes
    at: AwareDatetime


class ResidentSmsDue(_Record):
    """The resident's hold ended without the valve's closed report: the held text goes now (saying so)."""

    op: Literal["sms_due"] = "sms_due"
    household_id: int
    at: AwareDatetime


class DeviceNoted(_Record):
    """A device's state changed (status) and, for faults and health findings, an incident kind to open."""

    op: Literal["device"] = "device"
    device_id: str
    household_id: int
    status: str | None
    kind: str | None = None
    severity: str = "info"
    at: AwareDatetime
    detail: dict[str, str] = Field(default_factory=dict)


AnyRecord = (
    AlarmRecorded
    | CommandResent
    | CommandAcked
    | ValveReported
    | ValveNotClosed
    | ResidentSmsDue
    | Rejected
    | DeviceNoted
)
Record = Annotated[AnyRecord, Field(discriminator="op")]
RECORD_ADAPTER: TypeAdapter[AnyRecord] = TypeAdapter(Record)


#: A held resident SMS is released by the engine (valve closed, not confirmed, or its hold ended). Should
#: no engine live to release it, it goes out this long after its hold would have ended anyway.
RESIDENT_SMS_BACKSTOP_S = 60.0


async def apply(conn: asyncpg.Connection, record: Record) -> None:
    """Apply one record in its own transaction."""
    async with conn.transaction():
        await _apply(conn, record)


async def apply_batch(conn: asyncpg.Connection, records: list[AnyRecord]) -> None:
    """Apply records in order in one transaction: one commit (and WAL flush) for the lot.

    All or nothing: if the database refuses one, the caller applies them one by one to find it.
    """
    async with conn.transaction():
        for record in records:
            await _apply(conn, record)


async def _apply(conn: asyncpg.Connection, record: Record) -> None:
    match record:
        case AlarmRecorded():
            await _apply_alarm(conn, record)
        case CommandResent():
            await conn.execute(
                "INSERT INTO valve_command_attempt (cmd_id, attempt, sent_at) VALUES ($1, $2, $3)"
                " ON CONFLICT DO NOTHING",
                record.cmd_id,
                record.attempt,
                record.sent_at,
            )
        case CommandAcked():
            await conn.execute(
                "UPDATE valve_command SET acked_at = coalesce(acked_at, $2),"
                " state = CASE WHEN state = 'sent' THEN (CASE WHEN $3 THEN 'acked' ELSE 'refused' END)"
                " ELSE state END WHERE cmd_id = $1",
                record.cmd_id,
                record.at,
                record.accepted,
            )
        case ValveReported():
            await _apply_valve(conn, record)
        case ValveNotClosed():
            await _apply_not_closed(conn, record)
        case DeviceNoted():
            await apply_device(conn, record)
        case ResidentSmsDue():
            await _release_resident_sms(conn, household_id=record.household_id)
        case Rejected():
            await conn.execute(
                "INSERT INTO dead_letter (received_at, source, topic, device_id, reason, payload)"
                " VALUES ($1, 'alerting', $2, $3, $4, $5)",
                record.at,
                record.topic,
                record.device_id,
                record.reason,
                record.payload,
            )


async def _timeline(conn: asyncpg.Connection, incident_id: int, type_: str, detail: dict[str, object]) -> None:
    await conn.execute(
        "INSERT INTO incident_event (incident_id, actor, type, detail) VALUES ($1, $2, $3, $4)",
        incident_id,
        ACTOR,
        type_,
        detail,
    )


async def _apply_alarm(conn: asyncpg.Connection, r: AlarmRecorded) -> None:
    first_sent = min((c.issued_at for c in r.commands), default=None)
    incident_id: int | None = await conn.fetchval(
        """
        INSERT INTO incident (household_id, kind, severity, alarm_device_id, alarm_state, alarm_lel,
                              alarm_device_ts, alarm_received_at, command_sent_at)
        VALUES ($1, 'gas_alarm', $2, $3, $4, $5, $6, $7, $8)
        ON CONFLICT (household_id, kind) WHERE state <> 'CLOSED' DO NOTHING
        RETURNING id
        """,
        r.household_id,
        r.severity,
        r.alarm_id,
        r.alarm_state,
        r.lel,
        r.device_ts,
        r.received_at,
        first_sent,
    )
    opened = incident_id is not None
    if incident_id is None:
        incident_id = await conn.fetchval(
            "SELECT id FROM incident WHERE household_id = $1 AND kind = 'gas_alarm' AND state <> 'CLOSED'",
            r.household_id,
        )
        if incident_id is None:  # pragma: no cover - the conflicting row was closed in between
            raise asyncpg.exceptions.SerializationError("active incident vanished; retry")
        replayed = await conn.fetchval(
            "SELECT 1 FROM incident_event WHERE incident_id = $1 AND type IN ('opened', 'repeat_alarm')"
            " AND detail->>'received_at' = $2",
            incident_id,
            r.received_at.isoformat(),
        )
        if replayed:
            return
        if r.severity == "critical":
            await conn.execute("UPDATE incident SET severity = 'critical' WHERE id = $1", incident_id)
    detail: dict[str, object] = {
        "alarm_id": r.alarm_id,
        "state": r.alarm_state,
        "lel": r.lel,
        "device_ts": r.device_ts.isoformat(),
        "received_at": r.received_at.isoformat(),
    }
    await _timeline(conn, incident_id, "opened" if opened else "repeat_alarm", detail)
    for c in r.commands:
        await conn.execute(
            """
            INSERT INTO valve_command (cmd_id, valve_id, incident_id, command, reason, issued_at, expires_at, state)
            VALUES ($1, $2, $3, 'close', 'gas_alarm', $4, $5, 'sent') ON CONFLICT DO NOTHING
            """,
            c.cmd_id,
            c.valve_id,
            incident_id,
            c.issued_at,
            c.expires_at,
        )
        await conn.execute(
            "INSERT INTO valve_command_attempt (cmd_id, attempt, sent_at) VALUES ($1, 1, $2) ON CONFLICT DO NOTHING",
            c.cmd_id,
            c.issued_at,
        )
        await _timeline(conn, incident_id, "valve_command_sent", {"valve_id": c.valve_id, "cmd_id": str(c.cmd_id)})
    if not opened:
        if r.severity == "critical":
            await conn.execute(
                "UPDATE escalation SET severity = 'critical' WHERE incident_id = $1 AND stopped_at IS NULL", incident_id
            )
        return
    await _start_escalation(conn, incident_id, severity=r.severity, started_at=r.received_at)
    home = await conn.fetchrow(
        "SELECT community_code, building, resident_phone FROM household WHERE id = $1", r.household_id
    )
    if home is None:
        return
    await _check_cluster(conn, r, community=home["community_code"], building=home["building"])
    if home["resident_phone"]:
        # Held for the valve's own report; the engine releases it (closed, not confirmed, or the hold
        # ended), in order behind the records it had by then, however late this record is applied.
        hold_s = r.resident_sms_hold_s + RESIDENT_SMS_BACKSTOP_S if r.commands else 0.0
        await conn.execute(
            """
            INSERT INTO notification_outbox (incident_id, channel, recipient, recipient_role, template, params,
                                             next_attempt_at)
            VALUES ($1, 'sms', $2, 'resident', $3, $4, greatest($5::timestamptz, now()) + make_interval(secs => $6))
            ON CONFLICT DO NOTHING
            """,
            incident_id,
            home["resident_phone"],
            ALARM_RESIDENT.code,
            {"time": county_time(r.received_at), "hotline": r.hotline},
            r.received_at,
            hold_s,
        )


async def _apply_valve(conn: asyncpg.Connection, r: ValveReported) -> None:
    if r.cmd_id is not None:
        await conn.execute(
            "UPDATE valve_command SET reported_position = $2,"
            " confirmed_at = CASE WHEN $2 = 'closed' THEN coalesce(confirmed_at, $3) ELSE confirmed_at END,"
            " state = CASE WHEN $2 = 'closed' THEN 'confirmed' WHEN $2 = 'fault' THEN 'failed' ELSE state END"
            " WHERE cmd_id = $1",
            r.cmd_id,
            r.position,
            r.at,
        )
    if r.position != "closed":
        return
    incident_id: int | None = await conn.fetchval(
        "UPDATE incident SET valve_closed_at = $2 WHERE household_id = $1 AND kind = 'gas_alarm'"
        " AND state <> 'CLOSED' AND valve_closed_at IS NULL RETURNING id",
        r.household_id,
        r.at,
    )
    if incident_id is None:
        return
    await _timeline(conn, incident_id, "valve_closed", {"valve_id": r.valve_id, "reported_at": r.at.isoformat()})
    # The resident's SMS was held for this report; release it now.
    await _release_resident_sms(conn, household_id=r.household_id)


async def _release_resident_sms(conn: asyncpg.Connection, *, household_id: int) -> None:
    released = await conn.execute(
        """
        UPDATE notification_outbox o SET next_attempt_at = now()
        FROM incident i
        WHERE o.incident_id = i.id AND i.household_id = $1 AND i.kind = 'gas_alarm' AND i.state <> 'CLOSED'
          AND o.status = 'pending' AND o.recipient_role = 'resident' AND o.next_attempt_at > now()
        """,
        household_id,
    )
    if released != "UPDATE 0":
        await conn.execute("SELECT pg_notify('gg_outbox', '')")


async def _apply_not_closed(conn: asyncpg.Connection, r: ValveNotClosed) -> None:
    await conn.execute(
        "UPDATE valve_command SET state = 'failed' WHERE cmd_id = $1 AND state IN ('sent', 'acked', 'refused')",
        r.cmd_id,
    )
    incident_id: int | None = await conn.fetchval(
        """
        INSERT INTO incident (household_id, kind, severity, alarm_received_at, command_sent_at)
        SELECT $1, 'valve_not_closed', 'critical', c.issued_at, c.issued_at FROM valve_command c WHERE c.cmd_id = $2
        ON CONFLICT (household_id, kind) WHERE state <> 'CLOSED' DO NOTHING
        RETURNING id
        """,
        r.household_id,
        r.cmd_id,
    )
    # The resident's SMS was held for the valve's report; it goes now, saying the close is unconfirmed.
    await _release_resident_sms(conn, household_id=r.household_id)
    if incident_id is None:
        return
    await _timeline(
        conn,
        incident_id,
        "opened",
        {"valve_id": r.valve_id, "cmd_id": str(r.cmd_id), "reason": r.reason, "timeout_s": r.timeout_s},
    )
    await _start_escalation(conn, incident_id, severity="critical", started_at=r.at)
    place = await place_of(conn, r.household_id)
    for phone in r.operator_phones:
        await conn.execute(
            """
            INSERT INTO notification_outbox (incident_id, channel, recipient, recipient_role, template, params)
            VALUES ($1, 'sms', $2, 'operator', $3, $4) ON CONFLICT DO NOTHING
            """,
            incident_id,
            phone,
            VALVE_NOT_CLOSED_OPERATOR.code,
            {"place": place, "time": county_time(r.at - timedelta(seconds=r.timeout_s))},
        )


async def place_of(conn: asyncpg.Connection, household_id: int) -> str:
    """Where the household is, short enough for an operator SMS (the room number is kept)."""
    row = await conn.fetchrow(
        "SELECT c.name AS community, h.building, h.unit, h.room FROM household h"
        " JOIN community c ON c.code = h.community_code WHERE h.id = $1",
        household_id,
    )
    place = f"住户{household_id}" if row is None else f"{row['community']}{row['building']}{row['unit']}{row['room']}"
    # Keep the operator's SMS within one 70-character part; the room number is the part to keep.
    limit = VALVE_NOT_CLOSED_OPERATOR.max_param_chars["place"]
    return place if len(place) <= limit else place[len(place) - limit :]


async def _start_escalation(
    conn: asyncpg.Connection, incident_id: int, *, severity: str, started_at: datetime, first_step: int = 0
) -> None:
    """Start the incident's escalation timer; the escalator fires its first step at once."""
    await conn.execute(
        "INSERT INTO escalation (incident_id, severity, started_at, next_step, next_step_at)"
        " VALUES ($1, $2, $3, $4, $3) ON CONFLICT DO NOTHING",
        incident_id,
        severity,
        started_at,
        first_step,
    )


async def _check_cluster(conn: asyncpg.Connection, r: AlarmRecorded, *, community: str, building: str) -> None:
    """Cluster rule, evaluated where every engine's alarms meet: distinct households per scope and window.

    A scope whose cluster incident is already open is not counted again, so an alarm storm costs one
    index look-up per alarm instead of a count that grows with the storm.
    """
    keys = {"building": f"building:{community}:{building}", "community": f"community:{community}"}
    active = {
        row[0]
        for row in await conn.fetch(
            "SELECT scope FROM incident WHERE kind = 'cluster' AND state <> 'CLOSED' AND scope = ANY($1::text[])",
            list(keys.values()),
        )
    }
    policies = [
        ClusterPolicy(scope=p["scope"], window_s=p["window_s"], min_households=p["min_households"])
        for p in await conn.fetch("SELECT scope, window_s, min_households FROM cluster_policy")
        if keys[p["scope"]] not in active
    ]
    counts: dict[str, int] = {}
    for policy in policies:
        counts[policy.scope] = await conn.fetchval(
            """
            SELECT count(DISTINCT i.household_id) FROM household h
            JOIN incident i ON i.household_id = h.id AND i.kind = 'gas_alarm'
            WHERE h.community_code = $3 AND ($4::text IS NULL OR h.building = $4)
              AND i.alarm_received_at > $1::timestamptz - make_interval(secs => $2) AND i.alarm_received_at <= $1
            """,
            r.received_at,
            float(policy.window_s),
            community,
            building if policy.scope == "building" else None,
        )
    scopes = cluster_scopes(
        building_households=counts.get("building", 0),
        community_households=counts.get("community", 0),
        policies=policies,
    )
    for scope in scopes:
        key = keys[scope]
        incident_id: int | None = await conn.fetchval(
            """
            INSERT INTO incident (household_id, kind, severity, scope, community_code, alarm_received_at, detail)
            VALUES (NULL, 'cluster', 'critical', $1, $2, $3, $4)
            ON CONFLICT (scope) WHERE kind = 'cluster' AND state <> 'CLOSED' DO NOTHING RETURNING id
            """,
            key,
            community,
            r.received_at,
            {"households": counts[scope]},
        )
        if incident_id is None:
            continue
        await _timeline(conn, incident_id, "opened", {"scope": key, "households": counts[scope]})
        await start_emergency_escalation(conn, incident_id, started_at=r.received_at)


async def start_emergency_escalation(conn: asyncpg.Connection, incident_id: int, *, started_at: datetime) -> None:
    """Escalate a critical incident straight to emergency management: from the first step that reaches it."""
    first = await conn.fetchval(
        "SELECT min(step) FROM escalation_policy_step WHERE severity = 'critical' AND 'emergency' = ANY(roles)"
    )
    await _start_escalation(conn, incident_id, severity="critical", started_at=started_at, first_step=int(first or 0))


async def open_scope_incident(
    conn: asyncpg.Connection, *, scope: str, community_code: str, at: datetime, detail: dict[str, int]
) -> int | None:
    """Open the one active ``offline_scope`` incident of a silent community or gateway; returns a new id.

    Critical, escalated from the first step (duty operators at once, emergency management if nobody
    acknowledges): while its devices are silent, an alarm there closes no valve.
    """
    incident_id: int | None = await conn.fetchval(
        """
        INSERT INTO incident (household_id, kind, severity, scope, community_code, alarm_received_at, detail)
        VALUES (NULL, 'offline_scope', 'critical', $1, $2, $3, $4)
        ON CONFLICT (scope) WHERE kind = 'offline_scope' AND state <> 'CLOSED' DO NOTHING RETURNING id
        """,
        scope,
        community_code,
        at,
        detail,
    )
    if incident_id is None:
        return None
    await _timeline(conn, incident_id, "opened", {"scope": scope, **detail})
    await _start_escalation(conn, incident_id, severity="critical", started_at=at)
    return incident_id


async def apply_device(conn: asyncpg.Connection, r: DeviceNoted) -> int | None:
    """Upsert the device state and open the device incident if one is called for; returns a new incident id."""
    if r.status is not None:
        await conn.execute(
            """
            INSERT INTO device_state (device_id, status, since, updated_at) VALUES ($1, $2, $3, now())
            ON CONFLICT (device_id) DO UPDATE SET
                since = CASE WHEN device_state.status = excluded.status THEN device_state.since ELSE excluded.since END,
                status = excluded.status, updated_at = now()
            """,
            r.device_id,
            r.status,
            r.at,
        )
    if r.kind is None:
        return None
    incident_id: int | None = await conn.fetchval(
        """
        INSERT INTO incident (household_id, kind, severity, device_id, alarm_received_at, detail)
        VALUES ($1, $2, $3, $4, $5, $6)
        ON CONFLICT (household_id, kind) WHERE state <> 'CLOSED' DO NOTHING RETURNING id
        """,
        r.household_id,
        r.kind,
        r.severity,
        r.device_id,
        r.at,
        r.detail,
    )
    if incident_id is None:
        return None
    await _timeline(conn, incident_id, "opened", {"device_id": r.device_id, "kind": r.kind, **r.detail})
    await _start_escalation(conn, incident_id, severity=r.severity, started_at=r.at)
    return incident_id
