"""Installation work: the prioritised queue, assignment, kit validation and recording what was fitted."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from registry.app import create_app
from registry.auth import Role, create_user, issue_token
from registry.routes.installations import FittedDevice, default_links, kit_problems
from registry.settings import RegistrySettings

TOWN = "150626100000"
OLD, NEW, UNKNOWN_AGE = "150626100001", "150626100002", "150626100003"


@dataclass
class Site:
    """A client with admin and installer headers, and helpers."""

    client: httpx.AsyncClient
    db: asyncpg.Connection
    admin: dict[str, str]
    installer: dict[str, str]
    other_installer: dict[str, str]
    installer_id: int

    async def household(self, community: str, room: str, *, gas_type: str = "NG", hazard: str | None = None) -> int:
        """A household created through the API."""
        body = {
            "community_code": community,
            "building": "1",
            "unit": "1",
            "room": room,
            "gas_type": gas_type,
            "supplier": "乌审中燃" if gas_type == "NG" else "荣昌液化石油气供应站",
            "hazard": hazard,
        }
        response = await self.client.post("/households", json=body, headers=self.admin)
        assert response.status_code == 201, response.text
        household_id: int = response.json()["id"]
        return household_id

    async def job(self, household_id: int, *, assign: bool = True) -> int:
        """A job for the household, assigned to the installer."""
        response = await self.client.post(
            "/installations/jobs", json={"household_id": household_id}, headers=self.admin
        )
        assert response.status_code == 201, response.text
        job_id: int = response.json()["id"]
        if assign:
            assigned = await self.client.post(
                f"/installations/jobs/{job_id}/assign", json={"installer_id": self.installer_id}, headers=self.admin
            )
            assert assigned.status_code == 200, assigned.text
        return job_id


NG_KIT = [
    {"id": "A-1", "model_id": "NG-A", "serial": "SA1"},
    {"id": "V-1", "model_id": "NG-V", "serial": "SV1"},
    {"id": "C-1", "model_id": "NG-C", "serial": "SC1"},
    {"id": "H-1", "model_id": "NG-H", "serial": "SH1"},
]


@pytest.fixture
async def site(database_url: str, db: asyncpg.Connection) -> AsyncIterator[Site]:
    await db.execute("INSERT INTO town (code, name) VALUES ($1, '嘎鲁图镇')", TOWN)
    await db.execute(
        "INSERT INTO community (code, town_code, name, built_year) VALUES ($1, $4, '老区', 1988),"
        " ($2, $4, '新区', 2015), ($3, $4, '未知', NULL)",
        OLD,
        NEW,
        UNKNOWN_AGE,
        TOWN,
    )
    models = [
        ("NG-A", "alarm", "NG", 5),
        ("NG-V", "shutoff_valve", "NG", 10),
        ("NG-C", "self_closing_valve", "NG", 10),
        ("NG-H", "hose", "NG", 8),
        ("LPG-H", "hose", "LPG", 8),
        ("LPG-R", "regulator", "LPG", 8),
    ]
    for model_id, kind, gas, life in models:
        await db.execute(
            "INSERT INTO device_model (id, manufacturer, model, kind, gas_type, low_alarm_lel, close_confirm_timeout_s,"
            " service_life_years) VALUES ($1, 'M', $1, $2, $3, 10, 30, $4)",
            model_id,
            kind,
            gas,
            life,
        )
    admin = await create_user(db, username="admin", password=None, display_name="管理员", role=Role.ADMIN)
    installer = await create_user(db, username="li", password=None, display_name="李师傅", role=Role.INSTALLER)
    other = await create_user(db, username="wu", password=None, display_name="吴师傅", role=Role.INSTALLER)
    app = create_app(RegistrySettings(database_url=database_url))

    async def bearer(user_id: int) -> dict[str, str]:
        return {"Authorization": f"Bearer {await issue_token(db, user_id=user_id, name='t')}"}

    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://registry.test") as client,
    ):
        yield Site(client, db, await bearer(admin.id), await bearer(installer.id), await bearer(other.id), installer.id)


def test_kit_rules() -> None:
    """NG needs alarm, shut-off valve, self-closing valve and hose, the alarm linked; LPG hose and regulator."""
    ng = [
        FittedDevice("a", "alarm", "NG"),
        FittedDevice("v", "shutoff_valve", "NG"),
        FittedDevice("c", "self_closing_valve", "NG"),
        FittedDevice("h", "hose", "NG"),
    ]
    assert default_links(ng) == [("a", "v")]
    assert kit_problems("NG", ng, [("a", "v")]) == []
    assert kit_problems("NG", ng[:2], [("a", "v")]) == ["NG kit is missing: hose, self_closing_valve"]
    assert kit_problems("NG", ng, []) == ["alarm a is not linked to a shut-off valve"]
    assert kit_problems("NG", ng, [("v", "a")]) == [
        "link v→a: v is not an alarm fitted in this job",
        "link v→a: a is not a shut-off valve fitted in this job",
        "alarm a is not linked to a shut-off valve",
    ]
    lpg = [FittedDevice("h", "hose", "LPG"), FittedDevice("r", "regulator", "LPG")]
    assert kit_problems("LPG", lpg, []) == []
    assert kit_problems("LPG", [FittedDevice("h", "hose", "NG"), lpg[1]], []) == ["h is a NG model in an LPG household"]


async def test_queue_puts_hazards_then_older_communities_first(site: Site) -> None:
    """轻重缓急: recorded hazards first, then older communities, then unknown age, first come first served."""
    new_plain = await site.household(NEW, "1")
    unknown = await site.household(UNKNOWN_AGE, "1")
    old_plain = await site.household(OLD, "1")
    new_hazard = await site.household(NEW, "2", hazard="灶前阀漏气")
    old_plain_2 = await site.household(OLD, "2")
    for household in (new_plain, unknown, old_plain, new_hazard, old_plain_2):
        await site.job(household, assign=False)
    expected = [new_hazard, old_plain, old_plain_2, new_plain, unknown]
    body = (await site.client.get("/installations/queue", headers=site.admin)).json()
    assert [item["household_id"] for item in body["items"]] == expected
    # Paging two at a time walks the same order.
    seen: list[int] = []
    url = "/installations/queue?limit=2"
    while url:
        page = (await site.client.get(url, headers=site.admin)).json()
        seen += [item["household_id"] for item in page["items"]]
        url = f"/installations/queue?limit=2&cursor={page['next_cursor']}" if page["next_cursor"] else ""
    assert seen == expected
    # The installer sees only what is assigned to them.
    assert (await site.client.get("/installations/queue", headers=site.installer)).json()["items"] == []


async def test_assign_and_complete_ng_kit(site: Site) -> None:
    """The assigned installer records the kit; devices, serials, install date and the link are stored."""
    household = await site.household(OLD, "1")
    job = await site.job(household)
    denied = await site.client.post(
        f"/installations/jobs/{job}/complete",
        json={"installed_on": "2026-11-01", "devices": NG_KIT},
        headers=site.other_installer,
    )
    assert denied.status_code == 403
    done = await site.client.post(
        f"/installations/jobs/{job}/complete",
        json={"installed_on": "2026-11-01", "devices": NG_KIT},
        headers=site.installer,
    )
    assert done.status_code == 200, done.text
    assert done.json()["state"] == "completed" and done.json()["completed_at"]
    rows = await site.db.fetch("SELECT id, serial, installed_on, installation_job_id FROM device ORDER BY id")
    assert [(r["id"], r["serial"]) for r in rows] == [("A-1", "SA1"), ("C-1", "SC1"), ("H-1", "SH1"), ("V-1", "SV1")]
    assert {str(r["installed_on"]) for r in rows} == {"2026-11-01"} and {r["installation_job_id"] for r in rows} == {
        job
    }
    assert [tuple(r) for r in await site.db.fetch("SELECT alarm_id, valve_id FROM alarm_valve_link")] == [
        ("A-1", "V-1")
    ]
    detail = (await site.client.get(f"/households/{household}", headers=site.admin)).json()
    assert detail["monitored"] is True and detail["unprotected"] is False
    again = await site.client.post(
        f"/installations/jobs/{job}/complete",
        json={"installed_on": "2026-11-01", "devices": NG_KIT},
        headers=site.installer,
    )
    assert again.status_code == 409


async def test_incomplete_or_wrong_kit_commits_nothing(site: Site) -> None:
    """A missing part, a wrong gas type, an unknown model or a duplicate serial: clear error, nothing stored."""
    household = await site.household(OLD, "1")
    job = await site.job(household)
    url = f"/installations/jobs/{job}/complete"

    async def complete(devices: list[dict[str, Any]], **extra: Any) -> httpx.Response:
        body = {"installed_on": "2026-11-01", "devices": devices} | extra
        return await site.client.post(url, json=body, headers=site.installer)

    missing = await complete(NG_KIT[:2])
    assert missing.status_code == 422
    assert missing.json()["detail"] == ["NG kit is missing: hose, self_closing_valve"]
    wrong_gas = await complete([*NG_KIT[:3], {"id": "H-9", "model_id": "LPG-H", "serial": "SH9"}])
    assert wrong_gas.status_code == 422
    assert "H-9 is a LPG model in an NG household" in wrong_gas.json()["detail"]
    unknown = await complete([*NG_KIT[:3], {"id": "H-9", "model_id": "NOPE", "serial": "SH9"}])
    assert unknown.status_code == 422 and "NOPE" in unknown.json()["detail"]
    await site.db.execute(
        "INSERT INTO device (id, household_id, model_id, serial) VALUES ('X-1', $1, 'NG-H', 'SH1')", household
    )
    duplicate = await complete(NG_KIT)
    assert duplicate.status_code == 409 and "already registered" in duplicate.json()["detail"]
    bad_imei = await complete([{**NG_KIT[0], "imei": "12ab"}, *NG_KIT[1:]])
    assert bad_imei.status_code == 422
    assert await site.db.fetchval("SELECT count(*) FROM device") == 1  # only the one inserted above
    assert await site.db.fetchval("SELECT count(*) FROM alarm_valve_link") == 0
    assert await site.db.fetchval("SELECT state FROM installation_job WHERE id = $1", job) == "assigned"


async def test_lpg_kit_and_job_rules(site: Site) -> None:
    """An LPG household gets hose + regulator and is never monitored; one open job per household; assignment rules."""
    household = await site.household(NEW, "9", gas_type="LPG")
    job = await site.job(household, assign=False)
    queued = await site.client.post(
        f"/installations/jobs/{job}/complete",
        json={"installed_on": "2026-11-02", "devices": [{"id": "H-2", "model_id": "LPG-H", "serial": "H2"}]},
        headers=site.admin,
    )
    assert queued.status_code == 409  # not assigned yet
    duplicate_job = await site.client.post("/installations/jobs", json={"household_id": household}, headers=site.admin)
    assert duplicate_job.status_code == 409
    admin_id = await site.db.fetchval("SELECT id FROM app_user WHERE username = 'admin'")
    not_installer = await site.client.post(
        f"/installations/jobs/{job}/assign", json={"installer_id": admin_id}, headers=site.admin
    )
    assert not_installer.status_code == 422
    await site.client.post(
        f"/installations/jobs/{job}/assign", json={"installer_id": site.installer_id}, headers=site.admin
    )
    done = await site.client.post(
        f"/installations/jobs/{job}/complete",
        json={
            "installed_on": "2026-11-02",
            "devices": [
                {"id": "H-2", "model_id": "LPG-H", "serial": "H2"},
                {"id": "R-2", "model_id": "LPG-R", "serial": "R2"},
            ],
        },
        headers=site.installer,
    )
    assert done.status_code == 200, done.text
    detail = (await site.client.get(f"/households/{household}", headers=site.admin)).json()
    assert detail["monitored"] is False and detail["unprotected"] is False and detail["links"] == []
    audit = [r["action"] for r in await site.db.fetch("SELECT action FROM audit_log ORDER BY id")]
    assert audit[-3:] == ["installation_queued", "installation_assigned", "installation_completed"]
