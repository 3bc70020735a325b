"""The database writer against real PostgreSQL: idempotent COPY, rejected rows, outages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from ingest.rows import Rows, TelemetryRow
from ingest.writer import DatabaseUnavailable, DatabaseWriter
from tests.ingest.conftest import count

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def reading(seq: int, *, battery: int | None = 50) -> TelemetryRow:
    return ("alarm-1", T0 + timedelta(seconds=seq), T0, seq, "alarm", 1.0, "normal", None, "battery", battery, None,
            None, None, None, None, None)  # fmt: skip


async def test_rewriting_the_same_rows_is_a_no_op(database_url: str, db: asyncpg.Connection) -> None:
    """Test that the unique keys turn a repeated batch into duplicates, including repeats inside one batch."""
    writer = DatabaseWriter(database_url)
    try:
        first = await writer.write(Rows(telemetry=[reading(1), reading(2), reading(2)]))
        again = await writer.write(Rows(telemetry=[reading(1), reading(2), reading(3)]))
    finally:
        await writer.close()
    assert (first.telemetry, first.duplicates) == (2, 1)
    assert (again.telemetry, again.duplicates) == (1, 2)
    assert await count(db, "telemetry") == 3


async def test_rows_the_database_rejects_become_dead_letters_and_the_rest_commits(
    database_url: str, db: asyncpg.Connection
) -> None:
    """Test bisection: one unstorable row among many costs only itself."""
    rows = [reading(i) for i in range(40)]
    rows[17] = reading(17, battery=40_000)  # does not fit smallint
    rows[31] = reading(31, battery=-40_000)
    writer = DatabaseWriter(database_url)
    try:
        result = await writer.write(Rows(telemetry=rows))
    finally:
        await writer.close()
    assert (result.telemetry, result.rejected, result.dead_letters) == (38, 2, 2)
    stored = {r["seq"] for r in await db.fetch("SELECT seq FROM telemetry")}
    assert stored == set(range(40)) - {17, 31}
    letters = await db.fetch("SELECT * FROM dead_letter ORDER BY id")
    assert [r["device_id"] for r in letters] == ["alarm-1", "alarm-1"]
    assert all(r["reason"].startswith("rejected by database: ") for r in letters)
    assert b'"table": "telemetry"' in letters[0]["payload"]


async def test_unreachable_database_raises_unavailable_and_recovers(database_url: str) -> None:
    """Test that a refused connection is reported as an outage, not a crash."""
    writer = DatabaseWriter("postgresql://postgres@127.0.0.1:1/none", connect_timeout_s=1)
    with pytest.raises(DatabaseUnavailable):
        await writer.write(Rows(telemetry=[reading(1)]))
    with pytest.raises(DatabaseUnavailable):
        await writer.ping()
    healthy = DatabaseWriter(database_url)
    try:
        await healthy.ping()
    finally:
        await healthy.close()


async def test_direct_and_staged_paths_alternate_without_losing_or_doubling(
    database_url: str, db: asyncpg.Connection
) -> None:
    """Test clean batches (direct COPY) between batches with repeats (staged path), rows and counts exact."""
    writer = DatabaseWriter(database_url)
    try:
        clean = await writer.write(Rows(telemetry=[reading(i) for i in range(10)]))
        repeat = await writer.write(Rows(telemetry=[reading(i) for i in range(5, 15)]))
        after_repeat = await writer.write(Rows(telemetry=[reading(i) for i in range(15, 20)]))
        clean_again = await writer.write(Rows(telemetry=[reading(i) for i in range(20, 25)]))
        bad = await writer.write(Rows(telemetry=[reading(25), reading(26, battery=40_000), reading(27)]))
    finally:
        await writer.close()
    assert (clean.telemetry, clean.duplicates) == (10, 0)
    assert (repeat.telemetry, repeat.duplicates) == (5, 5)
    assert (after_repeat.telemetry, after_repeat.duplicates) == (5, 0)
    assert (clean_again.telemetry, clean_again.duplicates) == (5, 0)
    assert (bad.telemetry, bad.rejected, bad.dead_letters) == (2, 1, 1)
    stored = [r["seq"] for r in await db.fetch("SELECT seq FROM telemetry ORDER BY seq")]
    assert stored == [i for i in range(28) if i != 26]
