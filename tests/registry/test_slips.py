"""Confirmation slips: five signatures with server time, the fixed charge, verification refusals, printing."""

from __future__ import annotations

from datetime import date

import asyncpg
import pytest

from registry.finance import Split
from registry.slips import (
    IncompleteSlipError,
    SignatureRole,
    SlipError,
    create_slip,
    get_slip_by_code,
    render_html,
    sign_slip,
    verify_month,
    verify_slip,
)
from tests.registry.test_rosters import COMMUNITY, RURAL_COMMUNITY, add_places

TODAY = date(2024, 6, 20)
SIGNERS = {
    SignatureRole.COMMUNITY_SECRETARY: "燕奕景",
    SignatureRole.VILLAGE_SECRETARY: "俄日克图",
    SignatureRole.GRID_WORKER: "网格员甲",
    SignatureRole.INSTALLER: "安装员乙",
    SignatureRole.RESIDENT: "住户丙",
}


async def add_household(
    db: asyncpg.Connection,
    *,
    room: str,
    community: str = COMMUNITY,
    gas_type: str = "NG",
    supplier: str = "乌审中燃",
    connected_on: date | None = date(2019, 1, 1),
) -> int:
    """One household; returns its id."""
    household_id: int = await db.fetchval(
        "INSERT INTO household (community_code, building, unit, room, gas_type, supplier, resident_name,"
        " resident_phone, gas_connected_on) VALUES ($1, '1', '1', $2, $3, $4, '张三', '13912345678', $5) RETURNING id",
        community,
        room,
        gas_type,
        supplier,
        connected_on,
    )
    return household_id


async def signed_slip(
    db: asyncpg.Connection,
    household_id: int,
    *,
    installed_on: date = date(2024, 6, 3),
    skip: SignatureRole | None = None,
) -> int:
    """A slip for ``household_id`` signed by every party except ``skip``; returns its id."""
    slip = await create_slip(
        db, household_id=household_id, installed_on=installed_on, actor="user:installer", today=TODAY
    )
    for role, name in SIGNERS.items():
        if role is not skip:
            await sign_slip(db, slip_id=slip.id, role=role, signer_name=name, actor="user:installer")
    return slip.id


async def test_five_signatures_with_server_time(db: asyncpg.Connection) -> None:
    """Each party signs once with name and role; the server sets the time; a second signature is refused."""
    await add_places(db)
    household = await add_household(db, room="101")
    slip = await create_slip(db, household_id=household, installed_on=date(2024, 6, 3), actor="user:i", today=TODAY)
    assert slip.missing == list(SignatureRole) and not slip.complete
    before = await db.fetchval("SELECT now()")
    for role, name in SIGNERS.items():
        slip = await sign_slip(db, slip_id=slip.id, role=role, signer_name=name, actor="user:i")
    assert slip.complete
    assert [(s.role, s.signer_name) for s in slip.signatures] == list(SIGNERS.items())
    assert all(s.signed_at >= before for s in slip.signatures)
    with pytest.raises(SlipError, match="已在确认单"):
        await sign_slip(db, slip_id=slip.id, role=SignatureRole.RESIDENT, signer_name="冒名", actor="user:i")
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await db.execute("UPDATE slip_signature SET signer_name = 'x'")


async def test_blank_signer_name_is_refused(db: asyncpg.Connection) -> None:
    """A signature needs a name."""
    await add_places(db)
    slip = await create_slip(
        db, household_id=await add_household(db, room="101"), installed_on=TODAY, actor="u", today=TODAY
    )
    with pytest.raises(SlipError, match="不能为空"):
        await sign_slip(db, slip_id=slip.id, role=SignatureRole.RESIDENT, signer_name="  ", actor="u")


async def test_one_slip_per_household(db: asyncpg.Connection) -> None:
    """A household gets one slip; a second is refused."""
    await add_places(db)
    household = await add_household(db, room="101")
    await create_slip(db, household_id=household, installed_on=TODAY, actor="u", today=TODAY)
    with pytest.raises(SlipError, match="already has"):
        await create_slip(db, household_id=household, installed_on=TODAY, actor="u", today=TODAY)


async def test_slip_fixes_the_charge_in_fen(db: asyncpg.Connection) -> None:
    """NG 47000 = 18800 + 14100 + 14100; LPG 22300 = 8920 + 6690 + 6690; late connections pay everything."""
    await add_places(db)
    ng = await create_slip(
        db, household_id=await add_household(db, room="1"), installed_on=TODAY, actor="u", today=TODAY
    )
    lpg_household = await add_household(db, room="2", community=RURAL_COMMUNITY, gas_type="LPG", supplier="荣昌")
    lpg = await create_slip(db, household_id=lpg_household, installed_on=TODAY, actor="u", today=TODAY)
    late_household = await add_household(db, room="3", connected_on=date(2025, 3, 1))
    late = await create_slip(db, household_id=late_household, installed_on=date(2025, 4, 1), actor="u", today=TODAY)
    assert ng.charge == Split(47000, 18800, 14100, 14100)
    assert lpg.charge == Split(22300, 8920, 6690, 6690)
    assert late.charge == Split(47000, 0, 0, 47000) and late.resident_pays_all


async def test_four_signatures_are_refused_for_verification(db: asyncpg.Connection) -> None:
    """A slip without the resident's signature cannot be verified, alone or in the monthly run."""
    await add_places(db)
    complete = await signed_slip(db, await add_household(db, room="101"))
    four = await signed_slip(db, await add_household(db, room="102"), skip=SignatureRole.RESIDENT)
    with pytest.raises(IncompleteSlipError, match="居民") as refused:
        await verify_slip(db, slip_id=four, actor="user:bureau")
    assert refused.value.missing == (SignatureRole.RESIDENT,)
    run = await verify_month(db, month=date(2024, 6, 1), actor="user:bureau")
    assert run.verified == (complete,)
    assert [(e.slip_id, e.missing) for e in run.refused] == [(four, (SignatureRole.RESIDENT,))]
    states = dict(await db.fetch("SELECT id, verified_at IS NOT NULL FROM confirmation_slip"))
    assert states == {complete: True, four: False}
    stored = await db.fetchval("SELECT refused FROM slip_verification WHERE id = $1", run.verification_id)
    assert stored == [{"slip_id": four, "missing": ["resident"]}]


async def test_database_refuses_to_verify_an_incomplete_slip(db: asyncpg.Connection) -> None:
    """Even a direct UPDATE cannot verify a slip lacking a signature (trigger)."""
    await add_places(db)
    four = await signed_slip(db, await add_household(db, room="101"), skip=SignatureRole.GRID_WORKER)
    verification = await db.fetchval(
        "INSERT INTO slip_verification (month, verified_count, recorded_by) VALUES ('2024-06-01', 0, 'x') RETURNING id"
    )
    with pytest.raises(asyncpg.RaiseError, match="lacks signatures"):
        await db.execute(
            "UPDATE confirmation_slip SET verification_id = $1, verified_at = now() WHERE id = $2", verification, four
        )


async def test_verified_slip_is_closed(db: asyncpg.Connection) -> None:
    """A verified slip cannot be verified again nor signed again."""
    await add_places(db)
    slip = await signed_slip(db, await add_household(db, room="101"))
    await verify_slip(db, slip_id=slip, actor="user:bureau")
    with pytest.raises(SlipError, match="already verified"):
        await verify_slip(db, slip_id=slip, actor="user:bureau")
    run = await verify_month(db, month=date(2024, 6, 1), actor="user:bureau")
    assert run.verified == () and run.refused == ()


async def test_html_slip_is_chinese_and_links_back(db: asyncpg.Connection) -> None:
    """The printable HTML names the five parties in Chinese, shows the charge in yuan and carries the code."""
    await add_places(db)
    slip_id = await signed_slip(db, await add_household(db, room="101"))
    code = await db.fetchval("SELECT verify_code FROM confirmation_slip WHERE id = $1", slip_id)
    slip = await get_slip_by_code(db, code=code.lower())
    assert slip is not None and slip.id == slip_id
    html = render_html(slip, verify_url=f"https://gg.example/slips/verify/{code}")
    for label in ("社区书记", "村支书", "网格员", "燃气公司安装人员", "居民", "燕奕景", "470.00", "141.00", "188.00"):
        assert label in html
    assert f"https://gg.example/slips/verify/{code}" in html
    assert "<svg" in html
    assert "13912345678" not in html
