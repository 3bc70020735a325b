"""Notifications: SMS, voice and webhook channels, per-attempt records, delivery receipts.

Revision ID: 0003_notify
Revises: 0001
Create Date: 2026-11-29
"""

from gasguard.db import execute_script

revision = "0003_notify"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMA = r"""
-- Channels and statuses. 'sent' = accepted by the provider; 'delivered' only on a delivery receipt;
-- 'undeliverable' = the receipt said it did not arrive; 'blocked' = a per-number limit stopped it.
ALTER TABLE notification_outbox DROP CONSTRAINT IF EXISTS notification_outbox_channel_check;
ALTER TABLE notification_outbox DROP CONSTRAINT IF EXISTS notification_outbox_status_check;
ALTER TABLE notification_outbox ADD CONSTRAINT notification_outbox_channel_ck
    CHECK (channel IN ('sms', 'voice', 'webhook'));
ALTER TABLE notification_outbox ADD CONSTRAINT notification_outbox_status_ck
    CHECK (status IN ('pending', 'sent', 'delivered', 'failed', 'undeliverable', 'blocked'));
ALTER TABLE notification_outbox
    ADD COLUMN delivered_at    timestamptz,
    ADD COLUMN receipt_code    text,
    ADD COLUMN receipt_at      timestamptz,
    ADD COLUMN reconciled_at   timestamptz,
    -- The job this one stands in for (voice call or operator notice after an SMS could not go out).
    ADD COLUMN fallback_of     bigint REFERENCES notification_outbox(id);
CREATE INDEX notification_outbox_sent_idx ON notification_outbox (sent_at) WHERE status = 'sent';
CREATE INDEX notification_outbox_recipient_idx ON notification_outbox (recipient, template);
CREATE UNIQUE INDEX notification_outbox_one_fallback_idx
    ON notification_outbox (fallback_of, channel, recipient) WHERE fallback_of IS NOT NULL;

-- Every attempt with its own out_id: providers do not deduplicate, so each request is traceable.
CREATE TABLE notification_attempt (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    outbox_id        bigint NOT NULL REFERENCES notification_outbox(id),
    attempt          integer NOT NULL CHECK (attempt > 0),
    out_id           text NOT NULL UNIQUE,
    channel          text NOT NULL CHECK (channel IN ('sms', 'voice', 'webhook')),
    provider         text NOT NULL,
    recipient        text NOT NULL,
    template         text NOT NULL,
    started_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    outcome          text CHECK (outcome IS NULL OR outcome IN ('sent', 'unavailable', 'rejected', 'limited')),
    provider_msg_id  text,
    error            text,
    UNIQUE (outbox_id, attempt)
);
CREATE INDEX notification_attempt_msg_idx ON notification_attempt (provider, provider_msg_id);
CREATE INDEX notification_attempt_limit_idx ON notification_attempt (recipient, template, provider, started_at)
    WHERE outcome = 'sent';

-- Delivery receipts as received (push or poll). A repeated receipt is stored once.
CREATE TABLE notification_receipt (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider         text NOT NULL,
    provider_msg_id  text NOT NULL,
    out_id           text,
    delivered        boolean NOT NULL,
    code             text NOT NULL,
    reported_at      timestamptz,
    received_at      timestamptz NOT NULL DEFAULT now(),
    source           text NOT NULL CHECK (source IN ('push', 'poll')),
    outbox_id        bigint REFERENCES notification_outbox(id),
    UNIQUE (provider, provider_msg_id, delivered, code)
);
"""


def upgrade() -> None:
    execute_script(SCHEMA)


def downgrade() -> None:
    raise NotImplementedError("notifications are not downgraded; restore from backup instead")
