"""Embedded infrastructure for a single-machine run: an in-process MQTT broker and a bundled PostgreSQL.

Used by ``gasguard demo`` when no broker or database is configured, or the configured ones do not
answer, so the demo needs nothing installed beyond Python. amqtt speaks MQTT 3.1.1 only and carries a
few thousand messages a second, which is plenty for a demo county; pgserver ships PostgreSQL 16 binaries
in its wheel and listens on a unix socket only.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

_LOGGER = logging.getLogger(__name__)


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def mqtt_reachable(url: str, *, timeout_s: float = 1.0) -> bool:
    """Whether a TCP connection to the broker in ``url`` opens."""
    parts = urlsplit(url)
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(parts.hostname, parts.port or 1883), timeout_s)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def database_reachable(dsn: str, *, timeout_s: float = 2.0) -> bool:
    """Whether PostgreSQL at ``dsn`` accepts a connection."""
    try:
        conn = await asyncpg.connect(dsn, timeout=timeout_s)
    except (OSError, TimeoutError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


@contextlib.asynccontextmanager
async def embedded_broker(port: int | None = None) -> AsyncIterator[str]:
    """Run an amqtt broker on loopback; yields its ``mqtt://`` URL."""
    from amqtt.broker import Broker

    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.WARNING)
    port = port or free_tcp_port()
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
    )
    await broker.start()
    try:
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        await broker.shutdown()


@contextlib.contextmanager
def embedded_postgres(data_dir: Path) -> Iterator[str]:
    """Run the PostgreSQL bundled with pgserver over ``data_dir``; yields a DSN to its ``postgres`` db."""
    from pgserver.postgres_server import get_server

    data_dir.mkdir(parents=True, exist_ok=True)
    server = get_server(str(data_dir), cleanup_mode="stop")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()


def with_database(dsn: str, database: str) -> str:
    """The same server DSN pointed at another database."""
    parts = urlsplit(dsn)
    return parts._replace(path=f"/{database}").geturl()


async def recreate_database(dsn: str, database: str) -> str:
    """Drop and create ``database`` on the server of ``dsn``; returns its DSN."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()
    return with_database(dsn, database)
