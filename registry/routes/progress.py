"""Progress routes: the programme's progress for signed-in users (JSON) and the public page (HTML)."""

from __future__ import annotations

from datetime import date, datetime

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict, Field

from registry.auth import CurrentUser
from registry.deps import Cached, ConnDep, StateDep, TodayDep
from registry.progress import Progress, ProgressCache, render_public_html

router = APIRouter(prefix="/progress", tags=["progress 进度"])


class TargetPublic(BaseModel):
    """A target and how far it is met."""

    model_config = ConfigDict(frozen=True)
    gas_type: str
    households: int
    deadline: date
    installed: int
    percent: float


class CommunityProgressPublic(BaseModel):
    """Counts of one community and gas type."""

    model_config = ConfigDict(frozen=True)
    town_code: str
    town_name: str
    community_code: str
    community_name: str
    gas_type: str
    households: int
    installed: int
    verified: int
    expired: int
    unprotected: int


class OverduePublic(BaseModel):
    """Overdue work of one responsible unit."""

    model_config = ConfigDict(frozen=True)
    unit: str
    kind: str
    count: int
    detail: str


class ProgressPublic(BaseModel):
    """The programme's progress: aggregates only, no personal data."""

    model_config = ConfigDict(frozen=True)
    as_of: date
    counted_at: datetime = Field(description="When these counts were taken (UTC).")
    age_s: float = Field(description="How old the counts are, in seconds.")
    max_age_s: float = Field(description="Counts are never older than this (refreshed in the background).")
    targets: list[TargetPublic]
    communities: list[CommunityProgressPublic]
    overdue: list[OverduePublic]


async def _report(request: Request, conn: ConnDep, state: StateDep, today: date) -> tuple[Cached[Progress], float]:
    """The report through the per-process cache kept on ``app.state``, and that cache's age bound."""
    cache = getattr(request.app.state, "progress_cache", None)
    if not isinstance(cache, ProgressCache):
        cache = ProgressCache()
        request.app.state.progress_cache = cache
    return await cache.get(conn, today=today, pool=state.pool), cache.max_age_s


@router.get("")
async def read_progress(
    request: Request, conn: ConnDep, state: StateDep, user: CurrentUser, today: TodayDep
) -> ProgressPublic:
    """Counts by town and community against the targets, expired/unprotected households, overdue work.

    Counts are taken every 15 seconds per process (in the background) and are never more than 30 seconds
    old; ``counted_at`` and ``age_s`` say when they were taken.
    """
    cached, max_age_s = await _report(request, conn, state, today)
    report = cached.value
    return ProgressPublic(
        as_of=report.as_of,
        counted_at=cached.computed_at,
        age_s=round(cached.age_s, 3),
        max_age_s=max_age_s,
        targets=[TargetPublic(percent=t.percent, **vars(t)) for t in report.targets],
        communities=[CommunityProgressPublic(**vars(c)) for c in report.communities],
        overdue=[OverduePublic(**vars(o)) for o in report.overdue],
    )


@router.get("/public", response_class=HTMLResponse)
async def public_page(request: Request, conn: ConnDep, state: StateDep, today: TodayDep) -> HTMLResponse:
    """Public progress page (Chinese, no login, no personal data); counts are at most 30 seconds old."""
    cached, _ = await _report(request, conn, state, today)
    return HTMLResponse(render_public_html(cached.value))
