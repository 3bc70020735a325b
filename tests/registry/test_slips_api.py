"""The programme's HTTP API end to end: roster import, slips, verification, settlement, spot checks, progress."""

from __future__ import annotations

import io
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest
from openpyxl import load_workbook

from registry.app import create_app
from registry.auth import Role, create_user, issue_token
from registry.settings import RegistrySettings
from tests.registry.test_rosters import COMMUNITY, OTHER_COMMUNITY, add_places, as_csv, as_xlsx, roster_rows
from tests.registry.test_slips import SIGNERS

USERS: dict[str, tuple[Role, str | None, str | None]] = {
    "admin": (Role.ADMIN, None, None),
    "bureau": (Role.HOUSING_BUREAU, None, None),
    "em": (Role.EMERGENCY_MANAGEMENT, None, None),
    "staff": (Role.COMMUNITY_STAFF, COMMUNITY, None),
    "other_staff": (Role.COMMUNITY_STAFF, OTHER_COMMUNITY, None),
    "operator": (Role.DUTY_OPERATOR, None, "乌审中燃"),
    "installer": (Role.INSTALLER, None, None),
}


@dataclass
class Api:
    """An app on this test's database with a bearer token per user."""

    client: httpx.AsyncClient
    db: asyncpg.Connection
    tokens: dict[str, str]

    async def call(self, who: str | None, method: str, url: str, **kwargs: Any) -> httpx.Response:
        """Call ``url`` as ``who`` (None: anonymous)."""
        headers = {} if who is None else {"Authorization": f"Bearer {self.tokens[who]}"}
        return await self.client.request(method, url, headers=headers, **kwargs)


@pytest.fixture
async def api(database_url: str, db: asyncpg.Connection) -> AsyncIterator[Api]:
    await add_places(db)
    tokens = {}
    for name, (role, community, supplier) in USERS.items():
        user = await create_user(
            db, username=name, password=None, display_name=name, role=role, community_code=community, supplier=supplier
        )
        tokens[name] = await issue_token(db, user_id=user.id, name="test")
    app = create_app(RegistrySettings(database_url=database_url, cookie_secure=False))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://registry.test") as client,
    ):
        yield Api(client, db, tokens)


def _upload(data: bytes, name: str, period: str = "2024-05-01", community: str | None = None) -> dict[str, Any]:
    form = {"period": period} | ({} if community is None else {"community_code": community})
    return {"files": {"file": (name, data)}, "data": form}


async def test_roster_import_over_http(api: Api) -> None:
    """A bad row → 422 with the row and nothing stored; the good file → 201; again → 200; other community → 403."""
    rows = roster_rows(5)
    rows[3][7] = "12345"
    bad = await api.call("staff", "POST", "/rosters", **_upload(as_csv(rows), "bad.csv"))
    assert bad.status_code == 422, bad.text
    assert bad.json()["committed"] is False
    assert [(e["row"], e["column"]) for e in bad.json()["errors"]] == [(5, "联系电话")]
    assert await api.db.fetchval("SELECT count(*) FROM household") == 0
    report = await api.call("staff", "POST", "/rosters/error-report", **_upload(as_csv(rows), "bad.csv"))
    assert report.status_code == 200
    sheet = load_workbook(io.BytesIO(report.content)).active
    assert sheet is not None and "格式错误" in sheet.cell(row=5, column=10).value

    good = as_xlsx(roster_rows(5))
    first = await api.call("staff", "POST", "/rosters", **_upload(good, "may.xlsx"))
    assert first.status_code == 201 and first.json()["inserted"] == 5
    again = await api.call("staff", "POST", "/rosters", **_upload(good, "may.xlsx"))
    assert again.status_code == 200 and again.json()["already_imported"] is True
    other = await api.call("staff", "POST", "/rosters", **_upload(good, "may.xlsx", community=OTHER_COMMUNITY))
    assert other.status_code == 403
    assert (await api.call("other_staff", "POST", "/rosters", **_upload(good, "x.xlsx"))).status_code == 422
    assert (await api.call("bureau", "POST", "/rosters", **_upload(good, "x.xlsx"))).status_code == 403
    assert (await api.call(None, "POST", "/rosters", **_upload(good, "x.xlsx"))).status_code == 401
    junk = await api.call("staff", "POST", "/rosters", **_upload(b"a,b\n1,2\n", "junk.csv"))
    assert junk.status_code == 422 and "缺少表头" in junk.json()["detail"]

    export = await api.call("staff", "GET", "/rosters/export")
    assert export.status_code == 200
    exported = load_workbook(io.BytesIO(export.content)).active
    assert exported is not None and exported.max_row == 6
    audited = await api.db.fetch("SELECT action FROM audit_log ORDER BY id")
    assert [r["action"] for r in audited] == ["import_roster", "export_roster"]


async def _household(api: Api, room: str = "101", community: str = COMMUNITY) -> int:
    household_id: int = await api.db.fetchval(
        "INSERT INTO household (community_code, building, unit, room, gas_type, supplier, resident_name,"
        " resident_phone) VALUES ($1, '1', '1', $2, 'NG', '乌审中燃', '张三', '13912345678') RETURNING id",
        community,
        room,
    )
    return household_id


async def test_slip_lifecycle_over_http(api: Api) -> None:
    """Open, sign four times, verification refused (409); fifth signature, verified; printable and checkable."""
    household = await _household(api)
    other_household = await _household(api, community=OTHER_COMMUNITY)
    assert (
        await api.call("other_staff", "POST", "/slips", json={"household_id": household, "installed_on": "2024-05-06"})
    ).status_code == 403
    opened = await api.call("staff", "POST", "/slips", json={"household_id": household, "installed_on": "2024-05-06"})
    assert opened.status_code == 201, opened.text
    slip = opened.json()
    assert (slip["total_fen"], slip["government_fen"], slip["complete"]) == (47000, 14100, False)
    for role, name in list(SIGNERS.items())[:4]:
        signed = await api.call(
            "staff", "POST", f"/slips/{slip['id']}/signatures", json={"role": role.value, "signer_name": name}
        )
        assert signed.status_code == 201
    refused = await api.call("bureau", "POST", f"/slips/{slip['id']}/verify")
    assert refused.status_code == 409
    assert refused.json()["detail"]["missing"] == ["resident"]
    assert (await api.call("staff", "POST", f"/slips/{slip['id']}/verify")).status_code == 403
    await api.call("staff", "POST", f"/slips/{slip['id']}/signatures", json={"role": "resident", "signer_name": "张三"})
    twice = await api.call(
        "staff", "POST", f"/slips/{slip['id']}/signatures", json={"role": "resident", "signer_name": "张三"}
    )
    assert twice.status_code == 409
    verified = await api.call("bureau", "POST", f"/slips/{slip['id']}/verify")
    assert verified.status_code == 200 and verified.json()["verified_at"] is not None

    html = await api.call("staff", "GET", f"/slips/{slip['id']}/print.html")
    assert html.status_code == 200 and "确认单" in html.text and f"/slips/check/{slip['verify_code']}" in html.text
    pdf = await api.call("bureau", "GET", f"/slips/{slip['id']}/print.pdf")
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")
    assert (await api.call("other_staff", "GET", f"/slips/{slip['id']}")).status_code == 403
    assert (await api.call("em", "GET", f"/slips/{slip['id']}")).status_code == 403
    check = await api.client.get(f"/slips/check/{slip['verify_code']}")
    assert check.status_code == 200
    assert check.json() == {
        "verify_code": slip["verify_code"],
        "community_name": "文苑社区",
        "installed_on": "2024-05-06",
        "gas_type": "NG",
        "signatures": 5,
        "complete": True,
        "verified": True,
    }
    assert (await api.client.get("/slips/check/ABCDEFGHJK")).status_code == 404
    assert other_household


async def test_month_verification_settlement_and_spot_check_over_http(api: Api) -> None:
    """Monthly verification lists refusals; the draw is refused a second time; the statement exports to XLSX."""
    complete_ids = []
    for i in range(4):
        household = await _household(api, room=f"2{i}")
        slip = (
            await api.call("staff", "POST", "/slips", json={"household_id": household, "installed_on": "2024-05-06"})
        ).json()
        signers = list(SIGNERS.items()) if i else list(SIGNERS.items())[:3]
        for role, name in signers:
            await api.call(
                "staff", "POST", f"/slips/{slip['id']}/signatures", json={"role": role.value, "signer_name": name}
            )
        if i:
            complete_ids.append(slip["id"])
    run = await api.call("bureau", "POST", "/settlement/verifications", json={"month": "2024-05-01"})
    assert run.status_code == 201
    assert run.json()["verified"] == complete_ids and len(run.json()["refused"]) == 1
    assert run.json()["refused"][0]["missing"] == ["installer", "resident"]

    draw = await api.call(
        "bureau", "POST", "/spot-checks", json={"month": "2024-05-01", "community_code": COMMUNITY, "seed": "s1"}
    )
    assert draw.status_code == 201 and len(draw.json()["sample"]) == 2  # 30% of 4, rounded up
    redraw = await api.call(
        "bureau", "POST", "/spot-checks", json={"month": "2024-05-01", "community_code": COMMUNITY, "seed": "s2"}
    )
    assert redraw.status_code == 409
    sampled = next(s for s in draw.json()["sample"] if s in complete_ids)
    finding = await api.call("staff", "POST", "/spot-checks/findings", json={"slip_id": sampled, "finding": "missing"})
    assert finding.status_code == 201 and finding.json()["payable_government_fen"] == 0
    assert (
        await api.call("other_staff", "POST", "/spot-checks/findings", json={"slip_id": sampled, "finding": "match"})
    ).status_code == 403

    statement = await api.call("bureau", "GET", "/settlement/2024/q2")
    assert statement.status_code == 200
    assert statement.json()["payable_fen"] == 2 * 14100
    xlsx = await api.call("bureau", "GET", "/settlement/2024/q2/statement.xlsx")
    assert xlsx.status_code == 200 and load_workbook(io.BytesIO(xlsx.content)).sheetnames[0] == "按供气单位"
    assert (await api.call("staff", "GET", "/settlement/2024/q2")).status_code == 403
    assert statement.json()["frozen"] is False and statement.json()["differences"] == []

    # Settling freezes the statement; a slip completed and verified afterwards shows as a difference only.
    frozen = await api.call("bureau", "POST", "/settlement/2024/q2/freeze")
    assert frozen.status_code == 201 and frozen.json()["frozen"] is True
    assert frozen.json()["payable_fen"] == 2 * 14100 and frozen.json()["frozen_by"] == "user:bureau"
    assert (await api.call("bureau", "POST", "/settlement/2024/q2/freeze")).status_code == 409
    assert (await api.call("bureau", "POST", "/settlement/2100/q4/freeze")).status_code == 409  # not over yet
    late = run.json()["refused"][0]["slip_id"]
    for role, name in list(SIGNERS.items())[3:]:
        signed = await api.call(
            "staff", "POST", f"/slips/{late}/signatures", json={"role": role.value, "signer_name": name}
        )
        assert signed.status_code == 201
    rerun = await api.call("bureau", "POST", "/settlement/verifications", json={"month": "2024-05-01"})
    assert rerun.json()["verified"] == [late]
    after = (await api.call("bureau", "GET", "/settlement/2024/q2")).json()
    assert (after["frozen"], after["payable_fen"], after["recomputed_payable_fen"]) == (True, 2 * 14100, 3 * 14100)
    assert [(d["frozen"]["slips"], d["current"]["slips"]) for d in after["differences"]] == [(3, 4)]
    frozen_xlsx = await api.call("bureau", "GET", "/settlement/2024/q2/statement.xlsx")
    assert str(load_workbook(io.BytesIO(frozen_xlsx.content))["按供气单位"]["B1"].value).startswith("已结算冻结")

    progress = await api.call("em", "GET", "/progress")
    assert progress.status_code == 200
    assert {t["gas_type"]: t["installed"] for t in progress.json()["targets"]} == {"NG": 4, "LPG": 0}
    assert (await api.client.get("/progress")).status_code == 401
    public = await api.client.get("/progress/public")
    assert (
        public.status_code == 200
        and "进度公示" in public.text
        and "13912345678" not in public.text
        and "张三" not in public.text
    )


async def test_finance_over_http(api: Api) -> None:
    """Prices are listed; the community collects the resident share, the bureau pays the government share."""
    prices = await api.call("bureau", "GET", "/finance/prices")
    assert {(p["gas_type"], p["price_fen"]) for p in prices.json()} == {("NG", 47000), ("LPG", 22300)}
    household = await _household(api)
    eligibility = await api.call("staff", "GET", f"/finance/households/{household}/eligibility")
    assert eligibility.json()["eligibility"] == "must_install"
    contract = await api.call(
        "staff", "PUT", f"/finance/households/{household}/contract", json={"signed_on": "2024-04-02"}
    )
    assert contract.status_code == 201 and contract.json()["contract_signed_on"] == "2024-04-02"
    assert (
        await api.call("staff", "PUT", f"/finance/households/{household}/contract", json={"signed_on": "2024-04-02"})
    ).status_code == 409
    await api.call("staff", "POST", "/slips", json={"household_id": household, "installed_on": "2024-05-06"})
    collected = await api.call(
        "staff",
        "POST",
        f"/finance/households/{household}/ledger",
        json={"kind": "resident_collected", "amount_fen": 14100},
    )
    assert collected.status_code == 201 and collected.json()["resident_outstanding_fen"] == 0
    over = await api.call(
        "staff", "POST", f"/finance/households/{household}/ledger", json={"kind": "resident_collected", "amount_fen": 1}
    )
    assert over.status_code == 409
    assert (
        await api.call(
            "staff",
            "POST",
            f"/finance/households/{household}/ledger",
            json={"kind": "government_paid", "amount_fen": 1},
        )
    ).status_code == 403
    paid = await api.call(
        "bureau",
        "POST",
        f"/finance/households/{household}/ledger",
        json={"kind": "government_paid", "amount_fen": 14100},
    )
    assert paid.status_code == 201 and paid.json()["government_paid_fen"] == 14100
    assert (await api.call("other_staff", "GET", f"/finance/households/{household}/ledger")).status_code == 403
    bad_price = await api.call(
        "admin",
        "POST",
        "/finance/prices",
        json={
            "gas_type": "NG",
            "item": "x",
            "effective_from": "2026-01-01",
            "price_fen": 100,
            "company_bp": 1,
            "government_bp": 1,
            "resident_bp": 1,
        },
    )
    assert bad_price.status_code == 422
