"""Operator SMS digest: in an alarm storm a duty operator's phone gets one summary per window, not every text.

Revision ID: 0014_operator_digest
Revises: 0013_alerting_behind
Create Date: 2026-11-29
"""

from gasguard.db import execute_script

revision = "0014_operator_digest"
down_revision = "0013_alerting_behind"
branch_labels = None
depends_on = None

SCHEMA = r"""
-- 'digested' = not sent on its own: the number had already been sent its burst of operator texts within the
-- window, so the job was folded into that window's digest SMS (digest_id). The incident itself is untouched.
ALTER TABLE notification_outbox DROP CONSTRAINT notification_outbox_status_ck;
ALTER TABLE notification_outbox ADD CONSTRAINT notification_outbox_status_ck
    CHECK (status IN ('pending', 'sent', 'delivered', 'failed', 'undeliverable', 'blocked', 'digested'));
ALTER TABLE notification_outbox ADD COLUMN digest_id bigint REFERENCES notification_outbox(id);
ALTER TABLE notification_outbox ADD CONSTRAINT notification_outbox_digested_has_digest
    CHECK ((status = 'digested') = (digest_id IS NOT NULL));
-- The digest counts its folded jobs when it is sent.
CREATE INDEX notification_outbox_digest_idx ON notification_outbox (digest_id) WHERE digest_id IS NOT NULL;
-- One digest per number and window (step_key names the window), however many senders fold at once.
CREATE UNIQUE INDEX notification_outbox_one_digest_idx ON notification_outbox (recipient, step_key)
    WHERE template = 'SMS_GG_OPERATOR_DIGEST';
-- The burst check: texts a number was sent (or is being sent) within the window.
CREATE INDEX notification_attempt_recent_idx ON notification_attempt (recipient, started_at) WHERE channel = 'sms';
"""


def upgrade() -> None:
    execute_script(SCHEMA)


def downgrade() -> None:
    raise NotImplementedError("the operator digest is not downgraded; restore from backup instead")
