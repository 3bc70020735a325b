"""Ingest: drop the two indexes that only repeated the leading columns of the tables' unique keys.

``telemetry (device_id, device_ts DESC)`` and ``device_event (device_id, device_ts DESC)`` serve
nothing the unique indexes ``(device_id, device_ts, seq[, type])`` do not: PostgreSQL scans a B-tree
in either direction, so "this device, newest first" walks the unique index backwards. Every stored
reading paid for the extra index; without it PostgreSQL spends about a quarter less CPU per COPYed
telemetry row (16.7 -> 12.4 us on the 2-core development machine, see docs/benchmarks-ingest.md).
The same holds for TimescaleDB hypertables, whose chunks inherit the unique index.

Revision ID: 0012_ingest
Revises: 0007_ingest
Create Date: 2026-11-29
"""

from alembic import op

revision = "0012_ingest"
down_revision = "0007_ingest"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("DROP INDEX telemetry_device_ts_idx")
    op.execute("DROP INDEX device_event_device_ts_idx")


def downgrade() -> None:
    op.execute("CREATE INDEX telemetry_device_ts_idx ON telemetry (device_id, device_ts DESC)")
    op.execute("CREATE INDEX device_event_device_ts_idx ON device_event (device_id, device_ts DESC)")
