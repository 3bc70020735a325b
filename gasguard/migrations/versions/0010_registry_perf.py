"""Registry at county scale: indexes for the keyset pages, and frozen quarterly settlement statements.

Revision ID: 0010_registry
Revises: 0005_programme
Create Date: 2026-11-29
"""

from gasguard.db import execute_script

revision = "0010_registry"
down_revision = "0005_programme"
branch_labels = None
# The installer-scope index is on 0004's installation_job.
depends_on = "0004_registry"

SCHEMA = r"""
-- GET /incidents pages newest first by (opened_at, id): without this index every page sorted all incidents
-- (49 ms on 5,000). The household variant serves a household's own incident list.
CREATE INDEX incident_page_idx ON incident (opened_at DESC, id DESC);
CREATE INDEX incident_household_page_idx ON incident (household_id, opened_at DESC, id DESC);
-- Scoped household pages (community staff, a supplier's duty operators) walk their own rows in id order.
CREATE INDEX household_community_page_idx ON household (community_code, id);
CREATE INDEX household_supplier_page_idx ON household (supplier, id);
-- An installer's scope is "households with a job of mine": probed per household.
CREATE INDEX installation_job_household_installer_idx ON installation_job (household_id, installer_id);

-- A settled quarter is frozen: its statement is stored as it was paid, and nothing later changes it.
-- Recomputing the quarter afterwards is compared with the stored lines, never written over them.
CREATE TABLE settlement_statement (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    year         integer NOT NULL CHECK (year BETWEEN 2024 AND 2100),
    quarter      integer NOT NULL CHECK (quarter BETWEEN 1 AND 4),
    payable_fen  bigint NOT NULL CHECK (payable_fen >= 0),
    slips        integer NOT NULL CHECK (slips >= 0),
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    recorded_by  text NOT NULL,
    UNIQUE (year, quarter)
);
CREATE TRIGGER settlement_statement_server_time BEFORE INSERT ON settlement_statement
    FOR EACH ROW EXECUTE FUNCTION programme_server_time();
CREATE TRIGGER settlement_statement_append_only BEFORE UPDATE OR DELETE ON settlement_statement
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER settlement_statement_no_truncate BEFORE TRUNCATE ON settlement_statement
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();

-- Names are stored as printed: a later renaming of a community must not change a paid statement.
CREATE TABLE settlement_statement_line (
    statement_id    bigint NOT NULL REFERENCES settlement_statement(id),
    line_no         integer NOT NULL,
    supplier        text NOT NULL,
    gas_type        text NOT NULL CHECK (gas_type IN ('NG', 'LPG')),
    town_code       char(12) NOT NULL,
    town_name       text NOT NULL,
    community_code  char(12) NOT NULL,
    community_name  text NOT NULL,
    slips           integer NOT NULL CHECK (slips >= 0),
    government_fen  bigint NOT NULL,
    adjustment_fen  bigint NOT NULL,
    payable_fen     bigint NOT NULL,
    PRIMARY KEY (statement_id, line_no),
    UNIQUE (statement_id, supplier, gas_type, community_code),
    CHECK (payable_fen = government_fen + adjustment_fen)
);
CREATE TRIGGER settlement_statement_line_append_only BEFORE UPDATE OR DELETE ON settlement_statement_line
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
CREATE TRIGGER settlement_statement_line_no_truncate BEFORE TRUNCATE ON settlement_statement_line
    FOR EACH STATEMENT EXECUTE FUNCTION forbid_change();
"""


def upgrade() -> None:
    execute_script(SCHEMA)


def downgrade() -> None:
    raise NotImplementedError("settlement statements are not downgraded; restore from backup instead")
