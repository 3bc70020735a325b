"""Monthly verification and the quarterly statement of the government share, exact in fen, with XLSX export."""

from __future__ import annotations

import io
from datetime import date

import asyncpg
import pytest
from openpyxl import load_workbook

from registry.finance import price_in_force, split_price
from registry.settlement import (
    SettlementError,
    differences,
    freeze_statement,
    frozen_statement,
    quarter_months,
    quarterly_statement,
    statement_xlsx,
)
from registry.slips import SignatureRole, verify_month
from registry.spotcheck import Finding, draw, record_finding
from tests.registry.test_rosters import COMMUNITY, RURAL_COMMUNITY, add_places, import_rows, roster_rows
from tests.registry.test_slips import add_household, signed_slip


def test_quarter_months() -> None:
    """Quarters map to their first month and the month after."""
    assert quarter_months(2024, 2) == (date(2024, 4, 1), date(2024, 7, 1))
    assert quarter_months(2024, 4) == (date(2024, 10, 1), date(2025, 1, 1))
    with pytest.raises(ValueError, match="1–4"):
        quarter_months(2024, 5)


async def test_statement_counts_only_verified_slips_with_spot_check_adjustments(db: asyncpg.Connection) -> None:
    """Unverified and incomplete slips are not payable; a missing finding removes a slip's share."""
    await add_places(db)
    ng = [await signed_slip(db, await add_household(db, room=f"{i}"), installed_on=date(2024, 5, 6)) for i in range(4)]
    lpg_household = await add_household(db, room="L1", community=RURAL_COMMUNITY, gas_type="LPG", supplier="荣昌")
    lpg = await signed_slip(db, lpg_household, installed_on=date(2024, 6, 2))
    await signed_slip(
        db, await add_household(db, room="X"), installed_on=date(2024, 5, 7), skip=SignatureRole.INSTALLER
    )
    unverified_july = await signed_slip(db, await add_household(db, room="J"), installed_on=date(2024, 7, 1))
    await verify_month(db, month=date(2024, 5, 1), actor="user:bureau")
    await verify_month(db, month=date(2024, 6, 1), actor="user:bureau")
    sample = await draw(db, month=date(2024, 5, 1), community_code=COMMUNITY, actor="user:bureau", seed="q2")
    missing = sample.sample[0]
    await record_finding(db, slip_id=missing, finding=Finding.MISSING, actor="user:bureau")
    statement = await quarterly_statement(db, year=2024, quarter=2)
    assert statement.totals_by_supplier() == {("乌审中燃", "NG"): 3 * 14100, ("荣昌", "LPG"): 6690}
    assert statement.totals_by_town() == {("嘎鲁图镇", "NG"): 3 * 14100, ("苏力德苏木", "LPG"): 6690}
    ng_line = next(line for line in statement.lines if line.gas_type == "NG")
    assert (ng_line.slips, ng_line.government_fen, ng_line.adjustment_fen) == (4, 4 * 14100, -14100)
    assert statement.payable_fen == 3 * 14100 + 6690
    assert missing in ng and lpg and unverified_july

    workbook = load_workbook(io.BytesIO(await statement_xlsx(db, statement)))
    assert workbook.sheetnames == ["按供气单位", "按苏木镇和社区", "抽查结果"]
    summary = workbook["按供气单位"]
    values = [[c.value for c in row] for row in summary.iter_rows(min_row=3)]
    assert ["乌审中燃", "天然气", 4, "564.00", "-141.00", "423.00", 42300] in values
    assert values[-1][-1] == 3 * 14100 + 6690
    checks = [[c.value for c in row] for row in workbook["抽查结果"].iter_rows(min_row=2)]
    assert any(row[2] == missing and row[3] == "未安装/缺失" and row[5] == "0.00" for row in checks)


async def test_programme_scale_settlement_is_exact_in_fen(db: asyncpg.Connection) -> None:
    """36,000 NG + 4,000 LPG verified slips: the government share sums to exactly 5,076,000 + 267,600 yuan."""
    await add_places(db)
    rows = roster_rows(36000) + roster_rows(4000, community=RURAL_COMMUNITY, gas="液化石油气", start=36000)
    assert (await import_rows(db, rows)).inserted == 40000
    installed_on = date(2024, 8, 15)
    for gas_type in ("NG", "LPG"):
        price = await price_in_force(db, gas_type=gas_type, on=installed_on)
        split = split_price(price)
        await db.execute(
            """
            WITH s AS (
                INSERT INTO confirmation_slip (household_id, installed_on, verify_code, recorded_by)
                SELECT h.id, $1, translate(upper(substr(md5(h.id::text), 1, 10)), '01', 'ZY'), 'bulk'
                FROM household h WHERE h.gas_type = $2
                RETURNING id, household_id
            )
            INSERT INTO slip_charge (slip_id, household_id, gas_type, price_config_id, resident_pays_all, total_fen,
                                     company_fen, government_fen, resident_fen)
            SELECT s.id, s.household_id, $2, $3, false, $4, $5, $6, $7 FROM s
            """,
            installed_on,
            gas_type,
            price.id,
            split.total_fen,
            split.company_fen,
            split.government_fen,
            split.resident_fen,
        )
    await db.execute(
        """
        INSERT INTO slip_signature (slip_id, role, signer_name, recorded_by)
        SELECT s.id, r.role, '签字人', 'bulk' FROM confirmation_slip s
        CROSS JOIN unnest(ARRAY['community_secretary', 'village_secretary', 'grid_worker', 'installer',
                                'resident']) r(role)
        """
    )
    run = await verify_month(db, month=installed_on, actor="user:bureau")
    assert len(run.verified) == 40000 and run.refused == ()
    statement = await quarterly_statement(db, year=2024, quarter=3)
    by_gas = {gas: sum(v for (_, g), v in statement.totals_by_supplier().items() if g == gas) for gas in ("NG", "LPG")}
    assert by_gas == {"NG": 507_600_000, "LPG": 26_760_000}
    totals = await db.fetchrow(
        "SELECT sum(total_fen) AS total, sum(company_fen + government_fen + resident_fen) AS parts FROM slip_charge"
    )
    assert totals["total"] == totals["parts"] == 36000 * 47000 + 4000 * 22300


async def test_frozen_quarter_keeps_its_statement_and_shows_later_differences(db: asyncpg.Connection) -> None:
    """A settled quarter is stored as paid: a later finding changes the recomputation, never the statement."""
    await add_places(db)
    slips = [
        await signed_slip(db, await add_household(db, room=f"{i}"), installed_on=date(2024, 5, 6)) for i in range(3)
    ]
    await verify_month(db, month=date(2024, 5, 1), actor="user:bureau")
    with pytest.raises(SettlementError, match="尚未结束"):
        await freeze_statement(db, year=2024, quarter=2, actor="user:bureau", today=date(2024, 6, 30))
    assert await frozen_statement(db, year=2024, quarter=2) is None
    async with db.transaction():
        frozen = await freeze_statement(db, year=2024, quarter=2, actor="user:bureau", today=date(2024, 7, 1))
    assert frozen.statement.payable_fen == 3 * 14100 and frozen.frozen_by == "user:bureau"
    assert frozen.statement == await quarterly_statement(db, year=2024, quarter=2)
    with pytest.raises(SettlementError, match="已结算冻结"):
        await freeze_statement(db, year=2024, quarter=2, actor="user:bureau", today=date(2024, 7, 2))

    sample = await draw(db, month=date(2024, 5, 1), community_code=COMMUNITY, actor="user:bureau", seed="frozen")
    await record_finding(db, slip_id=sample.sample[0], finding=Finding.MISSING, actor="user:bureau")
    stored = await frozen_statement(db, year=2024, quarter=2)
    assert stored is not None and stored.statement == frozen.statement  # unchanged by the later finding
    current = await quarterly_statement(db, year=2024, quarter=2)
    assert current.payable_fen == 2 * 14100
    [changed] = differences(stored.statement, current)
    assert changed.frozen is not None and changed.current is not None
    assert (changed.frozen.payable_fen, changed.current.payable_fen) == (3 * 14100, 2 * 14100)
    assert (changed.supplier, changed.gas_type, changed.community_code) == ("乌审中燃", "NG", COMMUNITY)
    assert sample.sample[0] in slips

    # The stored statement is append-only in the database too.
    for sql in (
        "UPDATE settlement_statement_line SET payable_fen = 0, government_fen = 0",
        "DELETE FROM settlement_statement_line",
        "UPDATE settlement_statement SET payable_fen = 0",
        "DELETE FROM settlement_statement",
    ):
        with pytest.raises(asyncpg.RaiseError, match="append-only"):
            await db.execute(sql)
    workbook = load_workbook(io.BytesIO(await statement_xlsx(db, stored.statement, frozen_at=stored.frozen_at)))
    assert str(workbook["按供气单位"]["B1"].value).startswith("已结算冻结")
