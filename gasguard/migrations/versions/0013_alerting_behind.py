"""Alerting watches itself: one system incident ('alerting_behind') per alerting process while it is behind.

Revision ID: 0013_alerting_behind
Revises: 0009_alerting
Create Date: 2026-11-29
"""

from gasguard.db import execute_script

revision = "0013_alerting_behind"
down_revision = "0009_alerting"
branch_labels = None
depends_on = None

SCHEMA = r"""
-- When an alerting process falls behind (its inbound queue or its recorder), its watchdog opens one critical
-- 'alerting_behind' incident without a household, scoped to the process ('system:alerting:<client id>').
ALTER TABLE incident DROP CONSTRAINT incident_kind_check;
ALTER TABLE incident ADD CONSTRAINT incident_kind_check CHECK (kind IN (
    'gas_alarm', 'valve_not_closed', 'device_fault', 'end_of_life', 'offline', 'low_battery', 'mains_loss', 'cluster',
    'alerting_behind'));
ALTER TABLE incident DROP CONSTRAINT incident_household_unless_scope;
ALTER TABLE incident ADD CONSTRAINT incident_household_unless_scope
    CHECK (kind IN ('cluster', 'offline', 'alerting_behind') OR household_id IS NOT NULL);
ALTER TABLE incident ADD CONSTRAINT incident_system_is_scoped
    CHECK (kind <> 'alerting_behind' OR (household_id IS NULL AND scope LIKE 'system:%'));
-- One active incident per process, enforced here (a watchdog restarted while behind finds it again).
CREATE UNIQUE INDEX incident_one_active_system_idx ON incident (scope)
    WHERE kind = 'alerting_behind' AND state <> 'CLOSED';
"""


def upgrade() -> None:
    execute_script(SCHEMA)


def downgrade() -> None:
    raise NotImplementedError("the alerting watchdog's incident kind is not downgraded; restore from backup instead")
