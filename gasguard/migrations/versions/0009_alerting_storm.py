"""Alerting under storm: one incident per silent community or gateway, and the cluster rule's index.

Revision ID: 0009_alerting
Revises: 0003_notify (and needs 0002_alerting's incident kinds)
Create Date: 2026-11-29
"""

from gasguard.db import execute_script

revision = "0009_alerting"
down_revision = "0003_notify"
branch_labels = None
depends_on = ("0002_alerting",)

SCHEMA = r"""
-- A whole community or gateway going silent is one 'offline' incident for the scope, without a household
-- ('offline:community:<code>' or 'offline:gateway:<controller>'), not one per device; each device stays
-- 'unknown' in device_state. The kind is the existing 'offline', so every reader of incidents knows it.
ALTER TABLE incident DROP CONSTRAINT incident_household_unless_cluster;
ALTER TABLE incident ADD CONSTRAINT incident_household_unless_scope
    CHECK (kind IN ('cluster', 'offline') OR household_id IS NOT NULL);
ALTER TABLE incident ADD CONSTRAINT incident_scope_unless_household
    CHECK (household_id IS NOT NULL OR scope IS NOT NULL);
CREATE UNIQUE INDEX incident_one_active_offline_scope_idx ON incident (scope)
    WHERE kind = 'offline' AND household_id IS NULL AND state <> 'CLOSED';

-- The cluster rule counts alarming households per building and community in the recorder's transaction;
-- in an alarm storm that count must start from the scope's households, not from every recent alarm.
CREATE INDEX household_place_idx ON household (community_code, building);
"""


def upgrade() -> None:
    execute_script(SCHEMA)


def downgrade() -> None:
    raise NotImplementedError("alerting storm changes are not downgraded; restore from backup instead")
