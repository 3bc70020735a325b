"""Registry authentication, roles, audit log and installation work.

Revision ID: 0004_registry
Revises: 0001
Create Date: 2026-11-29
"""

from gasguard.db import execute_script

revision = "0004_registry"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMA = r"""
-- People (sessions) and machines (bearer tokens) of the registry API.
CREATE TABLE app_user (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username        text NOT NULL UNIQUE CHECK (username ~ '^[A-Za-z0-9_.@\-]{2,64}$'),
    display_name    text NOT NULL,
    role            text NOT NULL CHECK (role IN ('emergency_management', 'duty_operator', 'installer',
                                                  'community_staff', 'housing_bureau', 'admin')),
    community_code  char(12) REFERENCES community(code),
    supplier        text,
    password_hash   text,
    active          boolean NOT NULL DEFAULT true,
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (role <> 'community_staff' OR community_code IS NOT NULL),
    CHECK (role <> 'duty_operator' OR supplier IS NOT NULL)
);

-- Only hashes of session and bearer tokens are stored; the token itself is shown once.
CREATE TABLE user_session (
    token_hash  bytea PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES app_user(id),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz
);
CREATE INDEX user_session_user_idx ON user_session (user_id);

CREATE TABLE api_token (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_hash  bytea NOT NULL UNIQUE,
    user_id     bigint NOT NULL REFERENCES app_user(id),
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz
);

-- Append-only audit log: every change and every read of a resident's full phone number.
CREATE TABLE audit_log (
    id      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text NOT NULL,
    action  text NOT NULL,
    object  text NOT NULL,
    detail  jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_object_idx ON audit_log (object, id);
CREATE INDEX audit_log_at_idx ON audit_log (at);

-- The server's clock, never the client's.
CREATE FUNCTION audit_log_server_time() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.at := now();
    RETURN NEW;
END $$;
CREATE TRIGGER audit_log_server_time BEFORE INSERT ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_server_time();
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();

-- Inputs of the installation queue's priority (轻重缓急): older communities and recorded hazards first.
ALTER TABLE community ADD COLUMN built_year integer CHECK (built_year IS NULL OR built_year BETWEEN 1900 AND 2100);
ALTER TABLE household ADD COLUMN hazard text;
ALTER TABLE household ADD COLUMN updated_at timestamptz;

-- Installation work: one open job per household, assigned to an installer, completed with the kit fitted.
CREATE TABLE installation_job (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    household_id    bigint NOT NULL REFERENCES household(id),
    state           text NOT NULL DEFAULT 'queued' CHECK (state IN ('queued', 'assigned', 'completed', 'cancelled')),
    installer_id    bigint REFERENCES app_user(id),
    note            text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    created_by      text NOT NULL,
    assigned_at     timestamptz,
    completed_at    timestamptz,
    CHECK (state <> 'assigned' OR installer_id IS NOT NULL),
    CHECK ((state = 'completed') = (completed_at IS NOT NULL))
);
CREATE UNIQUE INDEX installation_job_one_open_idx ON installation_job (household_id)
    WHERE state IN ('queued', 'assigned');
CREATE INDEX installation_job_installer_idx ON installation_job (installer_id, state);

ALTER TABLE device ADD COLUMN installation_job_id bigint REFERENCES installation_job(id);
"""


def upgrade() -> None:
    execute_script(SCHEMA)


def downgrade() -> None:
    raise NotImplementedError("the registry schema is not downgraded; restore from backup instead")
