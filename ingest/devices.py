"""The set of registered device ids, kept fresh by LISTEN/NOTIFY ``gg_directory`` and a periodic reload.

The hot path reads one immutable ``frozenset`` that is swapped whole on reload. While the database is
down the last known set stays in force; a copy is kept on disk so an ingest restarted during an outage
still tells known devices from unknown ones instead of waiting for the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from pathlib import Path

import asyncpg

_LOGGER = logging.getLogger(__name__)

CHANNEL = "gg_directory"

# A burst of registry changes (an installer adding a building) collapses into one reload.
_COALESCE_S = 0.05


def _write_snapshot(path: Path, ids: frozenset[str]) -> None:
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as file:
        json.dump(sorted(ids), file)
        file.flush()
        os.fsync(file.fileno())
    tmp.replace(path)


def _read_snapshot(path: Path) -> frozenset[str] | None:
    try:
        ids = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        _LOGGER.warning("ignoring unreadable device snapshot %s: %s", path, err)
        return None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        _LOGGER.warning("ignoring malformed device snapshot %s", path)
        return None
    return frozenset(ids)


class KnownDevices:
    """Registered device ids, reloaded on NOTIFY ``gg_directory`` or every ``refresh_s``."""

    def __init__(
        self,
        dsn: str,
        *,
        refresh_s: float,
        snapshot: Path | None = None,
        connect_timeout_s: float = 5.0,
        retry_s: float = 1.0,
    ) -> None:
        self._dsn = dsn
        self._refresh_s = refresh_s
        self._snapshot = snapshot
        self._connect_timeout_s = connect_timeout_s
        self._retry_s = retry_s
        self._ids: frozenset[str] = frozenset()
        self._changed = asyncio.Event()
        self.loaded = asyncio.Event()
        self.reloads = 0

    @property
    def ids(self) -> frozenset[str]:
        """The device ids currently known."""
        return self._ids

    async def _load(self, conn: asyncpg.Connection) -> None:
        rows = await conn.fetch("SELECT id FROM device")
        ids = frozenset(row["id"] for row in rows)
        changed = ids != self._ids or not self.loaded.is_set()
        self._ids = ids
        self.reloads += 1
        self.loaded.set()
        if changed and self._snapshot is not None:
            try:
                await asyncio.to_thread(_write_snapshot, self._snapshot, ids)
            except OSError as err:
                _LOGGER.warning("could not save device snapshot %s: %s", self._snapshot, err)
        _LOGGER.debug("device directory: %d devices", len(ids))

    async def _fall_back_to_snapshot(self) -> None:
        if self.loaded.is_set() or self._snapshot is None:
            return
        ids = await asyncio.to_thread(_read_snapshot, self._snapshot)
        if ids is not None:
            self._ids = ids
            self.loaded.set()
            _LOGGER.warning("database unreachable; using the saved list of %d devices until it returns", len(ids))

    async def run_loop(self) -> None:
        """Keep the set fresh forever; survives database outages with the last known set."""
        failing = False
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout_s)
                await conn.add_listener(CHANNEL, self._on_notify)
                conn.add_termination_listener(self._on_terminated)
                while not conn.is_closed():
                    self._changed.clear()
                    await self._load(conn)
                    if failing:
                        _LOGGER.info("device directory reloaded; database reachable again")
                        failing = False
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), self._refresh_s)
                    await asyncio.sleep(_COALESCE_S)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as err:
                if not failing:
                    _LOGGER.warning("device directory reload failed (%s); keeping the last known set", err)
                    failing = True
                await self._fall_back_to_snapshot()
                await asyncio.sleep(self._retry_s)
            finally:
                if conn is not None:
                    conn.terminate()

    def _on_notify(self, conn: object, pid: int, channel: str, payload: object) -> None:
        self._changed.set()

    def _on_terminated(self, conn: object) -> None:
        # Wake the loop so it notices the lost connection now, not at the next periodic refresh.
        self._changed.set()
