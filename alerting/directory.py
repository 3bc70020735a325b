"""The in-memory directory the alarm path reads: alarm -> household -> valve(s) -> resident.

It is loaded from the registry tables and swapped whole on reload, so the hot path reads one
immutable snapshot without locks and never touches the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

import asyncpg

from alerting.listen import listen_forever

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class AlarmEntry:
    """What the engine needs about one alarm device."""

    alarm_id: str
    household_id: int
    valve_ids: tuple[str, ...]
    low_alarm_lel: float | None
    high_alarm_lel: float | None


@dataclass(frozen=True, slots=True)
class ValveEntry:
    """What the engine needs about one shut-off valve."""

    valve_id: str
    household_id: int
    close_confirm_timeout_s: float | None


@dataclass(frozen=True, slots=True)
class Directory:
    """An immutable snapshot of the alarm -> valve wiring."""

    alarms: Mapping[str, AlarmEntry]
    valves: Mapping[str, ValveEntry]

    @classmethod
    def empty(cls) -> Directory:
        """A directory that knows no device."""
        return cls(alarms=MappingProxyType({}), valves=MappingProxyType({}))


_ALARMS_SQL = """
SELECT d.id, d.household_id, m.low_alarm_lel, m.high_alarm_lel,
       coalesce(array_agg(l.valve_id ORDER BY l.valve_id) FILTER (WHERE l.valve_id IS NOT NULL), '{}') AS valves
FROM device d
JOIN device_model m ON m.id = d.model_id
LEFT JOIN alarm_valve_link l ON l.alarm_id = d.id
WHERE m.kind = 'alarm'
GROUP BY d.id, d.household_id, m.low_alarm_lel, m.high_alarm_lel
"""

_VALVES_SQL = """
SELECT d.id, d.household_id, m.close_confirm_timeout_s
FROM device d JOIN device_model m ON m.id = d.model_id
WHERE m.kind = 'shutoff_valve'
"""


async def load_directory(conn: asyncpg.Connection) -> Directory:
    """Read the whole directory in one repeatable-read snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        alarm_rows = await conn.fetch(_ALARMS_SQL)
        valve_rows = await conn.fetch(_VALVES_SQL)
    alarms = {
        r["id"]: AlarmEntry(
            alarm_id=r["id"],
            household_id=r["household_id"],
            valve_ids=tuple(r["valves"]),
            low_alarm_lel=r["low_alarm_lel"],
            high_alarm_lel=r["high_alarm_lel"],
        )
        for r in alarm_rows
    }
    valves = {
        r["id"]: ValveEntry(
            valve_id=r["id"],
            household_id=r["household_id"],
            close_confirm_timeout_s=r["close_confirm_timeout_s"],
        )
        for r in valve_rows
    }
    return Directory(alarms=MappingProxyType(alarms), valves=MappingProxyType(valves))


class DirectoryKeeper:
    """Holds the current directory and reloads it on NOTIFY ``gg_directory`` or every ``refresh_s``."""

    def __init__(self, dsn: str, *, refresh_s: float) -> None:
        self._dsn = dsn
        self._refresh_s = refresh_s
        self.current = Directory.empty()
        self.loaded = asyncio.Event()

    async def run_loop(self) -> None:
        """Keep the directory fresh forever; survives database outages with the last snapshot."""
        await listen_forever(
            self._dsn,
            "gg_directory",
            self._reload_forever,
            what="directory (keeping the last snapshot)",
            errors=(OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError),
        )

    async def _reload_forever(self, conn: asyncpg.Connection, changed: asyncio.Event) -> None:
        while True:
            changed.clear()
            self.current = await load_directory(conn)
            self.loaded.set()
            _LOGGER.debug("directory: %d alarms, %d valves", len(self.current.alarms), len(self.current.valves))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), self._refresh_s)
            # Coalesce a burst of changes (an installer linking many devices) into one reload.
            await asyncio.sleep(0.05)
