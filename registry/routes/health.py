"""Liveness and database reachability, for load balancers, compose healthchecks and operators."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request, Response, status

from registry import queries
from registry.deps import CONNECT_ERRORS, StateDep
from registry.models import HealthPublic

router = APIRouter(tags=["health"])


@router.get(
    "/health",
    responses={status.HTTP_503_SERVICE_UNAVAILABLE: {"model": HealthPublic, "description": "Database unreachable."}},
)
async def read_health(state: StateDep, request: Request, response: Response) -> HealthPublic:
    """Report whether the API and its database answer; 503 within the DB timeout if the database does not."""
    version = request.app.version
    try:
        # One deadline for acquiring (possibly connecting) and the round trip: never hang.
        async with asyncio.timeout(state.settings.db_timeout_s), state.pool.acquire() as conn:
            await queries.ping(conn=conn)
    except CONNECT_ERRORS as err:
        state.record_database(reachable=False, error=err)
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return HealthPublic(status="degraded", database="unreachable", version=version)
    state.record_database(reachable=True)
    return HealthPublic(status="ok", database="ok", version=version)
