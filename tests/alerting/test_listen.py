"""The LISTEN/reconnect loop shared by the directory, the escalation timers and the outbox (real PostgreSQL)."""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg

from alerting.listen import listen_forever
from alerting.recorder import TRANSIENT_DB_ERRORS

WAIT_S = 30.0


async def test_a_notify_wakes_the_work_and_a_lost_connection_is_replaced(
    db: asyncpg.Connection, database_url: str
) -> None:
    backends: list[int] = []
    connected = asyncio.Event()
    woken = asyncio.Event()

    async def work(conn: asyncpg.Connection, wake: asyncio.Event) -> None:
        backends.append(conn.get_server_pid())
        connected.set()
        while True:
            wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), 0.2)
            if wake.is_set():
                woken.set()
            await conn.fetchval("SELECT 1")  # like the real loops, it uses its connection now and then

    task = asyncio.create_task(
        listen_forever(database_url, "gg_test_wake", work, what="test", errors=TRANSIENT_DB_ERRORS, retry_s=0.1)
    )
    try:
        async with asyncio.timeout(WAIT_S):
            await connected.wait()
            connected.clear()
            woken.clear()
            await db.execute("SELECT pg_notify('gg_test_wake', '')")
            await woken.wait()
            assert await db.fetchval("SELECT pg_terminate_backend($1)", backends[0])
            await connected.wait()
        assert backends[1] != backends[0]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
