"""Installation work: a prioritised queue, assignment to installers, and recording the kit fitted.

Completing a job inserts the devices and the alarm→valve links in one transaction; the database's
``gg_directory`` notification makes alerting reload its directory, so the next alarm from the new
alarm closes the new valve without a restart.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Depends, HTTPException, Path, Query, status
from pydantic import Field, TypeAdapter

from gasguard.protocol import DEVICE_ID_PATTERN
from registry import audit, queries
from registry.auth import CurrentUser, Role, User, authorize_household, get_user, require_roles, scope_for
from registry.deps import (
    BIGINT_MAX,
    DEFAULT_LIMIT,
    BigIntId,
    ConnDep,
    CursorCodec,
    CursorQuery,
    LimitQuery,
    UtcDatetime,
)
from registry.models import GasType, PlacePublic, _Input, _Public

router = APIRouter(prefix="/installations", tags=["installations"])

JobIdPath = Annotated[int, Path(ge=1, le=BIGINT_MAX, description="Installation job id.")]
Planner = Annotated[User, Depends(require_roles(Role.ADMIN, Role.COMMUNITY_STAFF))]
Fitter = Annotated[User, Depends(require_roles(Role.ADMIN, Role.INSTALLER))]
QueueReader = Annotated[
    User, Depends(require_roles(Role.ADMIN, Role.COMMUNITY_STAFF, Role.INSTALLER, Role.DUTY_OPERATOR))
]

#: The programme's kit (乌政办发〔2024〕9号): what each gas type must have fitted.
REQUIRED_KIT: dict[str, frozenset[str]] = {
    "NG": frozenset({"alarm", "shutoff_valve", "self_closing_valve", "hose"}),
    "LPG": frozenset({"hose", "regulator"}),
}

_ERRORS: dict[int | str, dict[str, Any]] = {
    status.HTTP_403_FORBIDDEN: {"description": "Role or scope does not allow this."},
    status.HTTP_404_NOT_FOUND: {"description": "No such job."},
    status.HTTP_409_CONFLICT: {"description": "Not allowed in the job's current state, or a duplicate."},
}


@dataclass(frozen=True)
class FittedDevice:
    """A device as fitted, with its catalogue kind and gas type."""

    device_id: str
    kind: str
    gas_type: str


def kit_problems(
    household_gas_type: str, fitted: Sequence[FittedDevice], links: Sequence[tuple[str, str]]
) -> list[str]:
    """What is wrong with a fitted kit (empty when it is complete and consistent)."""
    problems: list[str] = []
    kinds = Counter(device.kind for device in fitted)
    missing = sorted(REQUIRED_KIT[household_gas_type] - kinds.keys())
    if missing:
        problems.append(f"{household_gas_type} kit is missing: {', '.join(missing)}")
    for device in fitted:
        if device.gas_type != household_gas_type:
            problems.append(f"{device.device_id} is a {device.gas_type} model in an {household_gas_type} household")
    by_id = {device.device_id: device for device in fitted}
    for alarm_id, valve_id in links:
        if by_id.get(alarm_id) is None or by_id[alarm_id].kind != "alarm":
            problems.append(f"link {alarm_id}→{valve_id}: {alarm_id} is not an alarm fitted in this job")
        if by_id.get(valve_id) is None or by_id[valve_id].kind != "shutoff_valve":
            problems.append(f"link {alarm_id}→{valve_id}: {valve_id} is not a shut-off valve fitted in this job")
    linked_alarms = {alarm_id for alarm_id, _ in links}
    for device in fitted:
        if device.kind == "alarm" and device.device_id not in linked_alarms:
            problems.append(f"alarm {device.device_id} is not linked to a shut-off valve")
    return problems


def default_links(fitted: Sequence[FittedDevice]) -> list[tuple[str, str]]:
    """Every fitted alarm linked to every fitted shut-off valve (the usual one and one)."""
    alarms = [device.device_id for device in fitted if device.kind == "alarm"]
    valves = [device.device_id for device in fitted if device.kind == "shutoff_valve"]
    return [(alarm, valve) for alarm in alarms for valve in valves]


class JobCreate(_Input):
    """Put a household on the installation queue."""

    household_id: BigIntId
    note: Annotated[str, Field(max_length=500)] | None = None


class JobAssign(_Input):
    """Give a job to an installer."""

    installer_id: BigIntId


class DeviceFitted(_Input):
    """One device fitted, with its identity from the label."""

    id: Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]
    model_id: Annotated[str, Field(min_length=1, max_length=64)]
    serial: Annotated[str, Field(min_length=1, max_length=64)]
    imei: Annotated[str, Field(pattern=r"^[0-9]{15}$")] | None = None
    manufactured_on: date | None = None


class LinkFitted(_Input):
    """An alarm that must close a valve."""

    alarm_id: Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]
    valve_id: Annotated[str, Field(pattern=DEVICE_ID_PATTERN)]


class JobComplete(_Input):
    """The kit actually fitted; links default to every alarm → every shut-off valve fitted."""

    installed_on: date
    devices: Annotated[list[DeviceFitted], Field(min_length=1, max_length=20)]
    links: list[LinkFitted] | None = None


class JobPublic(_Public):
    """An installation job with its household's place."""

    id: int
    household_id: int
    place: PlacePublic
    gas_type: GasType
    hazard: str | None
    built_year: int | None
    state: str
    installer_id: int | None
    note: str | None
    created_at: datetime
    assigned_at: datetime | None
    completed_at: datetime | None

    @classmethod
    def from_record(cls, row: Any) -> JobPublic:
        """Build from a job row joined with its place."""
        fields = {name: row[name] for name in cls.model_fields.keys() - {"place"}}
        return cls(**fields, place=PlacePublic.from_record(row))


class JobsPublic(_Public):
    """A page of the queue, highest priority first."""

    items: list[JobPublic]
    limit: int
    next_cursor: str | None


_JOB_SELECT = """
SELECT j.id, j.household_id, j.state, j.installer_id, j.note, j.created_at, j.assigned_at, j.completed_at,
       h.gas_type, h.hazard, c.built_year,
       h.building, h.unit, h.room,
       c.code AS community_code, c.name AS community_name, c.synthetic AS community_synthetic,
       t.code AS town_code, t.name AS town_name,
       (CASE WHEN h.hazard IS NOT NULL THEN 0 ELSE 1 END) AS hazard_rank,
       coalesce(c.built_year, 9999) AS age_rank
FROM installation_job j
JOIN household h ON h.id = j.household_id
JOIN community c ON c.code = h.community_code
JOIN town t ON t.code = c.town_code
"""

_CURSOR = CursorCodec(TypeAdapter(tuple[int, int, UtcDatetime, BigIntId]))


async def _job(conn: queries.Conn, *, job_id: int, user: User, lock: bool = False) -> asyncpg.Record:
    row = await conn.fetchrow(f"{_JOB_SELECT} WHERE j.id = $1 {'FOR UPDATE OF j' if lock else ''}", job_id)
    if row is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"installation job {job_id} not found")
    if user.role is Role.INSTALLER and row["installer_id"] != user.id:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"installation job {job_id} is not assigned to you")
    if user.role is not Role.INSTALLER:
        await authorize_household(conn, user=user, household_id=row["household_id"])
    return row


@router.get("/queue")
async def read_queue(
    conn: ConnDep,
    user: QueueReader,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
    state: Annotated[
        str | None, Query(pattern="^(queued|assigned|completed|cancelled)$", description="Default: open jobs.")
    ] = None,
) -> JobsPublic:
    """Open jobs, most urgent first (轻重缓急): recorded hazards, then older communities, then first come."""
    after = _CURSOR.decode(cursor)
    where = queries.Where()
    where.scope(scope_for(user))
    if state is None:
        where.add("j.state IN ({}, {})", "queued", "assigned")
    else:
        where.add("j.state = {}", state)
    if user.role is Role.INSTALLER:
        where.add("j.installer_id = {}", user.id)
    if after is not None:
        where.add(
            "((CASE WHEN h.hazard IS NOT NULL THEN 0 ELSE 1 END), coalesce(c.built_year, 9999), j.created_at, j.id)"
            " > ({}, {}, {}, {})",
            *after,
        )
    sql = (
        f"{_JOB_SELECT} {where.sql()} ORDER BY hazard_rank, age_rank, j.created_at, j.id LIMIT {where.param(limit + 1)}"
    )
    rows = await conn.fetch(sql, *where.args)
    page, next_cursor = _CURSOR.page(
        rows, limit=limit, key=lambda r: (r["hazard_rank"], r["age_rank"], r["created_at"], r["id"])
    )
    return JobsPublic(items=[JobPublic.from_record(row) for row in page], limit=limit, next_cursor=next_cursor)


@router.post("/jobs", status_code=status.HTTP_201_CREATED, responses=_ERRORS)
async def create_job(body: JobCreate, conn: ConnDep, user: Planner) -> JobPublic:
    """Queue a household for installation (admin, or staff of its community)."""
    async with conn.transaction():
        await authorize_household(conn, user=user, household_id=body.household_id)
        try:
            job_id = await conn.fetchval(
                "INSERT INTO installation_job (household_id, note, created_by) VALUES ($1, $2, $3) RETURNING id",
                body.household_id,
                body.note,
                user.actor,
            )
        except asyncpg.UniqueViolationError as err:
            raise HTTPException(
                status.HTTP_409_CONFLICT, detail=f"household {body.household_id} already has an open installation job"
            ) from err
        await audit.record(
            conn,
            actor=user,
            action="installation_queued",
            object=f"installation_job:{job_id}",
            detail={"household_id": body.household_id},
        )
        row = await _job(conn, job_id=job_id, user=user)
    return JobPublic.from_record(row)


@router.post("/jobs/{job_id}/assign", responses=_ERRORS)
async def assign_job(body: JobAssign, conn: ConnDep, user: Planner, job_id: JobIdPath) -> JobPublic:
    """Give an open job to an installer."""
    async with conn.transaction():
        job = await _job(conn, job_id=job_id, user=user, lock=True)
        if job["state"] not in ("queued", "assigned"):
            raise HTTPException(status.HTTP_409_CONFLICT, detail=f"installation job {job_id} is {job['state']}")
        installer = await get_user(conn, user_id=body.installer_id)
        if installer is None or installer.role is not Role.INSTALLER:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"user {body.installer_id} is not an active installer"
            )
        await conn.execute(
            "UPDATE installation_job SET state = 'assigned', installer_id = $2, assigned_at = now() WHERE id = $1",
            job_id,
            installer.id,
        )
        await audit.record(
            conn,
            actor=user,
            action="installation_assigned",
            object=f"installation_job:{job_id}",
            detail={"installer": installer.username},
        )
        row = await _job(conn, job_id=job_id, user=user)
    return JobPublic.from_record(row)


@router.post("/jobs/{job_id}/complete", responses=_ERRORS)
async def complete_job(body: JobComplete, conn: ConnDep, user: Fitter, job_id: JobIdPath) -> JobPublic:
    """Record the kit fitted, with serials, and link the alarm to its valve; alerting picks it up at once."""
    async with conn.transaction():
        job = await _job(conn, job_id=job_id, user=user, lock=True)
        if job["state"] != "assigned":
            raise HTTPException(
                status.HTTP_409_CONFLICT, detail=f"installation job {job_id} is {job['state']}, not assigned"
            )
        models = {
            row["id"]: row
            for row in await conn.fetch(
                "SELECT id, kind, gas_type FROM device_model WHERE id = ANY($1::text[])",
                [device.model_id for device in body.devices],
            )
        }
        unknown = sorted({device.model_id for device in body.devices} - models.keys())
        if unknown:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"unknown device models: {unknown}")
        fitted = [
            FittedDevice(device.id, models[device.model_id]["kind"], models[device.model_id]["gas_type"])
            for device in body.devices
        ]
        links = (
            [(link.alarm_id, link.valve_id) for link in body.links] if body.links is not None else default_links(fitted)
        )
        problems = kit_problems(job["gas_type"], fitted, links)
        if problems:
            raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=problems)
        try:
            await conn.executemany(
                "INSERT INTO device (id, household_id, model_id, serial, imei, manufactured_on, installed_on,"
                " installation_job_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                [
                    (
                        d.id,
                        job["household_id"],
                        d.model_id,
                        d.serial,
                        d.imei,
                        d.manufactured_on,
                        body.installed_on,
                        job_id,
                    )
                    for d in body.devices
                ],
            )
            await conn.executemany("INSERT INTO alarm_valve_link (alarm_id, valve_id) VALUES ($1, $2)", links)
        except asyncpg.UniqueViolationError as err:
            raise HTTPException(
                status.HTTP_409_CONFLICT, detail=f"a device id, serial or IMEI is already registered: {err.detail}"
            ) from err
        await conn.execute(
            "UPDATE installation_job SET state = 'completed', completed_at = now() WHERE id = $1", job_id
        )
        await audit.record(
            conn,
            actor=user,
            action="installation_completed",
            object=f"installation_job:{job_id}",
            detail={
                "household_id": job["household_id"],
                "installed_on": body.installed_on.isoformat(),
                "devices": [{"id": d.id, "model_id": d.model_id, "serial": d.serial} for d in body.devices],
                "links": [list(link) for link in links],
            },
        )
        row = await _job(conn, job_id=job_id, user=user)
    return JobPublic.from_record(row)


@router.post("/jobs/{job_id}/cancel", responses=_ERRORS)
async def cancel_job(conn: ConnDep, user: Planner, job_id: JobIdPath) -> JobPublic:
    """Take an open job off the queue."""
    async with conn.transaction():
        job = await _job(conn, job_id=job_id, user=user, lock=True)
        if job["state"] not in ("queued", "assigned"):
            raise HTTPException(status.HTTP_409_CONFLICT, detail=f"installation job {job_id} is {job['state']}")
        await conn.execute("UPDATE installation_job SET state = 'cancelled' WHERE id = $1", job_id)
        await audit.record(conn, actor=user, action="installation_cancelled", object=f"installation_job:{job_id}")
        row = await _job(conn, job_id=job_id, user=user)
    return JobPublic.from_record(row)


@router.get("/jobs/{job_id}", responses=_ERRORS)
async def read_job(conn: ConnDep, user: CurrentUser, job_id: JobIdPath) -> JobPublic:
    """One installation job."""
    if user.role in (Role.EMERGENCY_MANAGEMENT,):
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail="emergency management sees aggregates only")
    return JobPublic.from_record(await _job(conn, job_id=job_id, user=user))
