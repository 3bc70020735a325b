"""What alerting writes to the database, as self-contained records applied idempotently.

The alarm path never waits for these: it publishes the close command first and hands a record to the
recorder, which applies it when the database answers (and journals it to disk while it does not).
Every record carries the server time at which the thing happened, so a late write still tells the
truth. Applying a record twice changes nothing, which makes replay after a crash safe.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Annotated, ClassVar

import asyncpg
import msgspec

from alerting.rules import ClusterPolicy, cluster_scopes
from alerting.templates import ALARM_RESIDENT, VALVE_NOT_CLOSED_OPERATOR, county_time

ACTOR = "alerting"


#: A timezone-aware datetime (the journal refuses a naive one).
AwareDatetime = Annotated[datetime, msgspec.Meta(tz=True)]


class _Record(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag_field="op"):
    """Base of the records: compact slotted structs, not validated models.

    In an alarm storm tens of thousands of records wait for the database at once; as pydantic models
    they took about 1.2 kB each (measured: 440 MB for a 36,000-household storm) and their validation
    cost the alarm path CPU. The engine builds them from values it has already checked, and the journal
    decodes them strictly by type. ``gc=False``: records hold only plain values, never cycles, so the
    garbage collector need not walk them.
    """

    op: ClassVar[str]


class SentCommand(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """A close command as it went out."""

    cmd_id: uuid.UUID
    valve_id: str
    issued_at: AwareDatetime
    expires_at: AwareDatetime


class AlarmRecorded(_Record, tag="alarm", frozen=True, kw_only=True):
    """An alarm arrived and these close commands were published for it."""

    op: ClassVar[str] = "alarm"
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


class CommandResent(_Record, tag="resent", frozen=True, kw_only=True):
    """A close command was published again because the device had not answered."""

    op: ClassVar[str] = "resent"
    cmd_id: uuid.UUID
    attempt: int
    sent_at: AwareDatetime


class CommandAcked(_Record, tag="acked", frozen=True, kw_only=True):
    """The device acknowledged (or refused) a command; not a statement about the valve."""

    op: ClassVar[str] = "acked"
    cmd_id: uuid.UUID
    accepted: bool
    at: AwareDatetime


class ValveReported(_Record, tag="valve", frozen=True, kw_only=True):
    """The valve reported a position from its own limit switch."""

    op: ClassVar[str] = "valve"
    valve_id: str
    household_id: int
    position: str
    cmd_id: uuid.UUID | None
    at: AwareDatetime


class ValveNotClosed(_Record, tag="not_closed", frozen=True, kw_only=True):
    """No closed report within the model's confirmation timeout: a critical incident."""

    op: ClassVar[str] = "not_closed"
    valve_id: str
    household_id: int
    cmd_id: uuid.UUID
    timeout_s: float
    reason: str
    at: AwareDatetime
    operator_phones: tuple[str, ...]


class Rejected(_Record, tag="rejected", frozen=True, kw_only=True):
    """A message alerting could not use, kept as a dead letter."""

    op: ClassVar[str] = "rejected"
    topic: str
    device_id: str | None
    reason: str
    payload: bytes
    at: AwareDatetime


class ResidentSmsDue(_Record, tag="sms_due", frozen=True, kw_only=True):
    """The resident's hold ended without the valve's closed report: the held text goes now (saying so)."""

    op: ClassVar[str] = "sms_due"
    household_id: int
    at: AwareDatetime


class DeviceNoted(_Record, tag="device", frozen=True, kw_only=True):
    """A device's state changed (status) and, for faults and health findings, an incident kind to open."""

    op: ClassVar[str] = "device"
    device_id: str
    household_id: int
    status: str | None
    kind: str | None = None
    severity: str = "info"
    at: AwareDatetime
    detail: dict[str, str] = msgspec.field(default_factory=dict)


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
Record = AnyRecord
_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(AnyRecord)


def dump_record(record: Record) -> bytes:
    """A record as one line of JSON (tagged with its ``op``), for the journal and for dead letters."""
    return _ENCODER.encode(record)


def load_record(data: bytes) -> Record:
    """A record from `dump_record`'s JSON; raises `msgspec.ValidationError` (a `ValueError`) when it is not one."""
    return _DECODER.decode(data)


#: A held resident SMS is released by the engine (valve closed, not confirmed, or its hold ended). Should
#: no engine live to release it, it goes out this long after its hold would have ended anyway.
RESIDENT_SMS_BACKSTOP_S = 60.0


async def apply(conn: asyncpg.Connection, record: Record) -> None:
    """Apply one record in its own transaction."""
    async with conn.transaction():
        await _apply(conn, record)


#: The order records of one kind are applied in when a batch is grouped by kind: the order in which one
#: household's records arise (alarm, its device state, the command's ack, the valve's report, …).
_PHASE: dict[str, int] = {
    "alarm": 0,
    "device": 1,
    "acked": 2,
    "resent": 2,
    "valve": 3,
    "not_closed": 4,
    "sms_due": 5,
    "rejected": 6,
}

_ACKED_SQL = """
UPDATE valve_command SET acked_at = coalesce(acked_at, $2),
    state = CASE WHEN state = 'sent' THEN (CASE WHEN $3 THEN 'acked' ELSE 'refused' END) ELSE state END
WHERE cmd_id = $1
"""
_RESENT_SQL = "INSERT INTO valve_command_attempt (cmd_id, attempt, sent_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING"
_DEVICE_STATUS_SQL = """
INSERT INTO device_state (device_id, status, since, updated_at) VALUES ($1, $2, $3, now())
ON CONFLICT (device_id) DO UPDATE SET
    since = CASE WHEN device_state.status = excluded.status THEN device_state.since ELSE excluded.since END,
    status = excluded.status, updated_at = now()
"""


def batchable(records: Sequence[AnyRecord]) -> int:
    """How many leading records `apply_batch` may group by kind without reordering any household's records.

    Grouping moves records of a later phase behind records of an earlier one; that is harmless unless a
    household's own records would change order (say, an old valve report before a new alarm), so the
    batch ends before the first record that would.
    """
    highest: dict[int, int] = {}
    for index, record in enumerate(records):
        household = getattr(record, "household_id", None)
        if household is None:
            continue
        phase = _PHASE[record.op]
        if phase < highest.get(household, -1):
            return index
        highest[household] = max(phase, highest.get(household, -1))
    return len(records)


async def apply_batch(conn: asyncpg.Connection, records: Sequence[AnyRecord]) -> int:
    """Apply the leading `batchable` records in one transaction; returns how many that was.

    Records are grouped by kind, and each group is written set-based (a few statements for the group,
    not several per record): in a storm the recorder is bound by round trips to PostgreSQL, not by
    the work each one does. All or nothing: if the database refuses one record, the caller applies
    them one by one to find it.
    """
    count = batchable(records)
    ordered = sorted(records[:count], key=lambda r: _PHASE[r.op])  # stable: each kind keeps its order
    async with conn.transaction():
        for op, group in itertools.groupby(ordered, key=lambda r: r.op):
            run = list(group)
            match op:
                case "alarm":
                    await _apply_alarms(conn, [r for r in run if isinstance(r, AlarmRecorded)])
                case "valve":
                    await _apply_valves(conn, [r for r in run if isinstance(r, ValveReported)])
                case "acked":
                    await conn.executemany(
                        _ACKED_SQL, [(r.cmd_id, r.at, r.accepted) for r in run if isinstance(r, CommandAcked)]
                    )
                case "resent":
                    await conn.executemany(
                        _RESENT_SQL, [(r.cmd_id, r.attempt, r.sent_at) for r in run if isinstance(r, CommandResent)]
                    )
                case "sms_due":
                    await _release_held_for(conn, [r.household_id for r in run if isinstance(r, ResidentSmsDue)])
                case "device":
                    await _apply_devices(conn, [r for r in run if isinstance(r, DeviceNoted)])
                case _:
                    for record in run:
                        await _apply(conn, record)
    return count


async def _apply(conn: asyncpg.Connection, record: Record) -> None:
    match record:
        case AlarmRecorded():
            await _apply_alarms(conn, [record])
        case CommandResent():
            await conn.execute(_RESENT_SQL, record.cmd_id, record.attempt, record.sent_at)
        case CommandAcked():
            await conn.execute(_ACKED_SQL, record.cmd_id, record.at, record.accepted)
        case ValveReported():
            await _apply_valves(conn, [record])
        case ValveNotClosed():
            await _apply_not_closed(conn, record)
        case DeviceNoted():
            await apply_device(conn, record)
        case ResidentSmsDue():
            await _release_held_for(conn, [record.household_id])
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


async def _apply_devices(conn: asyncpg.Connection, run: list[DeviceNoted]) -> None:
    """Device records in order: plain status changes pipelined, those that open an incident one by one."""
    for opens, group in itertools.groupby(run, key=lambda r: r.kind is not None):
        records = list(group)
        if opens:
            for record in records:
                await apply_device(conn, record)
        else:
            await conn.executemany(
                _DEVICE_STATUS_SQL, [(r.device_id, r.status, r.at) for r in records if r.status is not None]
            )


async def _timeline(conn: asyncpg.Connection, incident_id: int, type_: str, detail: dict[str, object]) -> None:
    await conn.execute(
        "INSERT INTO incident_event (incident_id, actor, type, detail) VALUES ($1, $2, $3, $4)",
        incident_id,
        ACTOR,
        type_,
        detail,
    )


async def _timelines(conn: asyncpg.Connection, entries: list[tuple[int, str, dict[str, object]]]) -> None:
    """Append timeline entries in the given order (one statement)."""
    if not entries:
        return
    await conn.execute(
        """
        INSERT INTO incident_event (incident_id, actor, type, detail)
        SELECT u.incident_id, $4, u.type, u.detail::jsonb
        FROM unnest($1::bigint[], $2::text[], $3::text[]) WITH ORDINALITY AS u(incident_id, type, detail, n)
        ORDER BY u.n
        """,
        [e[0] for e in entries],
        [e[1] for e in entries],
        [json.dumps(e[2]) for e in entries],
        ACTOR,
    )


_OPEN_ALARMS_SQL = """
INSERT INTO incident (household_id, kind, severity, alarm_device_id, alarm_state, alarm_lel,
                      alarm_device_ts, alarm_received_at, command_sent_at)
SELECT DISTINCT ON (u.household_id) u.household_id, 'gas_alarm', u.severity, u.alarm_id, u.state, u.lel,
       u.device_ts, u.received_at, u.command_sent_at
FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::timestamptz[], $7::timestamptz[],
            $8::timestamptz[]) WITH ORDINALITY
     AS u(household_id, severity, alarm_id, state, lel, device_ts, received_at, command_sent_at, n)
ORDER BY u.household_id, u.n
ON CONFLICT (household_id, kind) WHERE state <> 'CLOSED' DO NOTHING
RETURNING id, household_id
"""

_RESIDENT_SMS_SQL = """
INSERT INTO notification_outbox (incident_id, channel, recipient, recipient_role, template, params, next_attempt_at)
SELECT u.incident_id, 'sms', h.resident_phone, 'resident', $6, jsonb_build_object('time', u.time, 'hotline', u.hotline),
       greatest(u.received_at, now()) + make_interval(secs => u.hold_s)
FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::timestamptz[], $7::float8[])
     AS u(incident_id, household_id, time, hotline, received_at, hold_s)
JOIN household h ON h.id = u.household_id
WHERE h.resident_phone IS NOT NULL AND h.resident_phone <> ''
ON CONFLICT DO NOTHING
"""


async def _apply_alarms(conn: asyncpg.Connection, run: list[AlarmRecorded]) -> None:
    """Record alarms, in order: the first alarm of a household without an active incident opens one.

    A later alarm (or one arriving while the incident is open) is a ``repeat_alarm`` entry; an alarm
    already on the timeline (a replay after a crash) changes nothing. The opening alarm's escalation
    timer, cluster check and the resident's held SMS go in the same transaction.
    """
    if not run:
        return
    opened_rows = await conn.fetch(
        _OPEN_ALARMS_SQL,
        [r.household_id for r in run],
        [r.severity for r in run],
        [r.alarm_id for r in run],
        [r.alarm_state for r in run],
        [r.lel for r in run],
        [r.device_ts for r in run],
        [r.received_at for r in run],
        [min((c.issued_at for c in r.commands), default=None) for r in run],
    )
    opened = {row["household_id"]: row["id"] for row in opened_rows}
    households = sorted({r.household_id for r in run})
    active: dict[int, int] = {
        row["household_id"]: row["id"]
        for row in await conn.fetch(
            "SELECT household_id, id FROM incident WHERE kind = 'gas_alarm' AND state <> 'CLOSED'"
            " AND household_id = ANY($1::bigint[])",
            households,
        )
    }
    vanished = set(households) - active.keys()
    if vanished:  # pragma: no cover - an incident was closed between the insert and this look-up
        raise asyncpg.exceptions.SerializationError(f"active incident vanished for {sorted(vanished)}; retry")
    repeated = [active[h] for h in households if h not in opened]
    seen: set[tuple[int, str]] = set()
    if repeated:
        seen = {
            (row[0], row[1])
            for row in await conn.fetch(
                "SELECT incident_id, detail->>'received_at' FROM incident_event"
                " WHERE incident_id = ANY($1::bigint[]) AND type IN ('opened', 'repeat_alarm')",
                repeated,
            )
        }
    timeline: list[tuple[int, str, dict[str, object]]] = []
    commands: list[tuple[SentCommand, int]] = []
    openers: list[tuple[AlarmRecorded, int]] = []
    critical: set[int] = set()
    for r in run:
        incident_id = active[r.household_id]
        key = (incident_id, r.received_at.isoformat())
        is_opener = opened.get(r.household_id) == incident_id and not any(o[1] == incident_id for o in openers)
        if not is_opener:
            if key in seen:
                continue
            if r.severity == "critical":
                critical.add(incident_id)
        seen.add(key)
        detail: dict[str, object] = {
            "alarm_id": r.alarm_id,
            "state": r.alarm_state,
            "lel": r.lel,
            "device_ts": r.device_ts.isoformat(),
            "received_at": r.received_at.isoformat(),
        }
        timeline.append((incident_id, "opened" if is_opener else "repeat_alarm", detail))
        for c in r.commands:
            commands.append((c, incident_id))
            timeline.append((incident_id, "valve_command_sent", {"valve_id": c.valve_id, "cmd_id": str(c.cmd_id)}))
        if is_opener:
            openers.append((r, incident_id))
    if critical:
        await conn.execute("UPDATE incident SET severity = 'critical' WHERE id = ANY($1::bigint[])", list(critical))
    await _timelines(conn, timeline)
    if commands:
        await conn.execute(
            """
            INSERT INTO valve_command (cmd_id, valve_id, incident_id, command, reason, issued_at, expires_at, state)
            SELECT u.cmd_id, u.valve_id, u.incident_id, 'close', 'gas_alarm', u.issued_at, u.expires_at, 'sent'
            FROM unnest($1::uuid[], $2::text[], $3::bigint[], $4::timestamptz[], $5::timestamptz[])
                 AS u(cmd_id, valve_id, incident_id, issued_at, expires_at)
            ON CONFLICT DO NOTHING
            """,
            [c.cmd_id for c, _ in commands],
            [c.valve_id for c, _ in commands],
            [i for _, i in commands],
            [c.issued_at for c, _ in commands],
            [c.expires_at for c, _ in commands],
        )
        await conn.execute(
            "INSERT INTO valve_command_attempt (cmd_id, attempt, sent_at)"
            " SELECT u.cmd_id, 1, u.sent_at FROM unnest($1::uuid[], $2::timestamptz[]) AS u(cmd_id, sent_at)"
            " ON CONFLICT DO NOTHING",
            [c.cmd_id for c, _ in commands],
            [c.issued_at for c, _ in commands],
        )
    if critical:
        await conn.execute(
            "UPDATE escalation SET severity = 'critical' WHERE incident_id = ANY($1::bigint[]) AND stopped_at IS NULL",
            list(critical),
        )
    if not openers:
        return
    await conn.execute(
        "INSERT INTO escalation (incident_id, severity, started_at, next_step, next_step_at)"
        " SELECT u.incident_id, u.severity, u.started_at, 0, u.started_at"
        " FROM unnest($1::bigint[], $2::text[], $3::timestamptz[]) AS u(incident_id, severity, started_at)"
        " ON CONFLICT DO NOTHING",
        [i for _, i in openers],
        [r.severity for r, _ in openers],
        [r.received_at for r, _ in openers],
    )
    await _check_clusters(conn, openers)
    # Held for the valve's own report; the engine releases it (closed, not confirmed, or the hold ended),
    # in order behind the records it had by then, however late this record is applied.
    await conn.execute(
        _RESIDENT_SMS_SQL,
        [i for _, i in openers],
        [r.household_id for r, _ in openers],
        [county_time(r.received_at) for r, _ in openers],
        [r.hotline for r, _ in openers],
        [r.received_at for r, _ in openers],
        ALARM_RESIDENT.code,
        [r.resident_sms_hold_s + RESIDENT_SMS_BACKSTOP_S if r.commands else 0.0 for r, _ in openers],
    )


async def _apply_valves(conn: asyncpg.Connection, run: list[ValveReported]) -> None:
    """Valve reports in order: the command's state, and the first closed report closes the incident's valve."""
    reports = [r for r in run if r.cmd_id is not None]
    if reports:
        # In order, one statement per report but pipelined: a command may be reported twice in a run.
        await conn.executemany(
            "UPDATE valve_command SET reported_position = $2,"
            " confirmed_at = CASE WHEN $2 = 'closed' THEN coalesce(confirmed_at, $3) ELSE confirmed_at END,"
            " state = CASE WHEN $2 = 'closed' THEN 'confirmed' WHEN $2 = 'fault' THEN 'failed' ELSE state END"
            " WHERE cmd_id = $1",
            [(r.cmd_id, r.position, r.at) for r in reports],
        )
    closed = [r for r in run if r.position == "closed"]
    if not closed:
        return
    rows = await conn.fetch(
        """
        UPDATE incident i SET valve_closed_at = u.at
        FROM (SELECT DISTINCT ON (household_id) household_id, valve_id, at
              FROM unnest($1::bigint[], $2::text[], $3::timestamptz[]) WITH ORDINALITY
                   AS v(household_id, valve_id, at, n)
              ORDER BY household_id, n) u
        WHERE i.household_id = u.household_id AND i.kind = 'gas_alarm' AND i.state <> 'CLOSED'
          AND i.valve_closed_at IS NULL
        RETURNING i.id, i.household_id, u.valve_id, u.at
        """,
        [r.household_id for r in closed],
        [r.valve_id for r in closed],
        [r.at for r in closed],
    )
    if not rows:
        return
    await _timelines(
        conn,
        [
            (row["id"], "valve_closed", {"valve_id": row["valve_id"], "reported_at": row["at"].isoformat()})
            for row in rows
        ],
    )
    # The residents' SMS were held for these reports; release them now.
    await _release_resident_sms(conn, incident_ids=[row["id"] for row in rows])


async def _release_resident_sms(conn: asyncpg.Connection, *, incident_ids: list[int]) -> None:
    """Send the held resident texts of these gas-alarm incidents now.

    By incident id, so the planner keeps to the outbox's incident index however stale its statistics
    are in a storm (joined to ``incident`` it chose a nested loop of 200 ms per batch).
    """
    released = await conn.execute(
        "UPDATE notification_outbox SET next_attempt_at = now() WHERE incident_id = ANY($1::bigint[])"
        " AND status = 'pending' AND recipient_role = 'resident' AND next_attempt_at > now()",
        incident_ids,
    )
    if released != "UPDATE 0":
        await conn.execute("SELECT pg_notify('gg_outbox', '')")


async def _release_held_for(conn: asyncpg.Connection, household_ids: list[int]) -> None:
    """Release the held resident texts of these households' active gas-alarm incidents."""
    incident_ids = [
        row[0]
        for row in await conn.fetch(
            "SELECT id FROM incident WHERE household_id = ANY($1::bigint[]) AND kind = 'gas_alarm'"
            " AND state <> 'CLOSED'",
            household_ids,
        )
    ]
    if incident_ids:
        await _release_resident_sms(conn, incident_ids=incident_ids)


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
    await _release_held_for(conn, [r.household_id])
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


_CLUSTER_COUNT_SQL = """
SELECT s.key, count(DISTINCT i.household_id)
FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::float8[])
     AS s(key, community, building, at, window_s)
JOIN household h ON h.community_code = s.community AND (s.building IS NULL OR h.building = s.building)
JOIN incident i ON i.household_id = h.id AND i.kind = 'gas_alarm'
    AND i.alarm_received_at > s.at - make_interval(secs => s.window_s) AND i.alarm_received_at <= s.at
GROUP BY s.key
"""


async def _check_clusters(conn: asyncpg.Connection, openers: list[tuple[AlarmRecorded, int]]) -> None:
    """Cluster rule, evaluated where every engine's alarms meet: distinct households per scope and window.

    Each building and community of the newly opened alarms is counted once, at its latest alarm, in one
    query; a scope whose cluster incident is already open is not counted again, so an alarm storm does
    not pay for a count that grows with the storm.
    """
    homes = {
        row["id"]: (row["community_code"], row["building"])
        for row in await conn.fetch(
            "SELECT id, community_code, building FROM household WHERE id = ANY($1::bigint[])",
            [r.household_id for r, _ in openers],
        )
    }
    policies = {
        p["scope"]: ClusterPolicy(scope=p["scope"], window_s=p["window_s"], min_households=p["min_households"])
        for p in await conn.fetch("SELECT scope, window_s, min_households FROM cluster_policy")
    }
    # scope key -> (policy scope, community, building or None, latest alarm)
    scopes: dict[str, tuple[str, str, str | None, datetime]] = {}
    for r, _ in openers:
        if r.household_id not in homes:
            continue
        community, building = homes[r.household_id]
        for scope, key, where in (
            ("building", f"building:{community}:{building}", building),
            ("community", f"community:{community}", None),
        ):
            if scope in policies and (key not in scopes or scopes[key][3] < r.received_at):
                scopes[key] = (scope, community, where, r.received_at)
    if not scopes:
        return
    active = {
        row[0]
        for row in await conn.fetch(
            "SELECT scope FROM incident WHERE kind = 'cluster' AND state <> 'CLOSED' AND scope = ANY($1::text[])",
            list(scopes),
        )
    }
    todo = {key: value for key, value in scopes.items() if key not in active}
    if not todo:
        return
    counts: dict[str, int] = {
        row[0]: row[1]
        for row in await conn.fetch(
            _CLUSTER_COUNT_SQL,
            list(todo),
            [v[1] for v in todo.values()],
            [v[2] for v in todo.values()],
            [v[3] for v in todo.values()],
            [float(policies[v[0]].window_s) for v in todo.values()],
        )
    }
    for key, (scope, community, _, at) in todo.items():
        households = counts.get(key, 0)
        found = cluster_scopes(
            building_households=households if scope == "building" else 0,
            community_households=households if scope == "community" else 0,
            policies=[policies[scope]],
        )
        if not found:
            continue
        incident_id: int | None = await conn.fetchval(
            """
            INSERT INTO incident (household_id, kind, severity, scope, community_code, alarm_received_at, detail)
            VALUES (NULL, 'cluster', 'critical', $1, $2, $3, $4)
            ON CONFLICT (scope) WHERE kind = 'cluster' AND state <> 'CLOSED' DO NOTHING RETURNING id
            """,
            key,
            community,
            at,
            {"households": households},
        )
        if incident_id is None:
            continue
        await _timeline(conn, incident_id, "opened", {"scope": key, "households": households})
        await start_emergency_escalation(conn, incident_id, started_at=at)


async def start_emergency_escalation(conn: asyncpg.Connection, incident_id: int, *, started_at: datetime) -> None:
    """Escalate a critical incident straight to emergency management: from the first step that reaches it."""
    first = await conn.fetchval(
        "SELECT min(step) FROM escalation_policy_step WHERE severity = 'critical' AND 'emergency' = ANY(roles)"
    )
    await _start_escalation(conn, incident_id, severity="critical", started_at=started_at, first_step=int(first or 0))


async def open_scope_incident(
    conn: asyncpg.Connection, *, scope: str, community_code: str, at: datetime, detail: dict[str, int]
) -> int | None:
    """Open the one active ``offline`` incident of a silent community or gateway (no household); returns a new id.

    Critical, escalated from the first step (duty operators at once, emergency management if nobody
    acknowledges): while its devices are silent, an alarm there closes no valve.
    """
    incident_id: int | None = await conn.fetchval(
        """
        INSERT INTO incident (household_id, kind, severity, scope, community_code, alarm_received_at, detail)
        VALUES (NULL, 'offline', 'critical', $1, $2, $3, $4)
        ON CONFLICT (scope) WHERE kind = 'offline' AND household_id IS NULL AND state <> 'CLOSED' DO NOTHING
        RETURNING id
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
