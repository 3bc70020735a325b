"""``python -m registry [--workers N]``: serve the registry API on GG_REGISTRY_HOST:GG_REGISTRY_PORT (127.0.0.1:8000).

One worker (the default) runs in this process. ``--workers N`` (N > 1) runs N worker processes under
uvicorn's supervisor, which share the listening socket: one Python process uses one core, so a 2-core
server needs 2 workers to use both. Each worker has its own connection pool (GG_REGISTRY_DB_POOL_MAX
connections each) and its own short-lived caches (list totals, progress), so their ages are per worker.
"""

from __future__ import annotations

import argparse
import asyncio
import functools

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError

from gasguard.runtime import configure_logging, run
from registry.app import create_app, serve
from registry.settings import RegistrySettings


def _settings() -> RegistrySettings:
    try:
        return RegistrySettings()
    except ValidationError as err:
        raise SystemExit(f"registry: invalid settings (GG_* environment or .env):\n{err}") from err


def app_from_environment() -> FastAPI:
    """The app of one worker process, from the GG_* environment (uvicorn's factory for ``--workers``)."""
    settings = _settings()
    configure_logging(settings.log_level)
    return create_app(settings)


def main() -> None:
    """Build the settings once and serve until SIGINT/SIGTERM."""
    parser = argparse.ArgumentParser(prog="python -m registry", description="Serve the GasGuard registry API.")
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes (default 1; one per core on a dedicated server)"
    )
    args = parser.parse_args()
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    settings = _settings()
    if args.workers == 1:
        # As uvicorn's loop="auto" does for --workers: uvloop where it is installed (a dependency off Windows).
        try:
            import uvloop
        except ImportError:
            pass
        else:
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        run(functools.partial(serve, settings), log_level=settings.log_level)
        return
    configure_logging(settings.log_level)
    uvicorn.run(
        "registry.__main__:app_from_environment",
        factory=True,
        workers=args.workers,
        host=settings.host,
        port=settings.port,
        lifespan="on",
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=int(max(settings.shutdown_timeout_s, 1)),
    )


if __name__ == "__main__":
    main()
