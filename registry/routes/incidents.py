"""Incidents: scoped lists and details, the operators' actions, and the emergency-management overview.

Actions call `gasguard.incidents`, which appends each change to the incident's timeline; the same
change is recorded in the audit log. There is no action that opens a valve: reopening is on site.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, cast

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Path, Query, status
from pydantic import BaseModel, TypeAdapter

from gasguard import incidents as lifecycle
from registry import audit, queries
from registry.auth import Role, User, authorize_household, require_roles, scope_for
from registry.deps import (
    BIGINT_MAX,
    DEFAULT_LIMIT,
    BigIntId,
    ConnDep,
    CountCacheDep,
    CursorCodec,
    CursorQuery,
    ExactTotalQuery,
    LimitQuery,
    StateDep,
    UtcDatetime,
    list_snapshot,
    page_total,
)
from registry.models import (
    AcknowledgeRequest,
    CallbackRequest,
    CloseRequest,
    DispatchRequest,
    EscalatedIncidentPublic,
    IncidentCountPublic,
    IncidentDetailPublic,
    IncidentEventPublic,
    IncidentKind,
    IncidentOverviewPublic,
    IncidentPublic,
    IncidentsPublic,
    IncidentState,
    NotificationPublic,
    OnSiteRequest,
    ResolveRequest,
    ValveCommandAttemptPublic,
    ValveCommandPublic,
)

router = APIRouter(prefix="/incidents", tags=["incidents"])

_CURSOR = CursorCodec(TypeAdapter(tuple[UtcDatetime, BigIntId]))

#: Who may read incidents at all (the housing bureau deals with settlement, not alarms).
Reader = Annotated[
    User,
    Depends(
        require_roles(Role.ADMIN, Role.DUTY_OPERATOR, Role.EMERGENCY_MANAGEMENT, Role.COMMUNITY_STAFF, Role.INSTALLER)
    ),
]
#: Who handles incidents.
Operator = Annotated[User, Depends(require_roles(Role.ADMIN, Role.DUTY_OPERATOR))]
Overseer = Annotated[User, Depends(require_roles(Role.ADMIN, Role.EMERGENCY_MANAGEMENT, Role.DUTY_OPERATOR))]
IncidentIdPath = Annotated[int, Path(ge=1, le=BIGINT_MAX, description="Incident id.")]

_ERRORS: dict[int | str, dict[str, Any]] = {
    status.HTTP_403_FORBIDDEN: {"description": "Role or scope does not allow this."},
    status.HTTP_404_NOT_FOUND: {"description": "No such incident."},
    status.HTTP_409_CONFLICT: {"description": "Not allowed in the incident's current state."},
}


@router.get("")
async def read_incidents(
    conn: ConnDep,
    user: Reader,
    registry: StateDep,
    counts: CountCacheDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
    state: IncidentState | None = None,
    kind: IncidentKind | None = None,
    household_id: Annotated[BigIntId | None, Query(description="Only this household's incidents.")] = None,
    exact_total: ExactTotalQuery = False,
) -> IncidentsPublic:
    """List the incidents of the households the caller may see, newest first."""
    after = _CURSOR.decode(cursor)
    scope = scope_for(user)
    async with list_snapshot(conn, exact_total=exact_total):
        rows = await queries.list_incidents(
            conn=conn, limit=limit + 1, after=after, state=state, kind=kind, household_id=household_id, scope=scope
        )
        total = await page_total(
            conn=conn,
            state=registry,
            cache=counts,
            exact=exact_total,
            key=("incidents", scope, state, kind, household_id),
            count=lambda c: queries.count_incidents(
                conn=c, state=state, kind=kind, household_id=household_id, scope=scope
            ),
        )
    page, next_cursor = _CURSOR.page(rows, limit=limit, key=lambda row: (row["opened_at"], row["id"]))
    return IncidentsPublic(
        items=[IncidentPublic.from_record(row) for row in page],
        total=total.value,
        total_age_s=total.age_s,
        limit=limit,
        has_more=next_cursor is not None,
        next_cursor=next_cursor,
    )


_OVERVIEW_COUNTS = """
SELECT t.code AS town_code, t.name AS town_name, c.code AS community_code, c.name AS community_name,
       i.kind, i.severity, count(*) AS count
FROM incident i
LEFT JOIN household h ON h.id = i.household_id
LEFT JOIN community c ON c.code = coalesce(h.community_code, i.community_code)
LEFT JOIN town t ON t.code = c.town_code
WHERE i.state <> 'CLOSED'
GROUP BY t.code, t.name, c.code, c.name, i.kind, i.severity
ORDER BY t.code NULLS LAST, c.code NULLS LAST, i.kind, i.severity
"""

# Escalated: past the first escalation step, or what goes straight to emergency management (a valve that did not
# close, a cluster of alarms, a whole community or gateway gone silent).
_OVERVIEW_ESCALATED = """
SELECT i.id, i.kind, i.severity, i.state, t.name AS town_name, c.code AS community_code,
       c.name AS community_name, h.building, i.opened_at, coalesce(e.steps_fired, 0) AS escalation_steps_fired,
       i.valve_closed_at
FROM incident i
LEFT JOIN household h ON h.id = i.household_id
LEFT JOIN community c ON c.code = coalesce(h.community_code, i.community_code)
LEFT JOIN town t ON t.code = c.town_code
LEFT JOIN escalation e ON e.incident_id = i.id
WHERE i.state <> 'CLOSED'
  AND (coalesce(e.steps_fired, 0) >= 2 OR i.kind IN ('valve_not_closed', 'cluster')
       OR (i.kind = 'offline' AND i.household_id IS NULL))
ORDER BY i.opened_at, i.id
LIMIT 500
"""


@router.get("/overview")
async def read_incident_overview(conn: ConnDep, user: Overseer) -> IncidentOverviewPublic:
    """County-wide active incidents by community, and the escalated ones; never any phone number."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        counts = await conn.fetch(_OVERVIEW_COUNTS)
        escalated = await conn.fetch(_OVERVIEW_ESCALATED)
    return IncidentOverviewPublic(
        active_total=sum(row["count"] for row in counts),
        by_community=[IncidentCountPublic.model_validate(dict(row)) for row in counts],
        escalated=[EscalatedIncidentPublic.model_validate(dict(row)) for row in escalated],
    )


async def authorize_incident(conn: queries.Conn, *, user: User, incident_id: int) -> None:
    """404 for an unknown incident, 403 if its household is outside the caller's scope."""
    household_id = await conn.fetchval("SELECT household_id FROM incident WHERE id = $1", incident_id)
    exists = household_id is not None or await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM incident WHERE id = $1)", incident_id
    )
    if not exists:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"incident {incident_id} not found")
    if household_id is None:  # a cluster incident: county-wide roles only
        if not scope_for(user).all_households:
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"incident {incident_id} is outside your scope")
        return
    try:
        await authorize_household(conn, user=user, household_id=household_id)
    except HTTPException as err:
        raise HTTPException(err.status_code, detail=f"incident {incident_id} is outside your scope") from err


@router.get("/{incident_id}", responses=_ERRORS)
async def read_incident(conn: ConnDep, user: Reader, incident_id: IncidentIdPath) -> IncidentDetailPublic:
    """Get one incident with its timeline, valve commands (and their attempts) and notifications."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await authorize_incident(conn, user=user, incident_id=incident_id)
        row = await queries.get_incident(conn=conn, incident_id=incident_id)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"incident {incident_id} not found")
        events = await queries.list_incident_events(conn=conn, incident_id=incident_id)
        commands = await queries.list_incident_commands(conn=conn, incident_id=incident_id)
        attempt_rows = await queries.list_command_attempts(
            conn=conn, cmd_ids=[command["cmd_id"] for command in commands]
        )
        notifications = await queries.list_incident_notifications(conn=conn, incident_id=incident_id)

    attempts: defaultdict[uuid.UUID, list[ValveCommandAttemptPublic]] = defaultdict(list)
    for attempt in attempt_rows:
        attempts[attempt["cmd_id"]].append(
            ValveCommandAttemptPublic(attempt=attempt["attempt"], sent_at=attempt["sent_at"])
        )
    personal = scope_for(user).may_see_personal_data
    return IncidentDetailPublic(
        **IncidentPublic.fields_from_record(row),
        # Emergency management sees what happened and when, never whom it was sent to.
        timeline=[
            IncidentEventPublic.model_validate(dict(event) | ({} if personal else {"detail": {}})) for event in events
        ],
        commands=[
            ValveCommandPublic.model_validate(dict(command) | {"attempts": attempts[command["cmd_id"]]})
            for command in commands
        ],
        notifications=[NotificationPublic.model_validate(dict(n)) for n in notifications] if personal else [],
    )


@asynccontextmanager
async def _acting(conn: queries.Conn, *, user: User, incident_id: int) -> AsyncIterator[asyncpg.Connection]:
    """Authorise, run the lifecycle call in one transaction with its audit entry, map refusals to HTTP."""
    try:
        async with conn.transaction():
            await authorize_incident(conn, user=user, incident_id=incident_id)
            yield cast(asyncpg.Connection, conn)
    except lifecycle.IncidentNotFound as err:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(err)) from err
    except lifecycle.OnSiteRecordRequired as err:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(err)) from err
    except lifecycle.InvalidTransition as err:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(err)) from err
    except lifecycle.IncidentError as err:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=str(err)) from err


async def _act(
    conn: queries.Conn,
    *,
    user: User,
    incident_id: int,
    action: str,
    body: BaseModel,
    call: Callable[[asyncpg.Connection], Awaitable[object]],
) -> IncidentPublic:
    async with _acting(conn, user=user, incident_id=incident_id) as tx:
        await call(tx)
        await audit.record(
            tx,
            actor=user,
            action=f"incident_{action}",
            object=f"incident:{incident_id}",
            detail=body.model_dump(mode="json"),
        )
        row = await queries.get_incident(conn=tx, incident_id=incident_id)
    assert row is not None  # authorised above, in the same transaction
    return IncidentPublic.from_record(row)


@router.post("/{incident_id}/acknowledge", responses=_ERRORS)
async def acknowledge_incident(
    body: AcknowledgeRequest, conn: ConnDep, user: Operator, incident_id: IncidentIdPath
) -> IncidentPublic:
    """Take ownership of the incident; stops its escalation."""
    return await _act(
        conn,
        user=user,
        incident_id=incident_id,
        action="acknowledge",
        body=body,
        call=lambda tx: lifecycle.acknowledge(tx, incident_id, actor=user.actor, note=body.note),
    )


@router.post("/{incident_id}/callback", responses=_ERRORS)
async def record_incident_callback(
    body: CallbackRequest, conn: ConnDep, user: Operator, incident_id: IncidentIdPath
) -> IncidentPublic:
    """Record the outcome of calling the resident back."""
    return await _act(
        conn,
        user=user,
        incident_id=incident_id,
        action="callback",
        body=body,
        call=lambda tx: lifecycle.record_callback(
            tx, incident_id, actor=user.actor, reached=body.reached, outcome=body.outcome
        ),
    )


@router.post("/{incident_id}/dispatch", responses=_ERRORS)
async def dispatch_incident(
    body: DispatchRequest, conn: ConnDep, user: Operator, incident_id: IncidentIdPath
) -> IncidentPublic:
    """Send a crew to the household."""
    return await _act(
        conn,
        user=user,
        incident_id=incident_id,
        action="dispatch",
        body=body,
        call=lambda tx: lifecycle.dispatch(
            tx, incident_id, actor=user.actor, crew=body.crew, eta_minutes=body.eta_minutes
        ),
    )


@router.post("/{incident_id}/on-site", responses=_ERRORS)
async def record_incident_on_site(
    body: OnSiteRequest, conn: ConnDep, user: Operator, incident_id: IncidentIdPath
) -> IncidentPublic:
    """Record the on-site visit: who, when, detector reading, cause, action, valve reopened there or not."""
    record = lifecycle.OnSiteRecord(
        technician=body.technician,
        arrived_at=body.arrived_at,
        detector_lel=body.detector_lel,
        cause=body.cause,
        action=body.action,
        valve_reopened_on_site=body.valve_reopened_on_site,
        resident_present=body.resident_present,
        notes=body.notes,
    )
    return await _act(
        conn,
        user=user,
        incident_id=incident_id,
        action="on_site",
        body=body,
        call=lambda tx: lifecycle.record_on_site(tx, incident_id, actor=user.actor, record=record),
    )


@router.post("/{incident_id}/resolve", responses=_ERRORS)
async def resolve_incident(
    body: ResolveRequest, conn: ConnDep, user: Operator, incident_id: IncidentIdPath
) -> IncidentPublic:
    """The hazard is over; the incident stays open until closed with a disposition."""
    return await _act(
        conn,
        user=user,
        incident_id=incident_id,
        action="resolve",
        body=body,
        call=lambda tx: lifecycle.resolve(tx, incident_id, actor=user.actor, note=body.note),
    )


@router.post("/{incident_id}/close", responses=_ERRORS)
async def close_incident(
    body: CloseRequest, conn: ConnDep, user: Operator, incident_id: IncidentIdPath
) -> IncidentPublic:
    """Close with a disposition; refused (409) without an on-site record where a valve closed."""
    return await _act(
        conn,
        user=user,
        incident_id=incident_id,
        action="close",
        body=body,
        call=lambda tx: lifecycle.close(
            tx, incident_id, actor=user.actor, disposition=lifecycle.Disposition(body.disposition), note=body.note
        ),
    )
