"""County health routes: protection per town, community and building, and installations per month.

Aggregates only: addresses and device states, never a resident's name or phone number. Emergency
management, the housing bureau and administrators see the whole county; a duty operator its supplier's
households; community staff their own community (403 elsewhere); installers nothing (403).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from datetime import date, datetime
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Request, status
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from registry import county
from registry.auth import CurrentUser, Role, Scope, User, require_roles, scope_for
from registry.deps import (
    DEFAULT_LIMIT,
    BigIntId,
    Cached,
    ConnDep,
    CursorCodec,
    CursorQuery,
    LimitQuery,
    PoolDep,
    RefreshingCache,
    StatisticalCode,
)
from registry.queries import Conn

_LOGGER = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Stop the county view's warmer (if a request started one) before the app closes its pool."""
    try:
        yield
    finally:
        views = getattr(app.state, "county_views", None)
        if isinstance(views, CountyViews):
            await views.close()
            del app.state.county_views


router = APIRouter(prefix="/county", tags=["county 县域健康"], lifespan=_lifespan)

Viewer = Annotated[
    User,
    Depends(
        require_roles(
            Role.ADMIN, Role.EMERGENCY_MANAGEMENT, Role.HOUSING_BUREAU, Role.DUTY_OPERATOR, Role.COMMUNITY_STAFF
        )
    ),
]
CommunityPath = Annotated[StatisticalCode, Path(description="12-digit community code.")]
BuildingPath = Annotated[str, Path(min_length=1, max_length=64, description="Building (楼号), as listed.")]

_BUILDING_CURSOR = CursorCodec(TypeAdapter(tuple[int, str]))
_HOUSEHOLD_CURSOR = CursorCodec(TypeAdapter(tuple[BigIntId]))

_RESPONSES: dict[int | str, dict[str, Any]] = {
    status.HTTP_403_FORBIDDEN: {"description": "Installers; community staff outside their community."},
    status.HTTP_404_NOT_FOUND: {"description": "No such community or building."},
}


class CountsPublic(BaseModel):
    """Households of a place and their protection. Every NG household is monitored, offline or unprotected."""

    model_config = ConfigDict(frozen=True)
    households: int
    ng: int = Field(description="Natural-gas households.")
    lpg: int = Field(description="LPG households: never monitored (液化气 未接入监测).")
    monitored: int = Field(description="NG, kit in place and in service life, linked alarm online.")
    offline: int = Field(description="NG, kit in place, alarm silent past 1.5× heartbeat, never heard, or faulty.")
    unprotected: int = Field(description="A device past its service life or the kit not in place (NG and LPG).")
    expired: int = Field(description="Households with a device past its service life (part of unprotected).")
    lpg_unprotected: int = Field(description="LPG households without regulator and hose or past service life.")
    valve_faults: int = Field(description="Households whose shut-off valve last reported a fault.")
    alarms: int = Field(description=f"Gas alarms in the last {county.ALARM_DAYS} days.")

    @classmethod
    def of(cls, counts: county.HealthCounts) -> CountsPublic:
        """From the aggregation's counts."""
        return cls(**vars(counts))


class PlacePublic(BaseModel):
    """A town or community with its counts and its gas alarms per day (aligned with ``days``)."""

    model_config = ConfigDict(frozen=True)
    code: str
    name: str
    counts: CountsPublic
    alarms_per_day: list[int]

    @classmethod
    def of(cls, place: county.PlaceHealth) -> PlacePublic:
        """From the aggregation's place."""
        return cls(
            code=place.code,
            name=place.name,
            counts=CountsPublic.of(place.counts),
            alarms_per_day=list(place.alarms_per_day),
        )


class TownPublic(PlacePublic):
    """A town and its communities."""

    communities: list[PlacePublic]


class CountyHealthPublic(BaseModel):
    """The county view within the caller's scope."""

    model_config = ConfigDict(frozen=True)
    as_of: datetime = Field(description="When these figures were computed.")
    age_s: float = Field(description="How old the figures are, in seconds.")
    max_age_s: float = Field(description="Figures are never older than this (refreshed in the background).")
    days: list[date] = Field(description=f"The {county.ALARM_DAYS} China Standard Time days of alarms_per_day.")
    totals: PlacePublic
    towns: list[TownPublic]


class BuildingPublic(BaseModel):
    """A building of a community with its counts."""

    model_config = ConfigDict(frozen=True)
    building: str
    counts: CountsPublic


class CommunityHealthPublic(BaseModel):
    """One community: its counts and a page of its buildings."""

    model_config = ConfigDict(frozen=True)
    code: str
    name: str
    town_code: str
    town_name: str
    counts: CountsPublic
    buildings: list[BuildingPublic]
    limit: int
    next_cursor: str | None


class HouseholdHealthPublic(BaseModel):
    """A household of a building: address and device states only."""

    model_config = ConfigDict(frozen=True)
    id: int
    building: str
    unit: str
    room: str
    gas_type: Literal["NG", "LPG"]
    status: Literal["monitored", "offline", "unprotected", "lpg"] = Field(
        description="monitored; offline (silent or unknown); unprotected (expired or kit missing); lpg (LPG kit, "
        "never monitored)."
    )
    expired: bool
    alarm_status: str | None = Field(description="The alarm's last assessed state; null if never assessed.")
    alarm_last_seen_at: datetime | None
    valve_status: str | None
    valve_fault: bool
    alarms: int = Field(description=f"Gas alarms in the last {county.ALARM_DAYS} days.")


class HouseholdsHealthPublic(BaseModel):
    """A page of a building's households."""

    model_config = ConfigDict(frozen=True)
    community_code: str
    community_name: str
    town_code: str
    town_name: str
    building: str
    items: list[HouseholdHealthPublic]
    limit: int
    next_cursor: str | None


class MonthInstalledPublic(BaseModel):
    """Completed installations (slips with five signatures) of one month and gas type."""

    model_config = ConfigDict(frozen=True)
    month: date
    gas_type: Literal["NG", "LPG"]
    installed: int
    verified: int
    cumulative: int


#: The county view per scope is recomputed in the background every CACHE_TTL_S and never served older than
#: CACHE_MAX_AGE_S: the whole county costs ~0.3 s of database work on a quiet machine, seconds on a loaded one.
CACHE_TTL_S = 15.0
CACHE_MAX_AGE_S = 30.0
#: Scopes viewed within this long are kept warm, so a control room that looks again later does not wait.
WARM_FOR_S = 600.0


class CountyViews:
    """The county view per scope: cached, and kept warm while someone has looked at it recently.

    The first view of a scope computes it; afterwards a background task refreshes every scope viewed in the
    last ``WARM_FOR_S`` before its figures reach ``CACHE_MAX_AGE_S``, so later views (after a quiet spell
    too) are served from memory. Nobody looking costs nothing: the warmer starts with the first view.
    """

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.cache = RefreshingCache[county.CountyHealth](ttl_s=CACHE_TTL_S, max_age_s=CACHE_MAX_AGE_S)
        self._pool = pool
        self._viewed: dict[Scope, float] = {}
        self._warmer: asyncio.Task[None] | None = None

    async def _compute(self, key: Scope) -> county.CountyHealth:
        async with self._pool.acquire() as conn:
            return await county.county_health(conn, scope=key)

    async def get(self, conn: Conn, *, scope: Scope) -> Cached[county.CountyHealth]:
        """The view of ``scope`` (at most ``CACHE_MAX_AGE_S`` old); ``conn`` computes a cold one."""
        # Only which households a scope sees matters here, not what personal data it may read.
        key = Scope(
            all_households=scope.all_households,
            community_code=scope.community_code,
            supplier=scope.supplier,
            installer_id=scope.installer_id,
        )
        self._viewed[key] = time.monotonic()
        if self._warmer is None:
            self._warmer = asyncio.create_task(self._keep_warm(), name="registry.county_warmer")
        return await self.cache.get(
            key, here=lambda: county.county_health(conn, scope=key), background=lambda: self._compute(key)
        )

    async def _keep_warm(self) -> None:
        while True:
            await asyncio.sleep(CACHE_TTL_S / 3)
            for key, viewed_at in list(self._viewed.items()):
                if time.monotonic() - viewed_at > WARM_FOR_S:
                    del self._viewed[key]
                    continue
                try:
                    compute = functools.partial(self._compute, key)
                    await self.cache.get(key, here=compute, background=compute)
                except Exception:  # a database outage must not end the warmer; the next round retries
                    _LOGGER.warning("county view refresh failed", exc_info=True)

    async def close(self) -> None:
        """Stop the warmer."""
        if self._warmer is not None:
            self._warmer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._warmer


def _views(request: Request, pool: asyncpg.Pool) -> CountyViews:
    views = getattr(request.app.state, "county_views", None)
    if not isinstance(views, CountyViews):
        views = CountyViews(pool)
        request.app.state.county_views = views
    return views


def _check_community(user: User, community_code: str) -> None:
    if user.role is Role.COMMUNITY_STAFF and community_code != user.community_code:
        raise HTTPException(status.HTTP_403_FORBIDDEN, detail=f"community {community_code} is outside your scope")


async def _community_place(conn: Conn, community_code: str) -> asyncpg.Record:
    """The community's name and town; 404 if there is no such community."""
    place = await conn.fetchrow(
        "SELECT c.name, t.code AS town_code, t.name AS town_name FROM community c"
        " JOIN town t ON t.code = c.town_code WHERE c.code = $1",
        community_code,
    )
    if place is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"community {community_code} not found")
    return place


@router.get("/health", responses=_RESPONSES)
async def read_county_health(request: Request, conn: ConnDep, pool: PoolDep, user: Viewer) -> CountyHealthPublic:
    """Per town and community: households, monitored, offline/unknown, unprotected, valve faults, alarms per day.

    Figures are recomputed per scope in the background every 15 seconds and are never more than 30 seconds
    old; ``as_of`` and ``age_s`` say when they were computed. Scopes viewed in the last 10 minutes are kept
    warm, so only the first view of a scope after a start (or a quiet spell) waits for the aggregation.
    """
    cached = await _views(request, pool).get(conn, scope=scope_for(user))
    health = cached.value
    return CountyHealthPublic(
        as_of=health.as_of,
        age_s=round(cached.age_s, 3),
        max_age_s=CACHE_MAX_AGE_S,
        days=list(health.days),
        totals=PlacePublic.of(health.totals),
        towns=[
            TownPublic(**dict(PlacePublic.of(t.town)), communities=[PlacePublic.of(c) for c in t.communities])
            for t in health.towns
        ],
    )


@router.get("/communities/{community_code}", responses=_RESPONSES)
async def read_community(
    conn: ConnDep,
    user: Viewer,
    community_code: CommunityPath,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> CommunityHealthPublic:
    """One community's counts and its buildings in natural order (1号楼, 2号楼, … 10号楼), paged."""
    _check_community(user, community_code)
    after = _BUILDING_CURSOR.decode(cursor)
    scope = scope_for(user)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        place = await _community_place(conn, community_code)
        counts = await county.community_health(conn, scope=scope, community_code=community_code)
        rows = await county.list_buildings(
            conn, scope=scope, community_code=community_code, limit=limit + 1, after=after
        )
    assert counts is not None  # the community exists (checked in this snapshot)
    page, next_cursor = _BUILDING_CURSOR.page(rows, limit=limit, key=lambda row: row[0])
    return CommunityHealthPublic(
        code=community_code,
        name=place["name"],
        town_code=place["town_code"],
        town_name=place["town_name"],
        counts=CountsPublic.of(counts),
        buildings=[BuildingPublic(building=b.building, counts=CountsPublic.of(b.counts)) for _, b in page],
        limit=limit,
        next_cursor=next_cursor,
    )


@router.get("/communities/{community_code}/buildings/{building}/households", responses=_RESPONSES)
async def read_building_households(
    conn: ConnDep,
    user: Viewer,
    community_code: CommunityPath,
    building: BuildingPath,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> HouseholdsHealthPublic:
    """A building's households with their states, in id order, paged; addresses only, no residents."""
    _check_community(user, community_code)
    after = _HOUSEHOLD_CURSOR.decode(cursor)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        place = await _community_place(conn, community_code)
        if not await county.building_exists(
            conn, scope=scope_for(user), community_code=community_code, building=building
        ):
            raise HTTPException(
                status.HTTP_404_NOT_FOUND, detail=f"no household in building {building!r} of community {community_code}"
            )
        rows = await county.list_building_households(
            conn,
            scope=scope_for(user),
            community_code=community_code,
            building=building,
            limit=limit + 1,
            after=None if after is None else after[0],
        )
    page, next_cursor = _HOUSEHOLD_CURSOR.page(rows, limit=limit, key=lambda row: (row.id,))
    return HouseholdsHealthPublic(
        community_code=community_code,
        community_name=place["name"],
        town_code=place["town_code"],
        town_name=place["town_name"],
        building=building,
        items=[HouseholdHealthPublic(**vars(h)) for h in page],
        limit=limit,
        next_cursor=next_cursor,
    )


@router.get("/installations")
async def read_installations(conn: ConnDep, user: CurrentUser) -> list[MonthInstalledPublic]:
    """Completed installations per month and gas type with running totals, county-wide (counts only, any role)."""
    return [MonthInstalledPublic(**vars(m)) for m in await county.installations_by_month(conn)]
