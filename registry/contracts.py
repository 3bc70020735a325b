"""Eligibility under the programme and the contract signed (签订) per household.

实施方案 三: not installed or expired → must install; installed and not expired → optional (the
resident may prepay the 30% share and is installed at expiry); gas connected after the programme end
(2024-12-31) → outside the programme, the resident pays the whole price.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from enum import StrEnum

import asyncpg

from registry.finance import PROGRAMME_END
from registry.queries import Conn

_LOGGER = logging.getLogger(__name__)


class Eligibility(StrEnum):
    """What the programme says about a household."""

    MUST_INSTALL = "must_install"
    OPTIONAL = "optional"
    RESIDENT_PAYS_ALL = "resident_pays_all"


class ContractError(Exception):
    """A contract cannot be recorded (unknown household, already signed)."""


def eligibility(*, gas_connected_on: date | None, kit_expires_on: date | None, today: date) -> Eligibility:
    """Classify a household: ``kit_expires_on`` is the earliest expiry of its fitted safety kit (None: none fitted)."""
    if gas_connected_on is not None and gas_connected_on > PROGRAMME_END:
        return Eligibility.RESIDENT_PAYS_ALL
    if kit_expires_on is None or kit_expires_on <= today:
        return Eligibility.MUST_INSTALL
    return Eligibility.OPTIONAL


# The safety kit of a household: NG needs an alarm, LPG a regulator; the earliest expiry of any fitted device counts.
_KIT_SQL = """
SELECT h.id, h.gas_type, h.gas_connected_on,
       CASE WHEN EXISTS (SELECT 1 FROM device d JOIN device_model m ON m.id = d.model_id
                         WHERE d.household_id = h.id
                           AND m.kind = CASE h.gas_type WHEN 'NG' THEN 'alarm' ELSE 'regulator' END)
            THEN (SELECT min((coalesce(d.installed_on, d.manufactured_on)
                              + make_interval(years => m.service_life_years))::date)
                  FROM device d JOIN device_model m ON m.id = d.model_id WHERE d.household_id = h.id)
       END AS kit_expires_on
FROM household h WHERE h.id = $1
"""


@dataclass(frozen=True)
class HouseholdEligibility:
    """A household's eligibility with the facts it rests on."""

    household_id: int
    gas_type: str
    gas_connected_on: date | None
    kit_expires_on: date | None
    eligibility: Eligibility
    contract_signed_on: date | None
    resident_prepaid: bool


async def household_eligibility(conn: Conn, *, household_id: int, today: date) -> HouseholdEligibility | None:
    """Eligibility and contract state of one household, or None if it does not exist."""
    row: asyncpg.Record | None = await conn.fetchrow(_KIT_SQL, household_id)
    if row is None:
        return None
    contract = await conn.fetchrow(
        "SELECT signed_on, resident_prepaid FROM household_contract WHERE household_id = $1", household_id
    )
    return HouseholdEligibility(
        household_id=household_id,
        gas_type=row["gas_type"],
        gas_connected_on=row["gas_connected_on"],
        kit_expires_on=row["kit_expires_on"],
        eligibility=eligibility(
            gas_connected_on=row["gas_connected_on"], kit_expires_on=row["kit_expires_on"], today=today
        ),
        contract_signed_on=None if contract is None else contract["signed_on"],
        resident_prepaid=False if contract is None else contract["resident_prepaid"],
    )


async def record_contract(
    conn: Conn, *, household_id: int, signed_on: date, resident_prepaid: bool, actor: str
) -> None:
    """Record that the household's contract was signed; ContractError if unknown or already recorded."""
    try:
        inserted = await conn.fetchval(
            """
            INSERT INTO household_contract (household_id, signed_on, resident_prepaid, recorded_by)
            VALUES ($1, $2, $3, $4) ON CONFLICT (household_id) DO NOTHING RETURNING household_id
            """,
            household_id,
            signed_on,
            resident_prepaid,
            actor,
        )
    except asyncpg.ForeignKeyViolationError as err:
        raise ContractError(f"household {household_id} not found") from err
    if inserted is None:
        raise ContractError(f"household {household_id} already has a signed contract")
    _LOGGER.info("contract household=%d signed %s", household_id, signed_on)
