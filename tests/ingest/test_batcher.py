"""The batcher: sealing by size and by age, merging, resolution, and flushing for shutdown."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from ingest.batcher import Batcher
from ingest.rows import DeadLetterRow, TelemetryRow

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def row(seq: int) -> TelemetryRow:
    return ("a", T0, T0, seq, "alarm", 1.0, "normal", None, None, None, None, None, None, None, None, None)


def dead(reason: str) -> DeadLetterRow:
    return (T0, "mqtt", "t", None, reason, b"")


async def test_batch_seals_when_full_and_one_future_serves_all_its_messages() -> None:
    """Test that ``max_size`` messages seal a batch at once and share its future."""
    batcher = Batcher(max_size=3, max_age_s=60)
    futures = [batcher.add_telemetry(row(1)), batcher.add_dead_letter(dead("x")), batcher.add_telemetry(row(2))]
    assert len(set(map(id, futures))) == 1
    pending = await asyncio.wait_for(batcher.get(), 1)
    assert [r[3] for r in pending.rows.telemetry] == [1, 2]
    assert pending.rows.dead_letters == [dead("x")]
    assert pending.messages == 3
    assert not futures[0].done()
    assert batcher.outstanding == 3
    batcher.resolve(pending)
    assert futures[0].done()
    assert batcher.outstanding == 0


async def test_batch_seals_by_age() -> None:
    """Test that a lone message is written after ``max_age_s`` rather than waiting for company."""
    batcher = Batcher(max_size=1000, max_age_s=0.02)
    loop = asyncio.get_running_loop()
    started = loop.time()
    batcher.add_event(("a", T0, T0, 1, "alarm", "high_alarm", 30.0, None, None))
    pending = await asyncio.wait_for(batcher.get(), 1)
    assert 0.015 <= loop.time() - started < 0.5
    assert len(pending.rows.events) == 1


async def test_waiting_batches_merge_into_one_write_up_to_the_limit() -> None:
    """Test that batches sealed while the writer was busy are taken together, bounded by ``max_merge``."""
    batcher = Batcher(max_size=2, max_age_s=60, max_merge=4)
    futures = [batcher.add_telemetry(row(i)) for i in range(6)]
    first = await batcher.get()
    assert [r[3] for r in first.rows.telemetry] == [0, 1, 2, 3]
    assert len(first.futures) == 2
    second = await batcher.get()
    assert [r[3] for r in second.rows.telemetry] == [4, 5]
    batcher.resolve(first)
    assert futures[0].done() and futures[2].done() and not futures[4].done()


async def test_flush_and_wait_covers_everything_added_before_it() -> None:
    """Test the shutdown helper: it returns once earlier batches are resolved, ignoring later ones."""
    batcher = Batcher(max_size=100, max_age_s=60)
    earlier = batcher.add_telemetry(row(1))
    waiter = asyncio.create_task(batcher.flush_and_wait())
    await asyncio.sleep(0)  # the waiter seals the batch holding ``earlier``
    later = batcher.add_telemetry(row(2))
    assert not waiter.done()
    batcher.resolve(await batcher.get())
    await asyncio.wait_for(waiter, 1)
    assert earlier.done()
    assert not later.done()


def test_nonsense_limits_are_refused() -> None:
    """Test that a batcher that could never seal is rejected at construction."""
    with pytest.raises(ValueError, match="max_size"):
        Batcher(max_size=0, max_age_s=1)
