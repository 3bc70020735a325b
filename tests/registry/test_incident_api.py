"""The operators' incident API: lifecycle through HTTP, refusals, audit, and no way to open a valve."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from registry.app import create_app
from registry.auth import Role, create_user, issue_token
from registry.settings import RegistrySettings
from tests.support.rows import add_household

OPERATOR_SUPPLIER = "乌审中燃"  # tests.support.rows households belong to it


@dataclass
class Desk:
    """An API client, an NG duty operator's and emergency management's headers, and an incident."""

    client: httpx.AsyncClient
    db: asyncpg.Connection
    operator: dict[str, str]
    em: dict[str, str]
    incident: int
    household: int


async def _incident(db: asyncpg.Connection, household_id: int, *, valve_closed: bool) -> int:
    now = datetime.now(UTC)
    incident_id: int = await db.fetchval(
        "INSERT INTO incident (household_id, kind, severity, alarm_device_id, alarm_lel, alarm_received_at,"
        " command_sent_at, valve_closed_at) VALUES ($1, 'gas_alarm', 'critical', $2, 32.5, $3, $3, $4) RETURNING id",
        household_id,
        f"A-{household_id}",
        now,
        now + timedelta(seconds=1) if valve_closed else None,
    )
    await db.execute(
        "INSERT INTO notification_outbox (incident_id, channel, recipient, recipient_role, template)"
        " VALUES ($1, 'sms', '13812345678', 'resident', 'SMS_GG_ALARM_RESIDENT')",
        incident_id,
    )
    await db.execute(
        "INSERT INTO incident_event (incident_id, actor, type, detail) VALUES ($1, 'alerting', 'notified', $2)",
        incident_id,
        {"to": "13812345678"},
    )
    return incident_id


@pytest.fixture
async def desk(database_url: str, db: asyncpg.Connection) -> AsyncIterator[Desk]:
    home = await add_household(db, 1, phone="13812345678")
    incident = await _incident(db, home.id, valve_closed=True)
    operator = await create_user(
        db,
        username="op-zhang",
        password=None,
        display_name="张值班",
        role=Role.DUTY_OPERATOR,
        supplier=OPERATOR_SUPPLIER,
    )
    em = await create_user(db, username="yjj", password=None, display_name="应急局", role=Role.EMERGENCY_MANAGEMENT)
    app = create_app(RegistrySettings(database_url=database_url))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://registry.test") as client,
    ):
        yield Desk(
            client=client,
            db=db,
            operator={"Authorization": f"Bearer {await issue_token(db, user_id=operator.id, name='t')}"},
            em={"Authorization": f"Bearer {await issue_token(db, user_id=em.id, name='t')}"},
            incident=incident,
            household=home.id,
        )


async def test_full_lifecycle_through_the_api(desk: Desk) -> None:
    """acknowledge → call-back → dispatch → on-site → resolve → close, each on the timeline and in the audit log."""
    base = f"/incidents/{desk.incident}"
    steps = [
        ("acknowledge", {"note": "已电话联系"}, "ACKNOWLEDGED"),
        ("callback", {"reached": True, "outcome": "住户已开窗通风"}, "ACKNOWLEDGED"),
        ("dispatch", {"crew": "抢修一班", "eta_minutes": 15}, "DISPATCHED"),
        (
            "on-site",
            {
                "technician": "王师傅",
                "arrived_at": datetime.now(UTC).isoformat(),
                "detector_lel": 0.0,
                "cause": "灶具软管老化",
                "action": "更换软管，现场检测无泄漏后开阀",
                "valve_reopened_on_site": True,
                "resident_present": True,
            },
            "ON_SITE",
        ),
        ("resolve", {"note": "隐患已排除"}, "RESOLVED"),
        ("close", {"disposition": "real_leak"}, "CLOSED"),
    ]
    for action, body, state in steps:
        response = await desk.client.post(f"{base}/{action}", json=body, headers=desk.operator)
        assert response.status_code == 200, (action, response.text)
        assert response.json()["state"] == state, action
    incident = await desk.db.fetchrow("SELECT state, disposition, closed_at FROM incident WHERE id = $1", desk.incident)
    assert incident["state"] == "CLOSED" and incident["disposition"] == "real_leak" and incident["closed_at"]
    timeline = await desk.db.fetch(
        "SELECT actor, type FROM incident_event WHERE incident_id = $1 AND actor <> 'alerting' ORDER BY id",
        desk.incident,
    )
    assert [r["type"] for r in timeline] == ["acknowledged", "callback", "dispatched", "on_site", "resolved", "closed"]
    assert {r["actor"] for r in timeline} == {"user:op-zhang"}
    audit = [r["action"] for r in await desk.db.fetch("SELECT action FROM audit_log ORDER BY id")]
    assert audit == [
        "incident_acknowledge",
        "incident_callback",
        "incident_dispatch",
        "incident_on_site",
        "incident_resolve",
        "incident_close",
    ]
    # After closing, any further action is a conflict.
    again = await desk.client.post(f"{base}/acknowledge", json={}, headers=desk.operator)
    assert again.status_code == 409


async def test_close_refused_without_on_site_record_when_valve_closed(desk: Desk) -> None:
    """A valve closed for the incident: closing without an on-site record is a 409, and nothing changes."""
    base = f"/incidents/{desk.incident}"
    assert (await desk.client.post(f"{base}/acknowledge", json={}, headers=desk.operator)).status_code == 200
    refused = await desk.client.post(f"{base}/close", json={"disposition": "test"}, headers=desk.operator)
    assert refused.status_code == 409
    assert "on-site" in refused.json()["detail"]
    assert await desk.db.fetchval("SELECT state FROM incident WHERE id = $1", desk.incident) == "ACKNOWLEDGED"
    assert await desk.db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'incident_close'") == 0
    no_disposition = await desk.client.post(f"{base}/close", json={}, headers=desk.operator)
    assert no_disposition.status_code == 422
    bad = await desk.client.post(f"{base}/close", json={"disposition": "whatever"}, headers=desk.operator)
    assert bad.status_code == 422


async def test_invalid_transitions_and_bad_input(desk: Desk) -> None:
    """Out-of-order actions are 409; malformed bodies and unknown incidents are 422 and 404."""
    base = f"/incidents/{desk.incident}"
    resolve = await desk.client.post(f"{base}/resolve", json={}, headers=desk.operator)
    assert resolve.status_code == 409
    assert resolve.json()["detail"] == "cannot resolved an incident that is NEW"
    on_site = {
        "technician": "王",
        "arrived_at": "2026-01-01T10:00:00",
        "detector_lel": 5,
        "cause": "x",
        "action": "y",
        "valve_reopened_on_site": False,
        "resident_present": True,
    }
    await desk.client.post(f"{base}/acknowledge", json={}, headers=desk.operator)
    naive = await desk.client.post(f"{base}/on-site", json=on_site, headers=desk.operator)
    assert naive.status_code == 422  # no time zone on arrived_at
    too_high = on_site | {"arrived_at": "2026-01-01T10:00:00+08:00", "detector_lel": 150}
    assert (await desk.client.post(f"{base}/on-site", json=too_high, headers=desk.operator)).status_code == 422
    unknown_field = await desk.client.post(
        f"{base}/dispatch", json={"crew": "a", "open_valve": True}, headers=desk.operator
    )
    assert unknown_field.status_code == 422
    assert (await desk.client.post("/incidents/987654/acknowledge", json={}, headers=desk.operator)).status_code == 404


async def test_no_endpoint_opens_a_valve(desk: Desk) -> None:
    """The API has no remote open: no path or operation mentions opening a valve."""
    schema = (await desk.client.get("/openapi.json")).json()
    for path, operations in schema["paths"].items():
        assert "open" not in path.lower() and "valve" not in path.lower(), path
        for operation in operations.values():
            assert "open_valve" not in str(operation.get("operationId", "")), path
    for path in ("/devices/V-1/open", f"/incidents/{desk.incident}/open-valve", "/valves/V-1/open"):
        assert (await desk.client.post(path, json={}, headers=desk.operator)).status_code in (404, 405)


async def test_emergency_management_view_has_no_phone_numbers(desk: Desk) -> None:
    """Emergency management sees the overview and incident details, but no recipients or phone numbers."""
    other = await add_household(desk.db, 2)
    silent = await _incident(desk.db, other.id, valve_closed=False)
    await desk.db.execute(
        "INSERT INTO incident (household_id, kind, severity, alarm_received_at) VALUES ($1, 'valve_not_closed',"
        " 'critical', now())",
        other.id,
    )
    # The gas alarm of household 1 has gone past its first escalation steps; household 2's has not.
    await desk.db.execute(
        "INSERT INTO escalation (incident_id, severity, next_step, steps_fired) VALUES ($1, 'critical', 2, 2),"
        " ($2, 'critical', 1, 1)",
        desk.incident,
        silent,
    )
    # A whole community gone silent reaches emergency management at once, before any escalation step.
    await desk.db.execute(
        "INSERT INTO incident (household_id, scope, community_code, kind, severity, alarm_received_at)"
        " SELECT NULL, 'offline:community:' || code, code, 'offline', 'critical', now() FROM community LIMIT 1"
    )
    overview = await desk.client.get("/incidents/overview", headers=desk.em)
    assert overview.status_code == 200
    body = overview.json()
    assert body["active_total"] == 4
    escalated = {item["kind"]: item for item in body["escalated"]}
    assert set(escalated) == {"gas_alarm", "valve_not_closed", "offline"}
    assert escalated["gas_alarm"]["id"] == desk.incident and escalated["gas_alarm"]["escalation_steps_fired"] == 2
    assert escalated["gas_alarm"]["community_name"] == "文苑社区"
    assert sum(row["count"] for row in body["by_community"]) == 4
    detail = await desk.client.get(f"/incidents/{silent}", headers=desk.em)
    assert detail.status_code == 200
    assert detail.json()["notifications"] == []
    for text in (overview.text, detail.text):
        assert "1381234" not in text and "5678" not in text
    # The operator, by contrast, sees the (masked) recipients.
    operator_view = (await desk.client.get(f"/incidents/{silent}", headers=desk.operator)).json()
    assert operator_view["notifications"][0]["recipient"] == "138****5678"
    # Emergency management cannot act on incidents.
    assert (await desk.client.post(f"/incidents/{silent}/acknowledge", json={}, headers=desk.em)).status_code == 403


async def test_cluster_incident_is_listed_county_wide_but_not_to_a_supplier(desk: Desk) -> None:
    cluster_id = await desk.db.fetchval(
        "INSERT INTO incident (household_id, scope, community_code, kind, severity, alarm_received_at)"
        " VALUES (NULL, 'community:150626100007', '150626100007', 'cluster', 'critical', now()) RETURNING id"
    )
    response = await desk.client.get("/incidents", headers=desk.em, params={"kind": "cluster"})
    assert response.status_code == 200
    [item] = response.json()["items"]
    assert item["id"] == cluster_id
    assert item["household_id"] is None
    assert item["place"] is None
    assert item["scope"] == "community:150626100007"
    detail = await desk.client.get(f"/incidents/{cluster_id}", headers=desk.em)
    assert detail.status_code == 200
    by_operator = await desk.client.get("/incidents", headers=desk.operator, params={"kind": "cluster"})
    assert by_operator.status_code == 200
    assert by_operator.json()["items"] == []


async def test_every_outbox_status_the_database_allows_shows_on_the_incident(desk: Desk) -> None:
    """The incident page lists its texts whatever became of them (a status it did not know answered 500)."""
    definition = await desk.db.fetchval(
        "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'notification_outbox_status_ck'"
    )
    statuses = sorted(set(re.findall(r"'(\w+)'", definition)) - {"digested"})  # a digested text needs its digest
    assert {"pending", "sent", "delivered", "failed", "undeliverable", "blocked"} <= set(statuses)
    for n, status in enumerate(statuses):
        await desk.db.execute(
            "INSERT INTO notification_outbox (incident_id, channel, recipient, recipient_role, template, status,"
            " step_key) VALUES ($1, 'sms', '13900000001', 'operator', 'SMS_GG_ALARM_OPERATOR', $2, $3)",
            desk.incident,
            status,
            f"status-{n}",
        )
    answer = await desk.client.get(f"/incidents/{desk.incident}", headers=desk.operator)
    assert answer.status_code == 200, answer.text
    shown = {n["status"] for n in answer.json()["notifications"]}
    assert set(statuses) <= shown
