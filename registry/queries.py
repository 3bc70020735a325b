"""SQL of the registry API: keyword-only async functions taking a connection; no ORM.

List functions page by keyset (``after`` = sort key of the last row already seen), so pages stay
stable while alerting keeps inserting incidents. Filter values only ever travel as bind parameters.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import TYPE_CHECKING, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

if TYPE_CHECKING:
    from registry.auth import Scope

#: What every query accepts: a plain connection or one borrowed from a pool.
Conn: TypeAlias = asyncpg.Connection | PoolConnectionProxy


class Where:
    """Collects ``AND``-ed conditions and their bind parameters."""

    def __init__(self) -> None:
        self.clauses: list[str] = []
        self.args: list[object] = []

    def param(self, value: object) -> str:
        """Bind ``value`` and return its placeholder."""
        self.args.append(value)
        return f"${len(self.args)}"

    def add(self, template: str, *values: object) -> None:
        """Add a condition; each ``{}`` in the (static) template becomes the next value's placeholder."""
        self.clauses.append(template.format(*(self.param(value) for value in values)))

    def sql(self) -> str:
        """The ``WHERE`` clause, or nothing."""
        return f"WHERE {' AND '.join(self.clauses)}" if self.clauses else ""

    def scope(self, scope: Scope | None) -> None:
        """Restrict to the households (alias ``h``) that ``scope`` may see; None means all."""
        if scope is None or scope.all_households:
            return
        if scope.community_code is not None:
            self.add("h.community_code = {}", scope.community_code)
        elif scope.supplier is not None:
            self.add("h.supplier = {}", scope.supplier)
        elif scope.installer_id is not None:
            self.add(
                "EXISTS (SELECT 1 FROM installation_job j WHERE j.household_id = h.id AND j.installer_id = {}"
                " AND j.state <> 'cancelled')",
                scope.installer_id,
            )
        else:
            self.clauses.append("false")  # a scope that names nothing sees nothing


_PLACE_COLUMNS = """
    h.building, h.unit, h.room,
    c.code AS community_code, c.name AS community_name, c.synthetic AS community_synthetic,
    t.code AS town_code, t.name AS town_name"""

_PLACE_JOINS = """
    JOIN community c ON c.code = h.community_code
    JOIN town t ON t.code = c.town_code"""

# Monitored = an NG household with an alarm linked to a shut-off valve, both installed in it.
# LPG households are never monitored: their kit has no electronics (domain requirement 28).
MONITORED_SQL = """
    (h.gas_type = 'NG' AND EXISTS (
        SELECT 1
        FROM alarm_valve_link l
        JOIN device a ON a.id = l.alarm_id
        JOIN device_model am ON am.id = a.model_id
        JOIN device v ON v.id = l.valve_id
        JOIN device_model vm ON vm.id = v.model_id
        WHERE a.household_id = h.id AND v.household_id = h.id
          AND am.kind = 'alarm' AND vm.kind = 'shutoff_valve'
    ))"""

#: Today in China Standard Time, against which service lives are judged.
CHINA_TODAY_SQL = "(now() AT TIME ZONE 'Asia/Shanghai')::date"

# Unprotected: any fitted device past its service life, or the programme's kit not in place
# (NG: alarm linked to a shut-off valve; LPG: a regulator and a hose).
UNPROTECTED_SQL = f"""
    (EXISTS (
        SELECT 1 FROM device d JOIN device_model m ON m.id = d.model_id
        WHERE d.household_id = h.id AND d.installed_on IS NOT NULL
          AND (d.installed_on + make_interval(years => m.service_life_years))::date <= {CHINA_TODAY_SQL}
    ) OR (h.gas_type = 'NG' AND NOT {MONITORED_SQL})
      OR (h.gas_type = 'LPG' AND NOT (
        EXISTS (SELECT 1 FROM device d JOIN device_model m ON m.id = d.model_id
                WHERE d.household_id = h.id AND m.kind = 'regulator')
        AND EXISTS (SELECT 1 FROM device d JOIN device_model m ON m.id = d.model_id
                    WHERE d.household_id = h.id AND m.kind = 'hose'))))"""

# The same two rules for the rows of a page, from one pass over each household's devices (a LATERAL
# aggregate) instead of five correlated sub-plans per row: half the planning and execution time of a
# 50-row page on 40,000 households. test_progress checks both forms agree household by household.
_HOUSEHOLD_SELECT = f"""
SELECT h.id, h.gas_type, h.supplier, h.resident_name, h.resident_phone, h.created_at, h.updated_at, h.hazard,
       {_PLACE_COLUMNS},
       (h.gas_type = 'NG' AND k.linked) AS monitored,
       (k.expired OR (h.gas_type = 'NG' AND NOT k.linked)
        OR (h.gas_type = 'LPG' AND NOT (k.has_regulator AND k.has_hose))) AS unprotected
FROM household h
{_PLACE_JOINS}
CROSS JOIN LATERAL (
    SELECT coalesce(bool_or(d.installed_on IS NOT NULL
                            AND (d.installed_on + make_interval(years => m.service_life_years))::date
                                <= {CHINA_TODAY_SQL}), false) AS expired,
           coalesce(bool_or(m.kind = 'regulator'), false) AS has_regulator,
           coalesce(bool_or(m.kind = 'hose'), false) AS has_hose,
           coalesce(bool_or(l.alarm_id IS NOT NULL), false) AS linked
    FROM device d
    JOIN device_model m ON m.id = d.model_id
    LEFT JOIN alarm_valve_link l ON l.alarm_id = d.id AND m.kind = 'alarm' AND EXISTS (
        SELECT 1 FROM device v JOIN device_model vm ON vm.id = v.model_id
        WHERE v.id = l.valve_id AND v.household_id = h.id AND vm.kind = 'shutoff_valve')
    WHERE d.household_id = h.id
) k
"""


def _household_where(
    *, town_code: str | None, community_code: str | None, gas_type: str | None, scope: Scope | None = None
) -> Where:
    where = Where()
    where.scope(scope)
    if town_code is not None:
        where.add("c.town_code = {}", town_code)
    if community_code is not None:
        where.add("h.community_code = {}", community_code)
    if gas_type is not None:
        where.add("h.gas_type = {}", gas_type)
    return where


async def ping(*, conn: Conn) -> None:
    """Round-trip to the database."""
    await conn.fetchval("SELECT 1")


async def count_households(
    *,
    conn: Conn,
    town_code: str | None = None,
    community_code: str | None = None,
    gas_type: str | None = None,
    scope: Scope | None = None,
) -> int:
    """Number of households matching the filters (within ``scope``)."""
    where = _household_where(town_code=town_code, community_code=community_code, gas_type=gas_type, scope=scope)
    sql = f"SELECT count(*) FROM household h JOIN community c ON c.code = h.community_code {where.sql()}"
    count: int = await conn.fetchval(sql, *where.args)
    return count


async def list_households(
    *,
    conn: Conn,
    limit: int,
    after: int | None = None,
    town_code: str | None = None,
    community_code: str | None = None,
    gas_type: str | None = None,
    scope: Scope | None = None,
) -> list[asyncpg.Record]:
    """Households in id order, starting after household ``after`` (within ``scope``)."""
    where = _household_where(town_code=town_code, community_code=community_code, gas_type=gas_type, scope=scope)
    if after is not None:
        where.add("h.id > {}", after)
    # Pick the page's ids first, then compute the per-household flags for those rows only: evaluated in
    # one query with the LIMIT, PostgreSQL hashes the flags' subqueries over every household (~450 ms
    # on 40,000) instead of probing the device index for the 50 rows shown.
    page = (
        "SELECT h.id FROM household h JOIN community c ON c.code = h.community_code"
        f" {where.sql()} ORDER BY h.id LIMIT {where.param(limit)}"
    )
    sql = f"{_HOUSEHOLD_SELECT} WHERE h.id IN ({page}) ORDER BY h.id"
    return await conn.fetch(sql, *where.args)


async def get_household(*, conn: Conn, household_id: int) -> asyncpg.Record | None:
    """One household, or None."""
    return await conn.fetchrow(f"{_HOUSEHOLD_SELECT} WHERE h.id = $1", household_id)


async def household_in_scope(*, conn: Conn, household_id: int, scope: Scope | None) -> bool:
    """Whether ``scope`` may see household ``household_id`` (which must exist)."""
    where = Where()
    where.add("h.id = {}", household_id)
    where.scope(scope)
    found: bool = await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM household h {where.sql()})", *where.args)
    return found


_DEVICE_SELECT = """
SELECT d.id, d.household_id, d.model_id, d.serial, d.imei, d.manufactured_on, d.installed_on,
       (d.installed_on + make_interval(years => m.service_life_years))::date AS expires_on,
       m.manufacturer, m.model, m.kind, m.gas_type AS model_gas_type, m.service_life_years, m.bearer
FROM device d
JOIN device_model m ON m.id = d.model_id
JOIN household h ON h.id = d.household_id
"""


def _device_where(*, kind: str | None, household_id: int | None, scope: Scope | None = None) -> Where:
    where = Where()
    where.scope(scope)
    if kind is not None:
        where.add("m.kind = {}", kind)
    if household_id is not None:
        where.add("d.household_id = {}", household_id)
    return where


async def count_devices(
    *, conn: Conn, kind: str | None = None, household_id: int | None = None, scope: Scope | None = None
) -> int:
    """Number of devices matching the filters (within ``scope``)."""
    where = _device_where(kind=kind, household_id=household_id, scope=scope)
    sql = (
        "SELECT count(*) FROM device d JOIN device_model m ON m.id = d.model_id"
        f" JOIN household h ON h.id = d.household_id {where.sql()}"
    )
    count: int = await conn.fetchval(sql, *where.args)
    return count


async def list_devices(
    *,
    conn: Conn,
    limit: int,
    after: str | None = None,
    kind: str | None = None,
    household_id: int | None = None,
    scope: Scope | None = None,
) -> list[asyncpg.Record]:
    """Devices in id order, starting after device ``after`` (within ``scope``)."""
    where = _device_where(kind=kind, household_id=household_id, scope=scope)
    if after is not None:
        where.add("d.id > {}", after)
    sql = f"{_DEVICE_SELECT} {where.sql()} ORDER BY d.id LIMIT {where.param(limit)}"
    return await conn.fetch(sql, *where.args)


async def list_household_devices(*, conn: Conn, household_id: int) -> list[asyncpg.Record]:
    """All devices of one household (a handful), in id order."""
    return await conn.fetch(f"{_DEVICE_SELECT} WHERE d.household_id = $1 ORDER BY d.id", household_id)


async def get_device(*, conn: Conn, device_id: str) -> asyncpg.Record | None:
    """One device, or None."""
    return await conn.fetchrow(f"{_DEVICE_SELECT} WHERE d.id = $1", device_id)


async def list_household_links(*, conn: Conn, household_id: int) -> list[asyncpg.Record]:
    """Alarm→valve links in which either device belongs to the household."""
    return await conn.fetch(
        """
        SELECT l.alarm_id, l.valve_id
        FROM alarm_valve_link l
        JOIN device a ON a.id = l.alarm_id
        JOIN device v ON v.id = l.valve_id
        WHERE a.household_id = $1 OR v.household_id = $1
        ORDER BY l.alarm_id, l.valve_id
        """,
        household_id,
    )


async def list_device_links(*, conn: Conn, device_id: str) -> list[asyncpg.Record]:
    """Alarm→valve links in which the device is the alarm or the valve."""
    return await conn.fetch(
        """
        SELECT alarm_id, valve_id
        FROM alarm_valve_link
        WHERE alarm_id = $1 OR valve_id = $1
        ORDER BY alarm_id, valve_id
        """,
        device_id,
    )


# Cluster incidents belong to a building or community, not one household: hence the outer joins.
# Scoped roles filter on ``h`` and so see only their households' incidents; clusters go to county-wide roles.
_INCIDENT_SELECT = f"""
SELECT i.id, i.household_id, i.scope, i.kind, i.severity, i.state, i.alarm_device_id, i.alarm_state, i.alarm_lel,
       i.alarm_device_ts, i.alarm_received_at, i.command_sent_at, i.valve_closed_at, i.opened_at,
       i.closed_at, i.disposition,
       {_PLACE_COLUMNS}
FROM incident i
LEFT JOIN household h ON h.id = i.household_id
LEFT JOIN community c ON c.code = h.community_code
LEFT JOIN town t ON t.code = c.town_code
"""


def _incident_where(
    *, state: str | None, kind: str | None, household_id: int | None, scope: Scope | None = None
) -> Where:
    where = Where()
    where.scope(scope)
    if state is not None:
        where.add("i.state = {}", state)
    if kind is not None:
        where.add("i.kind = {}", kind)
    if household_id is not None:
        where.add("i.household_id = {}", household_id)
    return where


async def count_incidents(
    *,
    conn: Conn,
    state: str | None = None,
    kind: str | None = None,
    household_id: int | None = None,
    scope: Scope | None = None,
) -> int:
    """Number of incidents matching the filters (within ``scope``)."""
    where = _incident_where(state=state, kind=kind, household_id=household_id, scope=scope)
    sql = f"SELECT count(*) FROM incident i LEFT JOIN household h ON h.id = i.household_id {where.sql()}"
    count: int = await conn.fetchval(sql, *where.args)
    return count


async def list_incidents(
    *,
    conn: Conn,
    limit: int,
    after: tuple[datetime, int] | None = None,
    state: str | None = None,
    kind: str | None = None,
    household_id: int | None = None,
    scope: Scope | None = None,
) -> list[asyncpg.Record]:
    """Incidents newest first, starting after the incident whose ``(opened_at, id)`` is ``after``."""
    where = _incident_where(state=state, kind=kind, household_id=household_id, scope=scope)
    if after is not None:
        where.add("(i.opened_at, i.id) < ({}, {})", *after)
    sql = f"{_INCIDENT_SELECT} {where.sql()} ORDER BY i.opened_at DESC, i.id DESC LIMIT {where.param(limit)}"
    return await conn.fetch(sql, *where.args)


async def get_incident(*, conn: Conn, incident_id: int) -> asyncpg.Record | None:
    """One incident, or None."""
    return await conn.fetchrow(f"{_INCIDENT_SELECT} WHERE i.id = $1", incident_id)


async def list_incident_events(*, conn: Conn, incident_id: int) -> list[asyncpg.Record]:
    """An incident's timeline in the order it was appended."""
    return await conn.fetch(
        "SELECT id, at, actor, type, detail FROM incident_event WHERE incident_id = $1 ORDER BY id",
        incident_id,
    )


async def list_incident_commands(*, conn: Conn, incident_id: int) -> list[asyncpg.Record]:
    """Valve commands issued for an incident, oldest first."""
    return await conn.fetch(
        """
        SELECT cmd_id, valve_id, command, reason, issued_at, expires_at, state, acked_at, confirmed_at,
               reported_position
        FROM valve_command
        WHERE incident_id = $1
        ORDER BY issued_at, cmd_id
        """,
        incident_id,
    )


async def list_command_attempts(*, conn: Conn, cmd_ids: list[uuid.UUID]) -> list[asyncpg.Record]:
    """Attempts of the given commands, in attempt order."""
    return await conn.fetch(
        """
        SELECT cmd_id, attempt, sent_at
        FROM valve_command_attempt
        WHERE cmd_id = ANY($1::uuid[])
        ORDER BY cmd_id, attempt
        """,
        cmd_ids,
    )


async def list_incident_notifications(*, conn: Conn, incident_id: int) -> list[asyncpg.Record]:
    """Outbox rows created for an incident, oldest first."""
    return await conn.fetch(
        """
        SELECT id, channel, recipient, recipient_role, template, status, attempts, created_at, sent_at,
               last_error
        FROM notification_outbox
        WHERE incident_id = $1
        ORDER BY id
        """,
        incident_id,
    )
