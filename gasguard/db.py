"""Database access shared by the services: asyncpg pools and schema migrations (Alembic)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from alembic import command, op
from alembic.config import Config
from sqlalchemy.util import await_only

_LOGGER = logging.getLogger(__name__)


async def _init_connection(conn: asyncpg.Connection) -> None:
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.set_type_codec("json", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


@asynccontextmanager
async def open_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 10, **connect_kwargs: Any
) -> AsyncIterator[asyncpg.Pool]:
    """Open an asyncpg pool with JSON codecs; closes it on exit.

    ``connect_kwargs`` go to `asyncpg.create_pool` (``command_timeout``, ``server_settings``, …).
    """
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size, init=_init_connection, **connect_kwargs)
    try:
        yield pool
    finally:
        await pool.close()


async def connect(dsn: str, *, connect_timeout: float = 5.0) -> asyncpg.Connection:
    """Open one connection with the same codecs as the pools."""
    conn = await asyncpg.connect(dsn, timeout=connect_timeout)
    await _init_connection(conn)
    return conn


def sqlalchemy_url(dsn: str) -> str:
    """Turn a libpq-style ``postgresql://`` DSN into SQLAlchemy's asyncpg URL."""
    parts = urlsplit(dsn)
    if parts.scheme not in {"postgresql", "postgres"}:
        raise ValueError(f"expected a postgresql:// DSN, got {parts.scheme!r}")
    return urlunsplit(parts._replace(scheme="postgresql+asyncpg"))


def execute_script(sql: str) -> None:
    """Run a multi-statement SQL script from inside a migration.

    asyncpg runs a multi-statement script only through its simple-query path, not as a prepared
    statement, so the script goes to the driver connection under Alembic's directly.
    """
    driver = op.get_bind().connection.driver_connection
    assert driver is not None
    await_only(driver.execute(sql))


def alembic_config(dsn: str) -> Config:
    """Alembic configuration pointing at the migrations shipped inside this package."""
    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("gasguard") / "migrations"))
    # ConfigParser interpolates '%'; escape it so URL-encoded passwords survive.
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(dsn).replace("%", "%%"))
    return cfg


async def migrate(dsn: str, revision: str = "heads") -> None:
    """Bring the schema to ``revision`` (by default every head).

    Each service area adds its own migrations on a branch from the initial schema, so ``heads``
    applies them all. Alembic's async env runs its own event loop, so it runs in a worker thread here.
    """
    await asyncio.to_thread(command.upgrade, alembic_config(dsn), revision)
    _LOGGER.info("database schema at %s", revision)
