"""A bounded on-disk journal of batches the database could not take; survives a process restart.

Layout: ``<dir>/segment-<n>.jsonl``, numbered in write order. Each line is one batch (see
`ingest.rows.encode_rows`); an append writes one whole line, flushes and ``fsync``s before it returns,
so a batch acknowledged to MQTT after an append is on disk. A new segment's directory entry is
fsynced too. A crash mid-append leaves at most one torn last line, which was never acknowledged and
is skipped on replay. Segments are replayed oldest first and deleted only after their rows are
committed, so a crash during replay repeats rows (which the database's unique keys absorb) but never
loses any. A line that fails to decode anywhere else is kept aside in ``<segment>.corrupt``.

The blocking file work runs in a worker thread; one asyncio lock orders appends, sealing and removal.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ingest.rows import Rows, decode_rows, encode_rows

_LOGGER = logging.getLogger(__name__)

_SEGMENT_RE = re.compile(r"^segment-(\d{12})\.jsonl$")


@dataclass(frozen=True, slots=True)
class Segment:
    """One sealed spool file."""

    number: int
    path: Path
    size: int


class SpoolFull(Exception):
    """The spool has no room for this batch now."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _encode(rows: Rows) -> bytes:
    return json.dumps(encode_rows(rows), separators=(",", ":"), allow_nan=False).encode() + b"\n"


class Spool:
    """Append-only segment files with a byte limit."""

    def __init__(self, directory: Path | str, *, max_bytes: int, segment_bytes: int = 16 * 1024 * 1024) -> None:
        if max_bytes < 1 or segment_bytes < 1:
            raise ValueError("max_bytes and segment_bytes must be positive")
        self._dir = Path(directory)
        self._max_bytes = max_bytes
        self._segment_bytes = segment_bytes
        self._lock = asyncio.Lock()
        self._sealed: list[Segment] = []
        self._active: IO[bytes] | None = None
        self._active_number = 0
        self._active_size = 0
        self._next_number = 1
        self._sealed_bytes = 0
        self._opened = False

    # --- introspection (cheap, loop thread only) ---------------------------------------------------

    @property
    def directory(self) -> Path:
        """Where the segments live."""
        return self._dir

    @property
    def size_bytes(self) -> int:
        """Bytes on disk waiting for replay."""
        return self._sealed_bytes + self._active_size

    @property
    def segments(self) -> int:
        """Segment files waiting for replay (including the one being appended to)."""
        return len(self._sealed) + (1 if self._active_size else 0)

    @property
    def empty(self) -> bool:
        """Whether nothing waits for replay."""
        return self.size_bytes == 0

    @property
    def max_bytes(self) -> int:
        """The byte limit."""
        return self._max_bytes

    def has_room(self, size: int) -> bool:
        """Whether ``size`` more bytes fit; an empty spool always takes one batch, however large."""
        return self.empty or self.size_bytes + size <= self._max_bytes

    # --- lifecycle ------------------------------------------------------------------------------

    async def open(self) -> None:
        """Create the directory and take stock of segments left by an earlier run."""
        async with self._lock:
            await asyncio.to_thread(self._open_sync)

    def _open_sync(self) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        found: list[Segment] = []
        for entry in self._dir.iterdir():
            match = _SEGMENT_RE.match(entry.name)
            if match is None:
                continue
            size = entry.stat().st_size
            if size == 0:
                entry.unlink()
                continue
            found.append(Segment(int(match.group(1)), entry, size))
        found.sort(key=lambda segment: segment.number)
        self._sealed = found
        self._sealed_bytes = sum(segment.size for segment in found)
        self._next_number = (found[-1].number + 1) if found else 1
        self._opened = True
        if found:
            _LOGGER.info(
                "spool %s holds %d segment(s), %d bytes from an earlier run", self._dir, len(found), self.size_bytes
            )

    async def close(self) -> None:
        """Close the active segment (it stays on disk for the next run)."""
        async with self._lock:
            await asyncio.to_thread(self._seal_active_sync)

    # --- appending ------------------------------------------------------------------------------

    async def append(self, rows: Rows) -> int:
        """Durably append one batch; returns its size (raises `SpoolFull` or `OSError`)."""
        data = await asyncio.to_thread(_encode, rows)
        async with self._lock:
            if not self.has_room(len(data)):
                raise SpoolFull(f"spool {self._dir} full ({self.size_bytes} of {self._max_bytes} bytes)")
            await asyncio.to_thread(self._append_sync, data)
        return len(data)

    def _append_sync(self, data: bytes) -> None:
        if not self._opened:
            raise RuntimeError("Spool is not open")
        if self._active is not None and self._active_size >= self._segment_bytes:
            self._seal_active_sync()
        if self._active is None:
            number = self._next_number
            path = self._dir / f"segment-{number:012d}.jsonl"
            self._active = path.open("xb")
            self._active_number = number
            self._active_size = 0
            self._next_number += 1
            _fsync_dir(self._dir)
        start = self._active.tell()
        try:
            self._active.write(data)
            self._active.flush()
            os.fsync(self._active.fileno())
        except OSError:
            # Leave no torn line in front of the next append: cut back, or give the segment up.
            try:
                self._active.truncate(start)
                self._active.seek(start)
                self._active.flush()
            except OSError:
                self._seal_active_sync()
            raise
        self._active_size += len(data)

    def _seal_active_sync(self) -> None:
        active, self._active = self._active, None
        if active is None:
            return
        path = Path(active.name)
        active.close()
        if self._active_size:
            self._sealed.append(Segment(self._active_number, path, self._active_size))
            self._sealed_bytes += self._active_size
        else:
            path.unlink(missing_ok=True)
        self._active_size = 0

    # --- replaying ------------------------------------------------------------------------------

    async def seal(self) -> list[Segment]:
        """Seal the active segment and list every segment waiting for replay, oldest first."""
        async with self._lock:
            if self._active is not None:
                await asyncio.to_thread(self._seal_active_sync)
            return list(self._sealed)

    async def read(self, segment: Segment) -> Rows:
        """All rows of a sealed segment, in append order."""
        return await asyncio.to_thread(self._read_sync, segment)

    def _read_sync(self, segment: Segment) -> Rows:
        rows = Rows()
        corrupt: list[bytes] = []
        for line, complete in _lines(segment.path):
            if not complete:
                _LOGGER.warning(
                    "spool %s ends in a torn line (%d bytes); it was never acknowledged", segment.path, len(line)
                )
                continue
            try:
                rows.extend(decode_rows(json.loads(line)))
            except (ValueError, KeyError, TypeError, IndexError) as err:
                _LOGGER.error("spool %s has an undecodable line (%s); keeping it aside", segment.path, err)  # noqa: TRY400
                corrupt.append(line)
        if corrupt:
            aside = segment.path.with_suffix(".corrupt")
            with aside.open("ab") as file:
                file.writelines(line + b"\n" for line in corrupt)
                file.flush()
                os.fsync(file.fileno())
        return rows

    async def remove(self, segment: Segment) -> None:
        """Delete a segment whose rows are committed."""
        async with self._lock:
            await asyncio.to_thread(self._remove_sync, segment)

    def _remove_sync(self, segment: Segment) -> None:
        segment.path.unlink(missing_ok=True)
        _fsync_dir(self._dir)
        self._sealed = [s for s in self._sealed if s.number != segment.number]
        self._sealed_bytes = sum(s.size for s in self._sealed)


def _lines(path: Path) -> Iterator[tuple[bytes, bool]]:
    """Yield ``(line, complete)``; only a last line without its newline is incomplete."""
    data = path.read_bytes()
    start = 0
    while start < len(data):
        end = data.find(b"\n", start)
        if end == -1:
            yield data[start:], False
            return
        if end > start:
            yield data[start:end], True
        start = end + 1
