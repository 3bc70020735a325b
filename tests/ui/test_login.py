"""Login, logout and redirects of the UI; a community user is held to its own community."""

from __future__ import annotations

import asyncpg
import httpx
from playwright.async_api import Page, expect

from tests.support.rows import COMMUNITY, TOWN, add_household
from tests.ui.support import create_user, login

OTHER_COMMUNITY = "150626100099"


async def test_unauthenticated_page_redirects_to_login(page: Page, ui_server: str) -> None:
    """/ui/board without a session goes to the login page, remembering where it was going."""
    await page.goto(f"{ui_server}/ui/board")
    assert page.url == f"{ui_server}/ui/login?next=%2Fui%2Fboard"
    await expect(page.locator("#login-form")).to_be_visible()
    await expect(page.locator("html")).to_have_attribute("lang", "zh-CN")


async def test_wrong_password_shows_a_chinese_error(page: Page, ui_server: str, db: asyncpg.Connection) -> None:
    """A wrong password keeps the user on the login page with a Chinese message."""
    await create_user(db, "zhiban", "duty_operator", supplier="乌审中燃")
    await page.goto(f"{ui_server}/ui/login")
    await page.fill("#username", "zhiban")
    await page.fill("#password", "not-the-password")
    await page.click("#login-submit")
    await expect(page.locator("#login-error")).to_have_text("用户名或密码错误")
    assert "/ui/login" in page.url
    failed = await db.fetchval("SELECT count(*) FROM audit_log WHERE action = 'login_failed'")
    assert failed == 1


async def test_login_lands_on_the_board_and_logout_ends_the_session(
    page: Page, ui_server: str, db: asyncpg.Connection
) -> None:
    """A duty operator lands on the board; after 退出 the board needs a login again."""
    password = await create_user(db, "zhiban", "duty_operator", supplier="乌审中燃")
    await page.goto(f"{ui_server}/ui/login?next=%2Fui%2Fboard")
    await login(page, ui_server, "zhiban", password)
    assert page.url == f"{ui_server}/ui/board"
    await page.wait_for_selector('body[data-ready="1"]')
    await expect(page.locator("#nav")).to_contain_text("燃气安全监管平台")
    await expect(page.locator("#nav .who-role")).to_have_text("燃气公司值班员")
    await page.click("#logout")
    await page.wait_for_url(f"{ui_server}/ui/login")
    assert await db.fetchval("SELECT count(*) FROM user_session WHERE revoked_at IS NOT NULL") == 1
    await page.goto(f"{ui_server}/ui/board")
    assert page.url.startswith(f"{ui_server}/ui/login?next=")
    response = await page.request.get(f"{ui_server}/ui/api/board")
    assert response.status == 401


async def test_community_user_cannot_open_another_communitys_household(
    page: Page, ui_server: str, db: asyncpg.Connection
) -> None:
    """403 through the API for another community's household and incident, and the page says so."""
    own = await add_household(db, 1)
    await db.execute(
        "INSERT INTO community (code, town_code, name, synthetic) VALUES ($1, $2, '别的社区', true)",
        OTHER_COMMUNITY,
        TOWN,
    )
    other = await add_household(db, 2)
    await db.execute("UPDATE household SET community_code = $1 WHERE id = $2", OTHER_COMMUNITY, other.id)
    incident_id = await db.fetchval(
        "INSERT INTO incident (household_id, kind, severity, alarm_device_id, alarm_received_at)"
        " VALUES ($1, 'gas_alarm', 'critical', $2, now()) RETURNING id",
        other.id,
        other.alarm_id,
    )
    password = await create_user(db, "shequ", "community_staff", community_code=COMMUNITY)

    async with httpx.AsyncClient(base_url=ui_server) as api:
        assert (await api.post("/auth/login", json={"username": "shequ", "password": password})).status_code == 200
        assert (await api.get(f"/households/{own.id}")).status_code == 200
        assert (await api.get(f"/households/{other.id}")).status_code == 403
        assert (await api.get(f"/households/{other.id}/contact")).status_code == 403
        assert (await api.get(f"/incidents/{incident_id}")).status_code == 403
        assert (await api.get(f"/ui/api/incidents/{incident_id}/context")).status_code == 403
        assert (await api.get(f"/ui/api/incidents/{incident_id}/concentration")).status_code == 403
        board = (await api.get("/ui/api/board")).json()
        assert incident_id not in [row["id"] for row in board["items"]]

    await login(page, ui_server, "shequ", password)
    await page.goto(f"{ui_server}/ui/incident?id={incident_id}")
    await expect(page.locator("#incident-error")).to_contain_text("无权限")
    await expect(page.locator("#incident-facts")).to_have_count(0)


async def test_board_refuses_a_role_without_alarm_duties(page: Page, ui_server: str, db: asyncpg.Connection) -> None:
    """The housing bureau lands on progress; opened by hand, the board says it may not be watched."""
    password = await create_user(db, "zhujian", "housing_bureau")
    await login(page, ui_server, "zhujian", password)
    assert page.url == f"{ui_server}/ui/progress"
    await page.goto(f"{ui_server}/ui/board")
    await page.wait_for_selector('body[data-ready="1"]')
    await expect(page.locator("#board-error")).to_have_text("您的角色无权查看报警看板")
    await expect(page.locator("#nav .links a")).not_to_contain_text(["报警看板"])
