"""The 30% spot check: reproducible from its seed, stored, never silently redrawn; findings adjust payments."""

from __future__ import annotations

from datetime import date

import asyncpg
import pytest

from registry.spotcheck import (
    Finding,
    SpotCheckError,
    draw,
    draw_sample,
    findings_report,
    get_draw,
    record_finding,
    sample_size,
)
from tests.registry.test_rosters import COMMUNITY, OTHER_COMMUNITY, add_places
from tests.registry.test_slips import add_household, signed_slip

MAY = date(2024, 5, 1)


def test_sample_size_rounds_up() -> None:
    """30% rounded up: 1 of 1, 1 of 3, 2 of 4, 3 of 10, 4 of 11, none of none."""
    assert [sample_size(n) for n in (0, 1, 3, 4, 10, 11, 100)] == [0, 1, 1, 2, 3, 4, 30]


def test_same_seed_same_sample() -> None:
    """The sample depends only on the seed and the population (not its order); another seed gives another one."""
    population = list(range(1000, 1100))
    first = draw_sample(population, "2024-05-文苑-seed")
    assert first == draw_sample(list(reversed(population)), "2024-05-文苑-seed")
    assert len(first) == 30 and first == sorted(first) and set(first) <= set(population)
    assert first != draw_sample(population, "another seed")


async def _month_of_slips(db: asyncpg.Connection, n: int, *, community: str = COMMUNITY) -> list[int]:
    return [
        await signed_slip(
            db,
            await add_household(db, room=f"{community[-2:]}{i:03d}", community=community),
            installed_on=date(2024, 5, 1 + i % 28),
        )
        for i in range(n)
    ]


async def test_draw_is_stored_reproducible_and_not_redrawn(db: asyncpg.Connection) -> None:
    """A draw stores seed, population and sample; redoing it from the record matches; a second draw is refused."""
    await add_places(db)
    slips = await _month_of_slips(db, 10)
    await _month_of_slips(db, 3, community=OTHER_COMMUNITY)
    made = await draw(db, month=MAY, community_code=COMMUNITY, actor="user:bureau", seed="公开种子-2024-05")
    assert made.population_ids == tuple(slips)
    assert len(made.sample) == 3
    stored = await get_draw(db, draw_id=made.id)
    assert stored == made
    assert list(stored.sample) == draw_sample(stored.population_ids, stored.seed)
    with pytest.raises(SpotCheckError, match="不能重新抽取"):
        await draw(db, month=MAY, community_code=COMMUNITY, actor="user:bureau", seed="公开种子-2024-05")
    with pytest.raises(asyncpg.RaiseError, match="append-only"):
        await db.execute("DELETE FROM spot_check_item")
    other = await draw(db, month=MAY, community_code=OTHER_COMMUNITY, actor="user:bureau")
    assert len(other.sample) == 1 and len(other.seed) == 32


async def test_recorded_seed_reproduces_the_stored_sample(db: asyncpg.Connection) -> None:
    """Redoing the draw from the stored seed and population gives exactly the stored sample."""
    await add_places(db)
    await _month_of_slips(db, 20)
    made = await draw(db, month=MAY, community_code=COMMUNITY, actor="user:bureau", seed="seed-42")
    assert len(made.sample) == 6
    assert draw_sample(list(made.population_ids), "seed-42") == list(made.sample)


async def test_findings_adjust_the_payable_share(db: asyncpg.Connection) -> None:
    """match keeps 14100 fen, discrepancy pays what was found, missing pays nothing; latest finding counts."""
    await add_places(db)
    await _month_of_slips(db, 10)
    made = await draw(db, month=MAY, community_code=COMMUNITY, actor="user:bureau", seed="s")
    a, b, c = made.sample
    await record_finding(db, slip_id=a, finding=Finding.MISSING, actor="user:bureau", note="未见设备")
    await record_finding(db, slip_id=a, finding=Finding.MATCH, actor="user:bureau", note="复查已安装")
    await record_finding(db, slip_id=b, finding=Finding.DISCREPANCY, payable_government_fen=7050, actor="user:bureau")
    await record_finding(db, slip_id=c, finding=Finding.MISSING, actor="user:bureau")
    report = {r.slip_id: (r.finding, r.payable_government_fen) for r in await findings_report(db, month=MAY)}
    assert report == {a: (Finding.MATCH, 14100), b: (Finding.DISCREPANCY, 7050), c: (Finding.MISSING, 0)}
    outside = next(s for s in made.population_ids if s not in made.sample)
    with pytest.raises(SpotCheckError, match="not in any"):
        await record_finding(db, slip_id=outside, finding=Finding.MATCH, actor="u")
    with pytest.raises(SpotCheckError, match="0–14100"):
        await record_finding(db, slip_id=b, finding=Finding.DISCREPANCY, payable_government_fen=20000, actor="u")
    with pytest.raises(SpotCheckError, match="only a discrepancy"):
        await record_finding(db, slip_id=b, finding=Finding.MATCH, payable_government_fen=1, actor="u")
