"""Progress routes: the programme's progress for signed-in users (JSON) and the public page (HTML)."""

from __future__ import annotations

from datetime import date

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, ConfigDict

from registry.auth import CurrentUser
from registry.deps import ConnDep, TodayDep
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
    targets: list[TargetPublic]
    communities: list[CommunityProgressPublic]
    overdue: list[OverduePublic]


async def _report(request: Request, conn: ConnDep, today: date) -> Progress:
    """The report through a per-app cache kept on ``app.state`` (counts at most 15 s old)."""
    cache = getattr(request.app.state, "progress_cache", None)
    if not isinstance(cache, ProgressCache):
        cache = ProgressCache()
        request.app.state.progress_cache = cache
    return await cache.get(conn, today=today)


@router.get("")
async def read_progress(request: Request, conn: ConnDep, user: CurrentUser, today: TodayDep) -> ProgressPublic:
    """Counts by town and community against the targets, expired/unprotected households, overdue work.

    Counts may be up to 15 seconds old (cached per process).
    """
    report = await _report(request, conn, today)
    return ProgressPublic(
        as_of=report.as_of,
        targets=[TargetPublic(percent=t.percent, **vars(t)) for t in report.targets],
        communities=[CommunityProgressPublic(**vars(c)) for c in report.communities],
        overdue=[OverduePublic(**vars(o)) for o in report.overdue],
    )


@router.get("/public", response_class=HTMLResponse)
async def public_page(request: Request, conn: ConnDep, today: TodayDep) -> HTMLResponse:
    """Public progress page (Chinese, no login, no personal data); counts may be up to 15 seconds old."""
    return HTMLResponse(render_public_html(await _report(request, conn, today)))
