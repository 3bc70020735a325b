"""Money in integer fen: configured prices and ratios, deterministic rounding, the household ledger."""

from __future__ import annotations

from datetime import date

import asyncpg
import pytest

from registry.contracts import ContractError, Eligibility, eligibility, household_eligibility, record_contract
from registry.finance import (
    FinanceError,
    LedgerKind,
    Price,
    Split,
    add_price,
    format_yuan,
    household_ledger,
    price_in_force,
    record_movement,
    split_price,
)
from registry.slips import create_slip
from tests.registry.test_rosters import add_places
from tests.registry.test_slips import TODAY, add_household


def _price(total: int, company: int = 4000, government: int = 3000, resident: int = 3000) -> Price:
    return Price(1, "NG", "kit", date(2024, 1, 1), total, company, government, resident)


def test_split_of_the_seed_prices() -> None:
    """The seed's numbers: 47000 → 18800/14100/14100 and 22300 → 8920/6690/6690."""
    assert split_price(_price(47000)) == Split(47000, 18800, 14100, 14100)
    assert split_price(_price(22300)) == Split(22300, 8920, 6690, 6690)


def test_rounding_remainder_goes_to_the_company() -> None:
    """Government and resident shares round down; the company takes the remainder, so parts always sum."""
    split = split_price(_price(47001))
    assert split == Split(47001, 18801, 14100, 14100)
    for total in range(1, 2000):
        parts = split_price(_price(total, 3333, 3333, 3334))
        assert parts.company_fen + parts.government_fen + parts.resident_fen == total
        assert parts.government_fen == total * 3333 // 10000


def test_bad_ratios_are_refused() -> None:
    """Ratios must add up to 100%."""
    with pytest.raises(FinanceError, match="basis points"):
        split_price(_price(47000, 4000, 3000, 2000))


def test_fen_arithmetic_is_exact_for_the_whole_programme() -> None:
    """36,000 NG + 4,000 LPG households: every total is exact in fen and the two budget lines stay apart."""
    ng = [split_price(_price(47000)) for _ in range(36000)]
    lpg = [split_price(_price(22300)) for _ in range(4000)]
    assert sum(s.total_fen for s in ng) == 1_692_000_000  # 1692万元, the published NG total
    assert sum(s.government_fen for s in ng) == 507_600_000  # 5,076,000 元
    assert sum(s.government_fen for s in lpg) == 26_760_000  # 267,600 元
    assert sum(s.company_fen + s.government_fen + s.resident_fen for s in ng + lpg) == 1_692_000_000 + 89_200_000
    assert format_yuan(507_600_000) == "5076000.00"
    assert format_yuan(6690) == "66.90"
    assert format_yuan(-5) == "-0.05"


async def test_prices_are_configuration_with_an_effective_date(db: asyncpg.Connection) -> None:
    """The migration seeds the programme prices; a new row takes effect from its date, older dates keep theirs."""
    ng = await price_in_force(db, gas_type="NG", on=date(2024, 6, 1))
    assert (ng.price_fen, ng.company_bp, ng.government_bp, ng.resident_bp) == (47000, 4000, 3000, 3000)
    lpg = await price_in_force(db, gas_type="LPG", on=date(2024, 6, 1))
    assert lpg.price_fen == 22300
    await add_price(
        db,
        gas_type="NG",
        item="新价",
        effective_from=date(2025, 1, 1),
        price_fen=48000,
        company_bp=4000,
        government_bp=3000,
        resident_bp=3000,
    )
    assert (await price_in_force(db, gas_type="NG", on=date(2025, 2, 1))).price_fen == 48000
    assert (await price_in_force(db, gas_type="NG", on=date(2024, 12, 31))).price_fen == 47000
    with pytest.raises(FinanceError, match="no NG price"):
        await price_in_force(db, gas_type="NG", on=date(2023, 1, 1))
    with pytest.raises(FinanceError, match="basis points"):
        await add_price(
            db,
            gas_type="NG",
            item="x",
            effective_from=date(2026, 1, 1),
            price_fen=1,
            company_bp=1,
            government_bp=1,
            resident_bp=1,
        )


async def test_household_ledger_due_collected_paid(db: asyncpg.Connection) -> None:
    """Due comes from the slip; the community collects and pays on; overpaying is refused; entries are append-only."""
    await add_places(db)
    household = await add_household(db, room="101")
    with pytest.raises(FinanceError, match="nothing is due"):
        await record_movement(db, household_id=household, kind=LedgerKind.RESIDENT_COLLECTED, amount_fen=100, actor="u")
    await create_slip(db, household_id=household, installed_on=TODAY, actor="u", today=TODAY)
    await record_movement(db, household_id=household, kind=LedgerKind.RESIDENT_COLLECTED, amount_fen=10000, actor="u")
    with pytest.raises(FinanceError, match="exceeds"):
        await record_movement(db, household_id=household, kind=LedgerKind.RESIDENT_PAID, amount_fen=10001, actor="u")
    await record_movement(db, household_id=household, kind=LedgerKind.RESIDENT_COLLECTED, amount_fen=4100, actor="u")
    await record_movement(db, household_id=household, kind=LedgerKind.RESIDENT_PAID, amount_fen=14100, actor="u")
    with pytest.raises(FinanceError, match="exceeds"):
        await record_movement(db, household_id=household, kind=LedgerKind.GOVERNMENT_PAID, amount_fen=14101, actor="u")
    with pytest.raises(FinanceError, match="positive"):
        await record_movement(db, household_id=household, kind=LedgerKind.GOVERNMENT_PAID, amount_fen=0, actor="u")
    ledger = await household_ledger(db, household_id=household)
    assert ledger.split == Split(47000, 18800, 14100, 14100)
    assert (ledger.resident_collected_fen, ledger.resident_paid_fen, ledger.government_paid_fen) == (14100, 14100, 0)
    assert ledger.resident_outstanding_fen == 0
    assert len(ledger.entries) == 3
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await db.execute("DELETE FROM ledger_entry")


def test_eligibility_rules() -> None:
    """Not installed or expired → must; installed and valid → optional; connected after 2024 → resident pays all."""
    today = date(2024, 6, 1)
    assert eligibility(gas_connected_on=date(2010, 1, 1), kit_expires_on=None, today=today) is Eligibility.MUST_INSTALL
    assert (
        eligibility(gas_connected_on=date(2010, 1, 1), kit_expires_on=date(2024, 6, 1), today=today)
        is Eligibility.MUST_INSTALL
    )
    assert (
        eligibility(gas_connected_on=date(2010, 1, 1), kit_expires_on=date(2026, 1, 1), today=today)
        is Eligibility.OPTIONAL
    )
    assert eligibility(gas_connected_on=None, kit_expires_on=date(2026, 1, 1), today=today) is Eligibility.OPTIONAL
    assert (
        eligibility(gas_connected_on=date(2025, 1, 1), kit_expires_on=None, today=today)
        is Eligibility.RESIDENT_PAYS_ALL
    )
    assert (
        eligibility(gas_connected_on=date(2024, 12, 31), kit_expires_on=None, today=today) is Eligibility.MUST_INSTALL
    )


async def _fit_alarm(db: asyncpg.Connection, household: int, *, installed_on: date, device_id: str) -> None:
    await db.execute(
        "INSERT INTO device_model (id, manufacturer, model, kind, gas_type, service_life_years)"
        " VALUES ('alarm-5y', '某厂', 'JT-1', 'alarm', 'NG', 5) ON CONFLICT DO NOTHING"
    )
    await db.execute(
        "INSERT INTO device (id, household_id, model_id, serial, installed_on) VALUES ($1, $2, 'alarm-5y', $1, $3)",
        device_id,
        household,
        installed_on,
    )


async def test_household_eligibility_and_contract(db: asyncpg.Connection) -> None:
    """Eligibility follows the fitted alarm's expiry; a contract is recorded once per household."""
    await add_places(db)
    fresh = await add_household(db, room="1")
    old = await add_household(db, room="2")
    bare = await add_household(db, room="3")
    await _fit_alarm(db, fresh, installed_on=date(2022, 1, 1), device_id="A-1")
    await _fit_alarm(db, old, installed_on=date(2018, 1, 1), device_id="A-2")
    today = date(2024, 6, 1)
    results = {h: await household_eligibility(db, household_id=h, today=today) for h in (fresh, old, bare)}
    assert results[fresh] is not None and results[fresh].eligibility is Eligibility.OPTIONAL
    assert results[fresh].kit_expires_on == date(2027, 1, 1)
    assert results[old] is not None and results[old].eligibility is Eligibility.MUST_INSTALL
    assert results[bare] is not None and results[bare].eligibility is Eligibility.MUST_INSTALL
    await record_contract(db, household_id=fresh, signed_on=date(2024, 5, 1), resident_prepaid=True, actor="u")
    signed = await household_eligibility(db, household_id=fresh, today=today)
    assert signed is not None and signed.contract_signed_on == date(2024, 5, 1) and signed.resident_prepaid
    with pytest.raises(ContractError, match="already"):
        await record_contract(db, household_id=fresh, signed_on=date(2024, 5, 2), resident_prepaid=False, actor="u")
    with pytest.raises(ContractError, match="not found"):
        await record_contract(db, household_id=999999, signed_on=date(2024, 5, 2), resident_prepaid=False, actor="u")
    assert await household_eligibility(db, household_id=999999, today=today) is None


async def test_prepaying_household_may_pay_its_share_before_installation(db: asyncpg.Connection) -> None:
    """With a prepay contract the resident share can be collected before any slip; nothing else can."""
    await add_places(db)
    household = await add_household(db, room="101")
    await record_contract(db, household_id=household, signed_on=date(2024, 4, 1), resident_prepaid=True, actor="u")
    await record_movement(db, household_id=household, kind=LedgerKind.RESIDENT_COLLECTED, amount_fen=14100, actor="u")
    with pytest.raises(FinanceError, match="only a prepayment"):
        await record_movement(db, household_id=household, kind=LedgerKind.RESIDENT_PAID, amount_fen=100, actor="u")
    with pytest.raises(FinanceError, match="exceeds"):
        await record_movement(db, household_id=household, kind=LedgerKind.RESIDENT_COLLECTED, amount_fen=1, actor="u")
    ledger = await household_ledger(db, household_id=household)
    assert ledger.prepayment_only and ledger.resident_outstanding_fen == 0
    await create_slip(db, household_id=household, installed_on=TODAY, actor="u", today=TODAY)
    after = await household_ledger(db, household_id=household)
    assert not after.prepayment_only and after.resident_collected_fen == 14100
    await record_movement(db, household_id=household, kind=LedgerKind.RESIDENT_PAID, amount_fen=14100, actor="u")
