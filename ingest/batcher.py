"""Groups rows into batches by size or age; each batch carries one future that its messages await.

Handlers call ``add_*`` (synchronous, no task per message) and await the returned future; the write
loop takes sealed batches with `Batcher.get`, makes them durable and calls `Pending.resolve`.
Whatever batches are already sealed when the writer comes back are merged into one write, so a
slow database gets bigger transactions instead of a longer queue.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass, field

from ingest.rows import DeadLetterRow, EventRow, Rows, TelemetryRow


@dataclass(slots=True)
class _Batch:
    rows: Rows
    done: asyncio.Future[None]
    timer: asyncio.TimerHandle | None = None
    messages: int = 0


@dataclass(slots=True)
class Pending:
    """Rows taken for writing, with the futures of every message they came from."""

    rows: Rows
    futures: list[asyncio.Future[None]] = field(default_factory=list)
    messages: int = 0


class Batcher:
    """Accumulates rows; seals a batch at ``max_size`` rows or ``max_age_s`` after its first row."""

    def __init__(self, *, max_size: int, max_age_s: float, max_merge: int | None = None) -> None:
        if max_size < 1 or max_age_s <= 0:
            raise ValueError("max_size must be >= 1 and max_age_s > 0")
        self._max_size = max_size
        self._max_age_s = max_age_s
        self._max_merge = max_merge if max_merge is not None else 8 * max_size
        self._open: _Batch | None = None
        self._sealed: collections.deque[_Batch] = collections.deque()
        self._has_sealed = asyncio.Event()
        self._outstanding = 0
        self._last_sealed: asyncio.Future[None] | None = None

    @property
    def outstanding(self) -> int:
        """Messages added whose batch is not resolved yet (open, sealed or being written)."""
        return self._outstanding

    def _start(self) -> _Batch:
        loop = asyncio.get_running_loop()
        batch = _Batch(rows=Rows(), done=loop.create_future())
        batch.timer = loop.call_later(self._max_age_s, self._seal_aged, batch)
        self._open = batch
        return batch

    def _added(self, batch: _Batch) -> asyncio.Future[None]:
        batch.messages += 1
        self._outstanding += 1
        if batch.messages >= self._max_size:
            self.flush()
        return batch.done

    def add_telemetry(self, row: TelemetryRow) -> asyncio.Future[None]:
        """Queue a telemetry row; the future resolves once it is durable."""
        batch = self._open or self._start()
        batch.rows.telemetry.append(row)
        return self._added(batch)

    def add_event(self, row: EventRow) -> asyncio.Future[None]:
        """Queue an event row; the future resolves once it is durable."""
        batch = self._open or self._start()
        batch.rows.events.append(row)
        return self._added(batch)

    def add_dead_letter(self, row: DeadLetterRow) -> asyncio.Future[None]:
        """Queue a dead letter; the future resolves once it is durable."""
        batch = self._open or self._start()
        batch.rows.dead_letters.append(row)
        return self._added(batch)

    def _seal_aged(self, batch: _Batch) -> None:
        if batch is self._open:
            batch.timer = None
            self.flush()

    def flush(self) -> None:
        """Seal the open batch now, if there is one."""
        batch = self._open
        if batch is None:
            return
        self._open = None
        if batch.timer is not None:
            batch.timer.cancel()
            batch.timer = None
        self._sealed.append(batch)
        self._last_sealed = batch.done
        self._has_sealed.set()

    async def get(self) -> Pending:
        """Wait for sealed batches and take them, merged up to ``max_merge`` rows."""
        while not self._sealed:
            self._has_sealed.clear()
            await self._has_sealed.wait()
        first = self._sealed.popleft()
        pending = Pending(rows=first.rows, futures=[first.done], messages=first.messages)
        while self._sealed and len(pending.rows) + len(self._sealed[0].rows) <= self._max_merge:
            batch = self._sealed.popleft()
            pending.rows.extend(batch.rows)
            pending.futures.append(batch.done)
            pending.messages += batch.messages
        return pending

    def resolve(self, pending: Pending) -> None:
        """Tell every message of ``pending`` that its data is durable."""
        for future in pending.futures:
            if not future.done():
                future.set_result(None)
        self._outstanding -= pending.messages

    async def flush_and_wait(self) -> None:
        """Seal the open batch and wait until it and every batch before it are resolved.

        Batches are taken and resolved in order, so waiting for the last sealed one is enough;
        messages added meanwhile are not waited for (under steady traffic there always are some).
        """
        self.flush()
        last = self._last_sealed
        if last is not None and not last.done():
            await asyncio.shield(last)
