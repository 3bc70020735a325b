"""The UI's read API: board scoping per role, live events over real LISTEN/NOTIFY, bad ids, the chart window."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from registry.auth import Role, create_user
from registry.ui.live import APPLICATION_NAME
from tests.support.rows import COMMUNITY, TOWN, add_household
from tests.support.stack import registry_running, wait_for

OTHER_COMMUNITY = "150626100099"
PASSWORD = "board-test-password"


@pytest.fixture
async def base_url(database_url: str) -> AsyncIterator[str]:
    async with registry_running(database_url) as url:
        yield url


async def _incident(db: asyncpg.Connection, household_id: int | None, **fields: object) -> int:
    values = {"kind": "gas_alarm", "severity": "critical", "alarm_received_at": datetime.now(UTC)} | fields
    columns = ["household_id", *values]
    placeholders = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    incident_id: int = await db.fetchval(
        f"INSERT INTO incident ({', '.join(columns)}) VALUES ({placeholders}) RETURNING id",
        household_id,
        *values.values(),
    )
    return incident_id


@pytest.fixture
async def county(db: asyncpg.Connection) -> dict[str, int]:
    """Two households in two communities of two suppliers, each with an incident, and a community cluster."""
    ours = await add_household(db, 1)
    await db.execute(
        "INSERT INTO community (code, town_code, name, synthetic) VALUES ($1, $2, '别的社区', true)",
        OTHER_COMMUNITY,
        TOWN,
    )
    theirs = await add_household(db, 2)
    await db.execute(
        "UPDATE household SET community_code = $1, supplier = '其他燃气' WHERE id = $2", OTHER_COMMUNITY, theirs.id
    )
    now = datetime.now(UTC)
    ids = {
        "ours_warning": await _incident(
            db, ours.id, kind="offline", severity="warning", alarm_received_at=now - timedelta(minutes=9)
        ),
        "ours_critical": await _incident(db, ours.id, alarm_device_id=ours.alarm_id, alarm_lel=31.5),
        "theirs": await _incident(db, theirs.id, alarm_received_at=now - timedelta(minutes=5)),
        "cluster": await _incident(db, None, kind="cluster", scope=f"community:{COMMUNITY}", community_code=COMMUNITY),
        "closed": await _incident(db, ours.id, kind="device_fault", severity="info"),
        "ours_household": ours.id,
    }
    await db.execute(
        "UPDATE incident SET state = 'CLOSED', closed_at = now(), disposition = 'test' WHERE id = $1", ids["closed"]
    )
    await db.execute(
        "INSERT INTO valve_command (cmd_id, valve_id, incident_id, command, reason, issued_at, expires_at, state,"
        " reported_position) VALUES (gen_random_uuid(), $1, $2, 'close', 'gas_alarm', now(), now() + interval '1h',"
        " 'acked', 'closing')",
        ours.valve_id,
        ids["ours_critical"],
    )
    for username, role, community, supplier in (
        ("zhiban", Role.DUTY_OPERATOR, None, "乌审中燃"),
        ("shequ-other", Role.COMMUNITY_STAFF, OTHER_COMMUNITY, None),
        ("yingji", Role.EMERGENCY_MANAGEMENT, None, None),
        ("zhujian", Role.HOUSING_BUREAU, None, None),
        ("anzhuang", Role.INSTALLER, None, None),
    ):
        await create_user(
            db,
            username=username,
            password=PASSWORD,
            display_name=username,
            role=role,
            community_code=community,
            supplier=supplier,
        )
    return ids


@contextlib.asynccontextmanager
async def _client(base_url: str, username: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        response = await client.post("/auth/login", json={"username": username, "password": PASSWORD})
        assert response.status_code == 200, response.text
        yield client


async def test_board_is_scoped_per_role_and_sorted(base_url: str, county: dict[str, int]) -> None:
    """Duty operator: its supplier; community staff: its community; emergency management: all, clusters too."""
    async with _client(base_url, "zhiban") as api:
        board = (await api.get("/ui/api/board")).json()
        assert [row["id"] for row in board["items"]] == [county["ours_critical"], county["ours_warning"]]
        assert board["counts"] == {"total": 2, "critical": 1, "warning": 1, "info": 0, "unowned": 2}
        row = board["items"][0]
        assert row["valve"] == {
            "valve_id": "V-1",
            "commanded": "close",
            "reported": "closing",
            "position": "closing",
            "attempts": 0,
        }
        assert row["place"]["community_name"] == "文苑社区" and row["place"]["building"] == "3号楼"
        assert "resident_phone" not in json.dumps(board)

    async with _client(base_url, "shequ-other") as api:
        board = (await api.get("/ui/api/board")).json()
        assert [row["id"] for row in board["items"]] == [county["theirs"]]
        # Rows outside the scope are simply absent when asked for by id.
        asked = (await api.get("/ui/api/board", params={"ids": [county["ours_critical"], county["theirs"]]})).json()
        assert [row["id"] for row in asked["items"]] == [county["theirs"]]
        forbidden = await api.get(f"/ui/api/incidents/{county['ours_critical']}/context")
        assert forbidden.status_code == 403

    async with _client(base_url, "yingji") as api:
        board = (await api.get("/ui/api/board")).json()
        ids = [row["id"] for row in board["items"]]
        # Critical first (oldest first among them), then warning; the closed one is not on the board.
        assert ids == [county["theirs"], county["ours_critical"], county["cluster"], county["ours_warning"]]
        cluster = next(row for row in board["items"] if row["id"] == county["cluster"])
        assert cluster["household_id"] is None and cluster["place"]["community_name"] == "文苑社区"
        by_id = (await api.get("/ui/api/board", params={"ids": [county["closed"]]})).json()
        assert [row["state"] for row in by_id["items"]] == ["CLOSED"]
        context = (await api.get(f"/ui/api/incidents/{county['ours_critical']}/context")).json()
        assert context["may_read_phone"] is False and context["may_act"] is False

    for username in ("zhujian", "anzhuang"):
        async with _client(base_url, username) as api:
            assert (await api.get("/ui/api/board")).status_code == 403
            assert (await api.get("/ui/api/events")).status_code == 403
    async with httpx.AsyncClient(base_url=base_url) as anonymous:
        assert (await anonymous.get("/ui/api/board")).status_code == 401
        assert (await anonymous.get("/ui/api/events")).status_code == 401


async def test_bad_ids_are_404_or_422(base_url: str, county: dict[str, int]) -> None:
    """Unknown incidents are 404; ids that are not incident ids are 422."""
    async with _client(base_url, "zhiban") as api:
        assert (await api.get("/ui/api/incidents/987654/context")).status_code == 404
        assert (await api.get("/ui/api/incidents/987654/concentration")).status_code == 404
        for bad in ("0", "abc", str(2**63)):
            assert (await api.get(f"/ui/api/incidents/{bad}/context")).status_code == 422
        assert (await api.get("/ui/api/board", params={"ids": "x"})).status_code == 422
        assert (await api.get("/ui/api/board", params={"ids": [0]})).status_code == 422
        assert (await api.get("/ui/api/board", params={"limit": 0})).status_code == 422
        window = f"/ui/api/incidents/{county['ours_critical']}/concentration"
        assert (await api.get(window, params={"before_min": 100_000})).status_code == 422


async def test_concentration_is_a_bounded_downsampled_window(
    base_url: str, db: asyncpg.Connection, county: dict[str, int]
) -> None:
    """One reading per second for two hours becomes at most 120 buckets within ±30 min of the alarm."""
    alarm_at = datetime(2026, 11, 29, 2, 0, tzinfo=UTC)
    await db.execute("UPDATE incident SET alarm_device_ts = $2 WHERE id = $1", county["ours_critical"], alarm_at)
    start = alarm_at - timedelta(hours=1)
    rows = [
        ("A-1", start + timedelta(seconds=s), start + timedelta(seconds=s), s, "alarm", 40.0 if s == 3600 else 1.0)
        for s in range(7200)
    ]
    await db.copy_records_to_table(
        "telemetry", records=rows, columns=["device_id", "device_ts", "received_at", "seq", "kind", "lel"]
    )
    async with _client(base_url, "zhiban") as api:
        chart = (await api.get(f"/ui/api/incidents/{county['ours_critical']}/concentration")).json()
    assert chart["device_id"] == "A-1"
    assert chart["low_alarm_lel"] == 10 and chart["high_alarm_lel"] == 25
    assert chart["bucket_s"] == 30
    points = chart["points"]
    assert len(points) == 120
    assert sum(p["samples"] for p in points) == 3600
    assert max(p["lel_max"] for p in points) == 40.0
    peak = next(p for p in points if p["lel_max"] == 40.0)
    assert datetime.fromisoformat(peak["t"]) == alarm_at


async def _events(response: httpx.Response) -> AsyncIterator[dict[str, str]]:
    """Parse a text/event-stream into events (comments and keep-alives skipped)."""
    event: dict[str, str] = {}
    async for line in response.aiter_lines():
        if not line:
            if "event" in event or "data" in event:
                yield event
            event = {}
        elif not line.startswith(":"):
            field, _, value = line.partition(":")
            event[field] = value.removeprefix(" ")


async def _next(events: AsyncIterator[dict[str, str]], name: str) -> dict[str, str]:
    async with asyncio.timeout(30):
        async for event in events:
            if event.get("event") == name:
                return event
    raise AssertionError(f"stream ended before a {name!r} event")


async def test_event_stream_delivers_incident_changes(
    base_url: str, db: asyncpg.Connection, county: dict[str, int]
) -> None:
    """A change in the database reaches the stream through LISTEN/NOTIFY; a reconnect catches up."""
    async with _client(base_url, "zhiban") as api:
        async with api.stream("GET", "/ui/api/events") as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            events = _events(response)
            hello = await _next(events, "hello")
            await db.execute(
                "INSERT INTO incident_event (incident_id, actor, type) VALUES ($1, 'test', 'note')",
                county["ours_critical"],
            )
            first = await _next(events, "incident")
            assert json.loads(first["data"]) == {"id": county["ours_critical"]}
            await db.execute(
                "UPDATE valve_command SET state = 'confirmed', reported_position = 'closed' WHERE incident_id = $1",
                county["ours_critical"],
            )
            second = await _next(events, "incident")
            assert json.loads(second["data"]) == {"id": county["ours_critical"]}
            seqs = [int(event["id"].rpartition("-")[2]) for event in (hello, first, second)]
            assert seqs == sorted(set(seqs))

        # Missed while disconnected: replayed after the Last-Event-ID.
        await db.execute("UPDATE incident SET severity = 'critical' WHERE id = $1", county["theirs"])
        async with api.stream("GET", "/ui/api/events", headers={"Last-Event-ID": second["id"]}) as response:
            events = _events(response)
            await _next(events, "hello")
            missed = await _next(events, "incident")
            assert json.loads(missed["data"]) == {"id": county["theirs"]}

        # An id from another process (or too old) cannot be replayed: the browser is told to reload.
        async with api.stream("GET", "/ui/api/events", headers={"Last-Event-ID": "0000-5"}) as response:
            resync = await _next(_events(response), "resync")
            assert resync["retry"] == "2000"


async def test_lost_listen_connection_resyncs_and_recovers(
    base_url: str, db: asyncpg.Connection, county: dict[str, int]
) -> None:
    """When the LISTEN connection is killed, streams are told to resync and changes flow again afterwards."""
    async with _client(base_url, "zhiban") as api, api.stream("GET", "/ui/api/events") as response:
        events = _events(response)
        await _next(events, "hello")
        listener = await db.fetchval(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1 AND datname = current_database()",
            APPLICATION_NAME,
        )
        assert await db.fetchval("SELECT pg_terminate_backend($1)", listener)
        await _next(events, "resync")

        async def listening_again() -> bool:
            return bool(
                await db.fetchval(
                    # Another backend than the one killed (which may linger a moment), past its first
                    # statement, which is its LISTEN.
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
                    " AND datname = current_database() AND pid <> $2 AND query <> '' AND state = 'idle'",
                    APPLICATION_NAME,
                    listener,
                )
            )

        await wait_for(listening_again)
        await db.execute("UPDATE incident SET state = 'NOTIFIED' WHERE id = $1", county["ours_critical"])
        changed = await _next(events, "incident")
        assert json.loads(changed["data"]) == {"id": county["ours_critical"]}
