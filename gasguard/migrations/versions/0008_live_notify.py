"""Live updates for the control room: NOTIFY gg_incident <incident id> when what an incident shows changes.

Also the indexes the alarm board reads by.

The registry keeps one LISTEN connection per process and fans the ids out to the browsers' event
streams (`registry.ui.live`). Within one transaction PostgreSQL delivers a repeated (channel, payload)
pair once, so a transaction that touches an incident in several places sends one notification.

Revision ID: 0008_live
Revises: 0002_alerting
Create Date: 2026-11-29
"""

from gasguard.db import execute_script

revision = "0008_live"
down_revision = "0002_alerting"
branch_labels = None
depends_on = None

SCHEMA = r"""
-- The board reads the active incidents in its order (severity, then age) and each one's latest valve command.
CREATE INDEX incident_board_idx ON incident (severity, alarm_received_at, id) WHERE state <> 'CLOSED';
CREATE INDEX valve_command_incident_idx ON valve_command (incident_id, issued_at DESC) WHERE incident_id IS NOT NULL;

CREATE FUNCTION notify_incident(incident_id bigint) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF incident_id IS NOT NULL THEN
        PERFORM pg_notify('gg_incident', incident_id::text);
    END IF;
END $$;

-- The incident row itself: opened, state, severity, valve closed.
CREATE FUNCTION notify_incident_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM notify_incident(NEW.id);
    RETURN NULL;
END $$;
CREATE TRIGGER incident_live AFTER INSERT OR UPDATE ON incident
    FOR EACH ROW EXECUTE FUNCTION notify_incident_row();

-- Rows that carry an incident_id: timeline entries (escalation steps included), valve commands
-- (commanded vs reported: acked, closing, confirmed, failed) and the notifications sent for it.
CREATE FUNCTION notify_incident_child() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM notify_incident(NEW.incident_id);
    RETURN NULL;
END $$;
CREATE TRIGGER incident_event_live AFTER INSERT ON incident_event
    FOR EACH ROW EXECUTE FUNCTION notify_incident_child();
CREATE TRIGGER valve_command_live AFTER INSERT OR UPDATE ON valve_command
    FOR EACH ROW EXECUTE FUNCTION notify_incident_child();
CREATE TRIGGER notification_outbox_live AFTER INSERT OR UPDATE OF status ON notification_outbox
    FOR EACH ROW EXECUTE FUNCTION notify_incident_child();

-- A re-sent close command: a new attempt of a command issued for an incident.
CREATE FUNCTION notify_command_attempt() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM notify_incident((SELECT incident_id FROM valve_command WHERE cmd_id = NEW.cmd_id));
    RETURN NULL;
END $$;
CREATE TRIGGER valve_command_attempt_live AFTER INSERT ON valve_command_attempt
    FOR EACH ROW EXECUTE FUNCTION notify_command_attempt();

-- A device of a household with an active incident changed state (a valve fault, going offline):
-- that incident's page shows the household's devices.
CREATE FUNCTION notify_device_state() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    active bigint;
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.status IS NOT DISTINCT FROM OLD.status
       AND NEW.low_battery IS NOT DISTINCT FROM OLD.low_battery
       AND NEW.mains_lost IS NOT DISTINCT FROM OLD.mains_lost THEN
        RETURN NULL;
    END IF;
    FOR active IN
        SELECT i.id FROM device d JOIN incident i ON i.household_id = d.household_id
        WHERE d.id = NEW.device_id AND i.state <> 'CLOSED'
    LOOP
        PERFORM notify_incident(active);
    END LOOP;
    RETURN NULL;
END $$;
CREATE TRIGGER device_state_live AFTER INSERT OR UPDATE ON device_state
    FOR EACH ROW EXECUTE FUNCTION notify_device_state();
"""


def upgrade() -> None:
    """Add the live-update triggers."""
    execute_script(SCHEMA)


def downgrade() -> None:
    """Drop the live-update triggers."""
    execute_script(
        """
        DROP TRIGGER device_state_live ON device_state;
        DROP TRIGGER valve_command_attempt_live ON valve_command_attempt;
        DROP TRIGGER notification_outbox_live ON notification_outbox;
        DROP TRIGGER valve_command_live ON valve_command;
        DROP TRIGGER incident_event_live ON incident_event;
        DROP TRIGGER incident_live ON incident;
        DROP FUNCTION notify_device_state(), notify_command_attempt(), notify_incident_child(),
                      notify_incident_row(), notify_incident(bigint);
        DROP INDEX valve_command_incident_idx;
        DROP INDEX incident_board_idx;
        """
    )
