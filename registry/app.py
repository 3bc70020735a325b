"""The registry FastAPI application and an in-process server for it.

`create_app` builds the app; its lifespan opens the asyncpg pool and hands it to requests through
`registry.deps`. `serve` runs it under uvicorn inside an existing event loop (``python -m registry``
and the single-process demo both use it) until it is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

import asyncpg
import uvicorn
from fastapi import FastAPI, Request, status
from fastapi.responses import JSONResponse

from gasguard.db import open_pool
from registry import queries
from registry.deps import (
    CONNECT_ERRORS,
    CONNECTION_LOST_ERRORS,
    DATABASE_UNAVAILABLE,
    RegistryState,
)
from registry.routes import api_router, catalogue, installations
from registry.routes import auth as auth_routes
from registry.routes import county as county_routes
from registry.routes import finance as finance_routes
from registry.routes import progress as progress_routes
from registry.routes import rosters as roster_routes
from registry.routes import settlement as settlement_routes
from registry.routes import slips as slip_routes
from registry.routes import spotchecks as spotcheck_routes
from registry.settings import RegistrySettings
from registry.ui import board as ui_board
from registry.ui import live as ui_live
from registry.ui import pages as ui_pages

_LOGGER = logging.getLogger(__name__)

TITLE = "GasGuard 燃气安全平台 API"
DESCRIPTION = """\
Registry of the Wushen Banner (乌审旗) gas-safety programme: households, devices, alarm→valve links
and incidents.

Every call but `/health`, the public programme progress page (`/progress/public`) and the slip
verification page (`/slips/check/{code}`) is authenticated; those three show no personal data.
People log in at `POST /auth/login` (session cookie), machines send `Authorization: Bearer <token>`.
What a caller sees depends on its role; resident names and phone numbers are masked (e.g. `138****5678`),
and every read of a full number is audited.
"""


def _version() -> str:
    try:
        return package_version("gasguard")
    except PackageNotFoundError:
        return "0+unknown"


async def _probe_database(state: RegistryState) -> None:
    """Log at startup whether the database answers; the API starts either way and reports it on /health."""
    try:
        async with asyncio.timeout(state.settings.db_timeout_s), state.pool.acquire() as conn:
            await queries.ping(conn=conn)
    except CONNECT_ERRORS as err:
        state.record_database(reachable=False, error=err)
    else:
        state.record_database(reachable=True)


async def _database_lost(request: Request, exc: Exception) -> JSONResponse:
    """Answer 503, not 500, when the database goes away in the middle of a request."""
    state = getattr(request.app.state, "registry", None)
    if isinstance(state, RegistryState):
        state.record_database(reachable=False, error=exc)
    return JSONResponse({"detail": DATABASE_UNAVAILABLE}, status_code=status.HTTP_503_SERVICE_UNAVAILABLE)


async def _keep_session(conn: asyncpg.Connection) -> None:
    """Release a pooled connection without asyncpg's reset query (one round trip less per request).

    asyncpg still rolls back a transaction left open and drops listener callbacks before calling this; what
    its default reset adds (``pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL``) undoes session
    state that the registry never leaves on a pooled connection: no session-level ``SET``, advisory lock,
    ``WITH HOLD`` cursor or ``LISTEN`` (the live board listens on a connection of its own, `registry.ui.live`;
    transaction-scoped ``SET LOCAL``, ``pg_advisory_xact_lock`` and ``ON COMMIT DROP`` tables end with the
    transaction). Measured at 40,000 households that query was one of the three round trips of a list
    request; code that needs session state must take a connection of its own, not a pooled one.
    """


@contextlib.contextmanager
def _frozen_heap() -> Iterator[None]:
    """Keep what exists once the app has started out of the garbage collector's full collections.

    A worker holds ~150,000 long-lived objects (FastAPI, pydantic and asyncpg internals); every response
    promotes short-lived rows into the oldest generation, and each full collection then walked all of them:
    60-100 ms with the event loop stopped, every few seconds under load, which was the 100-300 ms tail of
    the list endpoints. ``gc.freeze`` moves the startup objects to the permanent generation (after a
    collection, so no garbage is frozen); full collections then walk only what requests left behind.
    ``gc.unfreeze`` on the way out returns them, so an app started and stopped in a longer-lived process
    (tests, the demo) leaves nothing uncollectable behind.
    """
    gc.collect()
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def create_app(settings: RegistrySettings) -> FastAPI:
    """Build the registry API for ``settings``; nothing touches the database until the lifespan starts."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # min_size=0: no connection is needed to start, so the API comes up (and answers /health with
        # 503) while the database is down, and recovers by itself when it returns.
        async with open_pool(settings.dsn(), min_size=0, max_size=settings.db_pool_max, reset=_keep_session) as pool:
            state = RegistryState(settings=settings, pool=pool)
            await _probe_database(state)
            # app.state rather than lifespan state, so an app driven by its lifespan_context alone works too.
            app.state.registry = state
            try:
                with _frozen_heap():
                    yield
            finally:
                del app.state.registry

    app = FastAPI(title=TITLE, description=DESCRIPTION, version=_version(), lifespan=lifespan)
    app.include_router(api_router)
    app.include_router(auth_routes.router)
    app.include_router(auth_routes.audit_router)
    app.include_router(catalogue.router)
    app.include_router(installations.router)
    # Programme administration (rosters, slips, finance, settlement, spot checks, progress).
    app.include_router(roster_routes.router)
    app.include_router(slip_routes.router)
    app.include_router(finance_routes.router)
    app.include_router(settlement_routes.router)
    app.include_router(spotcheck_routes.router)
    app.include_router(progress_routes.router)
    app.include_router(county_routes.router)
    app.include_router(ui_pages.router)
    app.include_router(ui_board.router)
    app.include_router(ui_live.router)
    for error in CONNECTION_LOST_ERRORS:
        app.add_exception_handler(error, _database_lost)
    return app


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signals to its owner (`gasguard.runtime.run` or the demo runner)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """Install no signal handlers: stopping is done by cancelling `serve`."""
        yield


def _bind(host: str, port: int) -> socket.socket:
    """Bind the listening socket ourselves, so a busy port is an ``OSError`` here, not ``sys.exit``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


async def _run_server(server: uvicorn.Server, sock: socket.socket) -> None:
    try:
        await server.serve(sockets=[sock])
    except SystemExit as err:
        # uvicorn exits the process when startup fails; inside a shared event loop that must be an error.
        raise RuntimeError("registry API failed to start; see the log above") from err


async def serve(settings: RegistrySettings, *, ready: asyncio.Event | None = None) -> None:
    """Serve the registry API on ``settings.host:port`` until cancelled.

    Args:
        settings: The registry settings.
        ready: Set once the lifespan has started and the socket accepts connections.

    Cancelling stops accepting connections, lets in-flight requests finish (up to
    ``settings.shutdown_timeout_s``), closes the pool, then re-raises the cancellation.
    """
    config = uvicorn.Config(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_config=None,
        server_header=False,
        timeout_graceful_shutdown=int(max(settings.shutdown_timeout_s, 1)),
    )
    server = _EmbeddedServer(config)
    sock = _bind(settings.host, settings.port)
    task = asyncio.create_task(_run_server(server, sock), name="registry.http_server")
    try:
        while not server.started and not task.done():
            # asyncio.wait, not await task: cancelling us must not cancel uvicorn mid-request.
            await asyncio.wait({task}, timeout=0.05)
        if server.started:
            host, port = sock.getsockname()[:2]
            _LOGGER.info("registry API listening on http://%s:%d", host, port)
            if ready is not None:
                ready.set()
        await asyncio.wait({task})
        task.result()
    except asyncio.CancelledError:
        server.should_exit = True
        await asyncio.wait({task})
        raise
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        sock.close()
