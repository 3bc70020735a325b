"""Alerting lifecycle: incident kinds for every rule, on-site records, escalation as data, device state.

Revision ID: 0002_alerting
Revises: 0001
Create Date: 2026-11-29
"""

from gasguard.db import execute_script

revision = "0002_alerting"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMA = r"""
-- Incident kinds for every rule; cluster incidents belong to a building or community, not one household.
ALTER TABLE incident DROP CONSTRAINT incident_kind_check;
ALTER TABLE incident ADD CONSTRAINT incident_kind_check CHECK (kind IN (
    'gas_alarm', 'valve_not_closed', 'device_fault', 'end_of_life', 'offline', 'low_battery', 'mains_loss', 'cluster'));
ALTER TABLE incident ALTER COLUMN household_id DROP NOT NULL;
ALTER TABLE incident ADD CONSTRAINT incident_household_unless_cluster CHECK (kind = 'cluster' OR household_id IS NOT NULL);
-- 'building:<community>:<building>' or 'community:<community>' for clusters; the device for device-state kinds.
ALTER TABLE incident ADD COLUMN scope text;
ALTER TABLE incident ADD COLUMN community_code char(12) REFERENCES community(code);
ALTER TABLE incident ADD COLUMN device_id text REFERENCES device(id);
ALTER TABLE incident ADD COLUMN detail jsonb NOT NULL DEFAULT '{}'::jsonb;
ALTER TABLE incident ADD COLUMN acknowledged_at timestamptz;
ALTER TABLE incident ADD COLUMN resolved_at timestamptz;
ALTER TABLE incident ADD CONSTRAINT incident_cluster_has_scope CHECK (kind <> 'cluster' OR scope IS NOT NULL);
CREATE UNIQUE INDEX incident_one_active_cluster_idx ON incident (scope) WHERE kind = 'cluster' AND state <> 'CLOSED';
CREATE INDEX incident_alarm_recent_idx ON incident (alarm_received_at) WHERE kind = 'gas_alarm';

-- Device catalogue: thresholds the health rules read.
ALTER TABLE device_model ADD COLUMN low_battery_pct smallint NOT NULL DEFAULT 20
    CHECK (low_battery_pct BETWEEN 0 AND 100);
ALTER TABLE device_model ADD COLUMN offline_factor real NOT NULL DEFAULT 1.5 CHECK (offline_factor >= 1);

-- Cluster rule: this many distinct households alarming in one scope within the window.
CREATE TABLE cluster_policy (
    scope           text PRIMARY KEY CHECK (scope IN ('building', 'community')),
    window_s        integer NOT NULL CHECK (window_s > 0),
    min_households  integer NOT NULL CHECK (min_households >= 2)
);
INSERT INTO cluster_policy VALUES ('building', 600, 3), ('community', 600, 5);

-- What alerting last concluded about each device (never "normal" for a silent device).
CREATE TABLE device_state (
    device_id    text PRIMARY KEY REFERENCES device(id),
    status       text NOT NULL CHECK (status IN ('normal', 'alarm', 'fault', 'end_of_life', 'unknown')),
    low_battery  boolean NOT NULL DEFAULT false,
    mains_lost   boolean NOT NULL DEFAULT false,
    last_seen_at timestamptz,
    since        timestamptz NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- On-site records: who was there, when, the reading, cause, action, and whether the valve was reopened.
CREATE TABLE incident_on_site_record (
    id                      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    incident_id             bigint NOT NULL REFERENCES incident(id),
    technician              text NOT NULL CHECK (technician <> ''),
    arrived_at              timestamptz NOT NULL,
    detector_lel            real NOT NULL CHECK (detector_lel BETWEEN 0 AND 100),
    cause                   text NOT NULL CHECK (cause <> ''),
    action                  text NOT NULL CHECK (action <> ''),
    valve_reopened_on_site  boolean NOT NULL,
    resident_present        boolean NOT NULL,
    notes                   text,
    recorded_by             text NOT NULL,
    recorded_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX incident_on_site_record_incident_idx ON incident_on_site_record (incident_id);
CREATE TRIGGER incident_on_site_record_append_only BEFORE UPDATE OR DELETE ON incident_on_site_record
    FOR EACH ROW EXECUTE FUNCTION forbid_change();

-- Escalation as data. Steps per severity, timed from the incident's start; the last step with
-- repeat_every_s repeats until someone acknowledges. Roles: resident, operator_a, operator_b,
-- supervisor, emergency (SMS), emergency_webhook.
CREATE TABLE escalation_policy_step (
    severity        text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    step            integer NOT NULL CHECK (step >= 0),
    after_s         integer NOT NULL CHECK (after_s >= 0),
    roles           text[] NOT NULL,
    repeat_every_s  integer CHECK (repeat_every_s IS NULL OR repeat_every_s > 0),
    PRIMARY KEY (severity, step)
);
INSERT INTO escalation_policy_step (severity, step, after_s, roles, repeat_every_s) VALUES
    ('critical', 0, 0,   '{resident,operator_a}', NULL),
    ('critical', 1, 300, '{resident,operator_a,operator_b,supervisor}', NULL),
    ('critical', 2, 900, '{operator_a,operator_b,supervisor,emergency,emergency_webhook}', 300),
    ('warning',  0, 0,   '{resident,operator_a}', NULL),
    ('warning',  1, 300, '{resident,operator_a,operator_b,supervisor}', NULL),
    ('warning',  2, 900, '{operator_a,operator_b,supervisor,emergency,emergency_webhook}', 300),
    ('info',     0, 0,   '{operator_a}', NULL),
    ('info',     1, 86400, '{operator_a,supervisor}', NULL);

-- Escalation timers live here: claimed with FOR UPDATE SKIP LOCKED, so two engines never fire a
-- step twice and a restart resumes where it was.
CREATE TABLE escalation (
    incident_id     bigint PRIMARY KEY REFERENCES incident(id),
    severity        text NOT NULL CHECK (severity IN ('info', 'warning', 'critical')),
    started_at      timestamptz NOT NULL DEFAULT now(),
    next_step       integer NOT NULL DEFAULT 0,
    round           integer NOT NULL DEFAULT 0,
    next_step_at    timestamptz NOT NULL DEFAULT now(),
    steps_fired     integer NOT NULL DEFAULT 0,
    stopped_at      timestamptz,
    stopped_reason  text
);
CREATE INDEX escalation_due_idx ON escalation (next_step_at) WHERE stopped_at IS NULL;

CREATE FUNCTION notify_escalation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('gg_escalation', '');
    RETURN NULL;
END $$;
CREATE TRIGGER escalation_wake AFTER INSERT ON escalation
    FOR EACH STATEMENT EXECUTE FUNCTION notify_escalation();

-- Outbox: an escalation step may text the same person again, once per step and round.
ALTER TABLE notification_outbox ADD COLUMN step_key text NOT NULL DEFAULT '';
ALTER TABLE notification_outbox DROP CONSTRAINT notification_outbox_incident_id_template_recipient_key;
ALTER TABLE notification_outbox ADD CONSTRAINT notification_outbox_once_per_step
    UNIQUE (incident_id, template, recipient, step_key);
"""


def upgrade() -> None:
    """Apply the alerting lifecycle schema."""
    execute_script(SCHEMA)


def downgrade() -> None:
    """Not supported; restore from backup instead."""
    raise NotImplementedError("alerting lifecycle schema is not downgraded; restore from backup instead")
