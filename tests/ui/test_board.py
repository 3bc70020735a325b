"""The live alarm board in a real browser: a simulated leak on the real broker appears with its valve
going 关闭中 → 已关闭, and the duty operator acknowledges, records the visit and closes it through the UI."""

from __future__ import annotations

import asyncio
from pathlib import Path

import asyncpg
import pytest
from playwright.async_api import Page, expect

from gasguard.protocol import Topics
from registry.demo_county import seed_demo_county
from simulator.loader import load_households
from tests.conftest import SmsSandbox
from tests.support.stack import stack
from tests.ui.support import create_user, login

pytestmark = pytest.mark.slow

# Records, in the page, every valve state the leak's row shows, in order: the test asserts the order,
# not how fast it went (the latency is measured in the benchmark).
WATCH_VALVE = """
() => {
  window.__valveLog = [];
  const log = () => {
    for (const span of document.querySelectorAll('#board-rows tr[data-id] .valve')) {
      const entry = span.closest('tr').dataset.id + ':' + span.dataset.reported;
      if (window.__valveLog[window.__valveLog.length - 1] !== entry) window.__valveLog.push(entry);
    }
  };
  new MutationObserver(log).observe(document.getElementById('board-rows'), {childList: true, subtree: true});
}
"""


async def test_leak_appears_live_and_is_handled_through_the_ui(
    page: Page,
    ui_server: str,
    db: asyncpg.Connection,
    database_url: str,
    mqtt_url: str,
    topics: Topics,
    sms_sandbox: SmsSandbox,
    tmp_path: Path,
) -> None:
    """Leak → row on the board (valve 关闭中 then 已关闭) → 确认 → 到场记录 → 办结, checked in the database."""
    await seed_demo_county(db, households=20, seed=7, lpg_share=0.1)
    households = await load_households(db)
    victim = households[0]
    supplier = await db.fetchval("SELECT supplier FROM household WHERE id = $1", victim.household_id)
    password = await create_user(db, "zhiban", "duty_operator", supplier=supplier)

    async with stack(
        dsn=database_url,
        mqtt_url=mqtt_url,
        topics=topics,
        sms=sms_sandbox,
        spool=tmp_path,
        households=households,
        telemetry_period_s=2.0,
        valve_close_s=3.0,  # long enough for the board to show the valve closing before it reports closed
    ) as services:
        await page.goto(f"{ui_server}/ui/login?next=%2Fui%2Fboard")
        await login(page, ui_server, "zhiban", password)
        await page.wait_for_selector('body[data-ready="1"]')
        await expect(page.locator("#live-status")).to_have_text("实时")
        await expect(page.locator("#count-total")).to_have_text("0")
        await page.evaluate(WATCH_VALVE)

        loop = asyncio.get_running_loop()
        started = loop.time()
        leak = await services.fleet.start_leak(victim.alarm_id)
        row = page.locator("#board-rows tr[data-id]")
        await expect(row).to_have_count(1, timeout=30_000)
        appeared = loop.time() - started
        await expect(row.locator(".valve")).to_have_attribute("data-reported", "closed", timeout=30_000)
        closed = loop.time() - started
        print(f"board: leak row appeared after {appeared * 1000:.0f} ms, valve 已关闭 after {closed * 1000:.0f} ms")
        await asyncio.wait_for(leak.wait_valve_closed(), 30)

    incident_id = int(await row.get_attribute("data-id") or 0)
    log = await page.evaluate("window.__valveLog")
    assert log[0] == f"{incident_id}:closing" and log[-1] == f"{incident_id}:closed", log
    await expect(row).to_contain_text("燃气泄漏报警")
    await expect(row).to_contain_text("指令:关闭 · 上报:已关闭")
    await expect(row.locator(".badge.sev-critical")).to_have_text("紧急")
    await expect(page.locator("#banner")).to_contain_text("新的紧急报警")
    place = await db.fetchrow(
        "SELECT c.name AS community, h.building FROM household h JOIN community c ON c.code = h.community_code"
        " WHERE h.id = $1",
        victim.household_id,
    )
    await expect(row.locator(".place")).to_contain_text(f"{place['community']} › {place['building']}")

    # Keyboard: select with j, acknowledge with a; the live stream updates the row.
    await page.keyboard.press("j")
    await expect(row).to_have_class("row-critical selected")
    await page.keyboard.press("a")
    await expect(row.locator(".state")).to_have_text("已确认")
    await page.keyboard.press("Enter")
    await page.wait_for_url(f"{ui_server}/ui/incident?id={incident_id}")
    await page.wait_for_selector('body[data-ready="1"]')
    await expect(page.locator("#incident-state")).to_have_text("已确认")
    await expect(page.locator("#chart svg polyline")).to_have_count(1)

    # The on-site record, then closing with a disposition.
    await page.click("details[data-action='on-site'] summary")
    form = page.locator("#form-on-site")
    await form.locator("[name=technician]").fill("王师傅")
    await form.locator("[name=detector_lel]").fill("0")
    await form.locator("[name=cause]").fill("灶具连接软管松动")
    await form.locator("[name=action]").fill("紧固软管，检测无泄漏")
    await form.locator("[name=resident_present]").check()
    await form.locator("button[type=submit]").click()
    await expect(page.locator("#incident-state")).to_have_text("已到场")
    await expect(page.locator("#onsite-records")).to_contain_text("王师傅")

    await page.click("details[data-action='close'] summary")
    close = page.locator("#form-close")
    await close.locator("[name=disposition]").select_option("appliance_fault")
    await close.locator("button[type=submit]").click()
    await expect(page.locator("#incident-state")).to_have_text("已办结")

    incident = await db.fetchrow("SELECT state, disposition, valve_closed_at FROM incident WHERE id = $1", incident_id)
    assert (incident["state"], incident["disposition"]) == ("CLOSED", "appliance_fault")
    assert incident["valve_closed_at"] is not None
    timeline = [
        (r["type"], r["actor"])
        for r in await db.fetch(
            "SELECT type, actor FROM incident_event WHERE incident_id = $1 ORDER BY id", incident_id
        )
    ]
    types = [t for t, _ in timeline]
    assert types[0] == "opened"
    assert types.index("valve_command_sent") < types.index("valve_closed") < types.index("acknowledged")
    assert types[-2:] == ["on_site", "closed"]
    assert [a for t, a in timeline if t in ("acknowledged", "on_site", "closed")] == ["user:zhiban"] * 3
    record = await db.fetchrow("SELECT technician, valve_reopened_on_site FROM incident_on_site_record")
    assert (record["technician"], record["valve_reopened_on_site"]) == ("王师傅", False)
    audit = {r["action"] for r in await db.fetch("SELECT action FROM audit_log WHERE actor = 'user:zhiban'")}
    assert {"incident_acknowledge", "incident_on_site", "incident_close"} <= audit

    # Closed incidents leave the board.
    await page.goto(f"{ui_server}/ui/board")
    await page.wait_for_selector('body[data-ready="1"]')
    await expect(page.locator("#board-rows tr[data-id]")).to_have_count(0)
