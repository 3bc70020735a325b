"""The incident page: times in Asia/Shanghai, masked contacts revealed through the audited endpoint,
closing refused without an on-site record, and no control (or route) that opens a valve."""

from __future__ import annotations

import re
from datetime import UTC, datetime

import asyncpg
import httpx
from playwright.async_api import Page, expect

from tests.support.rows import add_household
from tests.ui.support import create_user, login

ALARM_AT = datetime(2026, 11, 29, 2, 0, 5, tzinfo=UTC)  # 10:00:05 in Wushen Banner


async def _closed_valve_incident(db: asyncpg.Connection) -> int:
    """An acknowledged gas alarm whose valve reported closed: closing it needs an on-site record."""
    household = await add_household(db, 1, phone="13912345678")
    incident_id: int = await db.fetchval(
        "INSERT INTO incident (household_id, kind, severity, state, alarm_device_id, alarm_lel, alarm_received_at,"
        " command_sent_at, valve_closed_at, acknowledged_at)"
        " VALUES ($1, 'gas_alarm', 'critical', 'ACKNOWLEDGED', $2, 28.5, $3, $3,"
        " $3::timestamptz + interval '2 seconds', now())"
        " RETURNING id",
        household.id,
        household.alarm_id,
        ALARM_AT,
    )
    await db.execute(
        "INSERT INTO incident_event (incident_id, at, actor, type, detail) VALUES ($1, $2, 'alerting', 'opened',"
        " '{\"lel\": 28.5}')",
        incident_id,
        ALARM_AT,
    )
    await db.execute(
        "INSERT INTO valve_command (cmd_id, valve_id, incident_id, command, reason, issued_at, expires_at, state,"
        " confirmed_at, reported_position) VALUES (gen_random_uuid(), $1, $2, 'close', 'gas_alarm', $3,"
        " $3::timestamptz + interval '6 hours', 'confirmed', $3::timestamptz + interval '2 seconds', 'closed')",
        household.valve_id,
        incident_id,
        ALARM_AT,
    )
    return incident_id


async def test_closing_without_on_site_record_is_refused(page: Page, ui_server: str, db: asyncpg.Connection) -> None:
    """办结 with a disposition but no 到场记录 shows the refusal in Chinese; nothing changes."""
    incident_id = await _closed_valve_incident(db)
    password = await create_user(db, "zhiban", "duty_operator", supplier="乌审中燃")
    await login(page, ui_server, "zhiban", password)
    await page.goto(f"{ui_server}/ui/incident?id={incident_id}")
    await page.wait_for_selector('body[data-ready="1"]')

    # The browser runs in UTC; the page shows county time.
    await expect(page.locator("#timeline li").first).to_contain_text("2026-11-29 10:00:05")
    await expect(page.locator("#incident-valve")).to_contain_text("指令:关闭 · 上报:已关闭")
    await expect(page.locator("#contact-phone")).to_have_text("139****5678")

    await page.click("details[data-action='close'] summary")
    await page.locator("#form-close [name=disposition]").select_option("real_leak")
    await page.locator("#form-close button[type=submit]").click()
    await expect(page.locator("#action-error")).to_have_text("办结被拒绝：阀门已关闭，必须先填写到场记录")
    assert await db.fetchval("SELECT state FROM incident WHERE id = $1", incident_id) == "ACKNOWLEDGED"

    # A missing required field is caught before the API with a Chinese message.
    await page.click("details[data-action='on-site'] summary")
    await page.locator("#form-on-site button[type=submit]").click()
    await expect(page.locator("#action-error")).to_have_text("请填写技术员")

    # Revealing the full number goes through the audited contact endpoint.
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'read_phone'") == 0
    await page.click("#reveal-phone")
    await expect(page.locator("#contact-phone")).to_have_text("13912345678")
    assert await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'read_phone'") == 1


async def test_no_control_or_route_opens_a_valve(page: Page, ui_server: str, db: asyncpg.Connection) -> None:
    """Neither the pages' controls nor the API offer a remote open; emergency management sees no phone."""
    incident_id = await _closed_valve_incident(db)
    password = await create_user(db, "zhiban", "duty_operator", supplier="乌审中燃")
    await login(page, ui_server, "zhiban", password)
    opening = re.compile(r"开阀|开启|打开|恢复供气|open|reopen", re.IGNORECASE)
    for path in ("/ui/board", f"/ui/incident?id={incident_id}"):
        await page.goto(f"{ui_server}{path}")
        await page.wait_for_selector('body[data-ready="1"]')
        for details in await page.locator("details[data-action]").all():
            await details.locator("summary").click()  # open every action form, so its controls are in the DOM
        controls = await page.eval_on_selector_all(
            "button, a, summary, input[type=submit], form, [data-action], [role=button]",
            # A form's text includes the on-site record's question whether the valve was reopened on site
            # (a fact to record); what could act is the controls themselves and where forms and links go.
            "nodes => nodes.map(n => [n.matches('form, details') ? '' : (n.textContent || n.value || '').trim(),"
            " n.getAttribute('href') || '', n.getAttribute('action') || '', n.dataset.action || ''].join(' | '))",
        )
        assert controls
        assert not [c for c in controls if opening.search(c)], controls

    async with httpx.AsyncClient(base_url=ui_server) as api:
        schema = (await api.get("/openapi.json")).json()
    routes = [(method, route) for route, item in schema["paths"].items() for method in item]
    assert routes
    assert not [r for r in routes if re.search(r"open|reopen", r[1], re.IGNORECASE)], routes
    bodies = str(schema.get("components", {}).get("schemas", {}).get("CloseRequest"))
    assert "open" not in bodies.lower()

    # Emergency management: the facts, but no resident's name or number and no actions.
    em_password = await create_user(db, "yingji", "emergency_management")
    await page.context.clear_cookies()
    await login(page, ui_server, "yingji", em_password)
    await page.goto(f"{ui_server}/ui/incident?id={incident_id}")
    await page.wait_for_selector('body[data-ready="1"]')
    await expect(page.locator("#contacts")).to_contain_text("您的角色不查看住户个人信息")
    await expect(page.locator("#actions")).to_contain_text("只能查看")
    assert "13912345678" not in await page.content()
    assert "139****5678" not in await page.content()
