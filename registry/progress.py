"""Programme progress and publicity: counts by town and community against the targets, overdue work.

Installed = a confirmation slip with all five signatures. Expired and unprotected follow the
registry's definition (`registry.queries`): any fitted device past its service life makes a household
unprotected, whatever it still reports; so does a missing kit (NG: alarm linked to a shut-off valve;
LPG: regulator and hose). The public page shows counts only, never personal data.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from importlib import resources

import asyncpg
from jinja2 import Environment, FileSystemLoader, select_autoescape

from registry.deps import Cached, RefreshingCache
from registry.queries import CHINA_TODAY_SQL, Conn
from registry.rosters import due_date

_LOGGER = logging.getLogger(__name__)

# The rules of `registry.queries` (UNPROTECTED_SQL, MONITORED_SQL; expired = past service life), evaluated set-wise:
# one pass over devices, links and slips instead of correlated sub-queries per household (40,000 households:
# about 0.25 s instead of 4 s here). test_progress checks both forms agree.
PROGRESS_SQL = f"""
WITH kit AS (
    SELECT d.household_id,
           bool_or(d.installed_on IS NOT NULL
                   AND (d.installed_on + make_interval(years => m.service_life_years))::date <= {CHINA_TODAY_SQL})
               AS expired,
           bool_or(m.kind = 'regulator') AS has_regulator,
           bool_or(m.kind = 'hose') AS has_hose
    FROM device d JOIN device_model m ON m.id = d.model_id
    GROUP BY d.household_id
), monitored AS (
    SELECT DISTINCT a.household_id
    FROM alarm_valve_link l
    JOIN device a ON a.id = l.alarm_id JOIN device_model am ON am.id = a.model_id
    JOIN device v ON v.id = l.valve_id JOIN device_model vm ON vm.id = v.model_id
    WHERE a.household_id = v.household_id AND am.kind = 'alarm' AND vm.kind = 'shutoff_valve'
), slip AS (
    SELECT s.household_id, count(g.role) = 5 AS complete, bool_or(s.verified_at IS NOT NULL) AS verified
    FROM confirmation_slip s LEFT JOIN slip_signature g ON g.slip_id = s.id
    GROUP BY s.id, s.household_id
), flags AS (
    SELECT h.community_code, h.gas_type,
           coalesce(sl.complete, false) AS installed,
           coalesce(sl.verified, false) AS verified,
           coalesce(k.expired, false) AS expired,
           (coalesce(k.expired, false)
            OR (h.gas_type = 'NG' AND mo.household_id IS NULL)
            OR (h.gas_type = 'LPG' AND NOT (coalesce(k.has_regulator, false) AND coalesce(k.has_hose, false))))
               AS unprotected
    FROM household h
    LEFT JOIN kit k ON k.household_id = h.id
    LEFT JOIN monitored mo ON mo.household_id = h.id
    LEFT JOIN slip sl ON sl.household_id = h.id
)
SELECT t.code AS town_code, t.name AS town_name, c.code AS community_code, c.name AS community_name, f.gas_type,
       count(*) AS households, count(*) FILTER (WHERE f.installed) AS installed,
       count(*) FILTER (WHERE f.verified) AS verified, count(*) FILTER (WHERE f.expired) AS expired,
       count(*) FILTER (WHERE f.unprotected) AS unprotected
FROM flags f JOIN community c ON c.code = f.community_code JOIN town t ON t.code = c.town_code
GROUP BY t.code, t.name, c.code, c.name, f.gas_type
ORDER BY t.code, c.code, f.gas_type
"""


@dataclass(frozen=True)
class CommunityProgress:
    """Counts of one community and gas type; no personal data."""

    town_code: str
    town_name: str
    community_code: str
    community_name: str
    gas_type: str
    households: int
    installed: int
    verified: int
    expired: int
    unprotected: int


@dataclass(frozen=True)
class Target:
    """A programme target: households of a gas type to be fitted by a deadline."""

    gas_type: str
    households: int
    deadline: date
    installed: int

    @property
    def percent(self) -> float:
        """Installed as a percentage of the target, one decimal."""
        return round(100 * self.installed / self.households, 1)


@dataclass(frozen=True)
class OverdueItem:
    """Overdue work of one responsible unit."""

    unit: str
    kind: str
    count: int
    detail: str


class ProgressCache:
    """The report of the day, refreshed in the background.

    Dashboards poll it, and counting 40,000 households on every poll would put a 0.25 s aggregate on the
    request path. Counts are recomputed once older than ``ttl_s`` (15 s) while the previous report is still served, and
    no report older than ``max_age_s`` (30 s) is ever served. Without a pool (no connection of its own
    for a background refresh) a report older than ``ttl_s`` is recomputed on the caller's connection.
    """

    def __init__(self, ttl_s: float = 15.0, max_age_s: float | None = None) -> None:
        self._cache = RefreshingCache[Progress](ttl_s=ttl_s, max_age_s=2 * ttl_s if max_age_s is None else max_age_s)

    @property
    def max_age_s(self) -> float:
        """No served report is older than this."""
        return self._cache.max_age_s

    async def get(self, conn: Conn, *, today: date, pool: asyncpg.Pool | None = None) -> Cached[Progress]:
        """The report as of ``today`` and its age; ``pool`` lets a stale report be refreshed in the background."""

        async def on_own_connection() -> Progress:
            assert pool is not None
            async with pool.acquire() as own:
                return await progress(own, today=today)

        return await self._cache.get(
            today,
            here=lambda: progress(conn, today=today),
            background=None if pool is None else on_own_connection,
        )


@dataclass(frozen=True)
class Progress:
    """The whole progress report."""

    as_of: date
    targets: tuple[Target, ...]
    communities: tuple[CommunityProgress, ...]
    overdue: tuple[OverdueItem, ...]


async def progress(conn: Conn, *, today: date) -> Progress:
    """Progress by town and community, against the targets, with overdue work per responsible unit."""
    rows = await conn.fetch(PROGRESS_SQL)
    communities = tuple(
        CommunityProgress(
            town_code=r["town_code"],
            town_name=r["town_name"],
            community_code=r["community_code"],
            community_name=r["community_name"],
            gas_type=r["gas_type"],
            households=r["households"],
            installed=r["installed"],
            verified=r["verified"],
            expired=r["expired"],
            unprotected=r["unprotected"],
        )
        for r in rows
    )
    targets = tuple(
        Target(
            gas_type=r["gas_type"],
            households=r["households"],
            deadline=r["deadline"],
            installed=sum(c.installed for c in communities if c.gas_type == r["gas_type"]),
        )
        for r in await conn.fetch("SELECT gas_type, households, deadline FROM programme_target ORDER BY gas_type DESC")
    )
    return Progress(
        as_of=today,
        targets=targets,
        communities=communities,
        overdue=await overdue_work(conn, today=today, targets=targets),
    )


async def overdue_work(conn: Conn, *, today: date, targets: tuple[Target, ...]) -> tuple[OverdueItem, ...]:
    """Overdue work per responsible unit.

    Missing monthly rosters (community), households not installed after the deadline (supplier) and
    slips still unsigned 30 days after installation (community).
    """
    items: list[OverdueItem] = []
    period = today.replace(day=1)
    if today > due_date(period):
        for r in await conn.fetch(
            """
            SELECT c.code, c.name FROM community c
            WHERE EXISTS (SELECT 1 FROM household h WHERE h.community_code = c.code)
              AND NOT EXISTS (SELECT 1 FROM roster_batch b WHERE b.period = $1 AND b.community_code = c.code)
            ORDER BY c.code
            """,
            period,
        ):
            items.append(
                OverdueItem(
                    f"{r['name']}（{r['code']}）", "roster", 1, f"{period:%Y年%m月}花名册未在{DUE_DAY_TEXT}前提交"
                )
            )
    deadlines = {t.gas_type: t.deadline for t in targets}
    for r in await conn.fetch(
        """
        SELECT h.supplier, h.gas_type, count(*) AS n FROM household h
        LEFT JOIN (SELECT s.household_id FROM confirmation_slip s JOIN slip_signature g ON g.slip_id = s.id
                   GROUP BY s.household_id HAVING count(*) = 5) done ON done.household_id = h.id
        WHERE done.household_id IS NULL AND (h.gas_connected_on IS NULL OR h.gas_connected_on <= '2024-12-31')
        GROUP BY h.supplier, h.gas_type ORDER BY h.supplier, h.gas_type
        """
    ):
        deadline = deadlines.get(r["gas_type"])
        if deadline is not None and today > deadline:
            items.append(
                OverdueItem(
                    r["supplier"], "installation", r["n"], f"{deadline.isoformat()}前应完成安装，尚有{r['n']}户未完成"
                )
            )
    for r in await conn.fetch(
        """
        SELECT c.code, c.name, count(*) AS n FROM confirmation_slip s
        JOIN household h ON h.id = s.household_id JOIN community c ON c.code = h.community_code
        WHERE (SELECT count(*) FROM slip_signature g WHERE g.slip_id = s.id) < 5
          AND s.installed_on < $1::date - 30
        GROUP BY c.code, c.name ORDER BY c.code
        """,
        today,
    ):
        items.append(
            OverdueItem(
                f"{r['name']}（{r['code']}）", "signatures", r["n"], f"{r['n']}张确认单安装已超30天仍未签字齐全"
            )
        )
    return tuple(items)


DUE_DAY_TEXT = "当月10日"

_ENV = Environment(
    loader=FileSystemLoader(str(resources.files("registry") / "templates")),
    autoescape=select_autoescape(["html"]),
)


def render_public_html(report: Progress) -> str:
    """The public progress page (Chinese): counts by town and community, no names, addresses or phones."""
    towns: dict[str, dict[str, int]] = {}
    for c in report.communities:
        town = towns.setdefault(c.town_name, {"households": 0, "installed": 0, "unprotected": 0})
        town["households"] += c.households
        town["installed"] += c.installed
        town["unprotected"] += c.unprotected
    return _ENV.get_template("progress.html").render(
        report=report, towns=towns, gas_label={"NG": "天然气", "LPG": "液化石油气"}
    )
