"""Role matrix: each role against each endpoint family, with 401 and 403 across community and supplier lines.

People call with a login session (cookie), as they do in the browser; ``machine`` is a machine account (no
password) of emergency management calling with a bearer token issued through ``POST /auth/tokens``;
``expired`` carries a bearer token past its expiry; ``anonymous`` sends no credentials. Every cell is a real
HTTP call through the app against this test's PostgreSQL database.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from registry.app import create_app
from registry.auth import SESSION_COOKIE, Role, create_user, issue_token, start_session
from registry.settings import RegistrySettings
from registry.slips import create_slip

TOWN_A, COMMUNITY_A = "150626100000", "150626100007"  # 嘎鲁图镇 / 文苑社区
TOWN_B, COMMUNITY_B = "150626200000", "150626200201"  # 苏力德苏木 / 陶利嘎查
NG_SUPPLIER = "乌审中燃"
LPG_SUPPLIER = "荣昌液化石油气供应站"
PHONE_A, PHONE_B = "13812345678", "18600003333"

#: People, each with a login session.
ROLES = ("admin", "em", "bureau", "op_ng", "op_lpg", "staff_a", "staff_b", "installer", "installer2")
#: Bearer-token callers: a machine account of emergency management, and a token past its expiry.
MACHINES = ("machine", "expired")


@dataclass
class World:
    """Two communities, two suppliers, one household each, a user per role, a machine account."""

    client: httpx.AsyncClient
    db: asyncpg.Connection
    sessions: dict[str, str]
    tokens: dict[str, str]
    user_ids: dict[str, int]
    household_a: int
    household_b: int
    incident_a: int
    job_a: int
    slip_a: int

    async def call(self, who: str | None, method: str, url: str, body: Any = None) -> httpx.Response:
        """Call ``url`` as ``who`` (None: anonymous): people with their session cookie, machines with a token."""
        if who is None:
            headers = {}
        elif who in self.sessions:
            headers = {"Cookie": f"{SESSION_COOKIE}={self.sessions[who]}"}
        else:
            headers = {"Authorization": f"Bearer {self.tokens[who]}"}
        return await self.client.request(method, url, json=body, headers=headers)

    async def statuses(self, method: str, url: str, body: Any = None) -> dict[str, int]:
        """The status each caller gets: anonymous, then every role in order, then the machine tokens."""
        result = {"anonymous": (await self.call(None, method, url, body)).status_code}
        for who in (*ROLES, *MACHINES):
            result[who] = (await self.call(who, method, url, body)).status_code
        return result


def expect(ok: int, allowed: set[str], denied: int = 403) -> dict[str, int]:
    """Expected statuses: ``ok`` for ``allowed`` roles, ``denied`` for the others, 401 without valid credentials.

    The machine account has emergency management's role, so it gets what ``em`` gets.
    """
    people = {role: ok if role in allowed else denied for role in ROLES}
    return {"anonymous": 401} | people | {"machine": people["em"], "expired": 401}


@pytest.fixture
async def world(database_url: str, db: asyncpg.Connection) -> AsyncIterator[World]:
    await db.execute("INSERT INTO town (code, name) VALUES ($1, '嘎鲁图镇'), ($2, '苏力德苏木')", TOWN_A, TOWN_B)
    await db.execute(
        "INSERT INTO community (code, town_code, name, synthetic) VALUES ($1, $2, '文苑社区', true),"
        " ($3, $4, '陶利嘎查', true)",
        COMMUNITY_A,
        TOWN_A,
        COMMUNITY_B,
        TOWN_B,
    )
    await db.execute(
        "INSERT INTO device_model (id, manufacturer, model, kind, gas_type, low_alarm_lel, service_life_years)"
        " VALUES ('M-A', 'X', 'A', 'alarm', 'NG', 10, 5)"
    )
    household_a = await db.fetchval(
        "INSERT INTO household (community_code, building, unit, room, gas_type, supplier, resident_name,"
        " resident_phone) VALUES ($1, '1', '1', '101', 'NG', $2, '张三', $3) RETURNING id",
        COMMUNITY_A,
        NG_SUPPLIER,
        PHONE_A,
    )
    household_b = await db.fetchval(
        "INSERT INTO household (community_code, building, unit, room, gas_type, supplier, resident_name,"
        " resident_phone) VALUES ($1, '1', '1', '1', 'LPG', $2, '李四', $3) RETURNING id",
        COMMUNITY_B,
        LPG_SUPPLIER,
        PHONE_B,
    )
    await db.execute(
        "INSERT INTO device (id, household_id, model_id, serial) VALUES ('dev-a', $1, 'M-A', 'S-A')", household_a
    )
    incident_a = await db.fetchval(
        "INSERT INTO incident (household_id, kind, severity, alarm_received_at) VALUES ($1, 'gas_alarm',"
        " 'critical', $2) RETURNING id",
        household_a,
        datetime.now(UTC),
    )
    users = {
        "admin": (Role.ADMIN, None, None),
        "em": (Role.EMERGENCY_MANAGEMENT, None, None),
        "bureau": (Role.HOUSING_BUREAU, None, None),
        "op_ng": (Role.DUTY_OPERATOR, None, NG_SUPPLIER),
        "op_lpg": (Role.DUTY_OPERATOR, None, LPG_SUPPLIER),
        "staff_a": (Role.COMMUNITY_STAFF, COMMUNITY_A, None),
        "staff_b": (Role.COMMUNITY_STAFF, COMMUNITY_B, None),
        "installer": (Role.INSTALLER, None, None),
        "installer2": (Role.INSTALLER, None, None),
    }
    sessions: dict[str, str] = {}
    user_ids: dict[str, int] = {}
    for name, (role, community, supplier) in users.items():
        # Created without a password only to spare nine argon2 hashes: the login itself is test_auth's subject.
        user = await create_user(
            db, username=name, password=None, display_name=name, role=role, community_code=community, supplier=supplier
        )
        user_ids[name] = user.id
        sessions[name] = await start_session(db, user=user, ttl=timedelta(hours=1))
    machine = await create_user(
        db, username="em-dashboard", password=None, display_name="应急大屏", role=Role.EMERGENCY_MANAGEMENT
    )
    user_ids["machine"] = machine.id
    tokens = {
        "expired": await issue_token(
            db, user_id=machine.id, name="old", expires_at=datetime.now(UTC) - timedelta(minutes=1)
        )
    }
    job_a = await db.fetchval(
        "INSERT INTO installation_job (household_id, state, installer_id, assigned_at, created_by)"
        " VALUES ($1, 'assigned', $2, now(), 'test') RETURNING id",
        household_a,
        user_ids["installer"],
    )
    # An unsigned confirmation slip of May 2024 for household A.
    slip_a = (
        await create_slip(
            db, household_id=household_a, installed_on=date(2024, 5, 6), actor="test", today=date(2024, 5, 6)
        )
    ).id
    app = create_app(RegistrySettings(database_url=database_url))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://registry.test") as client,
    ):
        world = World(client, db, sessions, tokens, user_ids, household_a, household_b, incident_a, job_a, slip_a)
        issued = await world.call("admin", "POST", "/auth/tokens", {"user_id": machine.id, "name": "大屏"})
        assert issued.status_code == 201, issued.text
        tokens["machine"] = issued.json()["token"]
        yield world


async def test_households_matrix(world: World) -> None:
    """Lists are scoped; a detail across a community or supplier boundary is a 403."""
    everyone = set(ROLES)
    assert await world.statuses("GET", "/households") == expect(200, everyone)
    seen = {}
    for role in ROLES:
        body = (await world.call(role, "GET", "/households")).json()
        seen[role] = sorted(item["id"] for item in body["items"])
        assert body["total"] == len(seen[role])
    a, b = world.household_a, world.household_b
    assert seen == {
        "admin": [a, b],
        "em": [a, b],
        "bureau": [a, b],
        "op_ng": [a],
        "op_lpg": [b],
        "staff_a": [a],
        "staff_b": [b],
        "installer": [a],
        "installer2": [],
    }
    may_see_a = {"admin", "em", "bureau", "op_ng", "staff_a", "installer"}
    assert await world.statuses("GET", f"/households/{a}") == expect(200, may_see_a)
    assert await world.statuses("GET", f"/households/{b}") == expect(
        200, {"admin", "em", "bureau", "op_lpg", "staff_b"}
    )
    # Emergency management sees no resident details at all, not even masked.
    em_view = (await world.call("em", "GET", f"/households/{a}")).json()
    assert em_view["resident_phone"] is None and em_view["resident_name"] is None
    assert (await world.call("staff_a", "GET", f"/households/{a}")).json()["resident_phone"] == "138****5678"


async def test_full_phone_number_matrix_and_audit(world: World) -> None:
    """Only roles that call residents read the full number, inside their scope, and every read is audited."""
    a = world.household_a
    allowed = {"admin", "op_ng", "staff_a", "installer"}
    assert await world.statuses("GET", f"/households/{a}/contact") == expect(200, allowed)
    body = (await world.call("op_ng", "GET", f"/households/{a}/contact")).json()
    assert body == {"household_id": a, "resident_name": "张三", "resident_phone": PHONE_A}
    reads = await world.db.fetch("SELECT actor, object FROM audit_log WHERE action = 'read_phone' ORDER BY id")
    assert [r["actor"] for r in reads] == [
        f"user:{role}" for role in ("admin", "op_ng", "staff_a", "installer", "op_ng")
    ]
    assert {r["object"] for r in reads} == {f"household:{a}"}


async def test_household_writes_matrix(world: World) -> None:
    """Admins and community staff write households, staff only in their own community; changes are audited."""
    rooms = iter(range(200, 300))

    def new_in_b() -> dict[str, Any]:
        return {
            "community_code": COMMUNITY_B,
            "building": "2",
            "unit": "1",
            "room": str(next(rooms)),
            "gas_type": "LPG",
            "supplier": LPG_SUPPLIER,
        }

    result = {"anonymous": (await world.call(None, "POST", "/households", new_in_b())).status_code}
    for who in (*ROLES, *MACHINES):
        result[who] = (await world.call(who, "POST", "/households", new_in_b())).status_code
    assert result == expect(201, {"admin", "staff_b"})
    patch = {"hazard": "软管老化"}
    assert await world.statuses("PATCH", f"/households/{world.household_a}", patch) == expect(200, {"admin", "staff_a"})
    actions = [
        r["action"]
        for r in await world.db.fetch("SELECT action FROM audit_log WHERE object LIKE 'household:%' ORDER BY id")
    ]
    assert actions == ["household_created"] * 2 + ["household_updated"] * 2


async def test_devices_matrix(world: World) -> None:
    """Devices follow their household's scope."""
    may_see_a = {"admin", "em", "bureau", "op_ng", "staff_a", "installer"}
    assert await world.statuses("GET", "/devices/dev-a") == expect(200, may_see_a)
    for role in ROLES:
        total = (await world.call(role, "GET", "/devices")).json()["total"]
        assert total == (1 if role in may_see_a else 0), role


async def test_incidents_matrix(world: World) -> None:
    """Incident reads and actions by role; emergency management gets the overview without phone numbers."""
    i = world.incident_a
    readers = {"admin", "em", "op_ng", "op_lpg", "staff_a", "staff_b", "installer", "installer2"}
    assert await world.statuses("GET", "/incidents") == expect(200, readers)
    for role, total in {"admin": 1, "em": 1, "op_ng": 1, "op_lpg": 0, "staff_a": 1, "staff_b": 0}.items():
        assert (await world.call(role, "GET", "/incidents")).json()["total"] == total, role
    assert await world.statuses("GET", f"/incidents/{i}") == expect(
        200, {"admin", "em", "op_ng", "staff_a", "installer"}
    )
    assert await world.statuses("GET", "/incidents/overview") == expect(200, {"admin", "em", "op_ng", "op_lpg"})
    overview = await world.call("em", "GET", "/incidents/overview")
    assert overview.json()["active_total"] == 1
    assert PHONE_A not in overview.text and "5678" not in overview.text
    statuses = await world.statuses("POST", f"/incidents/{i}/acknowledge", {"note": "已联系"})
    # The admin (asked first) acknowledges; the NG duty operator then finds it acknowledged already (409).
    assert statuses == expect(200, {"admin"}) | {"op_ng": 409}


async def test_installations_catalogue_and_tokens_matrix(world: World) -> None:
    """Queue, job and catalogue writes by role; bearer tokens are issued by admins only."""
    assert await world.statuses("GET", "/installations/queue") == expect(
        200, {"admin", "staff_a", "staff_b", "installer", "installer2", "op_ng", "op_lpg"}
    )
    queue_readers = ("admin", "staff_a", "staff_b", "installer", "installer2", "op_ng", "op_lpg")
    queue = {
        role: len((await world.call(role, "GET", "/installations/queue")).json()["items"]) for role in queue_readers
    }
    assert {role for role, n in queue.items() if n} == {"admin", "staff_a", "installer", "op_ng"}
    assert await world.statuses("GET", f"/installations/jobs/{world.job_a}") == expect(
        200, {"admin", "bureau", "op_ng", "staff_a", "installer"}
    )
    # Only the household's own community staff (or an admin) may queue it; it has an open job (409).
    assert await world.statuses("POST", "/installations/jobs", {"household_id": world.household_a}) == expect(
        409, {"admin", "staff_a"}
    )
    assert await world.statuses("GET", "/catalogue/models") == expect(200, set(ROLES))
    assert await world.statuses("GET", "/places/communities") == expect(200, set(ROLES))
    model = {
        "id": "M-NEW",
        "manufacturer": "Y",
        "model": "Z",
        "kind": "hose",
        "gas_type": "NG",
        "service_life_years": 8,
    }
    assert await world.statuses("POST", "/catalogue/models", model) == expect(201, {"admin"}) | {"anonymous": 401}
    token_body = {"user_id": world.user_ids["em"], "name": "x"}
    assert await world.statuses("POST", "/auth/tokens", token_body) == expect(201, {"admin"})


async def test_programme_matrix(world: World) -> None:
    """Rosters, slips, finance, settlement, spot checks, progress and audit by role, scope and credentials."""
    a, b, slip = world.household_a, world.household_b, world.slip_a
    community_staff = {"admin", "staff_a", "staff_b"}
    # Rosters (花名册): admins and community staff export; staff only their own community, which contains phones.
    assert await world.statuses("GET", "/rosters/export") == expect(200, community_staff)
    assert await world.statuses("GET", f"/rosters/export?community_code={COMMUNITY_B}") == expect(
        200, {"admin", "staff_b"}
    )

    # Slips (确认单): read within the household's scope; only the housing bureau (or an admin) verifies.
    may_see_a = {"admin", "bureau", "op_ng", "staff_a", "installer"}
    assert await world.statuses("GET", f"/slips/{slip}") == expect(200, may_see_a)
    assert await world.statuses("GET", f"/slips/{slip}/print.html") == expect(200, may_see_a)
    # Unsigned, so the verifiers get 409 (missing signatures); everyone else is refused before looking.
    assert await world.statuses("POST", f"/slips/{slip}/verify") == expect(409, {"admin", "bureau"})
    signature = {"role": "community_secretary", "signer_name": "王书记"}
    assert await world.statuses("POST", f"/slips/{slip}/signatures", signature) == expect(
        201, {"admin", "staff_a", "installer"}
    ) | {"staff_a": 409, "installer": 409}  # the admin signed first; the same role cannot sign twice

    # Finance (资金): prices for the programme's offices; a household's ledger within its scope.
    assert await world.statuses("GET", "/finance/prices") == expect(
        200, {"admin", "bureau", "op_ng", "op_lpg", "staff_a", "staff_b"}
    )
    assert await world.statuses("GET", f"/finance/households/{a}/ledger") == expect(
        200, {"admin", "bureau", "op_ng", "staff_a"}
    )
    assert await world.statuses("GET", f"/finance/households/{b}/eligibility") == expect(
        200, {"admin", "bureau", "op_lpg", "staff_b"}
    )
    price = {
        "gas_type": "LPG",
        "item": "液化石油气调压阀（含金属包覆管）",
        "effective_from": "2025-01-01",
        "price_fen": 22300,
        "company_bp": 4000,
        "government_bp": 3000,
        "resident_bp": 3000,
    }
    assert await world.statuses("POST", "/finance/prices", price) == expect(201, {"admin"})

    # Settlement (结算): the housing bureau and admins only.
    bureau = {"admin", "bureau"}
    assert await world.statuses("POST", "/settlement/verifications", {"month": "2024-05-01"}) == expect(201, bureau)
    assert await world.statuses("GET", "/settlement/2024/q2") == expect(200, bureau)
    assert await world.statuses("GET", "/settlement/2024/q2/statement.xlsx") == expect(200, bureau)
    # The admin (asked first) freezes the quarter; the bureau then finds it frozen already (409).
    assert await world.statuses("POST", "/settlement/2024/q2/freeze") == expect(201, {"admin"}) | {"bureau": 409}

    # Spot checks (抽查): the bureau draws; community staff read their own community's.
    draw = {"month": "2024-05-01", "community_code": COMMUNITY_A, "seed": "matrix"}
    assert await world.statuses("POST", "/spot-checks", draw) == expect(201, {"admin"}) | {"bureau": 409}
    assert await world.statuses("GET", "/spot-checks") == expect(200, {"admin", "bureau", "staff_a", "staff_b"})
    assert await world.statuses("GET", f"/spot-checks?community_code={COMMUNITY_A}") == expect(
        200, {"admin", "bureau", "staff_a"}
    )
    assert await world.statuses("GET", "/spot-checks/findings") == expect(
        200, {"admin", "bureau", "staff_a", "staff_b"}
    )
    finding = {"slip_id": slip, "finding": "match"}
    assert await world.statuses("POST", "/spot-checks/findings", finding) == expect(201, {"admin", "bureau", "staff_a"})

    # Progress (进度): every signed-in caller; the public page needs no credentials at all.
    assert await world.statuses("GET", "/progress") == expect(200, set(ROLES))
    assert (await world.call(None, "GET", "/progress/public")).status_code == 200

    # Audit log: admins and the housing bureau.
    assert await world.statuses("GET", "/audit") == expect(200, bureau)
    frozen = await world.db.fetchval("SELECT actor FROM audit_log WHERE action = 'settlement_frozen'")
    assert frozen == "user:admin"
