"""The TimescaleDB branch of the migrations, exercised on a server without the extension.

TimescaleDB is not installable here, so its SQL (`0001` hypertables, compression and retention; `0007`
the continuous aggregate) never runs in the suite. These tests check what can be checked without it,
against the real, migrated plain schema: every statement parses in PostgreSQL's grammar; what
``create_hypertable`` and compression require of the tables holds; and the continuous aggregate's
query, run with a stand-in for ``time_bucket``, gives exactly what the plain view gives.
"""

from __future__ import annotations

import importlib
import re
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from tests.ingest.conftest import AddDevice

initial = importlib.import_module("gasguard.migrations.versions.0001_initial")
health = importlib.import_module("gasguard.migrations.versions.0007_ingest_health")

TIMESCALE_STATEMENTS = [
    statement.strip()
    for script in (initial.TIMESCALE, health.TIMESCALE)
    for statement in re.sub(r"--[^\n]*", "", script).split(";")
    if statement.strip()
]


async def syntax_error(db: asyncpg.Connection, statement: str) -> str | None:
    """PostgreSQL's parser verdict on ``statement`` without running it (None if it parses).

    PL/pgSQL parses every SQL statement of a block when compiling it (``check_function_bodies`` is on),
    so a statement behind ``IF false`` is checked by the server's grammar but never executed.
    """
    try:
        await db.execute(f"DO $gg$ BEGIN IF false THEN {statement}; END IF; END $gg$")
    except asyncpg.PostgresSyntaxError as err:
        return str(err)
    return None


def test_the_scripts_hold_what_the_operations_guide_promises() -> None:
    """Test that the statements found are the hypertables, policies and aggregate, not an empty split."""
    calls = [s.split("(")[0] for s in TIMESCALE_STATEMENTS if s.startswith("SELECT")]
    assert calls == [
        "SELECT create_hypertable",
        "SELECT create_hypertable",
        "SELECT add_compression_policy",
        "SELECT add_retention_policy",
        "SELECT add_continuous_aggregate_policy",
    ]
    assert any(s.startswith("CREATE MATERIALIZED VIEW device_health_hourly") for s in TIMESCALE_STATEMENTS)


async def test_the_parse_check_catches_a_broken_statement(db: asyncpg.Connection) -> None:
    """Test the checker itself: a typo is reported, a valid statement is not, and nothing runs."""
    assert await syntax_error(db, "ALTER TABLE telemetry SETT (fillfactor = 90)") is not None
    assert await syntax_error(db, "DROP TABLE telemetry") is None
    assert await db.fetchval("SELECT to_regclass('telemetry') IS NOT NULL")


@pytest.mark.parametrize("statement", TIMESCALE_STATEMENTS, ids=lambda s: " ".join(s.split())[:60])
async def test_every_timescale_statement_parses(db: asyncpg.Connection, statement: str) -> None:
    """Test each statement of the TimescaleDB branch against the server's grammar."""
    assert await syntax_error(db, statement) is None


@pytest.mark.parametrize("table", ["telemetry", "device_event"])
async def test_hypertable_preconditions_hold(db: asyncpg.Connection, table: str) -> None:
    """Test what ``create_hypertable(table, 'device_ts')`` demands: a NOT NULL time column in every unique index."""
    assert await db.fetchval(
        "SELECT attnotnull FROM pg_attribute WHERE attrelid = $1::regclass AND attname = 'device_ts'", table
    )
    unique = await db.fetch(
        "SELECT indexrelid::regclass::text AS name, array_agg(a.attname::text) AS columns"
        " FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
        " WHERE i.indrelid = $1::regclass AND i.indisunique GROUP BY indexrelid",
        table,
    )
    assert unique, f"{table} has its unique key (deduplication)"
    for index in unique:
        assert "device_ts" in index["columns"], f"{index['name']} must include the partitioning column"


async def test_compression_settings_name_real_columns(db: asyncpg.Connection) -> None:
    """Test that ``compress_segmentby`` and ``compress_orderby`` name columns of ``telemetry``."""
    match = re.search(r"compress_segmentby = '(\w+)',\s*timescaledb\.compress_orderby = '(\w+)", initial.TIMESCALE)
    assert match is not None
    columns = {
        r["attname"] for r in await db.fetch("SELECT attname FROM pg_attribute WHERE attrelid = 'telemetry'::regclass")
    }
    assert {match[1], match[2]} <= columns


async def test_continuous_aggregate_query_equals_the_plain_view(db: asyncpg.Connection, add_device: AddDevice) -> None:
    """Test the aggregate's SELECT (with ``time_bucket`` stood in by ``date_bin``) against the plain view."""
    alarm, other = await add_device("alarm-ts-1"), await add_device("alarm-ts-2")
    start = datetime(2026, 3, 1, 7, 50, tzinfo=UTC)
    rows = [
        (
            device,
            start + timedelta(minutes=7 * i),
            start + timedelta(minutes=7 * i, seconds=2),
            i,
            "alarm",
            i % 5,
            90 - i,
        )
        for i in range(30)
        for device in (alarm, other)
    ]
    await db.copy_records_to_table(
        "telemetry",
        records=rows,
        columns=("device_id", "device_ts", "received_at", "seq", "kind", "lel", "battery_pct"),
    )
    # TimescaleDB's time_bucket(interval, timestamptz) buckets from 2000-01-03 00:00 UTC; for whole hours
    # that is date_bin from the same origin. The stand-in lives in this test's own database only.
    await db.execute(
        "CREATE SCHEMA timescale_stub;"
        " CREATE FUNCTION timescale_stub.time_bucket(bucket interval, ts timestamptz) RETURNS timestamptz"
        " LANGUAGE sql IMMUTABLE RETURN date_bin(bucket, ts, timestamptz '2000-01-03 00:00:00+00');"
        " SET search_path = public, timescale_stub; SET TIME ZONE 'Asia/Shanghai'"
    )
    query = re.search(r"\bAS\s+(SELECT .*?)\s+WITH NO DATA", health.TIMESCALE, re.S)
    assert query is not None
    aggregated = await db.fetch(f"SELECT * FROM ({query[1]}) AS agg ORDER BY device_id, hour")
    plain = await db.fetch("SELECT * FROM device_health_hourly ORDER BY device_id, hour")
    assert [dict(r) for r in aggregated] == [dict(r) for r in plain]
    assert len(plain) == 2 * 5  # 30 readings 7 minutes apart from 07:50 span five UTC hours per device
