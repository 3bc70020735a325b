"""Ingest: hourly device health (messages, last seen, lowest battery, highest LEL per device and hour).

With TimescaleDB a continuous aggregate with a refresh policy (real-time, so the current hour shows
too); without it a plain view over ``telemetry`` served by an expression index on the UTC hour. Both
are called ``device_health_hourly`` with the same columns, so readers never need to know which.

Revision ID: 0007_ingest
Revises: 0001
Create Date: 2026-11-29
"""

from alembic import op
from sqlalchemy import text

from gasguard.db import execute_script

revision = "0007_ingest"
down_revision = "0001"
branch_labels = None
depends_on = None

TIMESCALE = """
CREATE MATERIALIZED VIEW device_health_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT device_id,
       time_bucket(interval '1 hour', device_ts) AS hour,
       count(*)                                  AS messages,
       max(received_at)                          AS last_seen,
       min(battery_pct)                          AS min_battery_pct,
       max(lel)                                  AS max_lel
FROM telemetry
GROUP BY device_id, time_bucket(interval '1 hour', device_ts)
WITH NO DATA;
-- Late readings (devices that were offline, skewed clocks) up to 3 days old are folded in by the policy;
-- the last hour is computed at query time from the hypertable (real-time aggregation).
SELECT add_continuous_aggregate_policy('device_health_hourly',
    start_offset => interval '3 days', end_offset => interval '1 hour', schedule_interval => interval '30 minutes');
CREATE INDEX device_health_hourly_device_idx ON device_health_hourly (device_id, hour DESC);
"""

PLAIN = """
-- The UTC hour of a timestamp, immutable (date_trunc on timestamptz depends on the session time zone).
CREATE FUNCTION gg_utc_hour(ts timestamptz) RETURNS timestamptz
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN date_trunc('hour', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
-- Serves "these hours, all devices" and "this device, these hours" without scanning the table.
CREATE INDEX telemetry_device_hour_idx ON telemetry (gg_utc_hour(device_ts), device_id);
CREATE VIEW device_health_hourly AS
SELECT device_id,
       gg_utc_hour(device_ts) AS hour,
       count(*)               AS messages,
       max(received_at)       AS last_seen,
       min(battery_pct)       AS min_battery_pct,
       max(lel)               AS max_lel
FROM telemetry
GROUP BY device_id, gg_utc_hour(device_ts);
"""

DOWN_TIMESCALE = "DROP MATERIALIZED VIEW device_health_hourly;"
DOWN_PLAIN = """
DROP VIEW device_health_hourly;
DROP INDEX telemetry_device_hour_idx;
DROP FUNCTION gg_utc_hour(timestamptz);
"""


def _has_timescale() -> bool:
    # 0001 installed the extension (and made telemetry a hypertable) exactly when it was available.
    return bool(op.get_bind().execute(text("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")).scalar())


def upgrade() -> None:
    execute_script(TIMESCALE if _has_timescale() else PLAIN)


def downgrade() -> None:
    execute_script(DOWN_TIMESCALE if _has_timescale() else DOWN_PLAIN)
