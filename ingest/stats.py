"""Counters the ingest service keeps, and the immutable snapshot it hands out."""

from __future__ import annotations

from dataclasses import dataclass

from ingest.writer import WriteResult


class Counters:
    """Mutable running totals, bumped on the hot path (plain attributes, no locking: one event loop)."""

    __slots__ = (
        "batches_spooled",
        "batches_written",
        "dead_letters",
        "duplicates",
        "event_rows",
        "ignored",
        "messages_in",
        "rejected_rows",
        "rows_spooled",
        "segments_replayed",
        "telemetry_rows",
    )

    def __init__(self) -> None:
        self.messages_in = 0
        self.ignored = 0
        self.telemetry_rows = 0
        self.event_rows = 0
        self.dead_letters = 0
        self.duplicates = 0
        self.rejected_rows = 0
        self.batches_written = 0
        self.batches_spooled = 0
        self.rows_spooled = 0
        self.segments_replayed = 0

    def add(self, result: WriteResult) -> None:
        """Count the rows of one committed write."""
        self.telemetry_rows += result.telemetry
        self.event_rows += result.events
        self.dead_letters += result.dead_letters
        self.duplicates += result.duplicates
        self.rejected_rows += result.rejected


@dataclass(frozen=True, slots=True)
class IngestStats:
    """A point-in-time view of the ingest service.

    Row counts are of rows committed to PostgreSQL (including ones replayed from the spool);
    ``in_flight`` messages are received but not yet durable, so not yet acknowledged.
    """

    #: Messages received from the broker, of every kind.
    messages_in: int
    #: Protocol messages owned by other services (availability, commands), not stored.
    ignored: int
    telemetry_rows: int
    event_rows: int
    dead_letters: int
    #: Rows the unique keys skipped: re-deliveries of messages already stored.
    duplicates: int
    #: Rows the database refused (stored as dead letters instead).
    rejected_rows: int
    #: Sequence jumps of more than one, and the number of sequence values they skipped.
    seq_gaps: int
    seq_missing: int
    #: Sequence numbers not above the device's last one (duplicates, reordering, device restarts).
    seq_out_of_order: int
    batches_written: int
    batches_spooled: int
    rows_spooled: int
    segments_replayed: int
    spool_bytes: int
    spool_segments: int
    in_flight: int
    database_available: bool
    known_devices: int

    @property
    def rows_out(self) -> int:
        """Every row committed: telemetry, events and dead letters."""
        return self.telemetry_rows + self.event_rows + self.dead_letters

    @property
    def rows_written(self) -> int:
        """Telemetry and event rows committed (dead letters not included)."""
        return self.telemetry_rows + self.event_rows
