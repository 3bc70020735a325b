"""Applies alerting's records to PostgreSQL in order, journaling them to disk while it is unreachable.

The alarm path only calls `Recorder.submit`, which never blocks and never touches the database. This
task owns the only connection that writes records; it applies whatever has queued up (up to
`BATCH_MAX` records) in one transaction, in order. While the database is away, records accumulate in
an fsync'ed journal file, so neither the outage nor a restart during it loses an incident; when the
database returns, the journal is replayed in order (records are idempotent, so a replay after a crash
half-way through is harmless) and then truncated.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import random
import time
from collections import deque
from pathlib import Path

import asyncpg

from alerting.records import Record, Rejected, apply, apply_batch, batchable, dump_record, load_record
from gasguard.clock import utcnow
from gasguard.db import connect

_LOGGER = logging.getLogger(__name__)

#: Most records applied in one transaction. One commit per record held the recorder to ~25 alarms/s
#: (each commit waits for its WAL flush); a storm of 36,000 households must be stored in minutes.
BATCH_MAX = 200

TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.InterfaceError,
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.SerializationError,
    asyncpg.exceptions.DeadlockDetectedError,
)


class Journal:
    """An append-only, fsync'ed file of records not yet in the database."""

    def __init__(self, path: Path) -> None:
        self._path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def load(self) -> list[Record]:
        """Records left by a previous run (a torn last line from a crash is skipped)."""
        if not self._path.exists():
            return []
        records: list[Record] = []
        for number, line in enumerate(self._path.read_bytes().splitlines(), start=1):
            try:
                records.append(load_record(line))
            except ValueError:
                _LOGGER.warning("journal %s line %d is unreadable; skipped", self._path, number)
        return records

    def append(self, records: list[Record]) -> None:
        """Persist records durably before the caller forgets them."""
        data = b"".join(dump_record(r) + b"\n" for r in records)
        with self._path.open("ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    def clear(self) -> None:
        """Forget everything: it is all in the database now."""
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()


class Recorder:
    """Single writer of alerting records, several records per transaction."""

    def __init__(self, dsn: str, *, journal_path: Path, batch_max: int = BATCH_MAX) -> None:
        self._dsn = dsn
        self._journal = Journal(journal_path)
        self._queue: asyncio.Queue[Record] = asyncio.Queue()
        self._backlog: deque[Record] = deque()
        #: Taken from the queue but not yet applied: a batch ends early to keep a household's records in order.
        self._carry: list[Record] = []
        #: Records of the batch being written, taken from the queue (a backlog batch stays in the backlog).
        self._applying = 0
        self._conn: asyncpg.Connection | None = None
        self._outage = False
        self._batch_max = batch_max
        self.applied = 0
        #: Transactions that applied records (fewer than ``applied`` when records were batched).
        self.transactions = 0
        self.idle = asyncio.Event()
        #: Records ever submitted (journaled ones replayed at start included); applied in this order.
        self._submitted = 0
        #: (index of a submitted record, monotonic time it was submitted), at most one mark a second.
        self._marks: deque[tuple[int, float]] = deque()

    @property
    def in_outage(self) -> bool:
        """Whether the database is unreachable and records are being journaled."""
        return self._outage

    def submit(self, record: Record) -> None:
        """Queue a record; returns at once (the alarm path calls this)."""
        self._mark(1)
        self.idle.clear()
        self._queue.put_nowait(record)

    def _mark(self, count: int) -> None:
        now = time.monotonic()
        if not self._marks or now - self._marks[-1][1] >= 1.0:
            self._marks.append((self._submitted, now))
        self._submitted += count

    def lag_s(self, now: float) -> float:
        """How long the oldest record not yet in the database has waited, to within a second; 0 when none.

        Records are applied in the order they were submitted, so the oldest pending one is number
        ``applied``; ``now`` is a `time.monotonic` reading.
        """
        marks = self._marks
        while len(marks) > 1 and marks[1][0] <= self.applied:
            marks.popleft()
        if self.applied >= self._submitted or not marks:
            return 0.0
        return max(0.0, now - marks[0][1])

    async def run_loop(self) -> None:
        """Apply records forever, in order; survive database outages without losing any."""
        self._backlog.extend(self._journal.load())
        self._mark(len(self._backlog))
        if self._backlog:
            _LOGGER.info("replaying %d journaled records", len(self._backlog))
        try:
            while True:
                if not self._backlog and not self._carry and self._queue.empty():
                    self.idle.set()
                from_backlog = bool(self._backlog)
                if from_backlog:
                    batch = list(itertools.islice(self._backlog, self._batch_max))
                else:
                    batch = self._carry or [await self._queue.get()]
                    while len(batch) < self._batch_max and not self._queue.empty():
                        batch.append(self._queue.get_nowait())
                    self._carry = []
                    self._applying = len(batch)
                try:
                    done = await self._apply(batch)
                except TRANSIENT_DB_ERRORS as err:
                    self._applying = 0
                    if not from_backlog:
                        self._backlog.extend(batch)
                        self._journal.append(batch)
                    await self._on_outage(err)
                    continue
                if from_backlog:
                    for _ in range(done):
                        self._backlog.popleft()
                    if not self._backlog:
                        self._journal.clear()
                else:
                    self._carry = batch[done:]
                    self._applying = 0
                self.applied += done
                self.transactions += 1
        finally:
            if self._conn is not None:
                with contextlib.suppress(Exception):
                    await self._conn.close()

    @property
    def pending(self) -> int:
        """Records not yet in the database."""
        return len(self._backlog) + len(self._carry) + self._applying + self._queue.qsize()

    async def _apply(self, batch: list[Record]) -> int:
        """Apply a leading part of the batch (at least one record) in one transaction; returns how many."""
        if self._conn is None or self._conn.is_closed():
            self._conn = await connect(self._dsn)
        conn = self._conn
        try:
            try:
                done = await apply_batch(conn, batch)
            except asyncpg.PostgresError as err:
                if isinstance(err, TRANSIENT_DB_ERRORS):
                    raise
                # One record the database refuses (a bug or a deleted household) must neither block the
                # ones behind it nor take them down with it: apply them one by one, each in its own
                # transaction, and keep the refused one as a dead letter with the reason.
                done = batchable(batch)
                for record in batch[:done]:
                    await self._apply_one(conn, record)
        except TRANSIENT_DB_ERRORS:
            with contextlib.suppress(Exception):
                await conn.close()
            self._conn = None
            raise
        if self._outage:
            _LOGGER.info("database reachable again; %d records waiting", self.pending)
            self._outage = False
        return done

    async def _apply_one(self, conn: asyncpg.Connection, record: Record) -> None:
        try:
            await apply(conn, record)
        except asyncpg.PostgresError as err:
            if isinstance(err, TRANSIENT_DB_ERRORS):
                raise
            _LOGGER.exception("record %s refused by the database", record.op)
            await apply(
                conn,
                Rejected(
                    topic="alerting/record",
                    device_id=None,
                    reason=f"record refused: {type(err).__name__}: {err}"[:500],
                    payload=dump_record(record),
                    at=utcnow(),
                ),
            )

    async def _on_outage(self, err: BaseException) -> None:
        if not self._outage:
            _LOGGER.warning("database unreachable (%s); journaling records until it returns", err)
            self._outage = True
        # Move everything queued so far into the durable journal while we wait.
        moved: list[Record] = []
        while not self._queue.empty():
            moved.append(self._queue.get_nowait())
        if moved:
            self._backlog.extend(moved)
            self._journal.append(moved)
        await asyncio.sleep(random.uniform(0.2, 1.0))
