"""Installed devices with their computed end of service life."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Query, status
from pydantic import TypeAdapter

from gasguard.protocol import DEVICE_ID_PATTERN
from registry import queries
from registry.auth import CurrentUser, authorize_household, scope_for
from registry.deps import (
    DEFAULT_LIMIT,
    BigIntId,
    ConnDep,
    CountCacheDep,
    CursorCodec,
    CursorQuery,
    DeviceId,
    ExactTotalQuery,
    LimitQuery,
    StateDep,
    TodayDep,
    list_snapshot,
    page_total,
)
from registry.models import DeviceDetailPublic, DeviceKind, DevicePublic, DevicesPublic, LinkPublic

router = APIRouter(prefix="/devices", tags=["devices"])

_CURSOR = CursorCodec(TypeAdapter(tuple[DeviceId]))


@router.get("")
async def read_devices(
    conn: ConnDep,
    user: CurrentUser,
    today: TodayDep,
    state: StateDep,
    counts: CountCacheDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
    kind: DeviceKind | None = None,
    household_id: Annotated[BigIntId | None, Query(description="Only this household's devices.")] = None,
    exact_total: ExactTotalQuery = False,
) -> DevicesPublic:
    """List the devices of the households the caller may see, in id order."""
    after = _CURSOR.decode(cursor)
    scope = scope_for(user)
    async with list_snapshot(conn, exact_total=exact_total):
        rows = await queries.list_devices(
            conn=conn,
            limit=limit + 1,
            after=None if after is None else after[0],
            kind=kind,
            household_id=household_id,
            scope=scope,
        )
        total = await page_total(
            conn=conn,
            state=state,
            cache=counts,
            exact=exact_total,
            key=("devices", scope, kind, household_id),
            count=lambda c: queries.count_devices(conn=c, kind=kind, household_id=household_id, scope=scope),
        )
    page, next_cursor = _CURSOR.page(rows, limit=limit, key=lambda row: (row["id"],))
    return DevicesPublic(
        items=[DevicePublic.from_record(row, today=today) for row in page],
        total=total.value,
        total_age_s=total.age_s,
        limit=limit,
        has_more=next_cursor is not None,
        next_cursor=next_cursor,
    )


@router.get("/{device_id}", responses={status.HTTP_404_NOT_FOUND: {"description": "No such device."}})
async def read_device(
    conn: ConnDep,
    user: CurrentUser,
    today: TodayDep,
    device_id: Annotated[str, Path(pattern=DEVICE_ID_PATTERN, description="Device id.")],
) -> DeviceDetailPublic:
    """Get one device with the alarm→valve links it takes part in."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        row = await queries.get_device(conn=conn, device_id=device_id)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"device {device_id!r} not found")
        await authorize_household(conn, user=user, household_id=row["household_id"])
        links = await queries.list_device_links(conn=conn, device_id=device_id)
    device = DevicePublic.from_record(row, today=today)
    return DeviceDetailPublic(
        **dict(device),
        links=[LinkPublic(alarm_id=link["alarm_id"], valve_id=link["valve_id"]) for link in links],
    )
