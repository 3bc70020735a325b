"""The 30% spot check (随机抽查30%单据): a reproducible sample per month and community, and its findings.

The sample is drawn with ``random.Random(seed).sample`` over the month's slip ids in ascending order,
where the seed is recorded with the draw and the population is stored too, so anyone can redo the
draw and get the same slips. There is one draw per month and community: drawing again is refused.
Findings are appended (the latest per slip counts): ``missing`` makes the government share of that
slip not payable, ``discrepancy`` replaces it with the amount found on site, ``match`` keeps it.
"""

from __future__ import annotations

import logging
import random
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from enum import StrEnum

import asyncpg

from registry.queries import Conn

_LOGGER = logging.getLogger(__name__)

#: Share of slips checked (实施方案 七: 随机抽查30％单据), as numerator/denominator; the size rounds up.
SAMPLE_NUMERATOR = 3
SAMPLE_DENOMINATOR = 10


class Finding(StrEnum):
    """What an on-site check found for a sampled slip."""

    MATCH = "match"
    DISCREPANCY = "discrepancy"
    MISSING = "missing"


class SpotCheckError(Exception):
    """A spot-check operation is refused (redraw, slip not sampled, bad amount)."""


def sample_size(population: int) -> int:
    """30% of ``population``, rounded up (0 for an empty month)."""
    return -(-population * SAMPLE_NUMERATOR // SAMPLE_DENOMINATOR)


def draw_sample(population_ids: Sequence[int], seed: str) -> list[int]:
    """The slips drawn from ``population_ids`` with ``seed``, in ascending order; pure and reproducible."""
    ordered = sorted(population_ids)
    return sorted(random.Random(seed).sample(ordered, sample_size(len(ordered))))


@dataclass(frozen=True)
class Draw:
    """A recorded draw: month, community, seed, population and the sampled slips."""

    id: int
    month: date
    community_code: str
    seed: str
    population_ids: tuple[int, ...]
    sample: tuple[int, ...]
    recorded_by: str


async def draw(conn: Conn, *, month: date, community_code: str, actor: str, seed: str | None = None) -> Draw:
    """Draw and store the month's sample for a community; SpotCheckError if it was drawn already."""
    month = month.replace(day=1)
    seed = seed or secrets.token_hex(16)
    async with conn.transaction():
        population = [
            r["id"]
            for r in await conn.fetch(
                "SELECT s.id FROM confirmation_slip s JOIN household h ON h.id = s.household_id"
                " WHERE s.month = $1 AND h.community_code = $2 ORDER BY s.id",
                month,
                community_code,
            )
        ]
        sample = draw_sample(population, seed)
        try:
            draw_id: int = await conn.fetchval(
                """
                INSERT INTO spot_check_draw (month, community_code, seed, population_ids, population, sample_size,
                                             recorded_by)
                VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id
                """,
                month,
                community_code,
                seed,
                population,
                len(population),
                len(sample),
                actor,
            )
        except asyncpg.UniqueViolationError as err:
            raise SpotCheckError(f"{community_code}社区{month:%Y年%m月}的抽查样本已抽取，不能重新抽取") from err
        except asyncpg.ForeignKeyViolationError as err:
            raise SpotCheckError(f"unknown community {community_code}") from err
        await conn.executemany(
            "INSERT INTO spot_check_item (draw_id, slip_id) VALUES ($1, $2)", [(draw_id, s) for s in sample]
        )
    _LOGGER.info("spot check %d: %s %s, %d of %d", draw_id, community_code, month, len(sample), len(population))
    return Draw(draw_id, month, community_code, seed, tuple(population), tuple(sample), actor)


async def get_draw(conn: Conn, *, draw_id: int) -> Draw | None:
    """A recorded draw, or None."""
    row = await conn.fetchrow("SELECT * FROM spot_check_draw WHERE id = $1", draw_id)
    if row is None:
        return None
    sample = [
        r["slip_id"]
        for r in await conn.fetch("SELECT slip_id FROM spot_check_item WHERE draw_id = $1 ORDER BY slip_id", draw_id)
    ]
    return Draw(
        row["id"],
        row["month"],
        row["community_code"],
        row["seed"],
        tuple(row["population_ids"]),
        tuple(sample),
        row["recorded_by"],
    )


async def list_draws(conn: Conn, *, month: date | None = None, community_code: str | None = None) -> list[Draw]:
    """Recorded draws, optionally of one month and/or community."""
    ids = await conn.fetch(
        "SELECT id FROM spot_check_draw"
        " WHERE ($1::date IS NULL OR month = $1) AND ($2::text IS NULL OR community_code = $2)"
        " ORDER BY month, community_code",
        None if month is None else month.replace(day=1),
        community_code,
    )
    draws = [await get_draw(conn, draw_id=r["id"]) for r in ids]
    return [d for d in draws if d is not None]


async def record_finding(
    conn: Conn,
    *,
    slip_id: int,
    finding: Finding,
    actor: str,
    payable_government_fen: int | None = None,
    note: str | None = None,
) -> int:
    """Append a finding for a sampled slip; returns its id. Discrepancies carry the payable government share."""
    item = await conn.fetchrow(
        "SELECT i.draw_id, c.government_fen FROM spot_check_item i JOIN slip_charge c ON c.slip_id = i.slip_id"
        " WHERE i.slip_id = $1",
        slip_id,
    )
    if item is None:
        raise SpotCheckError(f"slip {slip_id} is not in any spot-check sample")
    if finding is Finding.DISCREPANCY:
        if payable_government_fen is None or not 0 <= payable_government_fen <= item["government_fen"]:
            raise SpotCheckError(f"a discrepancy needs the payable government share, 0–{item['government_fen']} fen")
    elif payable_government_fen is not None:
        raise SpotCheckError("only a discrepancy carries an adjusted amount")
    finding_id: int = await conn.fetchval(
        """
        INSERT INTO spot_check_finding (draw_id, slip_id, finding, payable_government_fen, note, recorded_by)
        VALUES ($1, $2, $3, $4, $5, $6) RETURNING id
        """,
        item["draw_id"],
        slip_id,
        finding.value,
        payable_government_fen,
        note,
        actor,
    )
    return finding_id


@dataclass(frozen=True)
class FindingRow:
    """The current finding of one sampled slip and its effect on the government share."""

    slip_id: int
    community_code: str
    month: date
    finding: Finding | None
    government_fen: int
    payable_government_fen: int
    note: str | None


#: The government share payable for a slip after its latest spot-check finding (alias ``s`` = slip, ``ch`` = charge).
PAYABLE_SQL = """
    CASE f.finding WHEN 'missing' THEN 0 WHEN 'discrepancy' THEN f.payable_government_fen ELSE ch.government_fen END"""
#: Joins the latest finding of slip ``s`` as ``f`` (NULL columns when there is none).
LATEST_FINDING_JOIN = """
    LEFT JOIN LATERAL (SELECT finding, payable_government_fen, note FROM spot_check_finding x
                       WHERE x.slip_id = s.id ORDER BY x.id DESC LIMIT 1) f ON true"""


async def findings_report(
    conn: Conn, *, month: date | None = None, community_code: str | None = None
) -> list[FindingRow]:
    """Every sampled slip with its latest finding and the payable government share after it."""
    rows = await conn.fetch(
        f"""
        SELECT s.id, d.community_code, d.month, f.finding, f.note, ch.government_fen, {PAYABLE_SQL} AS payable
        FROM spot_check_item i
        JOIN spot_check_draw d ON d.id = i.draw_id
        JOIN confirmation_slip s ON s.id = i.slip_id
        JOIN slip_charge ch ON ch.slip_id = s.id
        {LATEST_FINDING_JOIN}
        WHERE ($1::date IS NULL OR d.month = $1) AND ($2::text IS NULL OR d.community_code = $2)
        ORDER BY d.month, d.community_code, s.id
        """,
        None if month is None else month.replace(day=1),
        community_code,
    )
    return [
        FindingRow(
            slip_id=r["id"],
            community_code=r["community_code"],
            month=r["month"],
            finding=None if r["finding"] is None else Finding(r["finding"]),
            government_fen=r["government_fen"],
            payable_government_fen=r["payable"],
            note=r["note"],
        )
        for r in rows
    ]
