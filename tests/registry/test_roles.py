"""Role matrix: each role against each endpoint family, with 401 and 403 across community and supplier lines."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from registry.app import create_app
from registry.auth import Role, create_user, issue_token
from registry.settings import RegistrySettings

TOWN_A, COMMUNITY_A = "150626100000", "150626100007"  # 嘎鲁图镇 / 文苑社区
TOWN_B, COMMUNITY_B = "150626200000", "150626200201"  # 苏力德苏木 / 陶利嘎查
NG_SUPPLIER = "乌审中燃"
LPG_SUPPLIER = "荣昌液化石油气供应站"
PHONE_A, PHONE_B = "13812345678", "18600003333"

ROLES = ("admin", "em", "bureau", "op_ng", "op_lpg", "staff_a", "staff_b", "installer", "installer2")


@dataclass
class World:
    """Two communities, two suppliers, one household each, and a user per role."""

    client: httpx.AsyncClient
    db: asyncpg.Connection
    tokens: dict[str, str]
    user_ids: dict[str, int]
    household_a: int
    household_b: int
    incident_a: int
    job_a: int

    async def call(self, who: str | None, method: str, url: str, body: Any = None) -> httpx.Response:
        """Call ``url`` as ``who`` (None: anonymous)."""
        headers = {} if who is None else {"Authorization": f"Bearer {self.tokens[who]}"}
        return await self.client.request(method, url, json=body, headers=headers)

    async def statuses(self, method: str, url: str, body: Any = None) -> dict[str, int]:
        """The status each role (and an anonymous caller) gets."""
        result = {"anonymous": (await self.call(None, method, url, body)).status_code}
        for role in ROLES:
            result[role] = (await self.call(role, method, url, body)).status_code
        return result


def expect(ok: int, allowed: set[str], denied: int = 403) -> dict[str, int]:
    """Expected statuses: ``ok`` for ``allowed`` roles, ``denied`` for the others, 401 when anonymous."""
    return {"anonymous": 401} | {role: ok if role in allowed else denied for role in ROLES}


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
    tokens: dict[str, str] = {}
    user_ids: dict[str, int] = {}
    for name, (role, community, supplier) in users.items():
        user = await create_user(
            db, username=name, password=None, display_name=name, role=role, community_code=community, supplier=supplier
        )
        user_ids[name] = user.id
        tokens[name] = await issue_token(db, user_id=user.id, name="matrix")
    job_a = await db.fetchval(
        "INSERT INTO installation_job (household_id, state, installer_id, assigned_at, created_by)"
        " VALUES ($1, 'assigned', $2, now(), 'test') RETURNING id",
        household_a,
        user_ids["installer"],
    )
    app = create_app(RegistrySettings(database_url=database_url))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://registry.test") as client,
    ):
        yield World(client, db, tokens, user_ids, household_a, household_b, incident_a, job_a)


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
    for role in ROLES:
        result[role] = (await world.call(role, "POST", "/households", new_in_b())).status_code
    assert result == expect(201, {"admin", "staff_b"})
    patch = {"hazard": "软管老化"}
    assert await world.statuses("PATCH", f"/households/{world.household_a}", patch) == expect(200, {"admin", "staff_a"})
    actions = [r["action"] for r in await world.db.fetch("SELECT action FROM audit_log ORDER BY id")]
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
