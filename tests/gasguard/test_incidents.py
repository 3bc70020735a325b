"""Incident lifecycle: the pure state machine and its SQL on a real database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from gasguard import incidents
from gasguard.incidents import (
    Action,
    Disposition,
    DispositionRequired,
    IncidentNotFound,
    IncidentState,
    InvalidTransition,
    OnSiteRecord,
    OnSiteRecordRequired,
    next_state,
)
from tests.support.rows import add_household

S = IncidentState

RECORD = OnSiteRecord(
    technician="王师傅",
    arrived_at=datetime(2026, 11, 29, 9, 30, tzinfo=UTC),
    detector_lel=0.0,
    cause="灶具软管老化",
    action="更换软管，检漏合格后现场开阀",
    valve_reopened_on_site=True,
    resident_present=True,
)


def test_happy_path_states() -> None:
    state = S.NEW
    for action, expected in [
        (Action.NOTIFY, S.NOTIFIED),
        (Action.ACKNOWLEDGE, S.ACKNOWLEDGED),
        (Action.DISPATCH, S.DISPATCHED),
        (Action.ON_SITE, S.ON_SITE),
        (Action.RESOLVE, S.RESOLVED),
        (Action.CLOSE, S.CLOSED),
    ]:
        state = next_state(state, action)
        assert state is expected


@pytest.mark.parametrize(
    ("state", "action"),
    [
        (S.NEW, Action.CLOSE),
        (S.NOTIFIED, Action.RESOLVE),
        (S.CLOSED, Action.ACKNOWLEDGE),
        (S.CLOSED, Action.CALLBACK),
        (S.RESOLVED, Action.DISPATCH),
        (S.ACKNOWLEDGED, Action.ACKNOWLEDGE),
    ],
)
def test_invalid_transitions_are_refused(state: IncidentState, action: Action) -> None:
    with pytest.raises(InvalidTransition):
        next_state(state, action)


def test_callback_that_reached_someone_acknowledges_only_an_unowned_incident() -> None:
    assert next_state(S.NOTIFIED, Action.CALLBACK, reached=True) is S.ACKNOWLEDGED
    assert next_state(S.NOTIFIED, Action.CALLBACK, reached=False) is S.NOTIFIED
    assert next_state(S.DISPATCHED, Action.CALLBACK, reached=True) is S.DISPATCHED


async def new_incident(db: asyncpg.Connection, *, valve_closed: bool) -> int:
    home = await add_household(db, 1)
    incident_id: int = await db.fetchval(
        "INSERT INTO incident (household_id, kind, severity, alarm_device_id, alarm_received_at, valve_closed_at)"
        " VALUES ($1, 'gas_alarm', 'critical', $2, now(), CASE WHEN $3 THEN now() END) RETURNING id",
        home.id,
        home.alarm_id,
        valve_closed,
    )
    await db.execute("INSERT INTO escalation (incident_id, severity) VALUES ($1, 'critical')", incident_id)
    return incident_id


async def test_lifecycle_appends_timeline_with_server_time_and_actor(db: asyncpg.Connection) -> None:
    incident_id = await new_incident(db, valve_closed=True)
    await incidents.acknowledge(db, incident_id, actor="operator:zhang", note="已接警")
    assert await db.fetchval("SELECT stopped_reason FROM escalation WHERE incident_id = $1", incident_id) == (
        "acknowledged"
    )
    await incidents.record_callback(db, incident_id, actor="operator:zhang", reached=True, outcome="住户已撤离")
    await incidents.dispatch(db, incident_id, actor="operator:zhang", crew="抢修一班", eta_minutes=15)
    await incidents.record_on_site(db, incident_id, actor="tech:wang", record=RECORD)
    await incidents.resolve(db, incident_id, actor="tech:wang")
    closed = await incidents.close(db, incident_id, actor="operator:zhang", disposition=Disposition.APPLIANCE_FAULT)
    assert closed.state is S.CLOSED and closed.disposition is Disposition.APPLIANCE_FAULT
    assert closed.closed_at is not None and closed.acknowledged_at is not None

    entries = await incidents.timeline(db, incident_id)
    assert [(e.type, e.actor) for e in entries] == [
        ("acknowledged", "operator:zhang"),
        ("callback", "operator:zhang"),
        ("dispatched", "operator:zhang"),
        ("on_site", "tech:wang"),
        ("resolved", "tech:wang"),
        ("closed", "operator:zhang"),
    ]
    assert [e.at for e in entries] == sorted(e.at for e in entries)
    assert entries[2].detail["crew"] == "抢修一班"
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await db.execute("UPDATE incident_event SET actor = 'x' WHERE incident_id = $1", incident_id)
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await db.execute("DELETE FROM incident_event WHERE incident_id = $1", incident_id)
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await db.execute("UPDATE incident_on_site_record SET technician = 'x'")


async def test_closing_without_on_site_record_is_refused_where_a_valve_closed(db: asyncpg.Connection) -> None:
    incident_id = await new_incident(db, valve_closed=True)
    await incidents.acknowledge(db, incident_id, actor="operator:zhang")
    with pytest.raises(OnSiteRecordRequired):
        await incidents.close(db, incident_id, actor="operator:zhang", disposition=Disposition.FALSE_ALARM_COOKING)
    with pytest.raises(DispositionRequired):
        await incidents.close(db, incident_id, actor="operator:zhang", disposition=None)
    row = await incidents.get_incident(db, incident_id)
    assert row.state is S.ACKNOWLEDGED and row.disposition is None
    assert [e.type for e in await incidents.timeline(db, incident_id)] == ["acknowledged"]


async def test_closing_a_confirmed_command_incident_also_needs_the_record(db: asyncpg.Connection) -> None:
    incident_id = await new_incident(db, valve_closed=False)
    home_valve = await db.fetchval("SELECT id FROM device WHERE id LIKE 'V-%'")
    await db.execute(
        "INSERT INTO valve_command (cmd_id, valve_id, incident_id, command, reason, issued_at, expires_at, state)"
        " VALUES ($1, $2, $3, 'close', 'gas_alarm', now(), now() + interval '1 hour', 'confirmed')",
        uuid.uuid4(),
        home_valve,
        incident_id,
    )
    await incidents.acknowledge(db, incident_id, actor="operator:zhang")
    with pytest.raises(OnSiteRecordRequired):
        await incidents.close(db, incident_id, actor="operator:zhang", disposition=Disposition.TEST)


async def test_without_a_closed_valve_a_disposition_is_enough(db: asyncpg.Connection) -> None:
    incident_id = await new_incident(db, valve_closed=False)
    await incidents.acknowledge(db, incident_id, actor="operator:zhang")
    closed = await incidents.close(db, incident_id, actor="operator:zhang", disposition=Disposition.TEST, note="演练")
    assert closed.state is S.CLOSED


async def test_refusals_leave_no_trace(db: asyncpg.Connection) -> None:
    incident_id = await new_incident(db, valve_closed=False)
    with pytest.raises(InvalidTransition):
        await incidents.resolve(db, incident_id, actor="operator:zhang")
    with pytest.raises(IncidentNotFound):
        await incidents.acknowledge(db, 999_999, actor="operator:zhang")
    assert await incidents.timeline(db, incident_id) == []
    listed = await incidents.list_incidents(db, states=frozenset({S.NEW}), kinds=frozenset({"gas_alarm"}))
    assert [i.id for i in listed] == [incident_id]
    assert await incidents.list_incidents(db, states=frozenset({S.CLOSED})) == []
