"""Gateway: one device identity across bearers, Modbus controllers, quarantine and the PSM downlink queue.

Revision ID: 0006_gateway
Revises: 0001
Create Date: 2026-11-29
"""

from gasguard.db import execute_script

revision = "0006_gateway"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMA = r"""
-- Modbus alarm controllers (restaurants, boiler rooms): one poller per row.
CREATE TABLE modbus_controller (
    id               text PRIMARY KEY CHECK (id ~ '^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$'),
    register_map     text NOT NULL,
    transport        text NOT NULL CHECK (transport IN ('tcp', 'rtu')),
    host             text,
    port             integer CHECK (port IS NULL OR port BETWEEN 1 AND 65535),
    serial_port      text,
    baudrate         integer CHECK (baudrate IS NULL OR baudrate > 0),
    unit_id          integer NOT NULL DEFAULT 1 CHECK (unit_id BETWEEN 0 AND 247),
    poll_interval_s  real NOT NULL DEFAULT 1 CHECK (poll_interval_s > 0),
    created_at       timestamptz NOT NULL DEFAULT now(),
    CHECK ((transport = 'tcp') = (host IS NOT NULL AND port IS NOT NULL)),
    CHECK ((transport = 'rtu') = (serial_port IS NOT NULL))
);

-- One identity per device, whatever the bearer: serial and IMEI are in 0001; these add the rest.
ALTER TABLE device
    ADD COLUMN platform            text CHECK (platform IS NULL OR platform IN ('mqtt', 'ctwing', 'onenet', 'modbus')),
    ADD COLUMN platform_device_id  text,
    ADD COLUMN product_id          text,
    ADD COLUMN power_saving        boolean NOT NULL DEFAULT false,
    ADD COLUMN modbus_controller   text REFERENCES modbus_controller(id),
    ADD COLUMN modbus_channel      integer CHECK (modbus_channel IS NULL OR modbus_channel > 0),
    ADD COLUMN modbus_point        text CHECK (modbus_point IS NULL OR modbus_point IN ('alarm', 'valve')),
    ADD CONSTRAINT device_modbus_complete CHECK (
        (modbus_controller IS NULL) = (modbus_channel IS NULL)
        AND (modbus_controller IS NULL) = (modbus_point IS NULL)),
    ADD CONSTRAINT device_platform_id_needs_platform CHECK (platform_device_id IS NULL OR platform IS NOT NULL);
CREATE UNIQUE INDEX device_platform_device_idx ON device (platform, platform_device_id)
    WHERE platform_device_id IS NOT NULL;
CREATE UNIQUE INDEX device_modbus_point_idx ON device (modbus_controller, modbus_channel, modbus_point)
    WHERE modbus_controller IS NOT NULL;

-- Messages from sources the registry does not know: kept with the reason, listed, never treated as normal.
CREATE TABLE quarantine (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at    timestamptz NOT NULL DEFAULT now(),
    source         text NOT NULL,
    identity_kind  text NOT NULL CHECK (identity_kind IN ('serial', 'imei', 'platform_device_id', 'modbus', 'device_id')),
    identity       text NOT NULL,
    reason         text NOT NULL,
    payload        bytea NOT NULL
);
CREATE INDEX quarantine_received_idx ON quarantine (received_at DESC);
CREATE INDEX quarantine_identity_idx ON quarantine (identity_kind, identity);

-- Commands waiting for a power-saving (PSM) NB-IoT device's next uplink.
CREATE TABLE downlink_queue (
    cmd_id                uuid PRIMARY KEY,
    device_id             text NOT NULL REFERENCES device(id),
    platform              text NOT NULL CHECK (platform IN ('ctwing', 'onenet')),
    command               text NOT NULL CHECK (command IN ('close', 'self_test')),
    queued_at             timestamptz NOT NULL DEFAULT now(),
    expires_at            timestamptz NOT NULL,
    expected_delivery_at  timestamptz,
    state                 text NOT NULL DEFAULT 'queued'
                          CHECK (state IN ('queued', 'delivered', 'expired', 'failed')),
    delivered_at          timestamptz,
    platform_command_id   text,
    last_error            text,
    CHECK (expires_at > queued_at),
    CHECK ((state = 'delivered') = (delivered_at IS NOT NULL))
);
CREATE INDEX downlink_queue_pending_idx ON downlink_queue (device_id, queued_at) WHERE state = 'queued';
CREATE INDEX downlink_queue_expiry_idx ON downlink_queue (expires_at) WHERE state = 'queued';

-- The gateway (and alerting) reload their in-memory directory when controllers change, as for devices.
CREATE TRIGGER modbus_controller_directory AFTER INSERT OR UPDATE OR DELETE ON modbus_controller
    FOR EACH STATEMENT EXECUTE FUNCTION notify_directory_changed();
"""


def upgrade() -> None:
    execute_script(SCHEMA)


def downgrade() -> None:
    execute_script(
        """
        DROP TABLE downlink_queue;
        DROP TABLE quarantine;
        ALTER TABLE device DROP COLUMN platform, DROP COLUMN platform_device_id, DROP COLUMN product_id,
            DROP COLUMN power_saving, DROP COLUMN modbus_controller, DROP COLUMN modbus_channel,
            DROP COLUMN modbus_point;
        DROP TABLE modbus_controller;
        """
    )
