"""The one LISTEN/reconnect loop of alerting's database-driven tasks (directory, escalation timers, outbox).

Each of them works on its own connection that LISTENs on one channel, so a NOTIFY wakes it at once, and
polls besides. When the database goes away the task logs it once, waits and reconnects; the alarm path
never waits on any of this.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from gasguard.db import connect

_LOGGER = logging.getLogger(__name__)

Work = Callable[[asyncpg.Connection, asyncio.Event], Awaitable[None]]


async def listen_forever(
    dsn: str,
    channel: str,
    work: Work,
    *,
    what: str,
    errors: tuple[type[BaseException], ...],
    retry_s: float = 1.0,
) -> None:
    """Run ``work(conn, wake)`` forever on a connection that LISTENs on ``channel``.

    Args:
        dsn: the database.
        channel: NOTIFY channel; each notification sets ``wake``.
        work: the task's loop; it clears ``wake`` before it looks and waits on it (with its own timeout).
        what: the task's name in the log.
        errors: exceptions that mean "the database is away": logged once, then reconnect after ``retry_s``.
        retry_s: pause before reconnecting.
    """
    wake = asyncio.Event()

    def on_notify(conn: object, pid: int, channel: str, payload: object) -> None:
        wake.set()

    failing = False
    while True:
        conn: asyncpg.Connection | None = None
        try:
            conn = await connect(dsn)
            await conn.add_listener(channel, on_notify)
            if failing:
                _LOGGER.info("%s: database reachable again", what)
                failing = False
            wake.set()  # look at once: something may have changed while we were away
            await work(conn, wake)
        except errors as err:
            if not failing:
                _LOGGER.warning("%s: database unreachable (%s); retrying", what, err)
                failing = True
            await asyncio.sleep(retry_s)
        finally:
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
