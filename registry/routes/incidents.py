"""Incidents, newest first, with their timeline, valve commands and notifications."""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, status
from pydantic import TypeAdapter

from registry import queries
from registry.deps import (
    BIGINT_MAX,
    DEFAULT_LIMIT,
    BigIntId,
    ConnDep,
    CursorCodec,
    CursorQuery,
    LimitQuery,
    UtcDatetime,
)
from registry.models import (
    IncidentDetailPublic,
    IncidentEventPublic,
    IncidentKind,
    IncidentPublic,
    IncidentsPublic,
    IncidentState,
    NotificationPublic,
    ValveCommandAttemptPublic,
    ValveCommandPublic,
)

router = APIRouter(prefix="/incidents", tags=["incidents"])

_CURSOR = CursorCodec(TypeAdapter(tuple[UtcDatetime, BigIntId]))


@router.get("")
async def read_incidents(
    conn: ConnDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
    state: IncidentState | None = None,
    kind: IncidentKind | None = None,
    household_id: Annotated[BigIntId | None, Query(description="Only this household's incidents.")] = None,
) -> IncidentsPublic:
    """List incidents, newest first."""
    after = _CURSOR.decode(cursor)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        total = await queries.count_incidents(conn=conn, state=state, kind=kind, household_id=household_id)
        rows = await queries.list_incidents(
            conn=conn, limit=limit + 1, after=after, state=state, kind=kind, household_id=household_id
        )
    page, next_cursor = _CURSOR.page(rows, limit=limit, key=lambda row: (row["opened_at"], row["id"]))
    return IncidentsPublic(
        items=[IncidentPublic.from_record(row) for row in page],
        total=total,
        limit=limit,
        next_cursor=next_cursor,
    )


@router.get("/{incident_id}", responses={status.HTTP_404_NOT_FOUND: {"description": "No such incident."}})
async def read_incident(
    conn: ConnDep,
    incident_id: Annotated[int, Path(ge=1, le=BIGINT_MAX, description="Incident id.")],
) -> IncidentDetailPublic:
    """Get one incident with its timeline, valve commands (and their attempts) and notifications."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
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
    return IncidentDetailPublic(
        **IncidentPublic.fields_from_record(row),
        timeline=[IncidentEventPublic.model_validate(dict(event)) for event in events],
        commands=[
            ValveCommandPublic.model_validate(dict(command) | {"attempts": attempts[command["cmd_id"]]})
            for command in commands
        ],
        notifications=[NotificationPublic.model_validate(dict(notification)) for notification in notifications],
    )
