"""Initial schema: places, households, device catalogue and devices, links, telemetry, commands, incidents.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from alembic import op
from sqlalchemy import text

from gasguard.db import execute_script

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

SCHEMA = r"""
-- Places. Codes are the 12-digit statistical division codes (domain §6.1); names are display only.
CREATE TABLE town (
    code        char(12) PRIMARY KEY CHECK (code ~ '^[0-9]{12}$'),
    name        text NOT NULL
);

CREATE TABLE community (
    code        char(12) PRIMARY KEY CHECK (code ~ '^[0-9]{12}$'),
    town_code   char(12) NOT NULL REFERENCES town(code),
    name        text NOT NULL,
    -- Only the county and town codes are verified; community codes in demo data are made up.
    synthetic   boolean NOT NULL DEFAULT false
);

CREATE TABLE household (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    community_code  char(12) NOT NULL REFERENCES community(code),
    building        text NOT NULL,
    unit            text NOT NULL,
    room            text NOT NULL,
    gas_type        text NOT NULL CHECK (gas_type IN ('NG', 'LPG')),
    supplier        text NOT NULL,
    resident_name   text,
    resident_phone  text CHECK (resident_phone IS NULL OR resident_phone ~ '^1[3-9][0-9]{9}$'),
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (community_code, building, unit, room)
);

-- Device catalogue: set points, heartbeat and confirmation timeout are per model, never hard-coded.
CREATE TABLE device_model (
    id                       text PRIMARY KEY,
    manufacturer             text NOT NULL,
    model                    text NOT NULL,
    kind                     text NOT NULL CHECK (kind IN ('alarm', 'shutoff_valve', 'self_closing_valve', 'hose', 'regulator')),
    gas_type                 text NOT NULL CHECK (gas_type IN ('NG', 'LPG')),
    low_alarm_lel            real CHECK (low_alarm_lel IS NULL OR low_alarm_lel BETWEEN 0 AND 100),
    high_alarm_lel           real CHECK (high_alarm_lel IS NULL OR high_alarm_lel BETWEEN 0 AND 100),
    heartbeat_s              integer CHECK (heartbeat_s IS NULL OR heartbeat_s > 0),
    close_confirm_timeout_s  integer CHECK (close_confirm_timeout_s IS NULL OR close_confirm_timeout_s > 0),
    service_life_years       integer NOT NULL CHECK (service_life_years > 0),
    bearer                   text,
    UNIQUE (manufacturer, model)
);

CREATE TABLE device (
    id               text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$'),
    household_id     bigint NOT NULL REFERENCES household(id),
    model_id         text NOT NULL REFERENCES device_model(id),
    serial           text NOT NULL UNIQUE,
    imei             text UNIQUE,
    manufactured_on  date,
    installed_on     date,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX device_household_idx ON device (household_id);

-- Which valve(s) an alarm closes.
CREATE TABLE alarm_valve_link (
    alarm_id  text NOT NULL REFERENCES device(id),
    valve_id  text NOT NULL REFERENCES device(id),
    PRIMARY KEY (alarm_id, valve_id)
);
CREATE INDEX alarm_valve_link_valve_idx ON alarm_valve_link (valve_id);

-- alerting keeps an in-memory directory; it reloads when any of these change.
CREATE FUNCTION notify_directory_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gg_directory', TG_TABLE_NAME);
    RETURN NULL;
END $$;
CREATE TRIGGER household_directory AFTER INSERT OR UPDATE OR DELETE ON household
    FOR EACH STATEMENT EXECUTE FUNCTION notify_directory_changed();
CREATE TRIGGER device_directory AFTER INSERT OR UPDATE OR DELETE ON device
    FOR EACH STATEMENT EXECUTE FUNCTION notify_directory_changed();
CREATE TRIGGER device_model_directory AFTER INSERT OR UPDATE OR DELETE ON device_model
    FOR EACH STATEMENT EXECUTE FUNCTION notify_directory_changed();
CREATE TRIGGER alarm_valve_link_directory AFTER INSERT OR UPDATE OR DELETE ON alarm_valve_link
    FOR EACH STATEMENT EXECUTE FUNCTION notify_directory_changed();

-- Telemetry and events: device time and receive time both kept; seq is -1 when a device sends none.
-- The unique keys make re-delivery idempotent and include the time column, as hypertables require.
CREATE TABLE telemetry (
    device_id       text NOT NULL,
    device_ts       timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    seq             bigint NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('alarm', 'valve')),
    lel             real,
    alarm_state     text,
    valve_position  text,
    power_source    text,
    battery_pct     smallint,
    mains_ok        boolean,
    rssi            integer,
    rsrp            integer,
    snr             real,
    csq             smallint,
    ecl             smallint,
    UNIQUE (device_id, device_ts, seq)
);

CREATE TABLE device_event (
    device_id       text NOT NULL,
    device_ts       timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    seq             bigint NOT NULL,
    type            text NOT NULL CHECK (type IN ('alarm', 'valve')),
    alarm_state     text,
    lel             real,
    valve_position  text,
    cmd_id          uuid,
    UNIQUE (device_id, device_ts, seq, type)
);

-- Anything that could not be taken in, with the reason. Nothing is dropped silently.
CREATE TABLE dead_letter (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at  timestamptz NOT NULL,
    source       text NOT NULL,
    topic        text,
    device_id    text,
    reason       text NOT NULL,
    payload      bytea NOT NULL
);
CREATE INDEX dead_letter_received_idx ON dead_letter (received_at);

-- Incidents: the row is the current state; incident_event is the append-only timeline.
CREATE TABLE incident (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    household_id       bigint NOT NULL REFERENCES household(id),
    kind               text NOT NULL CHECK (kind IN ('gas_alarm', 'valve_not_closed')),
    severity           text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    state              text NOT NULL DEFAULT 'NEW'
                       CHECK (state IN ('NEW', 'NOTIFIED', 'ACKNOWLEDGED', 'DISPATCHED', 'ON_SITE', 'RESOLVED', 'CLOSED')),
    alarm_device_id    text REFERENCES device(id),
    alarm_state        text,
    alarm_lel          real,
    alarm_device_ts    timestamptz,
    -- Server times taken by alerting when it happened (not when the row was written).
    alarm_received_at  timestamptz NOT NULL,
    command_sent_at    timestamptz,
    valve_closed_at    timestamptz,
    opened_at          timestamptz NOT NULL DEFAULT now(),
    closed_at          timestamptz,
    disposition        text CHECK (disposition IS NULL OR disposition IN
                       ('real_leak', 'appliance_fault', 'false_alarm_cooking', 'device_fault', 'test')),
    CHECK ((state = 'CLOSED') = (closed_at IS NOT NULL)),
    CHECK (state <> 'CLOSED' OR disposition IS NOT NULL)
);
-- One active incident per household and kind, enforced here rather than by an in-process lock.
CREATE UNIQUE INDEX incident_one_active_idx ON incident (household_id, kind) WHERE state <> 'CLOSED';
CREATE INDEX incident_state_idx ON incident (state, opened_at);

CREATE TABLE incident_event (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    incident_id  bigint NOT NULL REFERENCES incident(id),
    at           timestamptz NOT NULL DEFAULT now(),
    actor        text NOT NULL,
    type         text NOT NULL,
    detail       jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX incident_event_incident_idx ON incident_event (incident_id, id);

CREATE FUNCTION forbid_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END $$;
CREATE TRIGGER incident_event_append_only BEFORE UPDATE OR DELETE ON incident_event
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER incident_event_no_truncate BEFORE TRUNCATE ON incident_event
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();

-- Valve commands with their attempts: commanded vs reported state.
CREATE TABLE valve_command (
    cmd_id             uuid PRIMARY KEY,
    valve_id           text NOT NULL REFERENCES device(id),
    incident_id        bigint REFERENCES incident(id),
    command            text NOT NULL CHECK (command IN ('close', 'self_test')),
    reason             text NOT NULL,
    issued_at          timestamptz NOT NULL,
    expires_at         timestamptz NOT NULL,
    state              text NOT NULL CHECK (state IN ('sent', 'acked', 'refused', 'confirmed', 'failed', 'expired')),
    acked_at           timestamptz,
    confirmed_at       timestamptz,
    reported_position  text
);
CREATE INDEX valve_command_valve_idx ON valve_command (valve_id, issued_at);

CREATE TABLE valve_command_attempt (
    cmd_id   uuid NOT NULL REFERENCES valve_command(cmd_id),
    attempt  integer NOT NULL CHECK (attempt > 0),
    sent_at  timestamptz NOT NULL,
    PRIMARY KEY (cmd_id, attempt)
);

-- Transactional outbox: jobs commit together with the incident change that caused them.
CREATE TABLE notification_outbox (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    incident_id      bigint REFERENCES incident(id),
    channel          text NOT NULL CHECK (channel IN ('sms')),
    recipient        text NOT NULL,
    recipient_role   text NOT NULL CHECK (recipient_role IN ('resident', 'operator', 'emergency')),
    template         text NOT NULL,
    params           jsonb NOT NULL DEFAULT '{}'::jsonb,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    provider         text,
    provider_msg_id  text,
    out_id           text UNIQUE,
    last_error       text,
    -- One message per incident, template and recipient: a replayed alarm never texts twice.
    UNIQUE (incident_id, template, recipient)
);
CREATE INDEX notification_outbox_due_idx ON notification_outbox (next_attempt_at) WHERE status = 'pending';

CREATE FUNCTION notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gg_outbox', '');
    RETURN NULL;
END $$;
CREATE TRIGGER notification_outbox_wake AFTER INSERT ON notification_outbox
    FOR EACH STATEMENT EXECUTE FUNCTION notify_outbox();
"""

PLAIN_INDEXES = """
CREATE INDEX telemetry_device_ts_idx ON telemetry (device_id, device_ts DESC);
CREATE INDEX telemetry_received_brin ON telemetry USING brin (received_at);
CREATE INDEX device_event_device_ts_idx ON device_event (device_id, device_ts DESC);
"""

TIMESCALE = """
CREATE EXTENSION IF NOT EXISTS timescaledb;
SELECT create_hypertable('telemetry', 'device_ts', chunk_time_interval => interval '1 day');
SELECT create_hypertable('device_event', 'device_ts', chunk_time_interval => interval '7 days');
ALTER TABLE telemetry SET (timescaledb.compress, timescaledb.compress_segmentby = 'device_id',
                           timescaledb.compress_orderby = 'device_ts DESC');
SELECT add_compression_policy('telemetry', interval '7 days');
SELECT add_retention_policy('telemetry', interval '400 days');
"""


def upgrade() -> None:
    execute_script(SCHEMA)
    has_timescale = (
        op.get_bind().execute(text("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")).scalar()
    )
    execute_script(TIMESCALE if has_timescale else PLAIN_INDEXES)


def downgrade() -> None:
    raise NotImplementedError("the initial schema is not downgraded; restore from backup instead")
