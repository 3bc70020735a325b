"""County health: per town, community and building, how many households are protected right now.

No personal data is read here: places, gas types and device states only. Every figure is aggregated in
PostgreSQL, so 40,000 households never leave the database; the household list of one building is paged.

Definitions (the registry's, `registry.queries`; the county view adds only the alarm's liveness):

- *unprotected*: any fitted device past its service life, or the programme's kit not in place (NG: an
  alarm linked to a shut-off valve in the same household; LPG: a regulator and a hose) — ``UNPROTECTED_SQL``.
- *monitored*: an NG household that is not unprotected (so its alarm is linked to a valve and nothing
  has expired) whose linked alarm is *online*: alerting's health sweep last saw it within
  ``offline_factor`` × its model heartbeat (1.5× by default) and it reports neither a fault nor end of
  life. LPG households are never monitored: their kit has no electronics (液化气 未接入监测).
- *offline/unknown*: an NG household with its kit in place whose alarm is not online — silent, never
  heard from, or reporting a sensor fault. A silent alarm is never counted as normal.
- *valve fault*: a shut-off valve whose last reported state is a fault (it may not close on an alarm).

So every NG household is exactly one of monitored, offline/unknown or unprotected. Liveness comes from
``device_state.last_seen_at``, which alerting's sweep keeps (every ``health_sweep_s``, 60 s by default):
a device heard from again after the last sweep shows offline until the next one — late towards safety,
never early. The aggregates use the set-wise form of the registry's per-household expressions (one pass
over devices and links instead of correlated sub-queries per household: 40,000 households in a few
hundred milliseconds instead of six seconds); tests/registry/test_county.py checks both forms agree.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import date, datetime
from typing import TYPE_CHECKING

import asyncpg

# The registry's definitions and its scope filter, reused rather than re-derived.
from registry.queries import CHINA_TODAY_SQL, MONITORED_SQL, UNPROTECTED_SQL, Conn, Where

if TYPE_CHECKING:
    from registry.auth import Scope

#: Days of the alarms-per-day series (today in China Standard Time and the 29 days before it).
ALARM_DAYS = 30

# Alarms (gas_alarm incidents) of the last ALARM_DAYS China Standard Time days, per household.
_ALARM_SINCE_SQL = f"(({CHINA_TODAY_SQL} - {ALARM_DAYS - 1})::timestamp AT TIME ZONE 'Asia/Shanghai')"

# An online alarm: heard from within offline_factor × heartbeat, and not reporting a fault or end of life.
_ONLINE_SQL = """(s.status IN ('normal', 'alarm')
                  AND s.last_seen_at >= now() - make_interval(secs => am.heartbeat_s * am.offline_factor))"""


def _flags_sql(where: Where) -> str:
    """A ``flags`` CTE: one row per household matching ``where`` (alias ``h``) with its protection flags.

    Devices are read only for the households in ``where`` (joined to ``household h`` again in each part, so
    the planner sees real row counts; a semi-join on a CTE is estimated at 200 rows and probed 40,000 times).
    """
    scope = " AND ".join(where.clauses)
    in_scope = f"{scope} AND" if scope else ""

    def of_household(column: str) -> str:
        return f"JOIN household h ON h.id = {column}" if scope else ""

    return f"""
WITH scoped AS (
    SELECT h.id, h.community_code, h.building, h.gas_type FROM household h {where.sql()}
), expired AS (
    SELECT DISTINCT d.household_id
    FROM device d JOIN device_model m ON m.id = d.model_id {of_household("d.household_id")}
    WHERE {in_scope} d.installed_on IS NOT NULL
      AND (d.installed_on + make_interval(years => m.service_life_years))::date <= {CHINA_TODAY_SQL}
), lpg_kit AS (
    SELECT d.household_id FROM device d JOIN device_model m ON m.id = d.model_id {of_household("d.household_id")}
    WHERE {in_scope} m.kind IN ('regulator', 'hose')
    GROUP BY d.household_id HAVING bool_or(m.kind = 'regulator') AND bool_or(m.kind = 'hose')
), valve_fault AS (
    SELECT DISTINCT d.household_id
    FROM device_state s JOIN device d ON d.id = s.device_id JOIN device_model m ON m.id = d.model_id
    WHERE s.status = 'fault' AND m.kind = 'shutoff_valve'
), linked AS (
    SELECT a.household_id, bool_or(coalesce({_ONLINE_SQL}, false)) AS online
    FROM device a JOIN device_model am ON am.id = a.model_id AND am.kind = 'alarm' {of_household("a.household_id")}
    JOIN alarm_valve_link l ON l.alarm_id = a.id
    JOIN (SELECT v.id, v.household_id FROM device v JOIN device_model vm ON vm.id = v.model_id
          WHERE vm.kind = 'shutoff_valve') v ON v.id = l.valve_id AND v.household_id = a.household_id
    LEFT JOIN device_state s ON s.device_id = a.id
    {"WHERE " + scope if scope else ""}
    GROUP BY a.household_id
), alarms AS (
    SELECT i.household_id, count(*) AS n FROM incident i
    WHERE i.kind = 'gas_alarm' AND i.alarm_received_at >= {_ALARM_SINCE_SQL}
    GROUP BY i.household_id
), flags AS (
    SELECT sc.*, ex.household_id IS NOT NULL AS expired, vf.household_id IS NOT NULL AS valve_fault,
           (ex.household_id IS NOT NULL
            OR (sc.gas_type = 'NG' AND li.household_id IS NULL)
            OR (sc.gas_type = 'LPG' AND lk.household_id IS NULL)) AS unprotected,
           coalesce(li.online, false) AS online,
           coalesce(al.n, 0) AS alarms
    FROM scoped sc
    LEFT JOIN expired ex ON ex.household_id = sc.id
    LEFT JOIN lpg_kit lk ON lk.household_id = sc.id
    LEFT JOIN valve_fault vf ON vf.household_id = sc.id
    LEFT JOIN linked li ON li.household_id = sc.id
    LEFT JOIN alarms al ON al.household_id = sc.id
)"""


_COUNT_COLUMNS = """
       count(*) AS households,
       count(*) FILTER (WHERE f.gas_type = 'NG') AS ng,
       count(*) FILTER (WHERE f.gas_type = 'LPG') AS lpg,
       count(*) FILTER (WHERE f.gas_type = 'NG' AND NOT f.unprotected AND f.online) AS monitored,
       count(*) FILTER (WHERE f.gas_type = 'NG' AND NOT f.unprotected AND NOT f.online) AS offline,
       count(*) FILTER (WHERE f.unprotected) AS unprotected,
       count(*) FILTER (WHERE f.expired) AS expired,
       count(*) FILTER (WHERE f.gas_type = 'LPG' AND f.unprotected) AS lpg_unprotected,
       count(*) FILTER (WHERE f.valve_fault) AS valve_faults,
       coalesce(sum(f.alarms), 0)::bigint AS alarms"""


@dataclass(frozen=True)
class HealthCounts:
    """Households and their protection in one place; every NG household is monitored, offline or unprotected."""

    households: int
    ng: int
    lpg: int
    monitored: int
    offline: int
    unprotected: int
    expired: int
    lpg_unprotected: int
    valve_faults: int
    alarms: int  # gas alarms in the last ALARM_DAYS days

    @classmethod
    def of(cls, row: asyncpg.Record) -> HealthCounts:
        """From a row with the ``_COUNT_COLUMNS``."""
        return cls(**{f.name: int(row[f.name]) for f in fields(cls)})

    @classmethod
    def total(cls, parts: list[HealthCounts]) -> HealthCounts:
        """The sum of ``parts``."""
        return cls(**{f.name: sum(getattr(p, f.name) for p in parts) for f in fields(cls)})


@dataclass(frozen=True)
class PlaceHealth:
    """A town or community: its counts and its gas alarms per day (oldest day first)."""

    code: str
    name: str
    counts: HealthCounts
    alarms_per_day: tuple[int, ...]


@dataclass(frozen=True)
class TownHealth:
    """A town with its communities."""

    town: PlaceHealth
    communities: tuple[PlaceHealth, ...]


@dataclass(frozen=True)
class CountyHealth:
    """The county view: totals, towns and communities, the days of the alarm series."""

    as_of: datetime
    days: tuple[date, ...]
    totals: PlaceHealth
    towns: tuple[TownHealth, ...]


def _scoped_where(scope: Scope | None) -> Where:
    where = Where()
    where.scope(scope)
    return where


async def _alarm_days(conn: Conn) -> tuple[datetime, tuple[date, ...]]:
    row = await conn.fetchrow(
        f"SELECT now() AS now, array_agg(d::date ORDER BY d) AS days FROM generate_series("
        f"{CHINA_TODAY_SQL} - {ALARM_DAYS - 1}, {CHINA_TODAY_SQL}, interval '1 day') d"
    )
    assert row is not None
    return row["now"], tuple(row["days"])


async def _alarms_per_community(conn: Conn, where: Where) -> dict[str, dict[date, int]]:
    """Gas alarms per community and China Standard Time day, within the caller's scope."""
    where.add(f"i.kind = 'gas_alarm' AND i.alarm_received_at >= {_ALARM_SINCE_SQL}")
    rows = await conn.fetch(
        f"""
        SELECT h.community_code, (i.alarm_received_at AT TIME ZONE 'Asia/Shanghai')::date AS day, count(*) AS n
        FROM incident i JOIN household h ON h.id = i.household_id
        {where.sql()}
        GROUP BY 1, 2
        """,
        *where.args,
    )
    series: dict[str, dict[date, int]] = {}
    for r in rows:
        series.setdefault(r["community_code"], {})[r["day"]] = r["n"]
    return series


async def county_health(conn: Conn, *, scope: Scope | None) -> CountyHealth:
    """Counts per town and community of the households ``scope`` may see (None: all), in one snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute("SET LOCAL jit = off")  # compiling this plan costs seconds and saves nothing
        return await _county_health(conn, scope=scope)


async def _county_health(conn: Conn, *, scope: Scope | None) -> CountyHealth:
    now, days = await _alarm_days(conn)
    where = _scoped_where(scope)
    rows = await conn.fetch(
        f"""
        {_flags_sql(where)}
        SELECT t.code AS town_code, t.name AS town_name, c.code AS community_code, c.name AS community_name,
               {_COUNT_COLUMNS}
        FROM flags f JOIN community c ON c.code = f.community_code JOIN town t ON t.code = c.town_code
        GROUP BY t.code, t.name, c.code, c.name
        ORDER BY t.code, c.code
        """,
        *where.args,
    )
    per_day = await _alarms_per_community(conn, _scoped_where(scope))

    def series(codes: list[str]) -> tuple[int, ...]:
        return tuple(sum(per_day.get(code, {}).get(day, 0) for code in codes) for day in days)

    towns: list[TownHealth] = []
    by_town: dict[str, list[asyncpg.Record]] = {}
    for r in rows:
        by_town.setdefault(r["town_code"], []).append(r)
    for town_code, members in by_town.items():
        communities = tuple(
            PlaceHealth(r["community_code"], r["community_name"], HealthCounts.of(r), series([r["community_code"]]))
            for r in members
        )
        town = PlaceHealth(
            town_code,
            members[0]["town_name"],
            HealthCounts.total([c.counts for c in communities]),
            series([c.code for c in communities]),
        )
        towns.append(TownHealth(town, communities))
    totals = PlaceHealth(
        "", "乌审旗", HealthCounts.total([t.town.counts for t in towns]), series([r["community_code"] for r in rows])
    )
    return CountyHealth(as_of=now, days=days, totals=totals, towns=tuple(towns))


@dataclass(frozen=True)
class BuildingHealth:
    """One building (楼, or a row of single-storey houses) of a community."""

    building: str
    counts: HealthCounts


#: Buildings sort by their leading number ("2号楼" before "10号楼"), then by name.
_BUILDING_NUMBER_SQL = "coalesce(substring(f.building FROM '^[0-9]{1,9}')::int, 2147483647)"


async def community_health(conn: Conn, *, scope: Scope | None, community_code: str) -> HealthCounts | None:
    """Counts of one community within ``scope``; None when the community does not exist."""
    if not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM community WHERE code = $1)", community_code):
        return None
    await conn.execute("SET LOCAL jit = off")
    where = _scoped_where(scope)
    where.add("h.community_code = {}", community_code)
    row = await conn.fetchrow(f"{_flags_sql(where)} SELECT {_COUNT_COLUMNS} FROM flags f", *where.args)
    assert row is not None
    return HealthCounts.of(row)


async def list_buildings(
    conn: Conn, *, scope: Scope | None, community_code: str, limit: int, after: tuple[int, str] | None = None
) -> list[tuple[tuple[int, str], BuildingHealth]]:
    """Buildings of a community (within ``scope``) in natural order, after the sort key ``after``, with counts."""
    await conn.execute("SET LOCAL jit = off")
    where = _scoped_where(scope)
    where.add("h.community_code = {}", community_code)
    sql = f"""
        {_flags_sql(where)}
        SELECT * FROM (
            SELECT {_BUILDING_NUMBER_SQL} AS building_no, f.building, {_COUNT_COLUMNS}
            FROM flags f GROUP BY f.building
        ) b
        """
    if after is not None:
        sql += f" WHERE (b.building_no, b.building) > ({where.param(after[0])}, {where.param(after[1])})"
    sql += f" ORDER BY b.building_no, b.building LIMIT {where.param(limit)}"
    rows = await conn.fetch(sql, *where.args)
    return [((r["building_no"], r["building"]), BuildingHealth(r["building"], HealthCounts.of(r))) for r in rows]


@dataclass(frozen=True)
class HouseholdHealth:
    """One household of a building: its address and states, never its resident."""

    id: int
    building: str
    unit: str
    room: str
    gas_type: str
    status: str  # 'monitored', 'offline', 'unprotected' or 'lpg' (LPG, protected but never monitored)
    expired: bool
    alarm_status: str | None  # the linked alarm's device_state status, None if never assessed
    alarm_last_seen_at: datetime | None
    valve_status: str | None
    valve_fault: bool
    alarms: int


async def list_building_households(
    conn: Conn, *, scope: Scope | None, community_code: str, building: str, limit: int, after: int | None = None
) -> list[HouseholdHealth]:
    """Households of one building (within ``scope``) in id order after household ``after``, with states.

    The page's ids are picked first; the registry's per-household expressions (`registry.queries`) are then
    evaluated for those rows only.
    """
    where = _scoped_where(scope)
    where.add("h.community_code = {}", community_code)
    where.add("h.building = {}", building)
    if after is not None:
        where.add("h.id > {}", after)
    page = f"SELECT h.id FROM household h {where.sql()} ORDER BY h.id LIMIT {where.param(limit)}"
    rows = await conn.fetch(
        f"""
        SELECT h.id, h.building, h.unit, h.room, h.gas_type,
               {MONITORED_SQL} AS linked, {UNPROTECTED_SQL} AS unprotected,
               EXISTS (SELECT 1 FROM device d JOIN device_model m ON m.id = d.model_id
                       WHERE d.household_id = h.id AND d.installed_on IS NOT NULL
                         AND (d.installed_on + make_interval(years => m.service_life_years))::date
                             <= {CHINA_TODAY_SQL}) AS expired,
               al.status AS alarm_status, al.last_seen_at AS alarm_last_seen_at, coalesce(al.online, false) AS online,
               va.status AS valve_status,
               (SELECT count(*) FROM incident i WHERE i.household_id = h.id AND i.kind = 'gas_alarm'
                  AND i.alarm_received_at >= {_ALARM_SINCE_SQL}) AS alarms
        FROM household h
        LEFT JOIN LATERAL (
            SELECT s.status, s.last_seen_at, {_ONLINE_SQL} AS online
            FROM alarm_valve_link l JOIN device a ON a.id = l.alarm_id JOIN device_model am ON am.id = a.model_id
            LEFT JOIN device_state s ON s.device_id = a.id
            WHERE a.household_id = h.id AND am.kind = 'alarm'
            ORDER BY coalesce({_ONLINE_SQL}, false) DESC, s.last_seen_at DESC NULLS LAST LIMIT 1
        ) al ON true
        LEFT JOIN LATERAL (
            SELECT s.status FROM device v JOIN device_model vm ON vm.id = v.model_id
            LEFT JOIN device_state s ON s.device_id = v.id
            WHERE v.household_id = h.id AND vm.kind = 'shutoff_valve'
            ORDER BY (s.status = 'fault') DESC NULLS LAST LIMIT 1
        ) va ON true
        WHERE h.id IN ({page})
        ORDER BY h.id
        """,
        *where.args,
    )
    return [_household_health(r) for r in rows]


def _household_health(r: asyncpg.Record) -> HouseholdHealth:
    if r["unprotected"]:
        status = "unprotected"
    elif r["gas_type"] == "LPG":
        status = "lpg"
    elif r["linked"] and r["online"]:
        status = "monitored"
    else:
        status = "offline"
    return HouseholdHealth(
        id=r["id"],
        building=r["building"],
        unit=r["unit"],
        room=r["room"],
        gas_type=r["gas_type"],
        status=status,
        expired=r["expired"],
        alarm_status=r["alarm_status"],
        alarm_last_seen_at=r["alarm_last_seen_at"],
        valve_status=r["valve_status"],
        valve_fault=r["valve_status"] == "fault",
        alarms=r["alarms"],
    )


async def building_exists(conn: Conn, *, scope: Scope | None, community_code: str, building: str) -> bool:
    """Whether the community has a household in ``building`` that ``scope`` may see.

    Scoped, so that asking for a building names no building outside the caller's scope (a duty operator
    learns nothing of another supplier's buildings).
    """
    where = _scoped_where(scope)
    where.add("h.community_code = {}", community_code)
    where.add("h.building = {}", building)
    found: bool = await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM household h {where.sql()})", *where.args)
    return found


@dataclass(frozen=True)
class MonthInstalled:
    """Installations (slips with all five signatures) of one month and gas type, and the running total."""

    month: date
    gas_type: str
    installed: int
    cumulative: int
    verified: int


async def installations_by_month(conn: Conn) -> list[MonthInstalled]:
    """Completed installations per month of installation and gas type, with running totals, county-wide.

    Installed means what it means in `registry.progress`: a confirmation slip with all five signatures.
    """
    rows = await conn.fetch(
        """
        WITH done AS (
            SELECT s.month, h.gas_type, s.verified_at IS NOT NULL AS verified
            FROM confirmation_slip s JOIN household h ON h.id = s.household_id
            WHERE (SELECT count(*) FROM slip_signature g WHERE g.slip_id = s.id) = 5
        )
        SELECT month, gas_type, count(*) AS installed, count(*) FILTER (WHERE verified) AS verified,
               sum(count(*)) OVER (PARTITION BY gas_type ORDER BY month) AS cumulative
        FROM done GROUP BY month, gas_type ORDER BY month, gas_type
        """
    )
    return [
        MonthInstalled(r["month"], r["gas_type"], r["installed"], int(r["cumulative"]), r["verified"]) for r in rows
    ]
