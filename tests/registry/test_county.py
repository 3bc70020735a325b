"""County health API on a small hand-built county (real PostgreSQL): exact figures, scoping, paging."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import asyncpg
import httpx
import pytest

from registry.app import create_app
from registry.auth import Role, create_user, issue_token
from registry.county import ALARM_DAYS, county_health, list_building_households
from registry.queries import MONITORED_SQL, UNPROTECTED_SQL
from registry.settings import RegistrySettings
from registry.slips import SignatureRole
from tests.registry.test_rosters import COMMUNITY, OTHER_COMMUNITY, RURAL_COMMUNITY, RURAL_TOWN, TOWN, add_places
from tests.registry.test_slips import signed_slip

NG_SUPPLIER = "乌审中燃"
LPG_SUPPLIER = "荣昌液化石油气供应站"
MOBILE_RE = re.compile(r"(?<![0-9])1[3-9][0-9]{9}(?![0-9])")


async def _models(db: asyncpg.Connection) -> None:
    await db.execute(
        """
        INSERT INTO device_model (id, manufacturer, model, kind, gas_type, heartbeat_s, service_life_years) VALUES
            ('alarm', '某厂', 'JT-1', 'alarm', 'NG', 3600, 5),
            ('valve', '某厂', 'FM-1', 'shutoff_valve', 'NG', 3600, 10),
            ('regulator', '某厂', 'TY-1', 'regulator', 'LPG', NULL, 5),
            ('hose', '某厂', 'BG-1', 'hose', 'LPG', NULL, 8)
        """
    )


class County:
    """Builds households, devices, device states and incidents with plain SQL."""

    def __init__(self, db: asyncpg.Connection) -> None:
        self.db = db
        self.rooms = 0

    async def household(
        self, *, building: str = "1号楼", community: str = COMMUNITY, gas_type: str = "NG", phone: str | None = None
    ) -> int:
        self.rooms += 1
        household_id: int = await self.db.fetchval(
            "INSERT INTO household (community_code, building, unit, room, gas_type, supplier, resident_name,"
            " resident_phone) VALUES ($1, $2, '1单元', $3, $4, $5, '张三', $6) RETURNING id",
            community,
            building,
            f"{self.rooms:03d}",
            gas_type,
            NG_SUPPLIER if gas_type == "NG" else LPG_SUPPLIER,
            phone or f"139{self.rooms:08d}",
        )
        return household_id

    async def device(
        self,
        household: int,
        model: str,
        *,
        installed: date = date(2024, 6, 1),
        status: str | None = None,
        seen: str = "",
    ) -> str:
        """A device; with ``status``, the state alerting's sweep recorded (``seen``: an interval ago, or never)."""
        device_id = f"{model}-{household}"
        await self.db.execute(
            "INSERT INTO device (id, household_id, model_id, serial, installed_on) VALUES ($1, $2, $3, $1, $4)",
            device_id,
            household,
            model,
            installed,
        )
        if status is not None:
            await self.db.execute(
                "INSERT INTO device_state (device_id, status, last_seen_at, since) VALUES"
                " ($1, $2, CASE WHEN $3 = '' THEN NULL ELSE now() - $3::interval END, now())",
                device_id,
                status,
                seen,
            )
        return device_id

    async def ng_kit(
        self,
        household: int,
        *,
        alarm_status: str | None = "normal",
        seen: str = "10 minutes",
        alarm_installed: date = date(2024, 6, 1),
        valve_status: str = "normal",
        link: bool = True,
    ) -> None:
        alarm = await self.device(household, "alarm", installed=alarm_installed, status=alarm_status, seen=seen)
        valve = await self.device(household, "valve", status=valve_status, seen="10 minutes")
        if link:
            await self.db.execute("INSERT INTO alarm_valve_link (alarm_id, valve_id) VALUES ($1, $2)", alarm, valve)

    async def lpg_kit(self, household: int) -> None:
        await self.device(household, "regulator")
        await self.device(household, "hose")

    async def alarm_incident(self, household: int, *, ago: str, kind: str = "gas_alarm") -> None:
        await self.db.execute(
            "INSERT INTO incident (household_id, kind, severity, state, alarm_received_at, opened_at, closed_at,"
            " disposition) VALUES ($1, $2, 'critical', 'CLOSED', now() - $3::text::interval,"
            " now() - $3::text::interval, now(), 'test')",
            household,
            kind,
            ago,
        )


@dataclass
class Built:
    """The hand-built county: household ids by what they stand for."""

    ids: dict[str, int]


async def build_county(db: asyncpg.Connection) -> Built:
    """Nine households in 文苑社区 covering every state, plus one in 南丁社区 and one LPG household in 陶利社区."""
    await add_places(db)
    await _models(db)
    c = County(db)
    ids: dict[str, int] = {}
    ids["ok"] = await c.household()
    await c.ng_kit(ids["ok"])
    ids["silent"] = await c.household()  # last heard 2 h ago > 1.5 × 3600 s, though its state still says normal
    await c.ng_kit(ids["silent"], seen="2 hours")
    ids["never"] = await c.household()  # never heard from, never assessed
    await c.ng_kit(ids["never"], alarm_status=None)
    ids["expired"] = await c.household()  # online, but the alarm is past its 5-year life
    await c.ng_kit(ids["expired"], alarm_installed=date(2015, 6, 1))
    ids["unlinked"] = await c.household()  # alarm and valve fitted but not linked
    await c.ng_kit(ids["unlinked"], link=False)
    ids["valve_fault"] = await c.household()  # monitored, but the valve reports a fault
    await c.ng_kit(ids["valve_fault"], valve_status="fault")
    ids["alarm_fault"] = await c.household()  # heard from recently, but the sensor reports a fault
    await c.ng_kit(ids["alarm_fault"], alarm_status="fault")
    ids["lpg"] = await c.household(building="2号楼", gas_type="LPG")  # LPG kit and even a linked, online alarm
    await c.lpg_kit(ids["lpg"])
    await c.ng_kit(ids["lpg"])
    ids["lpg_bare"] = await c.household(building="2号楼", gas_type="LPG")  # nothing fitted
    ids["other"] = await c.household(community=OTHER_COMMUNITY)
    await c.ng_kit(ids["other"])
    ids["rural"] = await c.household(community=RURAL_COMMUNITY, gas_type="LPG", building="1排")
    await c.lpg_kit(ids["rural"])
    await c.alarm_incident(ids["ok"], ago="1 minute")
    await c.alarm_incident(ids["ok"], ago="3 days")
    await c.alarm_incident(ids["ok"], ago="40 days")  # outside the 30 days
    await c.alarm_incident(ids["silent"], ago="2 hours", kind="valve_not_closed")  # not a gas alarm
    await c.alarm_incident(ids["other"], ago="1 minute")
    return Built(ids)


COUNT_FIELDS = (
    "households",
    "ng",
    "lpg",
    "monitored",
    "offline",
    "unprotected",
    "expired",
    "lpg_unprotected",
    "valve_faults",
    "alarms",
)
WENYUAN = dict(zip(COUNT_FIELDS, (9, 7, 2, 2, 3, 3, 1, 1, 1, 2), strict=True))
NANDING = dict(zip(COUNT_FIELDS, (1, 1, 0, 1, 0, 0, 0, 0, 0, 1), strict=True))
TAOLI = dict(zip(COUNT_FIELDS, (1, 0, 1, 0, 0, 0, 0, 0, 0, 0), strict=True))


def _counts(place: Any) -> dict[str, int]:
    counts = place["counts"] if isinstance(place, dict) else vars(place.counts)
    return {name: counts[name] for name in COUNT_FIELDS}


async def test_figures_of_a_hand_built_county_are_exact(db: asyncpg.Connection) -> None:
    """Each household lands where the definitions say; LPG is never monitored; silence is offline, not normal."""
    built = await build_county(db)
    health = await county_health(db, scope=None)
    towns = {t.town.code: t for t in health.towns}
    assert set(towns) == {TOWN, RURAL_TOWN}
    communities = {c.code: c for t in health.towns for c in t.communities}
    assert _counts(communities[COMMUNITY]) == WENYUAN
    assert _counts(communities[OTHER_COMMUNITY]) == NANDING
    assert _counts(communities[RURAL_COMMUNITY]) == TAOLI
    assert _counts(towns[TOWN].town) == {k: WENYUAN[k] + NANDING[k] for k in COUNT_FIELDS}
    assert _counts(health.totals) == {k: WENYUAN[k] + NANDING[k] + TAOLI[k] for k in COUNT_FIELDS}
    # Alarms per China Standard Time day: today (last) and three days ago; 40 days ago is outside the series.
    assert len(health.days) == ALARM_DAYS and (health.days[-1] - health.days[0]).days == ALARM_DAYS - 1
    wenyuan = communities[COMMUNITY].alarms_per_day
    assert wenyuan[-1] == 1 and wenyuan[-4] == 1 and sum(wenyuan) == 2
    assert health.totals.alarms_per_day[-1] == 2

    households = await list_building_households(
        db, scope=None, community_code=COMMUNITY, building="1号楼", limit=50
    ) + await list_building_households(db, scope=None, community_code=COMMUNITY, building="2号楼", limit=50)
    status = {h.id: h.status for h in households}
    expected = {
        "ok": "monitored",
        "valve_fault": "monitored",
        "silent": "offline",
        "never": "offline",
        "alarm_fault": "offline",
        "expired": "unprotected",
        "unlinked": "unprotected",
        "lpg": "lpg",
        "lpg_bare": "unprotected",
    }
    assert status == {built.ids[name]: state for name, state in expected.items()}
    by_id = {h.id: h for h in households}
    assert by_id[built.ids["valve_fault"]].valve_fault and by_id[built.ids["valve_fault"]].valve_status == "fault"
    assert by_id[built.ids["never"]].alarm_status is None and by_id[built.ids["never"]].alarm_last_seen_at is None
    assert by_id[built.ids["expired"]].expired and by_id[built.ids["ok"]].alarms == 2


async def test_aggregates_agree_with_the_registry_definitions(db: asyncpg.Connection) -> None:
    """The set-wise counts equal registry.queries' per-household expressions for unprotected and linked kit."""
    await build_county(db)
    row = await db.fetchrow(
        f"SELECT count(*) FILTER (WHERE {UNPROTECTED_SQL}) AS unprotected,"
        f" count(*) FILTER (WHERE {MONITORED_SQL} AND NOT {UNPROTECTED_SQL}) AS kit_ok FROM household h"
    )
    assert row is not None
    totals = (await county_health(db, scope=None)).totals.counts
    assert totals.unprotected == row["unprotected"]
    assert totals.monitored + totals.offline == row["kit_ok"]


@dataclass
class Api:
    """The app in-process with a bearer token per user."""

    client: httpx.AsyncClient
    tokens: dict[str, str]
    built: Built

    async def get(self, user: str | None, path: str, **params: Any) -> httpx.Response:
        headers = {} if user is None else {"Authorization": f"Bearer {self.tokens[user]}"}
        return await self.client.get(path, params=params, headers=headers)


@pytest.fixture
async def api(db: asyncpg.Connection, database_url: str) -> AsyncIterator[Api]:
    built = await build_county(db)
    users = {
        "em": (Role.EMERGENCY_MANAGEMENT, None, None),
        "admin": (Role.ADMIN, None, None),
        "bureau": (Role.HOUSING_BUREAU, None, None),
        "op_ng": (Role.DUTY_OPERATOR, None, NG_SUPPLIER),
        "op_lpg": (Role.DUTY_OPERATOR, None, LPG_SUPPLIER),
        "staff": (Role.COMMUNITY_STAFF, COMMUNITY, None),
        "installer": (Role.INSTALLER, None, None),
    }
    tokens = {}
    for name, (role, community, supplier) in users.items():
        user = await create_user(
            db, username=name, password=None, display_name=name, role=role, community_code=community, supplier=supplier
        )
        tokens[name] = await issue_token(db, user_id=user.id, name="county")
    app = create_app(RegistrySettings(database_url=database_url))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://registry.test") as client,
    ):
        yield Api(client, tokens, built)


async def test_api_figures_and_no_personal_data(api: Api) -> None:
    """Emergency management gets the county's figures; no phone number or name appears in any county response."""
    response = await api.get("em", "/county/health")
    assert response.status_code == 200
    body = response.json()
    communities = {c["code"]: c for t in body["towns"] for c in t["communities"]}
    assert _counts(communities[COMMUNITY]) == WENYUAN
    assert len(body["days"]) == ALARM_DAYS == len(body["totals"]["alarms_per_day"])
    detail = await api.get("em", f"/county/communities/{COMMUNITY}")
    households = await api.get("em", f"/county/communities/{COMMUNITY}/buildings/1号楼/households")
    for text in (response.text, detail.text, households.text):
        assert not MOBILE_RE.search(text) and "张三" not in text
    assert [b["building"] for b in detail.json()["buildings"]] == ["1号楼", "2号楼"]
    assert _counts(detail.json()) == WENYUAN
    assert len(households.json()["items"]) == 7
    assert (households.json()["community_name"], households.json()["town_name"]) == ("文苑社区", "嘎鲁图镇")


async def test_roles_are_scoped(api: Api) -> None:
    """401 without credentials, installers 403; operators see their supplier, community staff their community."""
    assert (await api.get(None, "/county/health")).status_code == 401
    assert (await api.get("installer", "/county/health")).status_code == 403
    assert (await api.get("installer", f"/county/communities/{COMMUNITY}")).status_code == 403
    for user in ("admin", "bureau", "em"):
        assert (await api.get(user, "/county/health")).json()["totals"]["counts"]["households"] == 11

    staff = (await api.get("staff", "/county/health")).json()
    assert [c["code"] for t in staff["towns"] for c in t["communities"]] == [COMMUNITY]
    assert _counts(staff["totals"]) == WENYUAN
    forbidden = await api.get("staff", f"/county/communities/{OTHER_COMMUNITY}")
    assert forbidden.status_code == 403
    assert (
        await api.get("staff", f"/county/communities/{OTHER_COMMUNITY}/buildings/1号楼/households")
    ).status_code == 403
    assert (await api.get("staff", f"/county/communities/{COMMUNITY}")).status_code == 200

    lpg = (await api.get("op_lpg", "/county/health")).json()["totals"]["counts"]
    assert (lpg["households"], lpg["lpg"], lpg["ng"], lpg["monitored"]) == (3, 3, 0, 0)
    ng = (await api.get("op_ng", "/county/health")).json()["totals"]["counts"]
    assert (ng["households"], ng["ng"], ng["lpg"], ng["monitored"]) == (8, 8, 0, 3)
    # 1号楼 has only NG households: to the LPG supplier's operator it is as unknown as a building that does not exist.
    hidden = await api.get("op_lpg", f"/county/communities/{COMMUNITY}/buildings/1号楼/households")
    missing = await api.get("op_lpg", f"/county/communities/{COMMUNITY}/buildings/99号楼/households")
    assert hidden.status_code == missing.status_code == 404
    assert (
        len((await api.get("op_lpg", f"/county/communities/{COMMUNITY}/buildings/2号楼/households")).json()["items"])
        == 2
    )


async def test_paging_and_bad_parameters(api: Api) -> None:
    """Buildings and households page with opaque cursors; bad input is a 422, unknown places a 404."""
    first = (await api.get("em", f"/county/communities/{COMMUNITY}", limit=1)).json()
    assert [b["building"] for b in first["buildings"]] == ["1号楼"] and first["next_cursor"]
    second = (await api.get("em", f"/county/communities/{COMMUNITY}", limit=1, cursor=first["next_cursor"])).json()
    assert [b["building"] for b in second["buildings"]] == ["2号楼"] and second["next_cursor"] is None

    path = f"/county/communities/{COMMUNITY}/buildings/1号楼/households"
    seen: list[int] = []
    cursor = None
    while True:
        page = (await api.get("em", path, limit=3, **({"cursor": cursor} if cursor else {}))).json()
        seen += [h["id"] for h in page["items"]]
        assert len(page["items"]) <= 3
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(seen) and len(seen) == 7

    for bad in (
        ("/county/communities/abc",),
        (f"/county/communities/{COMMUNITY}", {"limit": 0}),
        (f"/county/communities/{COMMUNITY}", {"limit": 501}),
        (f"/county/communities/{COMMUNITY}", {"cursor": "not-a-cursor"}),
        (path, {"cursor": "W10"}),
    ):
        params = bad[1] if len(bad) > 1 else {}
        assert (await api.get("em", bad[0], **params)).status_code == 422, bad
    assert (await api.get("em", "/county/communities/150626100099")).status_code == 404
    assert (await api.get("em", f"/county/communities/{COMMUNITY}/buildings/99号楼/households")).status_code == 404


async def test_installations_by_month(api: Api, db: asyncpg.Connection) -> None:
    """Five-signature slips per month and gas type with running totals, for any signed-in role."""
    await signed_slip(db, api.built.ids["ok"], installed_on=date(2024, 6, 3))
    await signed_slip(db, api.built.ids["silent"], installed_on=date(2024, 6, 20))
    await signed_slip(db, api.built.ids["never"], installed_on=date(2024, 8, 1))
    await signed_slip(db, api.built.ids["rural"], installed_on=date(2024, 7, 1))
    await signed_slip(db, api.built.ids["expired"], installed_on=date(2024, 8, 2), skip=SignatureRole.RESIDENT)
    response = await api.get("installer", "/county/installations")
    assert response.status_code == 200
    assert [(m["month"], m["gas_type"], m["installed"], m["cumulative"]) for m in response.json()] == [
        ("2024-06-01", "NG", 2, 2),
        ("2024-07-01", "LPG", 1, 1),
        ("2024-08-01", "NG", 1, 3),
    ]
    assert (await api.get(None, "/county/installations")).status_code == 401


async def test_figures_refresh_by_themselves_and_state_their_age(api: Api, db: asyncpg.Connection) -> None:
    """An alarm heard from again shows as monitored once the cache refreshes (≤ 30 s); the age is stated."""
    first = (await api.get("em", "/county/health")).json()
    assert 0 <= first["age_s"] <= first["max_age_s"] == 30
    await db.execute(
        "INSERT INTO device_state (device_id, status, last_seen_at, since) VALUES ($1, 'normal', now(), now())",
        f"alarm-{api.built.ids['never']}",
    )
    deadline = asyncio.get_running_loop().time() + 90
    while True:
        body = (await api.get("em", "/county/health")).json()
        assert body["age_s"] <= body["max_age_s"]
        if body["totals"]["counts"]["monitored"] == first["totals"]["counts"]["monitored"] + 1:
            break
        assert asyncio.get_running_loop().time() < deadline, "the county view never picked up the change"
        await asyncio.sleep(1)
    assert body["totals"]["counts"]["offline"] == first["totals"]["counts"]["offline"] - 1
