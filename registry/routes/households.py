"""Households: where they are, what gas they use and whether they are monitored."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, status
from pydantic import TypeAdapter

from registry import queries
from registry.deps import (
    BIGINT_MAX,
    DEFAULT_LIMIT,
    BigIntId,
    ConnDep,
    CursorCodec,
    CursorQuery,
    LimitQuery,
    TodayDep,
)
from registry.models import (
    DevicePublic,
    GasType,
    HouseholdDetailPublic,
    HouseholdPublic,
    HouseholdsPublic,
    LinkPublic,
)

router = APIRouter(prefix="/households", tags=["households"])

_CURSOR = CursorCodec(TypeAdapter(tuple[BigIntId]))
_CODE_PATTERN = r"^[0-9]{12}$"

HouseholdIdPath = Annotated[int, Path(ge=1, le=BIGINT_MAX, description="Household id.")]


@router.get("")
async def read_households(
    conn: ConnDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
    town_code: Annotated[str | None, Query(pattern=_CODE_PATTERN, description="12-digit town code.")] = None,
    community_code: Annotated[str | None, Query(pattern=_CODE_PATTERN, description="12-digit community code.")] = None,
    gas_type: GasType | None = None,
) -> HouseholdsPublic:
    """List households in id order."""
    after = _CURSOR.decode(cursor)
    filters = {"town_code": town_code, "community_code": community_code, "gas_type": gas_type}
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        total = await queries.count_households(conn=conn, **filters)
        rows = await queries.list_households(
            conn=conn, limit=limit + 1, after=None if after is None else after[0], **filters
        )
    page, next_cursor = _CURSOR.page(rows, limit=limit, key=lambda row: (row["id"],))
    return HouseholdsPublic(
        items=[HouseholdPublic.from_record(row) for row in page],
        total=total,
        limit=limit,
        next_cursor=next_cursor,
    )


@router.get("/{household_id}", responses={status.HTTP_404_NOT_FOUND: {"description": "No such household."}})
async def read_household(conn: ConnDep, today: TodayDep, household_id: HouseholdIdPath) -> HouseholdDetailPublic:
    """Get one household with its devices and alarm→valve links."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        row = await queries.get_household(conn=conn, household_id=household_id)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"household {household_id} not found")
        devices = await queries.list_household_devices(conn=conn, household_id=household_id)
        links = await queries.list_household_links(conn=conn, household_id=household_id)
    household = HouseholdPublic.from_record(row)
    return HouseholdDetailPublic(
        **dict(household),
        devices=[DevicePublic.from_record(device, today=today) for device in devices],
        links=[LinkPublic(alarm_id=link["alarm_id"], valve_id=link["valve_id"]) for link in links],
    )
