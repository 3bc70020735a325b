"""Households: where they are, what gas they use, whether they are monitored; scoped by role."""

from __future__ import annotations

from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Path, Query, status
from pydantic import JsonValue, TypeAdapter

from registry import audit, queries
from registry.auth import CurrentUser, Role, User, authorize_household, require_roles, scope_for
from registry.deps import (
    BIGINT_MAX,
    DEFAULT_LIMIT,
    BigIntId,
    ConnDep,
    CountCacheDep,
    CursorCodec,
    CursorQuery,
    ExactTotalQuery,
    LimitQuery,
    StateDep,
    TodayDep,
    list_snapshot,
    page_total,
)
from registry.models import (
    ContactPublic,
    DevicePublic,
    GasType,
    HouseholdCreate,
    HouseholdDetailPublic,
    HouseholdPublic,
    HouseholdsPublic,
    HouseholdUpdate,
    LinkPublic,
    mask_name,
    mask_phone,
)

router = APIRouter(prefix="/households", tags=["households"])

_CURSOR = CursorCodec(TypeAdapter(tuple[BigIntId]))
_CODE_PATTERN = r"^[0-9]{12}$"

HouseholdIdPath = Annotated[int, Path(ge=1, le=BIGINT_MAX, description="Household id.")]
Editor = Annotated[User, Depends(require_roles(Role.ADMIN, Role.COMMUNITY_STAFF))]

_FORBIDDEN: dict[int | str, dict[str, Any]] = {
    status.HTTP_403_FORBIDDEN: {"description": "Outside the caller's community, supplier or work."}
}


@router.get("")
async def read_households(
    conn: ConnDep,
    user: CurrentUser,
    state: StateDep,
    counts: CountCacheDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
    town_code: Annotated[str | None, Query(pattern=_CODE_PATTERN, description="12-digit town code.")] = None,
    community_code: Annotated[str | None, Query(pattern=_CODE_PATTERN, description="12-digit community code.")] = None,
    gas_type: GasType | None = None,
    exact_total: ExactTotalQuery = False,
) -> HouseholdsPublic:
    """List the households the caller may see, in id order."""
    after = _CURSOR.decode(cursor)
    scope = scope_for(user)
    filters = {"town_code": town_code, "community_code": community_code, "gas_type": gas_type}
    async with list_snapshot(conn, exact_total=exact_total):
        rows = await queries.list_households(
            conn=conn, limit=limit + 1, after=None if after is None else after[0], scope=scope, **filters
        )
        total = await page_total(
            conn=conn,
            state=state,
            cache=counts,
            exact=exact_total,
            key=("households", scope, town_code, community_code, gas_type),
            count=lambda c: queries.count_households(conn=c, scope=scope, **filters),
        )
    page, next_cursor = _CURSOR.page(rows, limit=limit, key=lambda row: (row["id"],))
    # One validation of the whole page (masking included) rather than a model per row and nested part.
    return HouseholdsPublic.model_validate(
        {
            "items": [HouseholdPublic.record_data(row, personal=scope.may_see_personal_data) for row in page],
            "total": total.value,
            "total_age_s": total.age_s,
            "limit": limit,
            "has_more": next_cursor is not None,
            "next_cursor": next_cursor,
        }
    )


@router.get(
    "/{household_id}",
    responses={status.HTTP_404_NOT_FOUND: {"description": "No such household."}, **_FORBIDDEN},
)
async def read_household(
    conn: ConnDep, user: CurrentUser, today: TodayDep, household_id: HouseholdIdPath
) -> HouseholdDetailPublic:
    """Get one household with its devices and alarm→valve links."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await authorize_household(conn, user=user, household_id=household_id)
        row = await queries.get_household(conn=conn, household_id=household_id)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"household {household_id} not found")
        devices = await queries.list_household_devices(conn=conn, household_id=household_id)
        links = await queries.list_household_links(conn=conn, household_id=household_id)
    household = HouseholdPublic.from_record(row, personal=scope_for(user).may_see_personal_data)
    return HouseholdDetailPublic(
        **dict(household),
        devices=[DevicePublic.from_record(device, today=today) for device in devices],
        links=[LinkPublic(alarm_id=link["alarm_id"], valve_id=link["valve_id"]) for link in links],
    )


@router.get("/{household_id}/contact", responses=_FORBIDDEN)
async def read_household_contact(conn: ConnDep, user: CurrentUser, household_id: HouseholdIdPath) -> ContactPublic:
    """The resident's full name and phone number, for calling back; every read is audited."""
    if not scope_for(user).may_read_phone:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"role {user.role.value!r} may not read phone numbers")
    async with conn.transaction():
        await authorize_household(conn, user=user, household_id=household_id)
        row = await conn.fetchrow("SELECT resident_name, resident_phone FROM household WHERE id = $1", household_id)
        await audit.record(conn, actor=user, action="read_phone", object=f"household:{household_id}")
    assert row is not None  # authorize_household checked it exists, in this transaction
    return ContactPublic(
        household_id=household_id, resident_name=row["resident_name"], resident_phone=row["resident_phone"]
    )


def _masked_changes(fields: dict[str, Any]) -> dict[str, JsonValue]:
    """What an audit entry records of a change: personal data masked."""
    masked: dict[str, JsonValue] = {}
    for key, value in fields.items():
        if key == "resident_phone" and isinstance(value, str):
            masked[key] = mask_phone(value)
        elif key == "resident_name" and isinstance(value, str):
            masked[key] = mask_name(value)
        else:
            masked[key] = value
    return masked


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={status.HTTP_409_CONFLICT: {"description": "That address already has a household."}, **_FORBIDDEN},
)
async def create_household(body: HouseholdCreate, conn: ConnDep, user: Editor) -> HouseholdPublic:
    """Register a household (admin, or community staff in their own community)."""
    if user.role is Role.COMMUNITY_STAFF and body.community_code != user.community_code:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN, detail="community staff may only add households of their community"
        )
    async with conn.transaction():
        if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM community WHERE code = $1)", body.community_code):
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"unknown community code {body.community_code}"
            )
        try:
            household_id: int = await conn.fetchval(
                """
                INSERT INTO household (community_code, building, unit, room, gas_type, supplier, resident_name,
                                       resident_phone, hazard)
                VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                RETURNING id
                """,
                body.community_code,
                body.building,
                body.unit,
                body.room,
                body.gas_type,
                body.supplier,
                body.resident_name,
                body.resident_phone,
                body.hazard,
            )
        except asyncpg.UniqueViolationError as err:
            raise HTTPException(
                status.HTTP_409_CONFLICT,
                detail=f"{body.community_code} {body.building}-{body.unit}-{body.room} already has a household",
            ) from err
        await audit.record(
            conn,
            actor=user,
            action="household_created",
            object=f"household:{household_id}",
            detail=_masked_changes(body.model_dump()),
        )
        row = await queries.get_household(conn=conn, household_id=household_id)
    if row is None:  # pragma: no cover - written or checked in this very transaction
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"household {household_id} not found")
    return HouseholdPublic.from_record(row)


@router.patch("/{household_id}", responses=_FORBIDDEN)
async def update_household(
    body: HouseholdUpdate, conn: ConnDep, user: Editor, household_id: HouseholdIdPath
) -> HouseholdPublic:
    """Change a household's supplier, resident or recorded hazard (admin, or staff of its community)."""
    changes = body.model_dump(exclude_unset=True)
    async with conn.transaction():
        await authorize_household(conn, user=user, household_id=household_id)
        if changes:
            columns = list(changes)  # validated field names of HouseholdUpdate, never user text
            assignments = ", ".join(f"{column} = ${i}" for i, column in enumerate(columns, start=2))
            await conn.execute(
                f"UPDATE household SET {assignments}, updated_at = now() WHERE id = $1",
                household_id,
                *(changes[column] for column in columns),
            )
            await audit.record(
                conn,
                actor=user,
                action="household_updated",
                object=f"household:{household_id}",
                detail=_masked_changes(changes),
            )
        row = await queries.get_household(conn=conn, household_id=household_id)
    if row is None:  # pragma: no cover - written or checked in this very transaction
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"household {household_id} not found")
    return HouseholdPublic.from_record(row)
