"""Spot-check routes: draw a month's 30% sample per community (once), record findings, report them."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException, Path, Query, status
from pydantic import BaseModel, ConfigDict, Field

from registry import audit
from registry.auth import Role, User, require_roles
from registry.deps import BIGINT_MAX, BigIntId, ConnDep, StatisticalCode
from registry.spotcheck import (
    Draw,
    Finding,
    SpotCheckError,
    draw,
    findings_report,
    get_draw,
    list_draws,
    record_finding,
)

router = APIRouter(prefix="/spot-checks", tags=["spot checks 抽查"])

Bureau = Annotated[User, Depends(require_roles(Role.ADMIN, Role.HOUSING_BUREAU))]
Checker = Annotated[User, Depends(require_roles(Role.ADMIN, Role.HOUSING_BUREAU, Role.COMMUNITY_STAFF))]


class DrawCreate(BaseModel):
    """Draw the month's sample for a community; leave ``seed`` out to have a random one recorded."""

    model_config = ConfigDict(extra="forbid")
    month: date
    community_code: StatisticalCode
    seed: str | None = Field(default=None, min_length=1, max_length=200)


class DrawPublic(BaseModel):
    """A recorded draw: with the seed and population anyone can redo it."""

    model_config = ConfigDict(frozen=True)
    id: int
    month: date
    community_code: str
    seed: str
    population_ids: list[int]
    sample: list[int]
    drawn_by: str

    @classmethod
    def of(cls, d: Draw) -> DrawPublic:
        """From the domain draw."""
        return cls(
            id=d.id,
            month=d.month,
            community_code=d.community_code,
            seed=d.seed,
            population_ids=list(d.population_ids),
            sample=list(d.sample),
            drawn_by=d.recorded_by,
        )


class FindingCreate(BaseModel):
    """What the on-site check found for a sampled slip."""

    model_config = ConfigDict(extra="forbid")
    slip_id: BigIntId
    finding: Finding
    payable_government_fen: int | None = Field(default=None, ge=0)
    note: str | None = Field(default=None, max_length=500)


class FindingPublic(BaseModel):
    """A sampled slip's latest finding and the government share payable after it (fen)."""

    model_config = ConfigDict(frozen=True)
    slip_id: int
    community_code: str
    month: date
    finding: Finding | None
    government_fen: int
    payable_government_fen: int
    note: str | None


def _own_community(user: User, community_code: str | None) -> str | None:
    if user.role is Role.COMMUNITY_STAFF:
        if community_code is not None and community_code != user.community_code:
            raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"community {community_code} is outside your scope")
        return user.community_code
    return community_code


@router.post(
    "", status_code=status.HTTP_201_CREATED, responses={status.HTTP_409_CONFLICT: {"description": "Drawn already."}}
)
async def create_draw(conn: ConnDep, user: Bureau, body: DrawCreate) -> DrawPublic:
    """Draw and store the sample; a second draw for the same month and community is refused."""
    async with conn.transaction():
        try:
            made = await draw(
                conn, month=body.month, community_code=body.community_code, actor=user.actor, seed=body.seed
            )
        except SpotCheckError as err:
            raise HTTPException(status.HTTP_409_CONFLICT, detail=str(err)) from err
        await audit.record(
            conn,
            actor=user,
            action="spot_check_draw",
            object=f"spot_check_draw:{made.id}",
            detail={"seed": made.seed, "population": len(made.population_ids), "sample": list(made.sample)},
        )
    return DrawPublic.of(made)


@router.get("")
async def read_draws(
    conn: ConnDep,
    user: Checker,
    month: Annotated[date | None, Query()] = None,
    community_code: Annotated[StatisticalCode | None, Query()] = None,
) -> list[DrawPublic]:
    """Recorded draws (community staff: their own community)."""
    return [
        DrawPublic.of(d)
        for d in await list_draws(conn, month=month, community_code=_own_community(user, community_code))
    ]


@router.get("/findings")
async def read_findings(
    conn: ConnDep,
    user: Checker,
    month: Annotated[date | None, Query()] = None,
    community_code: Annotated[StatisticalCode | None, Query()] = None,
) -> list[FindingPublic]:
    """Every sampled slip with its latest finding and the payable government share."""
    rows = await findings_report(conn, month=month, community_code=_own_community(user, community_code))
    return [FindingPublic(**vars(r)) for r in rows]


@router.post("/findings", status_code=status.HTTP_201_CREATED)
async def add_finding(conn: ConnDep, user: Checker, body: FindingCreate) -> FindingPublic:
    """Record a finding (appended; the latest counts). Discrepancies carry the payable government share."""
    async with conn.transaction():
        community = await conn.fetchval(
            "SELECT d.community_code FROM spot_check_item i JOIN spot_check_draw d ON d.id = i.draw_id"
            " WHERE i.slip_id = $1",
            body.slip_id,
        )
        if community is not None:
            _own_community(user, community)
        try:
            finding_id = await record_finding(
                conn,
                slip_id=body.slip_id,
                finding=body.finding,
                actor=user.actor,
                payable_government_fen=body.payable_government_fen,
                note=body.note,
            )
        except SpotCheckError as err:
            raise HTTPException(status.HTTP_409_CONFLICT, detail=str(err)) from err
        await audit.record(
            conn,
            actor=user,
            action="spot_check_finding",
            object=f"slip:{body.slip_id}",
            detail={"finding_id": finding_id, "finding": body.finding.value},
        )
        rows = await findings_report(conn, community_code=community)
    return next(FindingPublic(**vars(r)) for r in rows if r.slip_id == body.slip_id)


@router.get("/{draw_id}")
async def read_draw(conn: ConnDep, user: Checker, draw_id: Annotated[int, Path(ge=1, le=BIGINT_MAX)]) -> DrawPublic:
    """One recorded draw."""
    made = await get_draw(conn, draw_id=draw_id)
    if made is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"draw {draw_id} not found")
    _own_community(user, made.community_code)
    return DrawPublic.of(made)
