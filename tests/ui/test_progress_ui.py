"""Programme progress page in Chromium: the housing bureau sees charts and figures that match the APIs."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

import asyncpg
from playwright.async_api import Page, expect

from registry.auth import Role
from registry.slips import SignatureRole, verify_month
from registry.spotcheck import Finding, draw, record_finding
from tests.registry.test_rosters import COMMUNITY, OTHER_COMMUNITY, RURAL_COMMUNITY, add_places
from tests.registry.test_slips import add_household, signed_slip
from tests.ui.support import create_user, login

READY = 'body[data-ready="1"]'


async def _programme(db: asyncpg.Connection) -> None:
    """Slips over three months in three communities, June verified, a spot check with one discrepancy."""
    await add_places(db)
    for i, month in enumerate((6, 6, 6, 7, 8)):
        await signed_slip(db, await add_household(db, room=f"a{i}"), installed_on=date(2024, month, 3 + i))
    await signed_slip(db, await add_household(db, room="b1", community=OTHER_COMMUNITY), installed_on=date(2024, 7, 1))
    await signed_slip(  # unsigned by the resident: not installed in the programme's sense
        db, await add_household(db, room="b2", community=OTHER_COMMUNITY), skip=SignatureRole.RESIDENT
    )
    lpg = await add_household(db, room="c1", community=RURAL_COMMUNITY, gas_type="LPG", supplier="荣昌")
    await signed_slip(db, lpg, installed_on=date(2024, 8, 9))
    await add_household(db, room="c2", community=RURAL_COMMUNITY, gas_type="LPG", supplier="荣昌")
    await verify_month(db, month=date(2024, 6, 1), actor="user:zhujian")
    sample = await draw(db, month=date(2024, 6, 1), community_code=COMMUNITY, actor="user:zhujian", seed="ui-test")
    await record_finding(
        db, slip_id=sample.sample[0], finding=Finding.DISCREPANCY, actor="user:zhujian", payable_government_fen=7050
    )


def _digits(text: str) -> int:
    return int(re.sub(r"[^0-9]", "", text))


async def test_housing_bureau_sees_charts_and_matching_figures(
    db: asyncpg.Connection, ui_server: str, page: Page
) -> None:
    """Charts are drawn from the monthly installations; every figure equals what /progress and /settlement say."""
    await _programme(db)
    password = await create_user(db, "zhujian", Role.HOUSING_BUREAU)
    await login(page, ui_server, "zhujian", password)
    assert page.url.endswith("/ui/progress")
    await page.wait_for_selector(READY, state="attached")
    await expect(page.locator("#error")).to_be_hidden()

    report: dict[str, Any] = await page.evaluate("fetch('/progress').then(r => r.json())")
    months: list[dict[str, Any]] = await page.evaluate("fetch('/county/installations').then(r => r.json())")

    # One chart per target, each with its cumulative line: one point per month with installations.
    for target in report["targets"]:
        chart = page.locator(f'figure.chart[data-gas="{target["gas_type"]}"]')
        points = [m for m in months if m["gas_type"] == target["gas_type"]]
        installed = f"path.series.{target['gas_type'].lower()}"
        await expect(chart.locator(installed)).to_have_count(1)
        await expect(chart.locator(f"circle.dot.{target['gas_type'].lower()}")).to_have_count(len(points))
        await expect(chart.locator("path.series.verified")).to_have_count(1)
        await expect(chart.locator("circle.dot.verified")).to_have_count(len(points))
        await expect(chart.locator("line.target")).to_have_count(1)
        assert await chart.locator(installed).get_attribute("d")
    assert [(m["month"], m["gas_type"], m["cumulative"]) for m in months] == [
        ("2024-06-01", "NG", 3),
        ("2024-07-01", "NG", 5),
        ("2024-08-01", "LPG", 1),
        ("2024-08-01", "NG", 6),
    ]

    # The verified line ends at the verified total: June's three NG slips.
    last_verified = page.locator('figure.chart[data-gas="NG"] circle.dot.verified').last
    assert (await last_verified.locator("title").text_content() or "").endswith("：3")

    # The target tiles show the API's installed counts against the targets.
    tiles = await page.locator("#stats .stat .num").all_inner_texts()
    for target, tile in zip(report["targets"], tiles, strict=False):
        installed, households = (_digits(part) for part in tile.split("/"))
        assert (installed, households) == (target["installed"], target["households"])

    # Every community row equals the API's row of that community and gas type.
    rows = page.locator("#places tbody tr.community")
    await expect(rows).to_have_count(len(report["communities"]))
    shown = {}
    for row in await rows.all():
        cells = await row.locator("td").all_inner_texts()
        shown[(cells[0], cells[1])] = (_digits(cells[2]), _digits(cells[3]), _digits(cells[5]), _digits(cells[7]))
    gas = {"NG": "天然气", "LPG": "液化气"}
    expected = {
        (c["community_name"], gas[c["gas_type"]]): (c["households"], c["installed"], c["verified"], c["unprotected"])
        for c in report["communities"]
    }
    assert shown == expected
    assert expected[("文苑社区", "天然气")] == (5, 5, 3, 5)

    # The settlement shows the quarter of the latest verification (2024 Q2) as the API computes it.
    await expect(page.locator("#quarter")).to_have_value("2024/q2")
    statement: dict[str, Any] = await page.evaluate("fetch('/settlement/2024/q2').then(r => r.json())")
    assert statement["payable_fen"] > 0
    payable = await page.locator("#payable").inner_text()
    assert _digits(payable) == statement["payable_fen"]
    await expect(page.locator("#settled")).to_contain_text("未结算")  # nothing frozen yet

    # Spot checks: one sampled slip found not matching, shown with its adjusted payable share.
    await expect(page.locator("#findings tbody tr")).to_have_count(1)
    await expect(page.locator("#findings")).to_contain_text("不符")
    await expect(page.locator("#findings")).to_contain_text("70.50")
    await expect(page.locator("#overdue-list tbody tr").first).to_be_visible()  # the deadline has passed
