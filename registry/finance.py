"""Money of the programme in integer fen: prices with an effective date, the 4:3:3 split, the household ledger.

Rounding rule (deterministic, documented): the government and resident shares are each
``price_fen * ratio_bp // 10000`` (rounded down to the fen); whatever remains goes to the company, so
the three shares always add up to the price exactly. NG and LPG are separate budget lines everywhere.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from enum import StrEnum

import asyncpg

from registry.queries import Conn

_LOGGER = logging.getLogger(__name__)

#: Households connected after this date are outside the programme and pay the whole price.
PROGRAMME_END = date(2024, 12, 31)
BASIS_POINTS = 10000


class LedgerKind(StrEnum):
    """Kinds of money movement recorded per household."""

    RESIDENT_COLLECTED = "resident_collected"  # the community collected the resident's share
    RESIDENT_PAID = "resident_paid"  # the community paid the resident share on to the supplier
    GOVERNMENT_PAID = "government_paid"  # the housing bureau paid the government share to the supplier


class FinanceError(Exception):
    """A money rule was broken (no price in force, overpayment, ...)."""


@dataclass(frozen=True)
class Price:
    """A price row in force from ``effective_from``: total in fen and the split in basis points."""

    id: int
    gas_type: str
    item: str
    effective_from: date
    price_fen: int
    company_bp: int
    government_bp: int
    resident_bp: int


@dataclass(frozen=True)
class Split:
    """Who pays what of one kit, in fen; the parts always sum to ``total_fen``."""

    total_fen: int
    company_fen: int
    government_fen: int
    resident_fen: int


def split_price(price: Price, *, resident_pays_all: bool = False) -> Split:
    """Split ``price`` by its ratios (remainder to the company), or all to the resident when outside the programme."""
    total = price.price_fen
    if resident_pays_all:
        return Split(total_fen=total, company_fen=0, government_fen=0, resident_fen=total)
    if price.company_bp + price.government_bp + price.resident_bp != BASIS_POINTS:
        raise FinanceError(f"price {price.id}: ratios do not add up to {BASIS_POINTS} basis points")
    government = total * price.government_bp // BASIS_POINTS
    resident = total * price.resident_bp // BASIS_POINTS
    return Split(
        total_fen=total, company_fen=total - government - resident, government_fen=government, resident_fen=resident
    )


def format_yuan(fen: int) -> str:
    """Fen as a yuan string with two decimals (``14100`` → ``141.00``), exact for any integer."""
    sign = "-" if fen < 0 else ""
    whole, cents = divmod(abs(fen), 100)
    return f"{sign}{whole}.{cents:02d}"


def _price(row: asyncpg.Record) -> Price:
    return Price(
        id=row["id"],
        gas_type=row["gas_type"],
        item=row["item"],
        effective_from=row["effective_from"],
        price_fen=row["price_fen"],
        company_bp=row["company_bp"],
        government_bp=row["government_bp"],
        resident_bp=row["resident_bp"],
    )


async def price_in_force(conn: Conn, *, gas_type: str, on: date) -> Price:
    """The price row for ``gas_type`` in force on ``on``; FinanceError if none is."""
    row = await conn.fetchrow(
        "SELECT * FROM price_config WHERE gas_type = $1 AND effective_from <= $2 ORDER BY effective_from DESC LIMIT 1",
        gas_type,
        on,
    )
    if row is None:
        raise FinanceError(f"no {gas_type} price in force on {on.isoformat()}")
    return _price(row)


async def list_prices(conn: Conn) -> list[Price]:
    """Every price row, by gas type and effective date."""
    return [_price(r) for r in await conn.fetch("SELECT * FROM price_config ORDER BY gas_type, effective_from")]


async def add_price(
    conn: Conn,
    *,
    gas_type: str,
    item: str,
    effective_from: date,
    price_fen: int,
    company_bp: int,
    government_bp: int,
    resident_bp: int,
) -> Price:
    """Add a price row taking effect on ``effective_from`` (older slips keep the price they were charged)."""
    if company_bp + government_bp + resident_bp != BASIS_POINTS:
        raise FinanceError(f"ratios must add up to {BASIS_POINTS} basis points")
    row = await conn.fetchrow(
        """
        INSERT INTO price_config (gas_type, item, effective_from, price_fen, company_bp, government_bp, resident_bp)
        VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING *
        """,
        gas_type,
        item,
        effective_from,
        price_fen,
        company_bp,
        government_bp,
        resident_bp,
    )
    assert row is not None  # INSERT ... RETURNING always returns the row
    return _price(row)


@dataclass(frozen=True)
class LedgerEntry:
    """One recorded money movement of a household."""

    id: int
    kind: LedgerKind
    amount_fen: int
    note: str | None
    recorded_by: str


@dataclass(frozen=True)
class Ledger:
    """A household's account: what is due from each party and what has moved so far, in fen."""

    household_id: int
    gas_type: str
    split: Split | None
    resident_collected_fen: int
    resident_paid_fen: int
    government_paid_fen: int
    entries: tuple[LedgerEntry, ...]
    #: No slip yet: only the resident's prepayment (contract with ``resident_prepaid``) may be collected.
    prepayment_only: bool = False

    @property
    def resident_outstanding_fen(self) -> int:
        """Resident share not yet collected by the community."""
        return 0 if self.split is None else self.split.resident_fen - self.resident_collected_fen


async def household_ledger(conn: Conn, *, household_id: int) -> Ledger:
    """The ledger of one household (due from its slip's charge, movements from the ledger)."""
    gas_type = await conn.fetchval("SELECT gas_type FROM household WHERE id = $1", household_id)
    if gas_type is None:
        raise FinanceError(f"household {household_id} not found")
    charge = await conn.fetchrow("SELECT * FROM slip_charge WHERE household_id = $1", household_id)
    rows = await conn.fetch(
        "SELECT id, kind, amount_fen, note, recorded_by FROM ledger_entry WHERE household_id = $1 ORDER BY id",
        household_id,
    )
    entries = tuple(
        LedgerEntry(
            id=r["id"],
            kind=LedgerKind(r["kind"]),
            amount_fen=r["amount_fen"],
            note=r["note"],
            recorded_by=r["recorded_by"],
        )
        for r in rows
    )

    def total(kind: LedgerKind) -> int:
        return sum(e.amount_fen for e in entries if e.kind is kind)

    split: Split | None = None
    prepaid = False
    if charge is not None:
        split = Split(
            total_fen=charge["total_fen"],
            company_fen=charge["company_fen"],
            government_fen=charge["government_fen"],
            resident_fen=charge["resident_fen"],
        )
    else:
        # 实施方案 三: a household whose kit is still valid may prepay its 30% share before installation;
        # until the slip fixes the charge, what is due is the split of the price in force when it signed.
        signed_on = await conn.fetchval(
            "SELECT signed_on FROM household_contract WHERE household_id = $1 AND resident_prepaid", household_id
        )
        if signed_on is not None:
            split = split_price(await price_in_force(conn, gas_type=gas_type, on=signed_on))
            prepaid = True
    return Ledger(
        household_id=household_id,
        gas_type=gas_type,
        split=split,
        resident_collected_fen=total(LedgerKind.RESIDENT_COLLECTED),
        resident_paid_fen=total(LedgerKind.RESIDENT_PAID),
        government_paid_fen=total(LedgerKind.GOVERNMENT_PAID),
        entries=entries,
        prepayment_only=prepaid,
    )


async def record_movement(
    conn: Conn, *, household_id: int, kind: LedgerKind, amount_fen: int, actor: str, note: str | None = None
) -> LedgerEntry:
    """Append a money movement; refused if it would exceed what is due (or if nothing is due yet)."""
    if amount_fen <= 0:
        raise FinanceError("amount must be a positive number of fen")
    async with conn.transaction():
        # Serialise movements of one household so two clerks cannot overpay it together.
        await conn.execute("SELECT 1 FROM household WHERE id = $1 FOR UPDATE", household_id)
        ledger = await household_ledger(conn, household_id=household_id)
        if ledger.split is None:
            raise FinanceError(f"household {household_id} has no confirmation slip yet; nothing is due")
        if ledger.prepayment_only and kind is not LedgerKind.RESIDENT_COLLECTED:
            raise FinanceError(f"household {household_id} has no confirmation slip yet; only a prepayment is due")
        limits = {
            LedgerKind.RESIDENT_COLLECTED: (ledger.split.resident_fen, ledger.resident_collected_fen),
            LedgerKind.RESIDENT_PAID: (ledger.resident_collected_fen, ledger.resident_paid_fen),
            LedgerKind.GOVERNMENT_PAID: (ledger.split.government_fen, ledger.government_paid_fen),
        }
        limit, done = limits[kind]
        if done + amount_fen > limit:
            raise FinanceError(f"{kind.value} of {amount_fen} fen exceeds what is due ({limit - done} fen left)")
        row = await conn.fetchrow(
            """
            INSERT INTO ledger_entry (household_id, gas_type, kind, amount_fen, note, recorded_by)
            VALUES ($1, $2, $3, $4, $5, $6) RETURNING id
            """,
            household_id,
            ledger.gas_type,
            kind.value,
            amount_fen,
            note,
            actor,
        )
    assert row is not None  # INSERT ... RETURNING always returns the row
    _LOGGER.info("ledger household=%d %s %d fen", household_id, kind.value, amount_fen)
    return LedgerEntry(id=row["id"], kind=kind, amount_fen=amount_fen, note=note, recorded_by=actor)
