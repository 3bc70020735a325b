"""Dependencies of the registry routes: settings, pool, connection, paging and today's date.

The lifespan (`registry.app`) puts one `RegistryState` on ``app.state``; handlers reach its parts
through the ``Annotated`` aliases here (``PoolDep``, ``ConnDep``, ...).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass, field
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
    #: Requests wait for a pooled connection here, first come first served. asyncpg's pool queue is not
    #: fair: a connection put back wakes the oldest waiter, but a request arriving meanwhile can take it
    #: first, and the woken one queues again at the back. Under overload (32 clients in a closed loop on
    #: 10 connections a worker) that starved some requests past ``db_timeout_s`` into 503s while others
    #: went straight through; asyncio's semaphore hands a freed slot to its oldest waiter.
    request_slots: asyncio.Semaphore = field(init=False)

    def __post_init__(self) -> None:
        self.request_slots = asyncio.Semaphore(self.settings.db_pool_max)

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


# Dependencies are coroutines, even where a plain function would do: FastAPI runs a plain-function
# dependency in its thread pool, a thread hand-off per dependency per request (the largest single cost of a
# cached list request before).


async def _state(request: Request) -> RegistryState:
    return get_state(request)


StateDep = Annotated[RegistryState, Depends(_state)]


async def get_settings(state: StateDep) -> RegistrySettings:
    """The registry's settings."""
    return state.settings


async def get_pool(state: StateDep) -> asyncpg.Pool:
    """The connection pool opened by the lifespan."""
    return state.pool


SettingsDep = Annotated[RegistrySettings, Depends(get_settings)]
PoolDep = Annotated[asyncpg.Pool, Depends(get_pool)]


async def get_conn(state: StateDep) -> AsyncIterator[Conn]:
    """Borrow a pooled connection for one request; 503 if none can be had within the DB timeout."""
    slots = state.request_slots
    try:
        async with asyncio.timeout(state.settings.db_timeout_s):
            await slots.acquire()
            try:
                conn = await state.pool.acquire()
            except BaseException:
                slots.release()
                raise
    except CONNECT_ERRORS as err:  # TimeoutError (none in time) is an OSError, as the pool's own timeout was
        state.record_database(reachable=False, error=err)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail=DATABASE_UNAVAILABLE) from err
    state.record_database(reachable=True)
    try:
        yield conn
    finally:
        try:
            await state.pool.release(conn)
        finally:
            slots.release()


ConnDep = Annotated[Conn, Depends(get_conn)]


def china_today() -> date:
    """Today's date in China Standard Time, against which service lives are judged."""
    return datetime.now(CHINA_STANDARD_TIME).date()


async def _today() -> date:
    return china_today()


TodayDep = Annotated[date, Depends(_today)]

LimitQuery = Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"Page size, 1–{MAX_LIMIT}.")]
CursorQuery = Annotated[
    str | None,
    Query(max_length=512, description="The `next_cursor` of the previous page; omit for the first page."),
]

K = TypeVar("K")
R = TypeVar("R")
V = TypeVar("V")


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


@dataclass(frozen=True, slots=True)
class Cached(Generic[V]):
    """A cached value and when it was computed."""

    value: V
    computed_at: datetime
    age_s: float


class RefreshingCache(Generic[V]):
    """Per-process values that are recomputed in the background once older than ``ttl_s``.

    A request never waits for a recomputation while the cached value is younger than ``max_age_s``: it
    gets that value and one background task per key computes the next on a connection of its own. Only a
    cold key, or a value older than ``max_age_s`` (the background refresh failed, e.g. the database was
    away), is computed on the caller's own connection, one caller per key at a time (the others wait and
    then take its result). So every answer is at most ``max_age_s`` old, and a request never needs a
    second pooled connection while holding one.

    Hand-written rather than taken from a library: the caching libraries at hand (cachetools, aiocache)
    expire entries but do not serve the previous value while one task recomputes it, which is what keeps
    the slow aggregates off the request path.
    """

    def __init__(self, *, ttl_s: float, max_age_s: float, max_entries: int = 1024) -> None:
        if not 0 <= ttl_s <= max_age_s:
            raise ValueError("need 0 <= ttl_s <= max_age_s")
        self.ttl_s = ttl_s
        self.max_age_s = max_age_s
        self._max_entries = max_entries
        self._entries: dict[Hashable, tuple[float, datetime, V]] = {}
        self._locks: dict[Hashable, asyncio.Lock] = {}
        self._running: dict[Hashable, asyncio.Task[None]] = {}

    def _usable(self, key: Hashable) -> tuple[float, datetime, V] | None:
        entry = self._entries.get(key)
        return entry if entry is not None and time.monotonic() - entry[0] < self.max_age_s else None

    def _store(self, key: Hashable, value: V) -> tuple[float, datetime, V]:
        if key not in self._entries and len(self._entries) >= self._max_entries:
            del self._entries[min(self._entries, key=lambda k: self._entries[k][0])]
            self._locks = {k: lock for k, lock in self._locks.items() if k in self._entries or lock.locked()}
        entry = (time.monotonic(), datetime.now(UTC), value)
        self._entries[key] = entry
        return entry

    def _refresh_in_background(self, key: Hashable, compute: Callable[[], Awaitable[V]]) -> None:
        if key in self._running:
            return

        async def run() -> None:
            try:
                self._store(key, await compute())
            finally:
                del self._running[key]

        task = asyncio.get_running_loop().create_task(run(), name="registry.cache_refresh")
        task.add_done_callback(_log_refresh_failure)
        self._running[key] = task

    async def get(
        self, key: Hashable, *, here: Callable[[], Awaitable[V]], background: Callable[[], Awaitable[V]] | None
    ) -> Cached[V]:
        """The value of ``key``.

        Args:
            key: What the value is of (hashable; include everything the value depends on).
            here: Computes it on the caller's connection (cold key or value too old).
            background: Computes it on a connection of its own (refresh of a value older than ``ttl_s``);
                None when the caller has no pool: then a value older than ``ttl_s`` is recomputed ``here``.
        """
        entry = self._usable(key)
        if entry is not None and background is None and time.monotonic() - entry[0] >= self.ttl_s:
            entry = None
        if entry is None:
            lock = self._locks.setdefault(key, asyncio.Lock())
            async with lock:
                entry = self._usable(key)
                if entry is None or (background is None and time.monotonic() - entry[0] >= self.ttl_s):
                    entry = self._store(key, await here())
        elif background is not None and time.monotonic() - entry[0] >= self.ttl_s:
            self._refresh_in_background(key, background)
        at, computed_at, value = entry
        return Cached(value=value, computed_at=computed_at, age_s=max(0.0, time.monotonic() - at))

    def clear(self) -> None:
        """Forget every value (a running refresh still stores its result)."""
        self._entries.clear()


def _log_refresh_failure(task: asyncio.Task[object]) -> None:
    if not task.cancelled() and (error := task.exception()) is not None:
        _LOGGER.warning("cache refresh failed: %r", error)


#: Page totals are counted at most this often per process, and are never older than COUNT_MAX_AGE_S.
COUNT_TTL_S = 10.0
COUNT_MAX_AGE_S = 30.0


async def get_count_cache(request: Request) -> RefreshingCache[int]:
    """The app's cache of list totals (created on first use; one per process)."""
    cache = getattr(request.app.state, "count_cache", None)
    if not isinstance(cache, RefreshingCache):
        cache = RefreshingCache[int](ttl_s=COUNT_TTL_S, max_age_s=COUNT_MAX_AGE_S)
        request.app.state.count_cache = cache
    return cache


CountCacheDep = Annotated[RefreshingCache[int], Depends(get_count_cache)]

ExactTotalQuery = Annotated[
    bool,
    Query(
        description=(
            "Count `total` now, in the page's own snapshot. Without it `total` comes from a per-process count"
            f" refreshed every {COUNT_TTL_S:g} s and at most {COUNT_MAX_AGE_S:g} s old (`total_age_s` says how old);"
            " counting on every page would cost more than the page itself at county scale."
        )
    ),
]


def list_snapshot(conn: Conn, *, exact_total: bool) -> contextlib.AbstractAsyncContextManager[object]:
    """The transaction a list request needs: one read-only snapshot for page and count when both are read now.

    A page with a cached total is a single statement, which is its own snapshot: no BEGIN/COMMIT round trips.
    """
    if exact_total:
        return conn.transaction(isolation="repeatable_read", readonly=True)
    return contextlib.nullcontext()


@dataclass(frozen=True, slots=True)
class Total:
    """A list's total and how old it is (0 when counted for this very request)."""

    value: int
    age_s: float


async def page_total(
    *,
    conn: Conn,
    state: RegistryState,
    cache: RefreshingCache[int],
    exact: bool,
    key: Hashable,
    count: Callable[[Conn], Awaitable[int]],
) -> Total:
    """The total of a list: counted on ``conn`` if ``exact``, else from ``cache``."""
    if exact:
        return Total(value=await count(conn), age_s=0.0)

    async def on_own_connection() -> int:
        async with state.pool.acquire(timeout=state.settings.db_timeout_s) as own:
            return await count(own)

    cached = await cache.get(key, here=lambda: count(conn), background=on_own_connection)
    return Total(value=cached.value, age_s=round(cached.age_s, 3))
