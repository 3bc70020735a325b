"""The device catalogue (procurement step) and the places: towns and communities by statistical code."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Path, status
from pydantic import Field

from registry import audit
from registry.auth import CurrentUser, Role, User, require_roles
from registry.deps import ConnDep
from registry.models import (
    CODE_PATTERN,
    CommunityDetailPublic,
    DeviceModelCreate,
    DeviceModelDetailPublic,
    _Input,
    _Public,
)

router = APIRouter(tags=["catalogue"])

Admin = Annotated[User, Depends(require_roles(Role.ADMIN))]

_MODEL_COLUMNS = (
    "id, manufacturer, model, kind, gas_type, low_alarm_lel, high_alarm_lel, heartbeat_s, close_confirm_timeout_s,"
    " service_life_years, bearer"
)


class DeviceModelsPublic(_Public):
    """Every model of the catalogue."""

    items: list[DeviceModelDetailPublic]


class CommunitiesPublic(_Public):
    """Every community, by code."""

    items: list[CommunityDetailPublic]


class CommunityCreate(_Input):
    """A community (社区/嘎查) under a town; the code is its identity, the name display only."""

    code: Annotated[str, Field(pattern=CODE_PATTERN)]
    town_code: Annotated[str, Field(pattern=CODE_PATTERN)]
    name: Annotated[str, Field(min_length=1, max_length=100)]
    built_year: Annotated[int, Field(ge=1900, le=2100)] | None = None
    synthetic: bool = False


class CommunityUpdate(_Input):
    """What may change about a community."""

    name: Annotated[str, Field(min_length=1, max_length=100)] | None = None
    built_year: Annotated[int, Field(ge=1900, le=2100)] | None = None


@router.get("/catalogue/models")
async def read_device_models(conn: ConnDep, user: CurrentUser) -> DeviceModelsPublic:
    """The device catalogue: set points, heartbeat, close-confirmation timeout, service life, bearer."""
    rows = await conn.fetch(f"SELECT {_MODEL_COLUMNS} FROM device_model ORDER BY id")
    return DeviceModelsPublic(items=[DeviceModelDetailPublic.model_validate(dict(row)) for row in rows])


@router.get("/catalogue/models/{model_id}", responses={status.HTTP_404_NOT_FOUND: {"description": "No such model."}})
async def read_device_model(
    conn: ConnDep, user: CurrentUser, model_id: Annotated[str, Path(max_length=64)]
) -> DeviceModelDetailPublic:
    """One catalogue entry."""
    row = await conn.fetchrow(f"SELECT {_MODEL_COLUMNS} FROM device_model WHERE id = $1", model_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"device model {model_id!r} not found")
    return DeviceModelDetailPublic.model_validate(dict(row))


@router.post(
    "/catalogue/models",
    status_code=status.HTTP_201_CREATED,
    responses={status.HTTP_409_CONFLICT: {"description": "Id or manufacturer+model already present."}},
)
async def create_device_model(body: DeviceModelCreate, conn: ConnDep, user: Admin) -> DeviceModelDetailPublic:
    """Add a model to the catalogue (admin); alarms need set points, shut-off valves a confirmation timeout."""
    if body.kind == "alarm" and body.low_alarm_lel is None:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail="an alarm model needs low_alarm_lel")
    if body.low_alarm_lel is not None and body.high_alarm_lel is not None and body.high_alarm_lel < body.low_alarm_lel:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail="high_alarm_lel is below low_alarm_lel")
    if body.kind == "shutoff_valve" and body.close_confirm_timeout_s is None:
        raise HTTPException(
            status.HTTP_422_UNPROCESSABLE_CONTENT, detail="a shut-off valve model needs close_confirm_timeout_s"
        )
    values = body.model_dump()
    columns = list(values)
    async with conn.transaction():
        try:
            row = await conn.fetchrow(
                f"INSERT INTO device_model ({', '.join(columns)})"
                f" VALUES ({', '.join(f'${i}' for i in range(1, len(columns) + 1))}) RETURNING {_MODEL_COLUMNS}",
                *values.values(),
            )
        except asyncpg.UniqueViolationError as err:
            raise HTTPException(
                status.HTTP_409_CONFLICT, detail=f"model {body.id!r} ({body.manufacturer} {body.model}) exists"
            ) from err
        await audit.record(
            conn, actor=user, action="device_model_created", object=f"device_model:{body.id}", detail=values
        )
    return DeviceModelDetailPublic.model_validate(dict(row))  # type: ignore[arg-type]


_COMMUNITY_SELECT = "SELECT code, town_code, name, synthetic, built_year FROM community"


@router.get("/places/communities")
async def read_communities(conn: ConnDep, user: CurrentUser) -> CommunitiesPublic:
    """All communities with their town codes (codes are identity; names are for display)."""
    rows = await conn.fetch(f"{_COMMUNITY_SELECT} ORDER BY code")
    return CommunitiesPublic(items=[CommunityDetailPublic.model_validate(dict(row)) for row in rows])


@router.post("/places/communities", status_code=status.HTTP_201_CREATED)
async def create_community(body: CommunityCreate, conn: ConnDep, user: Admin) -> CommunityDetailPublic:
    """Add a community under an existing town (admin)."""
    async with conn.transaction():
        if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM town WHERE code = $1)", body.town_code):
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"unknown town code {body.town_code}")
        try:
            row = await conn.fetchrow(
                "INSERT INTO community (code, town_code, name, synthetic, built_year) VALUES ($1, $2, $3, $4, $5)"
                " RETURNING code, town_code, name, synthetic, built_year",
                body.code,
                body.town_code,
                body.name,
                body.synthetic,
                body.built_year,
            )
        except asyncpg.UniqueViolationError as err:
            raise HTTPException(status.HTTP_409_CONFLICT, detail=f"community {body.code} exists") from err
        await audit.record(
            conn, actor=user, action="community_created", object=f"community:{body.code}", detail=body.model_dump()
        )
    return CommunityDetailPublic.model_validate(dict(row))  # type: ignore[arg-type]


@router.patch("/places/communities/{code}")
async def update_community(
    body: CommunityUpdate, conn: ConnDep, user: Admin, code: Annotated[str, Path(pattern=CODE_PATTERN)]
) -> CommunityDetailPublic:
    """Rename a community or record when it was built (admin)."""
    changes = body.model_dump(exclude_unset=True)
    async with conn.transaction():
        row = await conn.fetchrow(f"{_COMMUNITY_SELECT} WHERE code = $1 FOR UPDATE", code)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"community {code} not found")
        if changes:
            columns = list(changes)  # field names of CommunityUpdate, never user text
            assignments = ", ".join(f"{column} = ${i}" for i, column in enumerate(columns, start=2))
            row = await conn.fetchrow(
                f"UPDATE community SET {assignments} WHERE code = $1 RETURNING code, town_code, name, synthetic,"
                " built_year",
                code,
                *(changes[column] for column in columns),
            )
            await audit.record(conn, actor=user, action="community_updated", object=f"community:{code}", detail=changes)
    return CommunityDetailPublic.model_validate(dict(row))  # type: ignore[arg-type]


class DeviceModelUpdate(_Input):
    """Set points and timing of a model that may be corrected; alerting reloads them at once."""

    low_alarm_lel: Annotated[float, Field(gt=0, le=100)] | None = None
    high_alarm_lel: Annotated[float, Field(gt=0, le=100)] | None = None
    heartbeat_s: Annotated[int, Field(gt=0)] | None = None
    close_confirm_timeout_s: Annotated[int, Field(gt=0)] | None = None
    service_life_years: Annotated[int, Field(gt=0, le=50)] | None = None
    bearer: Annotated[str, Field(max_length=40)] | None = None


@router.patch("/catalogue/models/{model_id}", responses={status.HTTP_404_NOT_FOUND: {"description": "No such model."}})
async def update_device_model(
    body: DeviceModelUpdate, conn: ConnDep, user: Admin, model_id: Annotated[str, Path(max_length=64)]
) -> DeviceModelDetailPublic:
    """Correct a model's set points or timing (admin); audited, and alerting picks it up without a restart."""
    changes = body.model_dump(exclude_unset=True)
    async with conn.transaction():
        row = await conn.fetchrow(f"SELECT {_MODEL_COLUMNS} FROM device_model WHERE id = $1 FOR UPDATE", model_id)
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"device model {model_id!r} not found")
        merged = dict(row) | changes
        low, high = merged["low_alarm_lel"], merged["high_alarm_lel"]
        if low is not None and high is not None and high < low:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail="high_alarm_lel is below low_alarm_lel")
        if changes:
            columns = list(changes)  # field names of DeviceModelUpdate, never user text
            assignments = ", ".join(f"{column} = ${i}" for i, column in enumerate(columns, start=2))
            row = await conn.fetchrow(
                f"UPDATE device_model SET {assignments} WHERE id = $1 RETURNING {_MODEL_COLUMNS}",
                model_id,
                *(changes[column] for column in columns),
            )
            await audit.record(
                conn, actor=user, action="device_model_updated", object=f"device_model:{model_id}", detail=changes
            )
    return DeviceModelDetailPublic.model_validate(dict(row))  # type: ignore[arg-type]
