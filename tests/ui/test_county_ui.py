"""County health page in Chromium: exact figures, drill-down by mouse and keyboard, no phone numbers, scoping."""

from __future__ import annotations

import re

import asyncpg
from playwright.async_api import Page, expect

from registry.auth import Role
from tests.registry.test_county import MOBILE_RE, WENYUAN, build_county
from tests.registry.test_rosters import COMMUNITY, OTHER_COMMUNITY
from tests.ui.support import create_user, login

READY = 'body[data-ready="1"]'
# Column order of the county tables after the name: see COUNT_HEADERS in county.js.
COLUMNS = ("households", "ng", "monitored", "offline", "unprotected", "valve_faults", "lpg")


def _assert_no_phone(html: str) -> None:
    found = MOBILE_RE.findall(html)
    assert not found, f"phone-like numbers in the page: {found[:3]}"


async def _row_numbers(page: Page, row_selector: str) -> dict[str, int]:
    cells = await page.locator(f"{row_selector} td.num").all_inner_texts()
    numbers = [int(re.sub(r"[^0-9]", "", text.splitlines()[0])) for text in cells[: len(COLUMNS)]]
    return dict(zip(COLUMNS, numbers, strict=True))


async def test_emergency_management_sees_figures_and_drills_down_without_phones(
    db: asyncpg.Connection, ui_server: str, page: Page
) -> None:
    """The county view's figures are exact, no phone appears at any level, and a building opens by keyboard."""
    built = await build_county(db)
    password = await create_user(db, "yingji", Role.EMERGENCY_MANAGEMENT)
    await login(page, ui_server, "yingji", password)
    await page.goto(f"{ui_server}/ui/county")
    await page.wait_for_selector(READY, state="attached")

    row = f'#towns tr.community[data-href="/ui/county?community={COMMUNITY}"]'
    assert await _row_numbers(page, row) == {key: WENYUAN[key] for key in COLUMNS}
    await expect(page.locator("#stats")).to_contain_text("液化气 未接入监测")
    await expect(page.locator(row)).to_contain_text("文苑社区")
    _assert_no_phone(await page.content())

    # Mouse: a click anywhere on the row opens the community (its buildings, in natural order).
    await page.locator(f"{row} td.num").first.click()
    await page.wait_for_selector("#buildings tbody tr")
    await expect(page.locator("#title")).to_contain_text("文苑社区")
    assert await page.locator("#buildings tbody tr td:first-child").all_inner_texts() == ["1号楼", "2号楼"]
    assert await _row_numbers(page, "#buildings tbody tr:first-child") == {
        "households": 7,
        "ng": 7,
        "monitored": 2,
        "offline": 3,
        "unprotected": 2,
        "valve_faults": 1,
        "lpg": 0,
    }
    _assert_no_phone(await page.content())

    # Keyboard: focus the building's link and press Enter.
    await page.locator("#buildings a", has_text="1号楼").focus()
    await page.keyboard.press("Enter")
    await page.wait_for_selector("#households tbody tr")
    assert "building=" in page.url
    rows = page.locator("#households tbody tr")
    await expect(rows).to_have_count(7)
    html = await page.content()
    _assert_no_phone(html)
    assert "张三" not in html
    statuses = {
        int(await r.get_attribute("data-id") or 0): (await r.locator("td").nth(2).inner_text()).splitlines()[0]
        for r in await rows.all()
    }
    assert statuses[built.ids["ok"]] == "监测中"
    assert statuses[built.ids["silent"]] == "离线/未知"
    assert statuses[built.ids["never"]] == "离线/未知"
    assert statuses[built.ids["expired"]] == "过期/未受保护"
    # Last report times are shown in the county's time zone (the browser runs in UTC).
    seen = await db.fetchval(
        "SELECT to_char(s.last_seen_at AT TIME ZONE 'Asia/Shanghai', 'YYYY-MM-DD HH24:MI:SS') FROM device_state s"
        " WHERE s.device_id = $1",
        f"alarm-{built.ids['ok']}",
    )
    await expect(page.locator(f'#households tr[data-id="{built.ids["ok"]}"]')).to_contain_text(seen)
    await expect(page.locator(f'#households tr[data-id="{built.ids["never"]}"]')).to_contain_text("从未上报")

    # Back goes to the community again (the view lives in the URL).
    await page.go_back()
    await page.wait_for_selector("#buildings tbody tr")


async def test_community_staff_see_only_their_community(db: asyncpg.Connection, ui_server: str, page: Page) -> None:
    """Community staff land on their community's figures; another community is refused in Chinese and by the API."""
    await build_county(db)
    password = await create_user(db, "shequ", Role.COMMUNITY_STAFF, community_code=COMMUNITY)
    await login(page, ui_server, "shequ", password)
    assert page.url.endswith("/ui/county")
    await page.wait_for_selector(READY, state="attached")
    hrefs = await page.locator("#towns tr.community").evaluate_all("rows => rows.map(r => r.dataset.href)")
    assert hrefs == [f"/ui/county?community={COMMUNITY}"]

    await page.goto(f"{ui_server}/ui/county?community={OTHER_COMMUNITY}")
    await page.wait_for_selector(READY, state="attached")
    error = page.locator("#error")
    await expect(error).to_be_visible()
    await expect(error).to_contain_text("无权限")
    await expect(error).to_contain_text("管辖范围")
    assert await page.locator("#buildings").count() == 0
    statuses = await page.evaluate(
        """async ([other, own]) => [
            (await fetch(`/county/communities/${other}`)).status,
            (await fetch(`/county/communities/${other}/buildings/1号楼/households`)).status,
            (await fetch(`/county/communities/${own}`)).status,
        ]""",
        [OTHER_COMMUNITY, COMMUNITY],
    )
    assert statuses == [403, 403, 200]
