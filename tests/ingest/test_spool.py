"""The on-disk spool: durable appends, order, limits, torn lines, reopening after a restart."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from ingest.rows import Rows, TelemetryRow, decode_rows, encode_rows
from ingest.spool import Spool, SpoolFull

T0 = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def telemetry(seq: int) -> TelemetryRow:
    return ("alarm-1", T0 + timedelta(seconds=seq), T0, seq, "alarm", 2.5, "normal", None, "battery", 40, None,
            -70, None, float("inf"), 9, 0)  # fmt: skip


def rows(*seqs: int) -> Rows:
    return Rows(telemetry=[telemetry(s) for s in seqs])


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("segment-*.jsonl"))


def tear(path: Path) -> None:
    """Append a complete garbage line and a torn one, as disk corruption and a crash would."""
    with path.open("ab") as file:
        file.write(b'{"garbage": true}\n')
        file.write(b'{"t": [["alarm-1", "2026-')  # no newline: the append never finished


def test_rows_survive_the_json_codec() -> None:
    """Test that every column type comes back equal, including offsets, UUIDs, bytes and infinities."""
    cmd = uuid.uuid4()
    east8 = timezone(timedelta(hours=8))
    original = Rows(
        telemetry=[telemetry(1)],
        events=[("valve-1", T0.astimezone(east8), T0, -1, "valve", None, None, "closed", cmd)],
        dead_letters=[(T0, "mqtt", "gg/x", None, "unknown topic", b"\x00\xff{")],
    )
    back = decode_rows(encode_rows(original))
    assert back == original
    assert back.events[0][1].utcoffset() == timedelta(hours=8)


async def test_appended_batches_come_back_in_order_across_segments(tmp_path: Path) -> None:
    """Test that batches replay oldest first, spread over several small segments."""
    spool = Spool(tmp_path, max_bytes=10**6, segment_bytes=600)
    await spool.open()
    for seq in range(6):
        await spool.append(rows(seq * 2, seq * 2 + 1))
    segments = await spool.seal()
    assert len(segments) > 1
    assert spool.segments == len(segments)
    replayed = Rows()
    for segment in segments:
        replayed.extend(await spool.read(segment))
    assert [r[3] for r in replayed.telemetry] == list(range(12))
    for segment in segments:
        await spool.remove(segment)
    assert spool.empty
    assert not segment_files(tmp_path)


async def test_full_spool_refuses_but_an_empty_one_takes_any_batch(tmp_path: Path) -> None:
    """Test the byte limit: the first batch always fits, the next one does not."""
    spool = Spool(tmp_path, max_bytes=10)
    await spool.open()
    size = await spool.append(rows(*range(50)))
    assert size > 10
    assert spool.size_bytes == size
    with pytest.raises(SpoolFull):
        await spool.append(rows(51))
    assert spool.size_bytes == size


async def test_reopened_spool_finds_what_an_earlier_run_left(tmp_path: Path) -> None:
    """Test that segments survive a restart and new appends never reuse their files."""
    first = Spool(tmp_path, max_bytes=10**6)
    await first.open()
    await first.append(rows(1))
    await first.close()

    second = Spool(tmp_path, max_bytes=10**6)
    await second.open()
    assert second.segments == 1
    assert second.size_bytes == first.size_bytes
    await second.append(rows(2))
    segments = await second.seal()
    assert len(segments) == 2
    assert [r.telemetry[0][3] for r in [await second.read(s) for s in segments]] == [1, 2]


async def test_torn_last_line_is_skipped_and_corrupt_lines_kept_aside(tmp_path: Path) -> None:
    """Test that a crash mid-append loses only the unacknowledged line and garbage is not deleted."""
    spool = Spool(tmp_path, max_bytes=10**6)
    await spool.open()
    await spool.append(rows(1))
    await spool.close()
    (path,) = segment_files(tmp_path)
    tear(path)

    reopened = Spool(tmp_path, max_bytes=10**6)
    await reopened.open()
    (segment,) = await reopened.seal()
    replayed = await reopened.read(segment)
    assert [r[3] for r in replayed.telemetry] == [1]
    assert path.with_suffix(".corrupt").read_bytes() == b'{"garbage": true}\n'
