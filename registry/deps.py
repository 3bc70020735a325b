"""Dependencies of the registry routes: settings, pool, connection, paging and today's date.

The lifespan (`registry.app`) puts one `RegistryState` on ``app.state``; handlers reach its parts
through the ``Annotated`` aliases here (``PoolDep``, ``ConnDep``, ...).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Annotated, Generic, TypeVar

import asyncpg
from fastapi import Depends, HTTPException, Query, Request, status
from pydantic import AfterValidator, AwareDatetime, Field, StringConstraints, TypeAdapter, ValidationError

from gasguard.protocol import DEVICE_ID_PATTERN
from registry.queries import Conn
from registry.settings import RegistrySettings

_LOGGER = logging.getLogger(__name__)

#: Errors that mean "the database cannot be reached right now" when opening a connection.
CONNECT_ERRORS: tuple[type[Exception], ...] = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError)
#: Errors that mean the database went away (or was stopped) in the middle of a request.
CONNECTION_LOST_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
)

DATABASE_UNAVAILABLE = "database unavailable; try again shortly"

# Wushen Banner keeps China Standard Time all year (no DST), so a fixed offset is exact.
CHINA_STANDARD_TIME = timezone(timedelta(hours=8), "CST")

BIGINT_MAX = 2**63 - 1
#: A ``bigint`` identity id; larger values would overflow the driver instead of simply not matching.
BigIntId = Annotated[int, Field(ge=1, le=BIGINT_MAX)]
DeviceId = Annotated[str, StringConstraints(pattern=DEVICE_ID_PATTERN)]
StatisticalCode = Annotated[str, StringConstraints(pattern=r"^[0-9]{12}$")]

DEFAULT_LIMIT = 50
MAX_LIMIT = 500


@dataclass(slots=True)
class RegistryState:
    """What the lifespan opens and every request shares."""

    settings: RegistrySettings
    pool: asyncpg.Pool
    database_reachable: bool | None = None

    def record_database(self, *, reachable: bool, error: BaseException | None = None) -> None:
        """Remember whether the database answered; log only when that changes."""
        if reachable == self.database_reachable:
            return
        self.database_reachable = reachable
        if reachable:
            _LOGGER.info("database reachable")
        else:
            _LOGGER.warning("database unreachable: %r", error)


def get_state(request: Request) -> RegistryState:
    """The state the lifespan put on the app."""
    state = getattr(request.app.state, "registry", None)
    if not isinstance(state, RegistryState):
        # A lifecycle mistake, not a bad type: the app is serving without its lifespan.
        raise RuntimeError("the registry lifespan is not running; start it before serving requests")  # noqa: TRY004
    return state


StateDep = Annotated[RegistryState, Depends(get_state)]


def get_settings(state: StateDep) -> RegistrySettings:
    """The registry's settings."""
    return state.settings


def get_pool(state: StateDep) -> asyncpg.Pool:
    """The connection pool opened by the lifespan."""
    return state.pool


SettingsDep = Annotated[RegistrySettings, Depends(get_settings)]
PoolDep = Annotated[asyncpg.Pool, Depends(get_pool)]


async def get_conn(state: StateDep) -> AsyncIterator[Conn]:
    """Borrow a pooled connection for one request; 503 if none can be had within the DB timeout."""
    try:
        conn = await state.pool.acquire(timeout=state.settings.db_timeout_s)
    except CONNECT_ERRORS as err:
        state.record_database(reachable=False, error=err)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=DATABASE_UNAVAILABLE) from err
    state.record_database(reachable=True)
    try:
        yield conn
    finally:
        await state.pool.release(conn)


ConnDep = Annotated[Conn, Depends(get_conn)]


def china_today() -> date:
    """Today's date in China Standard Time, against which service lives are judged."""
    return datetime.now(CHINA_STANDARD_TIME).date()


TodayDep = Annotated[date, Depends(china_today)]

LimitQuery = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"Page size, 1–{MAX_LIMIT}.")]
CursorQuery = Annotated[
    str | None,
    Query(max_length=512, description="The `next_cursor` of the previous page; omit for the first page."),
]

K = TypeVar("K")
R = TypeVar("R")


def _to_utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


#: An aware timestamp normalised to UTC, for cursors that carry one.
UtcDatetime = Annotated[AwareDatetime, AfterValidator(_to_utc)]


class CursorCodec(Generic[K]):
    """Turns a page's last sort key into an opaque ``next_cursor`` and back.

    The cursor is URL-safe base64 of the key as JSON; decoding validates it against the key's type,
    so a tampered cursor is a 422, never a query with values of the wrong type.
    """

    def __init__(self, adapter: TypeAdapter[K]) -> None:
        self._adapter = adapter

    def encode(self, key: K) -> str:
        """The cursor for ``key``."""
        return base64.urlsafe_b64encode(self._adapter.dump_json(key)).rstrip(b"=").decode("ascii")

    def decode(self, cursor: str | None) -> K | None:
        """The key in ``cursor`` (None for the first page); 422 if it is not one of ours."""
        if cursor is None:
            return None
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            return self._adapter.validate_json(raw)
        except (binascii.Error, ValueError, ValidationError, OverflowError) as err:
            raise HTTPException(
                status.HTTP_422_UNPROCESSABLE_CONTENT,
                detail="invalid cursor: pass back the next_cursor of a previous page unchanged",
            ) from err

    def page(self, rows: Sequence[R], *, limit: int, key: Callable[[R], K]) -> tuple[Sequence[R], str | None]:
        """Split ``limit + 1`` fetched rows into the page and the cursor of the next one."""
        if len(rows) <= limit:
            return rows, None
        return rows[:limit], self.encode(key(rows[limit - 1]))
