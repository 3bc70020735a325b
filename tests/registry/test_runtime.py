"""What the registry's lifespan does to its process and pool: the frozen startup heap and connection release."""

from __future__ import annotations

import gc

from registry.app import create_app
from registry.deps import RegistryState
from registry.settings import RegistrySettings


async def test_the_startup_heap_is_frozen_while_serving_and_returned_at_stop(database_url: str) -> None:
    """Objects alive at startup are out of the full collections while the app runs, and back afterwards."""
    before = gc.get_freeze_count()
    app = create_app(RegistrySettings(database_url=database_url, port=0))
    async with app.router.lifespan_context(app):
        assert gc.get_freeze_count() > before + 10_000  # FastAPI, pydantic and asyncpg internals at least
        assert isinstance(app.state.registry, RegistryState)
    assert gc.get_freeze_count() == before


async def test_a_released_connection_comes_back_without_the_transaction_it_left_open(database_url: str) -> None:
    """Without asyncpg's reset query, a release still rolls back what a request left uncommitted."""
    app = create_app(RegistrySettings(database_url=database_url, port=0, db_pool_max=1))
    async with app.router.lifespan_context(app):
        pool = app.state.registry.pool
        async with pool.acquire() as conn:
            backend = await conn.fetchval("SELECT pg_backend_pid()")
            await conn.execute("BEGIN; CREATE TEMP TABLE left_open (x int); INSERT INTO left_open VALUES (1)")
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == backend  # the same connection (pool of 1)
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT to_regclass('pg_temp.left_open')") is None
