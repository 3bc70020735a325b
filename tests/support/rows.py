"""Minimal registry rows for tests that need a household with an alarm wired to a valve."""

from __future__ import annotations

from dataclasses import dataclass

import asyncpg

TOWN = "150626100000"
COMMUNITY = "150626100007"


@dataclass(frozen=True)
class Household:
    id: int
    alarm_id: str
    valve_id: str
    phone: str


async def ensure_catalogue(conn: asyncpg.Connection, *, close_confirm_timeout_s: int = 30) -> None:
    await conn.execute("INSERT INTO town (code, name) VALUES ($1, '嘎鲁图镇') ON CONFLICT DO NOTHING", TOWN)
    await conn.execute(
        "INSERT INTO community (code, town_code, name, synthetic) VALUES ($1, $2, '文苑社区', true)"
        " ON CONFLICT DO NOTHING",
        COMMUNITY,
        TOWN,
    )
    await conn.execute(
        """
        INSERT INTO device_model (id, manufacturer, model, kind, gas_type, low_alarm_lel, high_alarm_lel,
                                  heartbeat_s, service_life_years, bearer)
        VALUES ('T-ALARM', 'Test', 'A1', 'alarm', 'NG', 10, 25, 3600, 5, 'mqtt') ON CONFLICT DO NOTHING
        """
    )
    await conn.execute(
        """
        INSERT INTO device_model (id, manufacturer, model, kind, gas_type, close_confirm_timeout_s,
                                  service_life_years, bearer)
        VALUES ('T-VALVE', 'Test', 'V1', 'shutoff_valve', 'NG', $1, 10, 'mqtt') ON CONFLICT DO NOTHING
        """,
        close_confirm_timeout_s,
    )


async def add_household(conn: asyncpg.Connection, n: int, *, phone: str | None = None) -> Household:
    """An NG household ``n`` with alarm ``A-n`` linked to valve ``V-n``."""
    await ensure_catalogue(conn)
    phone = phone or f"1380000{n:04d}"
    household_id = await conn.fetchval(
        "INSERT INTO household (community_code, building, unit, room, gas_type, supplier, resident_name,"
        " resident_phone) VALUES ($1, '3号楼', '2单元', $2, 'NG', '乌审中燃', '测试住户', $3) RETURNING id",
        COMMUNITY,
        str(100 + n),
        phone,
    )
    alarm_id, valve_id = f"A-{n}", f"V-{n}"
    await conn.executemany(
        "INSERT INTO device (id, household_id, model_id, serial, installed_on) VALUES ($1, $2, $3, $4, '2024-06-01')",
        [(alarm_id, household_id, "T-ALARM", f"SA{n}"), (valve_id, household_id, "T-VALVE", f"SV{n}")],
    )
    await conn.execute("INSERT INTO alarm_valve_link (alarm_id, valve_id) VALUES ($1, $2)", alarm_id, valve_id)
    return Household(id=household_id, alarm_id=alarm_id, valve_id=valve_id, phone=phone)
