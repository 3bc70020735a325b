"""The demo county generator against a real, freshly migrated database."""

from __future__ import annotations

import re
from datetime import date

import asyncpg
import pytest

from gasguard.protocol import is_valid_device_id
from registry.demo_county import LPG_SUPPLIERS, NG_SUPPLIER, seed_demo_county

REAL_TOWNS = {
    "150626100000": "嘎鲁图镇",
    "150626101000": "乌审召镇",
    "150626102000": "图克镇",
    "150626103000": "乌兰陶勒盖镇",
    "150626104000": "无定河镇",
    "150626200000": "苏力德苏木",
}

PROGRAMME = {
    "嘎鲁图镇": {"呼热胡", "独贵龙", "朝阳", "苏里格", "南丁", "巴音", "文苑", "萨拉乌素"},
    "苏力德苏木": {"陶利", "沙尔利格"},
    "无定河镇": {"河园", "河南"},
    "乌兰陶勒盖镇": {"查干塔拉"},
    "图克镇": {"吉美", "和美", "阿吉泰"},
    "乌审召镇": {"惠泽", "绿洲"},
}

PHONE = re.compile(r"^1[3-9][0-9]{9}$")


async def test_towns_carry_their_real_codes(db: asyncpg.Connection) -> None:
    county = await seed_demo_county(db, households=10)
    rows = {r["code"]: r["name"] for r in await db.fetch("SELECT code, name FROM town")}
    for code, name in REAL_TOWNS.items():
        assert rows[code] == name
    assert {t.code: t.name for t in county.towns}.items() >= REAL_TOWNS.items()
    # The development zone, if listed, is a town of its own and not the 苏里格 community.
    assert rows.get("150626410000", "苏里格经济开发区") == "苏里格经济开发区"


async def test_programme_communities_are_synthetic(db: asyncpg.Connection) -> None:
    county = await seed_demo_county(db, households=100)
    rows = await db.fetch(
        "SELECT c.code, c.name, c.synthetic, t.name AS town FROM community c JOIN town t ON t.code = c.town_code"
    )
    assert len(rows) == 18
    assert all(r["synthetic"] for r in rows)
    by_town: dict[str, set[str]] = {}
    for r in rows:
        assert r["name"].endswith("社区")
        by_town.setdefault(r["town"], set()).add(r["name"].removesuffix("社区"))
        town_code = next(code for code, name in REAL_TOWNS.items() if name == r["town"])
        # Town's 9 digits + a residents' committee number 001-199.
        assert r["code"][:9] == town_code[:9]
        assert 1 <= int(r["code"][9:]) <= 199
    assert by_town == PROGRAMME
    assert {c.code for c in county.communities} == {r["code"] for r in rows}


async def test_counts_match_the_summary(db: asyncpg.Connection) -> None:
    county = await seed_demo_county(db, households=250, seed=3, lpg_share=0.2)
    assert (county.households, county.ng_households, county.lpg_households) == (250, 200, 50)
    counts = dict(await db.fetch("SELECT gas_type, count(*) FROM household GROUP BY gas_type"))
    assert counts == {"NG": 200, "LPG": 50}
    assert await db.fetchval("SELECT count(*) FROM device") == county.devices == 200 * 4 + 50 * 2
    assert await db.fetchval("SELECT count(*) FROM alarm_valve_link") == county.alarm_valve_links == 200
    assert sum(c.ng_households for c in county.communities) == 200
    assert sum(c.lpg_households for c in county.communities) == 50
    per_community = dict(await db.fetch("SELECT community_code, count(*) FROM household GROUP BY community_code"))
    for community in county.communities:
        assert per_community.get(community.code, 0) == community.ng_households + community.lpg_households


async def test_kits_per_gas_type(db: asyncpg.Connection) -> None:
    await seed_demo_county(db, households=120, seed=1)
    kits = await db.fetch(
        """
        SELECT h.id, h.gas_type, h.supplier, array_agg(m.kind ORDER BY m.kind) AS kinds,
               array_agg(DISTINCT m.gas_type) AS model_gas
        FROM household h JOIN device d ON d.household_id = h.id JOIN device_model m ON m.id = d.model_id
        GROUP BY h.id
        """
    )
    assert len(kits) == 120
    for kit in kits:
        if kit["gas_type"] == "NG":
            assert kit["kinds"] == ["alarm", "hose", "self_closing_valve", "shutoff_valve"]
            assert kit["supplier"] == NG_SUPPLIER
        else:
            # LPG households have nothing networked: a self-closing regulator and a hose only.
            assert kit["kinds"] == ["hose", "regulator"]
            assert kit["supplier"] in LPG_SUPPLIERS
        assert kit["model_gas"] == [kit["gas_type"]]
    linked_lpg = await db.fetchval(
        """
        SELECT count(*) FROM alarm_valve_link l JOIN device d ON d.id IN (l.alarm_id, l.valve_id)
        JOIN household h ON h.id = d.household_id WHERE h.gas_type = 'LPG'
        """
    )
    assert linked_lpg == 0


async def test_every_alarm_is_linked_to_one_valve_of_its_household(db: asyncpg.Connection) -> None:
    await seed_demo_county(db, households=300, seed=2)
    rows = await db.fetch(
        """
        SELECT a.id AS alarm_id, a.household_id,
               array_agg(v.id) FILTER (WHERE v.id IS NOT NULL) AS valves,
               array_agg(v.household_id) FILTER (WHERE v.id IS NOT NULL) AS valve_households,
               array_agg(vm.kind) FILTER (WHERE v.id IS NOT NULL) AS valve_kinds
        FROM device a JOIN device_model am ON am.id = a.model_id AND am.kind = 'alarm'
        LEFT JOIN alarm_valve_link l ON l.alarm_id = a.id
        LEFT JOIN device v ON v.id = l.valve_id
        LEFT JOIN device_model vm ON vm.id = v.model_id
        GROUP BY a.id, a.household_id
        """
    )
    assert len(rows) == 270
    for r in rows:
        assert r["valves"] is not None
        assert len(r["valves"]) == 1
        assert r["valve_households"] == [r["household_id"]]
        assert r["valve_kinds"] == ["shutoff_valve"]
        assert r["valves"][0] == r["alarm_id"].replace("GA-", "GV-")


async def test_residents_devices_and_dates_are_plausible(db: asyncpg.Connection) -> None:
    await seed_demo_county(db, households=400, seed=4)
    households = await db.fetch("SELECT building, unit, room, resident_name, resident_phone FROM household")
    phones = [r["resident_phone"] for r in households]
    assert all(PHONE.match(phone) for phone in phones)
    assert len(set(phones)) == len(phones)
    assert all(r["resident_name"] and len(r["resident_name"]) >= 2 for r in households)
    assert all(re.fullmatch(r"\d+号楼|\d+排", r["building"]) for r in households)
    devices = await db.fetch("SELECT id, serial, imei, manufactured_on, installed_on FROM device")
    assert all(is_valid_device_id(d["id"]) for d in devices)
    assert all(re.fullmatch(r"(GA|GV|GS|GH|LR|LH)-\d{6}", d["id"]) for d in devices)
    assert len({d["serial"] for d in devices}) == len(devices)
    assert all(date(2024, 1, 1) <= d["installed_on"] <= date(2024, 12, 31) for d in devices)
    assert all(d["manufactured_on"] < d["installed_on"] for d in devices)
    imeis = [d["imei"] for d in devices if d["id"].startswith("GA-")]
    assert all(imei is not None and len(imei) == 15 and imei.isdigit() for imei in imeis)
    assert all(d["imei"] is None for d in devices if not d["id"].startswith("GA-"))


async def test_device_catalogue(db: asyncpg.Connection) -> None:
    await seed_demo_county(db, households=10)
    models = {r["kind"] + "/" + r["gas_type"]: r for r in await db.fetch("SELECT * FROM device_model")}
    alarm = models["alarm/NG"]
    assert (alarm["low_alarm_lel"], alarm["high_alarm_lel"], alarm["heartbeat_s"]) == (10, 25, 3600)
    assert (alarm["service_life_years"], alarm["bearer"]) == (5, "mqtt")
    valve = models["shutoff_valve/NG"]
    assert (valve["close_confirm_timeout_s"], valve["service_life_years"]) == (30, 10)
    assert models["self_closing_valve/NG"]["service_life_years"] == 10
    assert models["hose/NG"]["service_life_years"] == 8
    assert "regulator/LPG" in models
    assert "hose/LPG" in models
    assert all("演示" in r["model"] for r in models.values())


async def test_seat_has_most_ng_and_rural_towns_most_lpg(db: asyncpg.Connection) -> None:
    await seed_demo_county(db, households=2000, seed=5)
    shares = {
        r["gas_type"]: r["share"]
        for r in await db.fetch(
            """
            SELECT h.gas_type, avg((c.town_code = '150626100000')::int) AS share
            FROM household h JOIN community c ON c.code = h.community_code GROUP BY h.gas_type
            """
        )
    }
    assert shares["NG"] > 0.7
    assert shares["LPG"] < 0.25


async def test_same_seed_same_people_and_catalogue_is_reusable(db: asyncpg.Connection) -> None:
    query = """
        SELECT community_code, building, unit, room, resident_name, resident_phone, supplier FROM household ORDER BY id
    """
    await seed_demo_county(db, households=60, seed=9)
    first = [tuple(r) for r in await db.fetch(query)]
    first_ids = [r[0] for r in await db.fetch("SELECT id FROM household ORDER BY id")]
    async with db.transaction():
        await db.execute("DELETE FROM alarm_valve_link")
        await db.execute("DELETE FROM device")
        await db.execute("DELETE FROM household")
    # Towns, communities and models are still there: seeding again must not trip over them.
    await seed_demo_county(db, households=60, seed=9)
    assert [tuple(r) for r in await db.fetch(query)] == first
    second_ids = [r[0] for r in await db.fetch("SELECT id FROM household ORDER BY id")]
    assert min(second_ids) > max(first_ids)  # ids keep coming from the identity sequence
    # The sequence stays ahead of the seeded ids, so the registry's own inserts do not collide.
    new_id = await db.fetchval(
        """
        INSERT INTO household (community_code, building, unit, room, gas_type, supplier)
        VALUES ('150626100001', '99号楼', '1单元', '101', 'NG', '乌审中燃') RETURNING id
        """
    )
    assert new_id > max(second_ids)


async def test_refuses_to_seed_over_existing_households(db: asyncpg.Connection) -> None:
    await seed_demo_county(db, households=20)
    with pytest.raises(ValueError, match="already has 20 household"):
        await seed_demo_county(db, households=20, seed=1)
    assert await db.fetchval("SELECT count(*) FROM household") == 20
    assert await db.fetchval("SELECT count(*) FROM device") == 18 * 4 + 2 * 2


@pytest.mark.parametrize(("households", "lpg_share"), [(0, 0.1), (1_000_000, 0.1), (10, -0.1), (10, 1.5)])
async def test_rejects_bad_arguments(db: asyncpg.Connection, households: int, lpg_share: float) -> None:
    with pytest.raises(ValueError, match="must be between"):
        await seed_demo_county(db, households=households, lpg_share=lpg_share)
    assert await db.fetchval("SELECT count(*) FROM household") == 0


async def test_smallest_county(db: asyncpg.Connection) -> None:
    county = await seed_demo_county(db, households=10)
    assert (county.ng_households, county.lpg_households, county.devices) == (9, 1, 9 * 4 + 2)


async def test_full_programme_scale(db: asyncpg.Connection) -> None:
    county = await seed_demo_county(db, households=40_000)
    assert (county.ng_households, county.lpg_households) == (36_000, 4_000)
    assert await db.fetchval("SELECT count(*) FROM household") == 40_000
    assert await db.fetchval("SELECT count(*) FROM device") == 36_000 * 4 + 4_000 * 2
    assert await db.fetchval("SELECT count(*) FROM alarm_valve_link") == 36_000
    assert await db.fetchval("SELECT count(DISTINCT resident_phone) FROM household") == 40_000
