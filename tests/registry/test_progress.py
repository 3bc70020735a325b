"""Progress against the targets, expired and unprotected households, overdue work, the public page."""

from __future__ import annotations

import asyncio
from datetime import date

import asyncpg

from gasguard.db import open_pool
from registry.progress import ProgressCache, progress, render_public_html
from registry.queries import MONITORED_SQL, UNPROTECTED_SQL, list_households
from registry.slips import SignatureRole
from tests.registry.test_rosters import COMMUNITY, OTHER_COMMUNITY, RURAL_COMMUNITY, add_places
from tests.registry.test_slips import add_household, signed_slip

TODAY = date(2025, 2, 20)


async def _models(db: asyncpg.Connection) -> None:
    await db.execute(
        """
        INSERT INTO device_model (id, manufacturer, model, kind, gas_type, service_life_years) VALUES
            ('alarm', '某厂', 'JT-1', 'alarm', 'NG', 5),
            ('valve', '某厂', 'FM-1', 'shutoff_valve', 'NG', 10),
            ('regulator', '某厂', 'TY-1', 'regulator', 'LPG', 8),
            ('hose', '某厂', 'BG-1', 'hose', 'LPG', 8)
        """
    )


async def _fit_ng(db: asyncpg.Connection, household: int, *, alarm_installed: date, tag: str) -> None:
    await db.executemany(
        "INSERT INTO device (id, household_id, model_id, serial, installed_on) VALUES ($1, $2, $3, $1, $4)",
        [(f"A-{tag}", household, "alarm", alarm_installed), (f"V-{tag}", household, "valve", date(2024, 6, 1))],
    )
    await db.execute("INSERT INTO alarm_valve_link (alarm_id, valve_id) VALUES ($1, $2)", f"A-{tag}", f"V-{tag}")


async def test_expired_alarm_counts_as_unprotected(db: asyncpg.Connection) -> None:
    """A linked but expired alarm makes its household expired and unprotected; a fresh one protects."""
    await add_places(db)
    await _models(db)
    fresh = await add_household(db, room="1")
    expired = await add_household(db, room="2")
    await _fit_ng(db, fresh, alarm_installed=date(2024, 6, 1), tag="1")
    await _fit_ng(db, expired, alarm_installed=date(2015, 6, 1), tag="2")
    await add_household(db, room="3")  # nothing fitted
    report = await progress(db, today=TODAY)
    row = next(c for c in report.communities if c.community_code == COMMUNITY)
    assert (row.households, row.expired, row.unprotected) == (3, 1, 2)


async def test_counts_against_targets_by_town_and_community(db: asyncpg.Connection) -> None:
    """Installed = five signatures; verified counted apart; LPG counted against its own target."""
    await add_places(db)
    for i in range(3):
        await signed_slip(db, await add_household(db, room=f"a{i}"))
    await signed_slip(db, await add_household(db, room="b", community=OTHER_COMMUNITY), skip=SignatureRole.RESIDENT)
    lpg = await add_household(db, room="c", community=RURAL_COMMUNITY, gas_type="LPG", supplier="荣昌")
    await signed_slip(db, lpg)
    report = await progress(db, today=TODAY)
    targets = {t.gas_type: (t.households, t.deadline, t.installed) for t in report.targets}
    assert targets == {"NG": (36000, date(2024, 12, 31), 3), "LPG": (4000, date(2024, 12, 31), 1)}
    by_community = {(c.community_code, c.gas_type): (c.households, c.installed) for c in report.communities}
    assert by_community == {
        (COMMUNITY, "NG"): (3, 3),
        (OTHER_COMMUNITY, "NG"): (1, 0),
        (RURAL_COMMUNITY, "LPG"): (1, 1),
    }
    assert next(t for t in report.targets if t.gas_type == "NG").percent == 0.0


async def test_overdue_work_per_responsible_unit(db: asyncpg.Connection) -> None:
    """Overdue after the deadline: uninstalled households (supplier), missing rosters and unsigned slips (community)."""
    await add_places(db)
    await add_household(db, room="1")
    await add_household(db, room="2", connected_on=date(2025, 1, 5))  # outside the programme: not overdue
    await signed_slip(
        db,
        await add_household(db, room="3", community=OTHER_COMMUNITY),
        installed_on=date(2024, 12, 1),
        skip=SignatureRole.GRID_WORKER,
    )
    report = await progress(db, today=TODAY)
    kinds = {(o.unit, o.kind): o.count for o in report.overdue}
    assert kinds[("乌审中燃", "installation")] == 2
    assert kinds[("南丁社区（150626100005）", "signatures")] == 1
    assert kinds[("文苑社区（150626100007）", "roster")] == 1
    before_deadline = await progress(db, today=date(2024, 12, 5))
    assert all(o.kind != "installation" for o in before_deadline.overdue)
    assert all(o.kind != "roster" for o in before_deadline.overdue)


async def test_public_page_has_no_personal_data(db: asyncpg.Connection) -> None:
    """The public page shows counts in Chinese and never a name, address or phone number."""
    await add_places(db)
    await signed_slip(db, await add_household(db, room="808"))
    html = render_public_html(await progress(db, today=TODAY))
    assert "乌审旗燃气技防设施安装进度公示" in html and "文苑社区" in html and "36000" in html
    for personal in ("张三", "13912345678", "808", "燕奕景"):
        assert personal not in html


async def test_set_based_counts_agree_with_the_registry_definition(db: asyncpg.Connection) -> None:
    """Progress's unprotected count equals the registry's per-household definition (registry.queries)."""

    await add_places(db)
    await _models(db)
    for i in range(12):
        household = await add_household(db, room=f"n{i}")
        if i % 3 == 0:
            await _fit_ng(db, household, alarm_installed=date(2016 + i, 1, 1), tag=f"n{i}")
        elif i % 3 == 1:  # alarm and valve fitted but not linked: not monitored
            await db.execute(
                "INSERT INTO device (id, household_id, model_id, serial, installed_on)"
                " VALUES ($1, $2, 'alarm', $1, $3)",
                f"U-{i}",
                household,
                date(2024, 1, 1),
            )
    for i in range(6):
        household = await add_household(db, room=f"l{i}", community=RURAL_COMMUNITY, gas_type="LPG", supplier="荣昌")
        kinds = ["regulator", "hose"][: i % 3]
        for kind in kinds:
            await db.execute(
                "INSERT INTO device (id, household_id, model_id, serial, installed_on) VALUES ($1, $2, $3, $1, $4)",
                f"{kind}-{i}",
                household,
                kind,
                date(2014 + i, 1, 1),
            )
    report = await progress(db, today=TODAY)
    expected = await db.fetchval(f"SELECT count(*) FROM household h WHERE {UNPROTECTED_SQL}")
    assert sum(c.unprotected for c in report.communities) == expected
    assert 0 < expected < 18
    # The household pages compute the same flags their own way (one LATERAL pass per row): row by row equal.
    definition = {
        r["id"]: (r["monitored"], r["unprotected"])
        for r in await db.fetch(
            f"SELECT h.id, {MONITORED_SQL} AS monitored, {UNPROTECTED_SQL} AS unprotected FROM household h"
        )
    }
    pages = {r["id"]: (r["monitored"], r["unprotected"]) for r in await list_households(conn=db, limit=100)}
    assert pages == definition and len(pages) == 18
    assert {(True, False), (True, True), (False, True)} <= set(pages.values())  # every case is exercised


async def test_cache_serves_the_same_report_until_it_expires(db: asyncpg.Connection) -> None:
    """Within its time to live the cache answers without counting again; a new day or ttl 0 counts again."""
    await add_places(db)
    cache = ProgressCache(ttl_s=3600)
    first = await cache.get(db, today=TODAY)
    await add_household(db, room="new")
    again = await cache.get(db, today=TODAY)
    assert again.value is first.value and again.computed_at == first.computed_at
    assert sum(c.households for c in first.value.communities) == 0
    fresh = await ProgressCache(ttl_s=0).get(db, today=TODAY)
    assert sum(c.households for c in fresh.value.communities) == 1
    next_day = await cache.get(db, today=date(2025, 2, 21))
    assert sum(c.households for c in next_day.value.communities) == 1


async def test_stale_report_is_served_while_one_background_refresh_counts_again(
    database_url: str, db: asyncpg.Connection
) -> None:
    """Past its time to live the cache answers at once with the old report and refreshes it from the pool."""
    await add_places(db)
    cache = ProgressCache(ttl_s=0, max_age_s=3600)
    async with open_pool(database_url, min_size=0, max_size=2) as pool:
        first = await cache.get(db, today=TODAY, pool=pool)
        await add_household(db, room="new")
        stale = await cache.get(db, today=TODAY, pool=pool)
        assert stale.value is first.value  # served as it was; the refresh runs behind it
        refreshed = stale
        async with asyncio.timeout(60):
            while refreshed.value is first.value:
                await asyncio.sleep(0.05)
                refreshed = await cache.get(db, today=TODAY, pool=pool)
    assert sum(c.households for c in refreshed.value.communities) == 1
    assert refreshed.computed_at > first.computed_at
