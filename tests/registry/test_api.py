"""Registry API against a real, freshly migrated PostgreSQL database per test."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from importlib.metadata import version as package_version
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from registry.app import create_app, serve
from registry.auth import Role, create_user, issue_token
from registry.deps import ConnDep, china_today
from registry.models import mask_name, mask_phone, scrub_json, scrub_text
from registry.settings import RegistrySettings
from tests.support.tcp_proxy import TcpProxy

TOWN = "150626100000"  # 嘎鲁图镇 (verified NBS code)
COMMUNITY = "150626100007"  # 文苑社区 (synthetic code)
RURAL_TOWN = "150626200000"  # 苏力德苏木 (verified NBS code)
RURAL_COMMUNITY = "150626200201"  # 陶利嘎查 (synthetic code)

# Any mainland mobile number, not part of a longer digit run.
MOBILE_RE = re.compile(r"(?<![0-9])1[3-9][0-9]{9}(?![0-9])")


# Plain-SQL helpers that build the rows the API reads.


async def insert_places(db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO town (code, name) VALUES ($1, '嘎鲁图镇'), ($2, '苏力德苏木')", TOWN, RURAL_TOWN)
    await db.execute(
        """
        INSERT INTO community (code, town_code, name, synthetic)
        VALUES ($1, $2, '文苑社区', true), ($3, $4, '陶利嘎查', true)
        """,
        COMMUNITY,
        TOWN,
        RURAL_COMMUNITY,
        RURAL_TOWN,
    )


async def insert_household(
    db: asyncpg.Connection,
    *,
    room: str,
    community: str = COMMUNITY,
    gas_type: str = "NG",
    phone: str | None = None,
    name: str | None = None,
) -> int:
    supplier = "乌审中燃天然气有限公司" if gas_type == "NG" else "乌审旗液化气站"
    household_id: int = await db.fetchval(
        """
        INSERT INTO household (community_code, building, unit, room, gas_type, supplier, resident_name,
                               resident_phone)
        VALUES ($1, '3', '2', $2, $3, $4, $5, $6)
        RETURNING id
        """,
        community,
        room,
        gas_type,
        supplier,
        name,
        phone,
    )
    return household_id


async def insert_model(db: asyncpg.Connection, *, model_id: str, kind: str, gas_type: str, life: int) -> None:
    await db.execute(
        """
        INSERT INTO device_model (id, manufacturer, model, kind, gas_type, low_alarm_lel, heartbeat_s,
                                  service_life_years, bearer)
        VALUES ($1, '示例厂', $1, $2, $3, 10, 3600, $4, 'mqtt')
        """,
        model_id,
        kind,
        gas_type,
        life,
    )


async def insert_device(
    db: asyncpg.Connection, *, device_id: str, household_id: int, model_id: str, installed_on: date | None
) -> None:
    await db.execute(
        """
        INSERT INTO device (id, household_id, model_id, serial, manufactured_on, installed_on)
        VALUES ($1, $2, $3, 'SN-' || $1, $4, $5)
        """,
        device_id,
        household_id,
        model_id,
        None if installed_on is None else installed_on - timedelta(days=90),
        installed_on,
    )


async def link(db: asyncpg.Connection, alarm_id: str, valve_id: str) -> None:
    await db.execute("INSERT INTO alarm_valve_link (alarm_id, valve_id) VALUES ($1, $2)", alarm_id, valve_id)


async def insert_incident(
    db: asyncpg.Connection,
    *,
    household_id: int,
    kind: str,
    state: str,
    opened_at: datetime,
    severity: str = "critical",
    alarm_device_id: str | None = None,
) -> int:
    closed = state == "CLOSED"
    incident_id: int = await db.fetchval(
        """
        INSERT INTO incident (household_id, kind, severity, state, alarm_device_id, alarm_state, alarm_lel,
                              alarm_device_ts, alarm_received_at, command_sent_at, opened_at, closed_at,
                              disposition)
        VALUES ($1, $2, $3, $4, $5, 'high_alarm', 12.5, $6, $6, $6, $6, $7, $8)
        RETURNING id
        """,
        household_id,
        kind,
        severity,
        state,
        alarm_device_id,
        opened_at,
        opened_at + timedelta(hours=20) if closed else None,
        "false_alarm_cooking" if closed else None,
    )
    return incident_id


@dataclass
class County:
    """What `county` inserted, for assertions."""

    monitored: int
    alarm_only: int
    unlinked: int
    lpg: int
    plain: list[int]
    incident_valve: int
    incident_new: int
    incident_tie: int
    incident_old: int
    cmd_id: uuid.UUID
    today: date
    phones: list[str] = field(default_factory=list)

    @property
    def households(self) -> list[int]:
        return sorted([self.monitored, self.alarm_only, self.unlinked, self.lpg, *self.plain])


OPERATOR_PHONE = "13700009999"


@pytest.fixture
async def county(db: asyncpg.Connection) -> County:
    """Eleven households, their devices, links and four incidents (one with a full timeline)."""
    today = china_today()
    old_install = date(today.year - 6, 3, 15)  # detector life 5 years: expired
    new_install = date(today.year - 1, 3, 15)

    await insert_places(db)
    await insert_model(db, model_id="NG-ALARM", kind="alarm", gas_type="NG", life=5)
    await insert_model(db, model_id="NG-VALVE", kind="shutoff_valve", gas_type="NG", life=10)
    await insert_model(db, model_id="LPG-ALARM", kind="alarm", gas_type="LPG", life=5)
    await insert_model(db, model_id="LPG-VALVE", kind="shutoff_valve", gas_type="LPG", life=10)
    await insert_model(db, model_id="LPG-REG", kind="regulator", gas_type="LPG", life=8)

    monitored = await insert_household(db, room="101", phone="13812345678", name="张三丰")
    await insert_device(db, device_id="a-101", household_id=monitored, model_id="NG-ALARM", installed_on=old_install)
    await insert_device(db, device_id="v-101", household_id=monitored, model_id="NG-VALVE", installed_on=new_install)
    await link(db, "a-101", "v-101")

    alarm_only = await insert_household(db, room="102", phone="13900001111", name="李四")
    await insert_device(db, device_id="a-102", household_id=alarm_only, model_id="NG-ALARM", installed_on=None)

    unlinked = await insert_household(db, room="103", phone="15000002222")
    await insert_device(db, device_id="a-103", household_id=unlinked, model_id="NG-ALARM", installed_on=new_install)
    await insert_device(db, device_id="v-103", household_id=unlinked, model_id="NG-VALVE", installed_on=new_install)

    # An LPG household that (against the programme's kit) even has a linked alarm and valve:
    # it must still never be reported as monitored.
    lpg = await insert_household(db, room="1", community=RURAL_COMMUNITY, gas_type="LPG", phone="18600003333")
    await insert_device(db, device_id="r-201", household_id=lpg, model_id="LPG-REG", installed_on=new_install)
    await insert_device(db, device_id="a-201", household_id=lpg, model_id="LPG-ALARM", installed_on=new_install)
    await insert_device(db, device_id="v-201", household_id=lpg, model_id="LPG-VALVE", installed_on=new_install)
    await link(db, "a-201", "v-201")

    plain_phones = [f"1370000000{i}" for i in range(7)]
    plain = [await insert_household(db, room=f"2{i:02d}", phone=phone) for i, phone in enumerate(plain_phones)]

    now = datetime.now(UTC)
    incident_old = await insert_incident(
        db, household_id=alarm_only, kind="gas_alarm", state="CLOSED", opened_at=now - timedelta(days=2)
    )
    incident_new = await insert_incident(
        db,
        household_id=monitored,
        kind="gas_alarm",
        state="NOTIFIED",
        opened_at=now - timedelta(hours=1),
        alarm_device_id="a-101",
    )
    # Same opened_at as incident_new: the keyset cursor must break the tie by id.
    incident_tie = await insert_incident(
        db, household_id=unlinked, kind="gas_alarm", state="NEW", opened_at=now - timedelta(hours=1)
    )
    incident_valve = await insert_incident(
        db, household_id=monitored, kind="valve_not_closed", state="NEW", opened_at=now - timedelta(minutes=30)
    )

    for actor, event_type, detail in [
        ("alerting", "opened", {"lel": 12.5}),
        ("alerting", "command_sent", {"valve": "v-101"}),
        (f"operator:{OPERATOR_PHONE}", "notified", {"to": ["13812345678"], "note": "请回拨13812345678"}),
    ]:
        await db.execute(
            "INSERT INTO incident_event (incident_id, actor, type, detail) VALUES ($1, $2, $3, $4)",
            incident_new,
            actor,
            event_type,
            detail,
        )

    cmd_id = uuid.uuid4()
    await db.execute(
        """
        INSERT INTO valve_command (cmd_id, valve_id, incident_id, command, reason, issued_at, expires_at, state,
                                   acked_at, confirmed_at, reported_position)
        VALUES ($1, 'v-101', $2, 'close', 'gas alarm at a-101', $3::timestamptz,
                $3::timestamptz + interval '10 minutes', 'confirmed',
                $3::timestamptz + interval '1 second', $3::timestamptz + interval '3 seconds', 'closed')
        """,
        cmd_id,
        incident_new,
        now - timedelta(hours=1),
    )
    for attempt in (2, 1):  # inserted out of order on purpose
        await db.execute(
            "INSERT INTO valve_command_attempt (cmd_id, attempt, sent_at) VALUES ($1, $2, $3)",
            cmd_id,
            attempt,
            now - timedelta(hours=1) + timedelta(seconds=attempt),
        )
    await db.execute(
        """
        INSERT INTO notification_outbox (incident_id, channel, recipient, recipient_role, template, params,
                                         status, attempts, sent_at)
        VALUES ($1, 'sms', '13812345678', 'resident', 'SMS_GAS_ALARM_RESIDENT', $2, 'sent', 1, now()),
               ($1, 'sms', $3, 'operator', 'SMS_GAS_ALARM_OPERATOR', $2, 'pending', 0, NULL)
        """,
        incident_new,
        {"phone": "13812345678", "address": "文苑社区3-2-101"},
        OPERATOR_PHONE,
    )

    return County(
        monitored=monitored,
        alarm_only=alarm_only,
        unlinked=unlinked,
        lpg=lpg,
        plain=plain,
        incident_valve=incident_valve,
        incident_new=incident_new,
        incident_tie=incident_tie,
        incident_old=incident_old,
        cmd_id=cmd_id,
        today=today,
        phones=["13812345678", "13900001111", "15000002222", "18600003333", OPERATOR_PHONE, *plain_phones],
    )


async def admin_token(database_url: str) -> str:
    """A bearer token of a fresh admin user in ``database_url``."""
    conn = await asyncpg.connect(database_url)
    try:
        user = await create_user(
            conn, username=f"admin-{uuid.uuid4().hex[:8]}", password=None, display_name="管理员", role=Role.ADMIN
        )
        return await issue_token(conn, user_id=user.id, name="test_api")
    finally:
        await conn.close()


@asynccontextmanager
async def registry_client(
    database_url: str, *, token: str | None = None, **overrides: Any
) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client for a registry app whose lifespan is running (sending ``token`` if given)."""
    app = create_app(RegistrySettings(database_url=database_url, **overrides))
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://registry.test", headers=headers
        ) as client,
    ):
        yield client


@pytest.fixture
async def client(database_url: str) -> AsyncIterator[httpx.AsyncClient]:
    """A client authenticated as an admin (who sees every household, masked)."""
    async with registry_client(database_url, token=await admin_token(database_url)) as client:
        yield client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def closed_port_dsn() -> str:
    return f"postgresql://postgres@127.0.0.1:{free_port()}/gasguard"


async def get_json(client: httpx.AsyncClient, url: str, expected_status: int = 200) -> Any:
    response = await client.get(url)
    assert response.status_code == expected_status, response.text
    return response.json()


# Health and OpenAPI


async def test_data_routes_need_authentication(database_url: str) -> None:
    """Without credentials every data route is a 401; /health and the schema stay open."""
    async with registry_client(database_url) as anonymous:
        for url in ("/households", "/households/1", "/devices", "/devices/x", "/incidents", "/incidents/1"):
            response = await anonymous.get(url)
            assert response.status_code == 401, url
            assert response.headers["www-authenticate"] == "Bearer"
        assert (await anonymous.get("/health")).status_code == 200
        assert (await anonymous.get("/openapi.json")).status_code == 200


async def test_health_ok(client: httpx.AsyncClient) -> None:
    """/health answers 200 with the package version when the database answers."""
    body = await get_json(client, "/health")
    assert body == {"status": "ok", "database": "ok", "version": package_version("gasguard")}


async def test_health_503_when_database_port_is_closed() -> None:
    """The app starts without its database and /health says so with a 503, quickly."""
    async with registry_client(closed_port_dsn(), db_timeout_s=1.0) as client:
        started = time.monotonic()
        body = await get_json(client, "/health", 503)
        assert time.monotonic() - started < 3
        assert body["status"] == "degraded"
        assert body["database"] == "unreachable"
        # Data routes answer 503 with a clear detail, never 500.
        assert await get_json(client, "/households", 503) == {"detail": "database unavailable; try again shortly"}
        # The schema is still served.
        assert (await client.get("/openapi.json")).status_code == 200


async def test_health_503_when_database_never_answers() -> None:
    """A database that accepts TCP but never speaks does not hang /health beyond the timeout."""
    stalled: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stalled.append(writer)
        await reader.read()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with registry_client(f"postgresql://postgres@127.0.0.1:{port}/x", db_timeout_s=0.5) as client:
            started = time.monotonic()
            body = await get_json(client, "/health", 503)
            assert time.monotonic() - started < 2.5
            assert body["database"] == "unreachable"
    finally:
        for writer in stalled:
            writer.transport.abort()
        server.close()
        await server.wait_closed()


async def test_recovers_when_database_returns(database_url: str) -> None:
    """Losing the database gives 503s; when it returns the API answers again without a restart."""
    parts = urlsplit(database_url)
    assert parts.hostname is not None
    async with TcpProxy(parts.hostname, parts.port or 5432) as proxy:
        proxied = parts._replace(netloc=f"{parts.username}@127.0.0.1:{proxy.port}").geturl()
        token = await admin_token(database_url)
        async with registry_client(proxied, token=token, db_timeout_s=1.0) as client:
            assert (await client.get("/health")).status_code == 200
            await proxy.cut()
            assert (await client.get("/health")).status_code == 503
            assert (await client.get("/incidents")).status_code == 503
            await proxy.restore()
            assert (await client.get("/health")).status_code == 200
            assert (await client.get("/incidents")).status_code == 200


async def test_database_lost_mid_request_is_503(database_url: str) -> None:
    """A connection killed by the server during a request gives a 503, and the next request recovers."""
    app = create_app(RegistrySettings(database_url=database_url))

    async def terminate_own_backend(conn: ConnDep) -> None:
        await conn.execute("SELECT pg_terminate_backend(pg_backend_pid())")

    app.add_api_route("/test/terminate-own-backend", terminate_own_backend)
    headers = {"Authorization": f"Bearer {await admin_token(database_url)}"}
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://registry.test", headers=headers
        ) as client,
    ):
        response = await client.get("/test/terminate-own-backend")
        assert response.status_code == 503
        assert response.json() == {"detail": "database unavailable; try again shortly"}
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/households")).status_code == 200


async def test_openapi_and_docs(client: httpx.AsyncClient) -> None:
    """The OpenAPI schema carries the product title and documents every route; /docs renders."""
    schema = await get_json(client, "/openapi.json")
    assert schema["info"]["title"] == "GasGuard 燃气安全平台 API"
    assert {
        "/health",
        "/households",
        "/households/{household_id}",
        "/devices",
        "/devices/{device_id}",
        "/incidents",
        "/incidents/{incident_id}",
    } <= set(schema["paths"])
    # There is no remote open: no route, of any method, opens a valve.
    assert not [path for path in schema["paths"] if "open" in path.lower() or "valve" in path.lower()]
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()


# Masking


@pytest.mark.parametrize(
    ("raw", "masked"),
    [
        ("13812345678", "138****5678"),
        ("138****5678", "138****5678"),  # idempotent: responses are validated again on the way out
        ("+8613812345678", "+86****5678"),
        ("0477123", "****23"),
        ("110", "****"),
    ],
)
def test_mask_phone(raw: str, masked: str) -> None:
    """Recipients keep at most their first 3 and last 4 characters."""
    assert mask_phone(raw) == masked
    assert mask_phone(masked) == masked


def test_mask_name_and_scrub() -> None:
    """Names keep their first character; mobile numbers inside free text and JSON are masked."""
    assert mask_name("张三丰") == "张**"
    assert mask_name("李四") == "李*"
    assert scrub_text("拨打13812345678或13900001111") == "拨打138****5678或139****1111"
    # IMEIs and other longer digit runs are not phone numbers.
    assert scrub_text("IMEI 862592051651472") == "IMEI 862592051651472"
    assert scrub_json({"to": ["13812345678"], "n": 1, "13900001111": None}) == {
        "to": ["138****5678"],
        "n": 1,
        "139****1111": None,
    }


# Households


async def test_households_paginate_by_cursor(client: httpx.AsyncClient, county: County) -> None:
    """Walking next_cursor with limit=4 visits every household exactly once, in id order."""
    seen: list[int] = []
    url = "/households?limit=4"
    pages = 0
    while True:
        body = await get_json(client, url)
        pages += 1
        assert body["total"] == 11
        assert body["limit"] == 4
        assert len(body["items"]) <= 4
        seen += [item["id"] for item in body["items"]]
        if body["next_cursor"] is None:
            break
        url = f"/households?limit=4&cursor={body['next_cursor']}"
    assert pages == 3
    assert seen == county.households


async def test_list_totals_come_from_a_cached_count_unless_exact_is_asked(
    client: httpx.AsyncClient, county: County, db: asyncpg.Connection
) -> None:
    """Pages do not count on every request: the total is the cached count, its age stated; exact_total counts now."""
    first = await get_json(client, "/households?limit=4")
    assert (first["total"], first["has_more"]) == (11, True)
    assert first["total_age_s"] == 0.0  # counted for this first page
    community = await db.fetchval("SELECT community_code FROM household WHERE id = $1", county.households[0])
    await db.execute(
        "INSERT INTO household (community_code, building, unit, room, gas_type, supplier) VALUES ($1, '99', '1',"
        " '1', 'LPG', '荣昌')",
        community,
    )
    cached = await get_json(client, "/households?limit=4")
    assert cached["total"] == 11  # the count of up to 10 s ago, not recounted for this page
    assert 0.0 <= cached["total_age_s"] < 30.0
    exact = await get_json(client, "/households?limit=4&exact_total=true")
    assert (exact["total"], exact["total_age_s"]) == (12, 0.0)
    last = await get_json(client, "/households?limit=50")
    assert (len(last["items"]), last["has_more"], last["next_cursor"]) == (12, False, None)
    for path in ("/devices", "/incidents"):
        body = await get_json(client, f"{path}?limit=1")
        assert body["has_more"] is (body["total"] > 1)
        assert body["has_more"] is (body["next_cursor"] is not None)


async def test_households_default_and_max_limit(client: httpx.AsyncClient, county: County) -> None:
    """The default page is 50 rows and 500 is accepted; 0 and 501 are rejected with 422."""
    body = await get_json(client, "/households")
    assert body["limit"] == 50
    assert len(body["items"]) == 11
    assert body["next_cursor"] is None
    assert (await get_json(client, "/households?limit=500"))["limit"] == 500
    for bad in ("0", "501", "ten"):
        errors = (await get_json(client, f"/households?limit={bad}", 422))["detail"]
        assert errors[0]["loc"] == ["query", "limit"]


async def test_households_filters(client: httpx.AsyncClient, county: County) -> None:
    """town_code, community_code and gas_type filter the list (and the total)."""
    rural = await get_json(client, f"/households?town_code={RURAL_TOWN}")
    assert [item["id"] for item in rural["items"]] == [county.lpg]
    assert rural["total"] == 1

    urban = await get_json(client, f"/households?community_code={COMMUNITY}&limit=3")
    assert urban["total"] == 10
    assert len(urban["items"]) == 3
    assert all(item["place"]["community"]["code"] == COMMUNITY for item in urban["items"])

    lpg = await get_json(client, "/households?gas_type=LPG")
    assert [item["id"] for item in lpg["items"]] == [county.lpg]
    ng_total = (await get_json(client, "/households?gas_type=NG"))["total"]
    assert ng_total == 10

    none = await get_json(client, f"/households?town_code={TOWN}&gas_type=LPG")
    assert none == {"items": [], "total": 0, "total_age_s": 0.0, "limit": 50, "has_more": False, "next_cursor": None}


async def test_households_reject_bad_filters_and_cursors(client: httpx.AsyncClient, county: County) -> None:
    """Malformed codes, gas types and cursors are 422 with a pointer to the culprit."""
    for query, loc in [
        ("town_code=15062610000", ["query", "town_code"]),
        ("community_code=abc", ["query", "community_code"]),
        ("gas_type=CNG", ["query", "gas_type"]),
    ]:
        assert (await get_json(client, f"/households?{query}", 422))["detail"][0]["loc"] == loc
    incidents_cursor = (await get_json(client, "/incidents?limit=1"))["next_cursor"]
    for cursor in ("garbage!", "W10", "WyJ4Il0", "Wy0xXQ", incidents_cursor):  # [], ["x"], [-1], foreign
        body = await get_json(client, f"/households?cursor={cursor}", 422)
        assert body["detail"].startswith("invalid cursor"), cursor


async def test_household_place_and_masking(client: httpx.AsyncClient, county: County) -> None:
    """Items carry the coded place with names, and only masked resident details."""
    body = await get_json(client, f"/households/{county.monitored}")
    assert body["place"] == {
        "town": {"code": TOWN, "name": "嘎鲁图镇"},
        "community": {"code": COMMUNITY, "name": "文苑社区", "synthetic": True},
        "building": "3",
        "unit": "2",
        "room": "101",
    }
    assert body["gas_type"] == "NG"
    assert body["supplier"] == "乌审中燃天然气有限公司"
    assert body["resident_phone"] == "138****5678"
    assert body["resident_name"] == "张**"


async def test_monitored_flag(client: httpx.AsyncClient, county: County) -> None:
    """Only an NG household with an alarm linked to a shut-off valve is monitored; LPG never is."""
    items = {item["id"]: item for item in (await get_json(client, "/households?limit=500"))["items"]}
    assert items[county.monitored]["monitored"] is True
    assert items[county.alarm_only]["monitored"] is False
    assert items[county.unlinked]["monitored"] is False
    assert items[county.lpg]["monitored"] is False
    assert all(items[household]["monitored"] is False for household in county.plain)
    lpg_detail = await get_json(client, f"/households/{county.lpg}")
    assert lpg_detail["monitored"] is False
    assert lpg_detail["links"] == [{"alarm_id": "a-201", "valve_id": "v-201"}]  # linked, yet not monitored


async def test_household_detail_devices_and_expiry(client: httpx.AsyncClient, county: County) -> None:
    """The detail lists devices with expiry = install date + model service life, and the links."""
    body = await get_json(client, f"/households/{county.monitored}")
    devices = {device["id"]: device for device in body["devices"]}
    assert set(devices) == {"a-101", "v-101"}
    alarm, valve = devices["a-101"], devices["v-101"]
    year = county.today.year
    assert alarm["kind"] == "alarm"
    assert alarm["serial"] == "SN-a-101"
    assert alarm["model"]["id"] == "NG-ALARM"
    assert alarm["model"]["service_life_years"] == 5
    assert alarm["installed_on"] == date(year - 6, 3, 15).isoformat()
    assert alarm["expires_on"] == date(year - 1, 3, 15).isoformat()
    assert alarm["expired"] is True
    assert valve["kind"] == "shutoff_valve"
    assert valve["expires_on"] == date(year + 9, 3, 15).isoformat()
    assert valve["expired"] is False
    assert body["links"] == [{"alarm_id": "a-101", "valve_id": "v-101"}]

    not_installed = (await get_json(client, f"/households/{county.alarm_only}"))["devices"][0]
    assert not_installed["installed_on"] is None
    assert not_installed["expires_on"] is None
    assert not_installed["expired"] is None


async def test_household_bad_ids(client: httpx.AsyncClient, county: County) -> None:
    """A missing household is a 404 with a clear detail; malformed or out-of-range ids are 422."""
    assert await get_json(client, "/households/999999", 404) == {"detail": "household 999999 not found"}
    for bad in ("abc", "0", "-3", "99999999999999999999", "1.5"):
        await get_json(client, f"/households/{bad}", 422)


# Devices


async def test_devices_list_filters_and_pages(client: httpx.AsyncClient, county: County) -> None:
    """Devices page by cursor in id order and filter by kind and household."""
    seen: list[str] = []
    url = "/devices?limit=3"
    while url:
        body = await get_json(client, url)
        assert body["total"] == 8
        seen += [item["id"] for item in body["items"]]
        url = f"/devices?limit=3&cursor={body['next_cursor']}" if body["next_cursor"] else ""
    assert seen == sorted(["a-101", "v-101", "a-102", "a-103", "v-103", "r-201", "a-201", "v-201"])

    valves = await get_json(client, "/devices?kind=shutoff_valve")
    assert [item["id"] for item in valves["items"]] == ["v-101", "v-103", "v-201"]
    own = await get_json(client, f"/devices?household_id={county.unlinked}")
    assert [item["id"] for item in own["items"]] == ["a-103", "v-103"]
    assert (await get_json(client, "/devices?kind=valve", 422))["detail"][0]["loc"] == ["query", "kind"]
    await get_json(client, "/devices?household_id=-1", 422)


async def test_device_detail_and_404(client: httpx.AsyncClient, county: County) -> None:
    """A device shows its model, expiry and links; unknown ids are 404, malformed ones 422."""
    body = await get_json(client, "/devices/v-101")
    assert body["household_id"] == county.monitored
    assert body["kind"] == "shutoff_valve"
    assert body["model"]["service_life_years"] == 10
    assert body["links"] == [{"alarm_id": "a-101", "valve_id": "v-101"}]
    assert (await get_json(client, "/devices/a-103"))["links"] == []
    assert await get_json(client, "/devices/nope", 404) == {"detail": "device 'nope' not found"}
    await get_json(client, "/devices/bad$id", 422)


# Incidents


async def test_incidents_newest_first_with_filters(client: httpx.AsyncClient, county: County) -> None:
    """Incidents come newest first (ties by id) and filter by state, kind and household."""
    body = await get_json(client, "/incidents")
    newest_first = [county.incident_valve, county.incident_tie, county.incident_new, county.incident_old]
    assert [item["id"] for item in body["items"]] == newest_first
    assert body["total"] == 4
    assert body["items"][0]["place"]["community"]["code"] == COMMUNITY

    closed = await get_json(client, "/incidents?state=CLOSED")
    assert [item["id"] for item in closed["items"]] == [county.incident_old]
    assert closed["items"][0]["disposition"] == "false_alarm_cooking"
    valve = await get_json(client, "/incidents?kind=valve_not_closed")
    assert [item["id"] for item in valve["items"]] == [county.incident_valve]
    own = await get_json(client, f"/incidents?household_id={county.monitored}&kind=gas_alarm")
    assert [item["id"] for item in own["items"]] == [county.incident_new]
    assert (await get_json(client, "/incidents?state=OPEN", 422))["detail"][0]["loc"] == ["query", "state"]


async def test_incidents_paginate_across_equal_timestamps(client: httpx.AsyncClient, county: County) -> None:
    """Paging one incident at a time visits each once, even when two share opened_at."""
    seen: list[int] = []
    url = "/incidents?limit=1"
    while url:
        body = await get_json(client, url)
        seen += [item["id"] for item in body["items"]]
        url = f"/incidents?limit=1&cursor={body['next_cursor']}" if body["next_cursor"] else ""
    assert seen == [county.incident_valve, county.incident_tie, county.incident_new, county.incident_old]


async def test_incident_detail(client: httpx.AsyncClient, county: County) -> None:
    """The detail has the ordered timeline, the command with its attempts, and masked notifications."""
    body = await get_json(client, f"/incidents/{county.incident_new}")
    assert body["state"] == "NOTIFIED"
    assert body["alarm_device_id"] == "a-101"
    assert [event["type"] for event in body["timeline"]] == ["opened", "command_sent", "notified"]
    notified = body["timeline"][2]
    assert notified["actor"] == "operator:137****9999"
    assert notified["detail"] == {"to": ["138****5678"], "note": "请回拨138****5678"}

    [command] = body["commands"]
    assert command["cmd_id"] == str(county.cmd_id)
    assert command["valve_id"] == "v-101"
    assert command["state"] == "confirmed"
    assert command["reported_position"] == "closed"
    assert [attempt["attempt"] for attempt in command["attempts"]] == [1, 2]

    resident, operator = body["notifications"]
    assert resident["recipient"] == "138****5678"
    assert resident["recipient_role"] == "resident"
    assert resident["template"] == "SMS_GAS_ALARM_RESIDENT"
    assert resident["status"] == "sent"
    assert resident["sent_at"] is not None
    assert operator["recipient"] == "137****9999"
    assert operator["status"] == "pending"
    assert operator["sent_at"] is None
    assert "params" not in resident  # message parameters carry personal data

    quiet = await get_json(client, f"/incidents/{county.incident_old}")
    assert quiet["timeline"] == quiet["commands"] == quiet["notifications"] == []


async def test_incident_bad_ids(client: httpx.AsyncClient, county: County) -> None:
    """A missing incident is a 404; a malformed id is a 422."""
    assert await get_json(client, "/incidents/424242", 404) == {"detail": "incident 424242 not found"}
    await get_json(client, "/incidents/x", 422)
    await get_json(client, "/incidents/9223372036854775808", 422)


async def test_no_full_phone_number_in_any_response(client: httpx.AsyncClient, county: County) -> None:
    """No response body of any route contains a full mobile number, seeded or otherwise."""
    urls = ["/households?limit=500", "/devices?limit=500", "/incidents?limit=500", "/openapi.json"]
    urls += [f"/households/{household}" for household in county.households]
    devices = (await get_json(client, "/devices?limit=500"))["items"]
    urls += [f"/devices/{device['id']}" for device in devices]
    urls += [
        f"/incidents/{incident}"
        for incident in (county.incident_new, county.incident_old, county.incident_tie, county.incident_valve)
    ]
    for url in urls:
        response = await client.get(url)
        assert response.status_code == 200, url
        text = response.text
        decoded = json.dumps(response.json(), ensure_ascii=False)
        for phone in county.phones:
            assert phone not in text, (url, phone)
        assert not MOBILE_RE.search(decoded), (url, MOBILE_RE.search(decoded))


# Serving


async def test_serve_runs_until_cancelled(database_url: str) -> None:
    """serve() signals readiness, answers over real HTTP, and releases its port when cancelled."""
    port = free_port()
    ready = asyncio.Event()
    task = asyncio.create_task(serve(RegistrySettings(database_url=database_url, port=port), ready=ready))
    await asyncio.wait_for(ready.wait(), timeout=10)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
        response = await http.get("/health")
    assert response.status_code == 200
    assert response.json()["database"] == "ok"
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=10)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))  # free again


async def test_serve_raises_when_port_is_taken(database_url: str) -> None:
    """A busy port is an OSError from serve(), not an exit of the whole process."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(OSError, match="in use"):
            await serve(RegistrySettings(database_url=database_url, port=port))


async def test_python_dash_m_registry(database_url: str) -> None:
    """``python -m registry`` serves on GG_REGISTRY_PORT and exits cleanly on SIGTERM."""
    port = free_port()
    env = os.environ | {"GG_DATABASE_URL": database_url, "GG_REGISTRY_PORT": str(port)}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "registry", env=env, stderr=asyncio.subprocess.PIPE
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(300):
                try:
                    response = await http.get("/health")
                    break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            else:
                pytest.fail("python -m registry did not start listening within 30 s")
        assert response.status_code == 200
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=15)
        assert process.returncode == 0, stderr.decode()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_python_dash_m_registry_without_database_url() -> None:
    """Without GG_DATABASE_URL the service refuses to start and says which setting is missing."""
    env = {key: value for key, value in os.environ.items() if key != "GG_DATABASE_URL"}
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "registry", env=env, cwd="/", stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout=15)
    assert process.returncode != 0
    assert "database_url" in stderr.decode()


# Writes: households, places, catalogue (admin client)

SULIGE_ZONE = "150626400000"  # 苏里格经济开发区 (a town-level zone)
SULIGE_COMMUNITY = "150626100031"  # 苏里格社区 in 嘎鲁图镇 (synthetic code)


async def test_household_create_update_and_audit(
    client: httpx.AsyncClient, county: County, db: asyncpg.Connection
) -> None:
    """Households are created and updated through the API; the audit log records it with masked personal data."""
    body = {
        "community_code": COMMUNITY,
        "building": "7",
        "unit": "1",
        "room": "502",
        "gas_type": "NG",
        "supplier": "乌审中燃",
        "resident_name": "赵六",
        "resident_phone": "13912345678",
    }
    created = await client.post("/households", json=body)
    assert created.status_code == 201, created.text
    household = created.json()
    assert household["resident_phone"] == "139****5678" and household["unprotected"] is True
    assert (await client.post("/households", json=body)).status_code == 409
    for bad in ({"resident_phone": "12345"}, {"community_code": "150626999999"}, {"gas_type": "CNG"}, {"extra": 1}):
        response = await client.post("/households", json=body | {"room": "503"} | bad)
        assert response.status_code == 422, (bad, response.text)
    assert (await client.post("/households", json=body | {"room": "503", "community_code": "150626999999"})).json()[
        "detail"
    ] == "unknown community code 150626999999"

    updated = await client.patch(
        f"/households/{household['id']}", json={"resident_phone": "13700001234", "hazard": "燃气表漏气"}
    )
    assert updated.status_code == 200
    assert updated.json()["hazard"] == "燃气表漏气" and updated.json()["resident_phone"] == "137****1234"
    # Stored once, in full; the audit log carries only masked values.
    assert await db.fetchval("SELECT resident_phone FROM household WHERE id = $1", household["id"]) == "13700001234"
    entries = await db.fetch("SELECT actor, action, object, detail FROM audit_log ORDER BY id")
    assert [e["action"] for e in entries] == ["household_created", "household_updated"]
    assert entries[1]["detail"] == {"resident_phone": "137****1234", "hazard": "燃气表漏气"}
    assert all(e["object"] == f"household:{household['id']}" for e in entries)
    assert not MOBILE_RE.search(json.dumps([dict(e) for e in entries], ensure_ascii=False, default=str))


async def test_codes_are_identity_not_names(client: httpx.AsyncClient, county: County, db: asyncpg.Connection) -> None:
    """苏里格 the community and 苏里格经济开发区 are different places; filters go by code, never by name."""
    await db.execute("INSERT INTO town (code, name) VALUES ($1, '苏里格经济开发区')", SULIGE_ZONE)
    created = await client.post(
        "/places/communities", json={"code": SULIGE_COMMUNITY, "town_code": TOWN, "name": "苏里格", "synthetic": True}
    )
    assert created.status_code == 201, created.text
    assert (
        await client.post("/places/communities", json={"code": SULIGE_COMMUNITY, "town_code": TOWN, "name": "x"})
    ).status_code == 409
    zone_community = "150626400001"
    await client.post("/places/communities", json={"code": zone_community, "town_code": SULIGE_ZONE, "name": "苏里格"})
    base = {"building": "1", "unit": "1", "room": "1", "gas_type": "NG", "supplier": "乌审中燃"}
    in_community = (await client.post("/households", json=base | {"community_code": SULIGE_COMMUNITY})).json()
    in_zone = (await client.post("/households", json=base | {"community_code": zone_community})).json()
    assert in_community["place"]["town"]["name"] == "嘎鲁图镇"
    assert in_zone["place"]["town"]["name"] == "苏里格经济开发区"
    by_zone = await get_json(client, f"/households?town_code={SULIGE_ZONE}")
    assert [item["id"] for item in by_zone["items"]] == [in_zone["id"]]
    by_community = await get_json(client, f"/households?community_code={SULIGE_COMMUNITY}")
    assert [item["id"] for item in by_community["items"]] == [in_community["id"]]
    patched = await client.patch(f"/places/communities/{SULIGE_COMMUNITY}", json={"built_year": 1992})
    assert patched.json()["built_year"] == 1992


async def test_catalogue_models(client: httpx.AsyncClient, county: County) -> None:
    """The catalogue carries set points, heartbeat, confirmation timeout, service life, bearer; bad ones are 422."""
    model = {
        "id": "JT-AEC2363",
        "manufacturer": "汉威",
        "model": "JT-AEC2363",
        "kind": "alarm",
        "gas_type": "NG",
        "low_alarm_lel": 8,
        "high_alarm_lel": 20,
        "heartbeat_s": 14400,
        "service_life_years": 5,
        "bearer": "nb-iot",
    }
    created = await client.post("/catalogue/models", json=model)
    assert created.status_code == 201, created.text
    assert created.json()["low_alarm_lel"] == 8 and created.json()["heartbeat_s"] == 14400
    assert (await client.post("/catalogue/models", json=model)).status_code == 409
    assert (
        await client.post("/catalogue/models", json=model | {"id": "X1", "model": "X1", "low_alarm_lel": None})
    ).status_code == 422
    assert (
        await client.post("/catalogue/models", json=model | {"id": "X2", "model": "X2", "high_alarm_lel": 5})
    ).status_code == 422
    valve = model | {"id": "V9", "model": "V9", "kind": "shutoff_valve", "low_alarm_lel": None, "high_alarm_lel": None}
    assert (await client.post("/catalogue/models", json=valve)).json()["detail"] == (
        "a shut-off valve model needs close_confirm_timeout_s"
    )
    assert (await client.post("/catalogue/models", json=valve | {"close_confirm_timeout_s": 20})).status_code == 201
    listed = await get_json(client, "/catalogue/models")
    assert "JT-AEC2363" in [item["id"] for item in listed["items"]]
    assert (await get_json(client, "/catalogue/models/V9"))["close_confirm_timeout_s"] == 20
    await get_json(client, "/catalogue/models/nope", 404)
    patched = await client.patch("/catalogue/models/JT-AEC2363", json={"low_alarm_lel": 10})
    assert patched.status_code == 200 and patched.json()["low_alarm_lel"] == 10
    assert (await client.patch("/catalogue/models/JT-AEC2363", json={"high_alarm_lel": 9})).status_code == 422
    assert (await client.patch("/catalogue/models/nope", json={"heartbeat_s": 60})).status_code == 404


async def test_expired_alarm_makes_household_unprotected(client: httpx.AsyncClient, county: County) -> None:
    """A monitored household whose alarm is past its service life is still linked, but unprotected."""
    items = {item["id"]: item for item in (await get_json(client, "/households?limit=500"))["items"]}
    monitored = items[county.monitored]
    assert monitored["monitored"] is True and monitored["unprotected"] is True  # a-101 expired last year
    assert items[county.unlinked]["unprotected"] is True  # alarm not linked to its valve
    assert items[county.lpg]["unprotected"] is True  # regulator but no hose
