"""Read API of the control-room pages under ``/ui/api``: the alarm board and an incident's context.

The board lists active incidents in the caller's scope, most severe first and oldest first within a
severity, with the place, the state, the valve as commanded and as reported, and the escalation step.
Rows carry no personal data. Live updates re-read single rows with ``ids=…``. The incident page adds
the household's devices with their states, the on-site records, the escalation, and the concentration
(%LEL) around the alarm, downsampled here so the browser never receives raw telemetry.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, status
from pydantic import BaseModel, ConfigDict

from registry import queries
from registry.auth import Role, User, require_roles, scope_for
from registry.deps import BigIntId, ConnDep, TodayDep
from registry.models import DevicePublic, IncidentKind, IncidentState, Row
from registry.queries import Where
from registry.routes.incidents import IncidentIdPath, authorize_incident
from registry.ui.live import BOARD_ROLES

router = APIRouter(prefix="/ui/api", tags=["ui"])

BoardReader = Annotated[User, Depends(require_roles(*BOARD_ROLES))]
Severity = Literal["info", "warning", "critical"]
#: What the valve has reported about the close command (None: no command for this incident).
ValveReport = Literal["closing", "closed", "unconfirmed", "refused", "fault"]

BOARD_MAX = 1000
IDS_MAX = 200


class _Public(BaseModel):
    model_config = ConfigDict(frozen=True)


class BoardPlace(_Public):
    """Town → community → building/unit/room (building to room are absent for community-wide incidents)."""

    town_name: str | None
    community_code: str | None
    community_name: str | None
    building: str | None
    unit: str | None
    room: str | None


class BoardValve(_Public):
    """The valve as commanded and as reported."""

    valve_id: str
    commanded: Literal["close", "self_test"]
    reported: ValveReport
    position: str | None
    attempts: int


class BoardRow(_Public):
    """One incident on the board."""

    id: int
    kind: IncidentKind
    severity: Severity
    state: IncidentState
    household_id: int | None
    scope: str | None
    place: BoardPlace
    alarm_lel: float | None
    alarm_received_at: datetime
    opened_at: datetime
    acknowledged_at: datetime | None
    valve_closed_at: datetime | None
    valve: BoardValve | None
    escalation_step: int
    escalation_stopped: bool

    @classmethod
    def from_record(cls, row: Row) -> BoardRow:
        """Build from a `_BOARD_SELECT` row."""
        valve = None
        if row["valve_id"] is not None:
            valve = BoardValve(
                valve_id=row["valve_id"],
                commanded=row["command"],
                reported=valve_report(
                    command_state=row["command_state"],
                    position=row["reported_position"],
                    valve_closed=row["valve_closed_at"] is not None,
                ),
                position=row["reported_position"],
                attempts=row["attempts"],
            )
        return cls(
            id=row["id"],
            kind=row["kind"],
            severity=row["severity"],
            state=row["state"],
            household_id=row["household_id"],
            scope=row["scope"],
            place=BoardPlace(
                town_name=row["town_name"],
                community_code=row["community_code"],
                community_name=row["community_name"],
                building=row["building"],
                unit=row["unit"],
                room=row["room"],
            ),
            alarm_lel=row["alarm_lel"],
            alarm_received_at=row["alarm_received_at"],
            opened_at=row["opened_at"],
            acknowledged_at=row["acknowledged_at"],
            valve_closed_at=row["valve_closed_at"],
            valve=valve,
            escalation_step=row["escalation_step"],
            escalation_stopped=row["escalation_stopped"],
        )


class BoardCounts(_Public):
    """Active incidents in the caller's scope."""

    total: int
    critical: int
    warning: int
    info: int
    unowned: int


class BoardPublic(_Public):
    """A page of the board (or the rows asked for by id), with the counts of all active incidents."""

    items: list[BoardRow]
    counts: BoardCounts
    limit: int
    offset: int


def valve_report(*, command_state: str, position: str | None, valve_closed: bool) -> ValveReport:
    """What to show of a close command: closed only on the valve's own report (safety rule 3)."""
    if command_state == "confirmed" or valve_closed:
        return "closed"
    if position == "fault":
        return "fault"
    if command_state == "refused":
        return "refused"
    if command_state in ("failed", "expired"):
        return "unconfirmed"
    return "closing"  # sent or acknowledged, the valve has not reported closed yet


_BOARD_SELECT = """
SELECT i.id, i.kind, i.severity, i.state, i.household_id, i.scope, i.alarm_lel, i.alarm_received_at,
       i.opened_at, i.acknowledged_at, i.valve_closed_at,
       t.name AS town_name, c.code AS community_code, c.name AS community_name, h.building, h.unit, h.room,
       coalesce(e.steps_fired, 0) AS escalation_step, (e.stopped_at IS NOT NULL) AS escalation_stopped,
       vc.valve_id, vc.command, vc.state AS command_state, vc.reported_position,
       (SELECT count(*) FROM valve_command_attempt a WHERE a.cmd_id = vc.cmd_id) AS attempts
FROM incident i
LEFT JOIN household h ON h.id = i.household_id
LEFT JOIN community c ON c.code = coalesce(h.community_code, i.community_code)
LEFT JOIN town t ON t.code = c.town_code
LEFT JOIN escalation e ON e.incident_id = i.id
LEFT JOIN LATERAL (
    SELECT v.cmd_id, v.valve_id, v.command, v.state, v.reported_position
    FROM valve_command v WHERE v.incident_id = i.id ORDER BY v.issued_at DESC LIMIT 1
) vc ON true
"""

_SEVERITY_ORDER = "CASE i.severity WHEN 'critical' THEN 0 WHEN 'warning' THEN 1 ELSE 2 END"


@router.get("/board")
async def read_board(
    conn: ConnDep,
    user: BoardReader,
    limit: Annotated[int, Query(ge=1, le=BOARD_MAX)] = 500,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    ids: Annotated[list[BigIntId] | None, Query(max_length=IDS_MAX, description="Only these incidents.")] = None,
) -> BoardPublic:
    """Active incidents in the caller's scope, most severe first, then oldest first; or the given ``ids``.

    With ``ids`` the rows are returned whatever their state (a closed one tells the board to drop it);
    ids outside the caller's scope are simply absent.
    """
    where = Where()
    where.scope(scope_for(user))
    active = Where()
    active.scope(scope_for(user))
    active.clauses.append("i.state <> 'CLOSED'")
    if ids:
        where.add("i.id = ANY({}::bigint[])", sorted(set(ids)))
    else:
        where.clauses.append("i.state <> 'CLOSED'")
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        rows = await conn.fetch(
            f"{_BOARD_SELECT} {where.sql()} ORDER BY {_SEVERITY_ORDER}, i.alarm_received_at, i.id"
            f" LIMIT {where.param(limit)} OFFSET {where.param(offset)}",
            *where.args,
        )
        counts = await conn.fetchrow(
            "SELECT count(*) AS total,"
            " count(*) FILTER (WHERE i.severity = 'critical') AS critical,"
            " count(*) FILTER (WHERE i.severity = 'warning') AS warning,"
            " count(*) FILTER (WHERE i.severity = 'info') AS info,"
            " count(*) FILTER (WHERE i.state IN ('NEW', 'NOTIFIED')) AS unowned"
            f" FROM incident i LEFT JOIN household h ON h.id = i.household_id {active.sql()}",
            *active.args,
        )
    assert counts is not None  # an aggregate always returns a row
    return BoardPublic(
        items=[BoardRow.from_record(row) for row in rows],
        counts=BoardCounts.model_validate(dict(counts)),
        limit=limit,
        offset=offset,
    )


class DeviceStatePublic(DevicePublic):
    """A device of the household with what alerting last concluded about it."""

    status: Literal["normal", "alarm", "fault", "end_of_life", "unknown"]
    status_since: datetime | None
    last_seen_at: datetime | None
    low_battery: bool
    mains_lost: bool
    valve_position: str | None


class OnSiteRecordPublic(_Public):
    """What the technician found and did on site (append-only)."""

    id: int
    technician: str
    arrived_at: datetime
    detector_lel: float
    cause: str
    action: str
    valve_reopened_on_site: bool
    resident_present: bool
    notes: str | None
    recorded_by: str
    recorded_at: datetime


class EscalationPublic(_Public):
    """Where the incident's escalation stands."""

    steps_fired: int
    next_step: int
    next_step_at: datetime | None
    stopped_at: datetime | None
    stopped_reason: str | None


class IncidentContextPublic(_Public):
    """What the incident page shows besides the incident API's own detail."""

    incident_id: int
    household_id: int | None
    devices: list[DeviceStatePublic]
    on_site_records: list[OnSiteRecordPublic]
    escalation: EscalationPublic | None
    may_read_phone: bool
    may_act: bool


IncidentReader = Annotated[
    User,
    Depends(
        require_roles(Role.ADMIN, Role.DUTY_OPERATOR, Role.EMERGENCY_MANAGEMENT, Role.COMMUNITY_STAFF, Role.INSTALLER)
    ),
]


@router.get("/incidents/{incident_id}/context")
async def read_incident_context(
    conn: ConnDep, user: IncidentReader, incident_id: IncidentIdPath, today: TodayDep
) -> IncidentContextPublic:
    """The household's devices and states, the on-site records and the escalation of one incident."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await authorize_incident(conn, user=user, incident_id=incident_id)
        household_id: int | None = await conn.fetchval("SELECT household_id FROM incident WHERE id = $1", incident_id)
        devices = [] if household_id is None else await _devices(conn, household_id=household_id, today=today)
        records = await conn.fetch(
            "SELECT id, technician, arrived_at, detector_lel, cause, action, valve_reopened_on_site,"
            " resident_present, notes, recorded_by, recorded_at"
            " FROM incident_on_site_record WHERE incident_id = $1 ORDER BY id",
            incident_id,
        )
        escalation = await conn.fetchrow(
            "SELECT steps_fired, next_step, next_step_at, stopped_at, stopped_reason FROM escalation"
            " WHERE incident_id = $1",
            incident_id,
        )
    scope = scope_for(user)
    return IncidentContextPublic(
        incident_id=incident_id,
        household_id=household_id,
        devices=devices,
        on_site_records=[OnSiteRecordPublic.model_validate(dict(r)) for r in records],
        escalation=None if escalation is None else EscalationPublic.model_validate(dict(escalation)),
        may_read_phone=scope.may_read_phone and scope.may_see_personal_data,
        may_act=user.role in (Role.ADMIN, Role.DUTY_OPERATOR),
    )


async def _devices(conn: queries.Conn, *, household_id: int, today: date) -> list[DeviceStatePublic]:
    rows = await queries.list_household_devices(conn=conn, household_id=household_id)
    states = {
        r["device_id"]: r
        for r in await conn.fetch(
            "SELECT s.device_id, s.status, s.since, s.last_seen_at, s.low_battery, s.mains_lost,"
            " (SELECT t.valve_position FROM telemetry t WHERE t.device_id = s.device_id AND t.kind = 'valve'"
            "  ORDER BY t.device_ts DESC LIMIT 1) AS valve_position"
            " FROM device_state s JOIN device d ON d.id = s.device_id WHERE d.household_id = $1",
            household_id,
        )
    }
    devices = []
    for row in rows:
        state = states.get(row["id"])
        devices.append(
            DeviceStatePublic(
                **DevicePublic.from_record(row, today=today).model_dump(),
                # No state recorded means nobody has heard from it: unknown, never "normal" (safety rule 5).
                status=state["status"] if state else "unknown",
                status_since=state["since"] if state else None,
                last_seen_at=state["last_seen_at"] if state else None,
                low_battery=bool(state and state["low_battery"]),
                mains_lost=bool(state and state["mains_lost"]),
                valve_position=state["valve_position"] if state else None,
            )
        )
    return devices


class ConcentrationPoint(_Public):
    """One bucket of readings: the highest and mean %LEL in it."""

    t: datetime
    lel_max: float
    lel_avg: float
    samples: int


class ConcentrationPublic(_Public):
    """The alarm device's concentration around the alarm, downsampled into at most `POINTS` buckets."""

    device_id: str | None
    alarm_at: datetime
    start: datetime
    end: datetime
    bucket_s: int
    low_alarm_lel: float | None
    high_alarm_lel: float | None
    points: list[ConcentrationPoint]


POINTS = 120

_CONCENTRATION = """
SELECT date_bin(make_interval(secs => $4), r.ts, $2) AS t, max(r.lel) AS lel_max, avg(r.lel) AS lel_avg,
       count(*) AS samples
FROM (
    SELECT device_ts AS ts, lel FROM telemetry
    WHERE device_id = $1 AND device_ts >= $2 AND device_ts < $3 AND lel IS NOT NULL
    UNION ALL
    SELECT device_ts, lel FROM device_event
    WHERE device_id = $1 AND device_ts >= $2 AND device_ts < $3 AND lel IS NOT NULL AND type = 'alarm'
) r
GROUP BY 1 ORDER BY 1
"""


@router.get("/incidents/{incident_id}/concentration")
async def read_concentration(
    conn: ConnDep,
    user: IncidentReader,
    incident_id: IncidentIdPath,
    before_min: Annotated[int, Query(ge=1, le=180, description="Minutes before the alarm.")] = 30,
    after_min: Annotated[int, Query(ge=1, le=180, description="Minutes after the alarm.")] = 30,
) -> ConcentrationPublic:
    """%LEL of the incident's alarm device from ``before_min`` before to ``after_min`` after the alarm."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await authorize_incident(conn, user=user, incident_id=incident_id)
        incident = await conn.fetchrow(
            "SELECT i.alarm_device_id, coalesce(i.alarm_device_ts, i.alarm_received_at) AS alarm_at,"
            " m.low_alarm_lel, m.high_alarm_lel"
            " FROM incident i LEFT JOIN device d ON d.id = i.alarm_device_id"
            " LEFT JOIN device_model m ON m.id = d.model_id WHERE i.id = $1",
            incident_id,
        )
        if incident is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"incident {incident_id} not found")
        alarm_at: datetime = incident["alarm_at"]
        start, end = alarm_at - timedelta(minutes=before_min), alarm_at + timedelta(minutes=after_min)
        bucket_s = max(5, int((end - start).total_seconds()) // POINTS)
        rows = (
            []
            if incident["alarm_device_id"] is None
            else await conn.fetch(_CONCENTRATION, incident["alarm_device_id"], start, end, float(bucket_s))
        )
    return ConcentrationPublic(
        device_id=incident["alarm_device_id"],
        alarm_at=alarm_at,
        start=start,
        end=end,
        bucket_s=bucket_s,
        low_alarm_lel=incident["low_alarm_lel"],
        high_alarm_lel=incident["high_alarm_lel"],
        points=[ConcentrationPoint.model_validate(dict(r)) for r in rows],
    )
