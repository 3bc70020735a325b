"""Makes batches durable: PostgreSQL while it answers, the on-disk spool while it does not.

State machine (logged on change only, never per batch):

    database available   ->  batches go to PostgreSQL; a connection failure flips to unavailable
                             and that batch goes to the spool.
    database unavailable ->  batches go straight to the spool (no per-batch connect attempts);
                             the drain loop retries with capped, jittered backoff and, once the
                             database answers, replays the spool oldest first. Only when the spool is
                             empty does the state flip back, so nothing overtakes the journal for long.
    spool full           ->  `DurableSink.store` waits, so handlers wait and the broker stops sending
                             (backpressure) rather than anything being dropped.
"""

from __future__ import annotations

import asyncio
import logging
import random

from ingest.rows import Rows
from ingest.spool import Spool, SpoolFull
from ingest.stats import Counters
from ingest.writer import DatabaseUnavailable, DatabaseWriter

_LOGGER = logging.getLogger(__name__)

_BACKOFF_BASE_S = 0.1
_DISK_RETRY_S = 1.0


class DurableSink:
    """Stores rows in PostgreSQL or, during an outage, in the spool; replays the spool afterwards."""

    def __init__(
        self,
        *,
        live: DatabaseWriter,
        replay: DatabaseWriter,
        spool: Spool,
        counters: Counters,
        retry_max_s: float,
    ) -> None:
        self._live = live
        self._replay = replay
        self._spool = spool
        self._counters = counters
        self._retry_max_s = retry_max_s
        self._available = True
        self._spool_full = False
        self._disk_failing = False
        self._room = asyncio.Event()
        self._wake_drain = asyncio.Event()

    @property
    def database_available(self) -> bool:
        """Whether batches currently go to PostgreSQL."""
        return self._available

    def _went_down(self, err: Exception) -> None:
        if self._available:
            self._available = False
            _LOGGER.warning(
                "database unreachable (%s); spooling batches to %s until it returns", err, self._spool.directory
            )
        self._wake_drain.set()

    def _came_up(self) -> None:
        self._room.set()
        if self._spool_full:
            self._spool_full = False
        if not self._available:
            self._available = True
            _LOGGER.info("database recovered; spool replayed")

    async def store(self, rows: Rows) -> None:
        """Return once ``rows`` are committed or spooled; waits (backpressure) while the spool is full."""
        while True:
            if self._available:
                try:
                    result = await self._live.write(rows)
                except DatabaseUnavailable as err:
                    self._went_down(err)
                else:
                    self._counters.add(result)
                    self._counters.batches_written += 1
                    return
            try:
                await self._spool.append(rows)
            except SpoolFull:
                if not self._spool_full:
                    self._spool_full = True
                    _LOGGER.warning(
                        "spool full (%d bytes); not acknowledging messages until the database takes them",
                        self._spool.size_bytes,
                    )
                self._room.clear()
                await self._room.wait()
                continue
            except OSError as err:
                if not self._disk_failing:
                    self._disk_failing = True
                    _LOGGER.error("cannot write spool %s (%s); holding the batch", self._spool.directory, err)  # noqa: TRY400
                await asyncio.sleep(_DISK_RETRY_S)
                continue
            if self._disk_failing:
                self._disk_failing = False
                _LOGGER.info("spool %s writable again", self._spool.directory)
            self._counters.batches_spooled += 1
            self._counters.rows_spooled += len(rows)
            self._wake_drain.set()
            return

    async def drain_loop(self) -> None:
        """Replay the spool into PostgreSQL whenever there is something in it, forever."""
        if not self._spool.empty:
            self._wake_drain.set()
        attempt = 0
        while True:
            await self._wake_drain.wait()
            self._wake_drain.clear()
            while True:
                try:
                    await self._drain()
                except DatabaseUnavailable as err:
                    self._went_down(err)
                    attempt += 1
                    # "Equal jitter": never a tight loop, never a thundering herd of workers.
                    ceiling = min(self._retry_max_s, _BACKOFF_BASE_S * 2**attempt)
                    await asyncio.sleep(ceiling / 2 + random.uniform(0, ceiling / 2))
                else:
                    attempt = 0
                    break

    async def _drain(self) -> None:
        await self._replay.ping()
        while True:
            segments = await self._spool.seal()
            if not segments:
                # Nothing awaits between the empty check and the flip, so no append slips between them.
                self._came_up()
                return
            for segment in segments:
                rows = await self._spool.read(segment)
                if rows:
                    self._counters.add(await self._replay.write(rows))
                self._counters.segments_replayed += 1
                await self._spool.remove(segment)
                self._room.set()
