"""The in-memory directory the alarm path reads: alarm -> household -> valve(s) -> resident.

It is loaded from the registry tables and swapped whole on reload, so the hot path reads one
immutable snapshot without locks and never touches the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
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


#: Rows turned into entries between two yields to the event loop: building 80,000 entries in one go held
#: the alarm path for about 100 ms.
_BUILD_CHUNK = 5_000


async def load_directory(conn: asyncpg.Connection) -> Directory:
    """Read the whole directory in one repeatable-read snapshot."""
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        alarm_rows = await conn.fetch(_ALARMS_SQL)
        valve_rows = await conn.fetch(_VALVES_SQL)
    alarms: dict[str, AlarmEntry] = {}
    for start in range(0, len(alarm_rows), _BUILD_CHUNK):
        for r in alarm_rows[start : start + _BUILD_CHUNK]:
            alarms[r["id"]] = AlarmEntry(
                alarm_id=r["id"],
                household_id=r["household_id"],
                valve_ids=tuple(r["valves"]),
                low_alarm_lel=r["low_alarm_lel"],
                high_alarm_lel=r["high_alarm_lel"],
            )
        await asyncio.sleep(0)
    valves: dict[str, ValveEntry] = {}
    for start in range(0, len(valve_rows), _BUILD_CHUNK):
        for r in valve_rows[start : start + _BUILD_CHUNK]:
            valves[r["id"]] = ValveEntry(
                valve_id=r["id"], household_id=r["household_id"], close_confirm_timeout_s=r["close_confirm_timeout_s"]
            )
        await asyncio.sleep(0)
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
            gc.unfreeze()
            self.current = await load_directory(conn)
            # The snapshot lives until the next reload: about 200,000 objects the cyclic garbage collector
            # would walk in every full collection (measured: 60 ms, the alarm path paused meanwhile, several
            # times a minute in a storm). One collection now, then everything alive is frozen out of its
            # sight; unfrozen at the next reload, so nothing frozen stays out of its reach for good.
            gc.collect()
            gc.freeze()
            self.loaded.set()
            _LOGGER.debug("directory: %d alarms, %d valves", len(self.current.alarms), len(self.current.valves))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), self._refresh_s)
            # Coalesce a burst of changes (an installer linking many devices) into one reload.
            await asyncio.sleep(0.05)
