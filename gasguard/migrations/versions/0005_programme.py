"""Programme administration: rosters, contracts, five-signature slips, prices and ledger, verification, spot checks.

Revision ID: 0005_programme
Revises: 0001
Create Date: 2026-11-29
"""

from gasguard.db import execute_script

revision = "0005_programme"
down_revision = "0001"
branch_labels = None
depends_on = None

SCHEMA = r"""
-- The date gas was connected decides eligibility: connected after the programme end → resident pays all.
ALTER TABLE household ADD COLUMN IF NOT EXISTS gas_connected_on date;

-- Server time and append-only guards of this area (0001's forbid_change is reused).
CREATE FUNCTION programme_server_time() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.recorded_at := now();
    RETURN NEW;
END $$;

-- Roster batches (花名册): one row per imported file; the file's SHA-256 makes re-imports no-ops.
CREATE TABLE roster_batch (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    community_code  char(12) REFERENCES community(code),
    period          date NOT NULL CHECK (extract(day FROM period) = 1),
    due_on          date NOT NULL,
    file_sha256     bytea NOT NULL UNIQUE,
    filename        text NOT NULL,
    row_count       integer NOT NULL CHECK (row_count >= 0),
    inserted        integer NOT NULL,
    updated         integer NOT NULL,
    unchanged       integer NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    recorded_by     text NOT NULL
);
CREATE TRIGGER roster_batch_server_time BEFORE INSERT ON roster_batch
    FOR EACH ROW EXECUTE FUNCTION programme_server_time();
CREATE INDEX roster_batch_period_idx ON roster_batch (period, community_code);

CREATE TABLE roster_entry (
    batch_id      bigint NOT NULL REFERENCES roster_batch(id),
    row_no        integer NOT NULL,
    household_id  bigint NOT NULL REFERENCES household(id),
    PRIMARY KEY (batch_id, row_no)
);
CREATE INDEX roster_entry_household_idx ON roster_entry (household_id);

-- Prices and split ratios are configuration with an effective date (basis points of the price).
CREATE TABLE price_config (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    gas_type        text NOT NULL CHECK (gas_type IN ('NG', 'LPG')),
    item            text NOT NULL,
    effective_from  date NOT NULL,
    price_fen       bigint NOT NULL CHECK (price_fen > 0),
    company_bp      integer NOT NULL CHECK (company_bp >= 0),
    government_bp   integer NOT NULL CHECK (government_bp >= 0),
    resident_bp     integer NOT NULL CHECK (resident_bp >= 0),
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    CHECK (company_bp + government_bp + resident_bp = 10000),
    UNIQUE (gas_type, effective_from)
);
INSERT INTO price_config (gas_type, item, effective_from, price_fen, company_bp, government_bp, resident_bp) VALUES
    ('NG', '燃气专用金属波纹管一米、燃气自闭阀、切断阀、报警器', '2024-03-21', 47000, 4000, 3000, 3000),
    ('LPG', '液化石油气调压阀（含金属包覆管）', '2024-03-21', 22300, 4000, 3000, 3000);

-- Programme targets (乌政办发〔2024〕9号 二、工作目标).
CREATE TABLE programme_target (
    gas_type    text PRIMARY KEY CHECK (gas_type IN ('NG', 'LPG')),
    households  integer NOT NULL CHECK (households > 0),
    deadline    date NOT NULL
);
INSERT INTO programme_target VALUES ('NG', 36000, '2024-12-31'), ('LPG', 4000, '2024-12-31');

-- Contract signed (签订) per household.
CREATE TABLE household_contract (
    household_id      bigint PRIMARY KEY REFERENCES household(id),
    signed_on         date NOT NULL,
    resident_prepaid  boolean NOT NULL DEFAULT false,
    recorded_at       timestamptz NOT NULL DEFAULT now(),
    recorded_by       text NOT NULL
);
CREATE TRIGGER household_contract_server_time BEFORE INSERT ON household_contract
    FOR EACH ROW EXECUTE FUNCTION programme_server_time();

-- Monthly verification runs of the housing bureau.
CREATE TABLE slip_verification (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    month           date NOT NULL CHECK (extract(day FROM month) = 1),
    community_code  char(12) REFERENCES community(code),
    verified_count  integer NOT NULL,
    refused         jsonb NOT NULL DEFAULT '[]'::jsonb,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    recorded_by     text NOT NULL
);
CREATE TRIGGER slip_verification_server_time BEFORE INSERT ON slip_verification
    FOR EACH ROW EXECUTE FUNCTION programme_server_time();
CREATE TRIGGER slip_verification_append_only BEFORE UPDATE OR DELETE ON slip_verification
    FOR EACH ROW EXECUTE FUNCTION forbid_change();

-- Confirmation slips (确认单): one per household, five signatures, verified once.
CREATE TABLE confirmation_slip (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    household_id         bigint NOT NULL UNIQUE REFERENCES household(id),
    installed_on         date NOT NULL,
    month                date GENERATED ALWAYS AS (date_trunc('month', installed_on::timestamp)::date) STORED,
    verify_code          text NOT NULL UNIQUE CHECK (verify_code ~ '^[A-Z2-9]{10}$'),
    recorded_at          timestamptz NOT NULL DEFAULT now(),
    recorded_by          text NOT NULL,
    verification_id      bigint REFERENCES slip_verification(id),
    verified_at          timestamptz,
    CHECK ((verification_id IS NULL) = (verified_at IS NULL))
);
CREATE TRIGGER confirmation_slip_server_time BEFORE INSERT ON confirmation_slip
    FOR EACH ROW EXECUTE FUNCTION programme_server_time();
CREATE INDEX confirmation_slip_month_idx ON confirmation_slip (month);

CREATE TABLE slip_signature (
    slip_id      bigint NOT NULL REFERENCES confirmation_slip(id),
    role         text NOT NULL CHECK (role IN ('community_secretary', 'village_secretary', 'grid_worker',
                                               'installer', 'resident')),
    signer_name  text NOT NULL CHECK (btrim(signer_name) <> ''),
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    recorded_by  text NOT NULL,
    PRIMARY KEY (slip_id, role)
);
CREATE TRIGGER slip_signature_server_time BEFORE INSERT ON slip_signature
    FOR EACH ROW EXECUTE FUNCTION programme_server_time();
CREATE TRIGGER slip_signature_append_only BEFORE UPDATE OR DELETE ON slip_signature
    FOR EACH ROW EXECUTE FUNCTION forbid_change();

-- The database itself refuses to verify a slip without all five signatures, and never un-verifies one.
CREATE FUNCTION slip_verify_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.verified_at IS NOT NULL THEN
        RAISE EXCEPTION 'slip % is already verified', OLD.id;
    END IF;
    IF NEW.verified_at IS NOT NULL
       AND (SELECT count(*) FROM slip_signature s WHERE s.slip_id = NEW.id) < 5 THEN
        RAISE EXCEPTION 'slip % lacks signatures and cannot be verified', NEW.id;
    END IF;
    IF NEW.verified_at IS NOT NULL THEN
        NEW.verified_at := now();
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER confirmation_slip_verify_guard BEFORE UPDATE ON confirmation_slip
    FOR EACH ROW EXECUTE FUNCTION slip_verify_guard();

-- What a slip's household owes, fixed from the price row in force on the installation date.
CREATE TABLE slip_charge (
    slip_id          bigint PRIMARY KEY REFERENCES confirmation_slip(id),
    household_id     bigint NOT NULL REFERENCES household(id),
    gas_type         text NOT NULL CHECK (gas_type IN ('NG', 'LPG')),
    price_config_id  bigint NOT NULL REFERENCES price_config(id),
    resident_pays_all boolean NOT NULL,
    total_fen        bigint NOT NULL CHECK (total_fen > 0),
    company_fen      bigint NOT NULL CHECK (company_fen >= 0),
    government_fen   bigint NOT NULL CHECK (government_fen >= 0),
    resident_fen     bigint NOT NULL CHECK (resident_fen >= 0),
    CHECK (company_fen + government_fen + resident_fen = total_fen)
);
CREATE INDEX slip_charge_household_idx ON slip_charge (household_id);

-- Money movements per household (append-only): collected by the community, paid to the supplier.
CREATE TABLE ledger_entry (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    household_id  bigint NOT NULL REFERENCES household(id),
    gas_type      text NOT NULL CHECK (gas_type IN ('NG', 'LPG')),
    kind          text NOT NULL CHECK (kind IN ('resident_collected', 'resident_paid', 'government_paid')),
    amount_fen    bigint NOT NULL CHECK (amount_fen > 0),
    note          text,
    recorded_at   timestamptz NOT NULL DEFAULT now(),
    recorded_by   text NOT NULL
);
CREATE INDEX ledger_entry_household_idx ON ledger_entry (household_id, id);
CREATE TRIGGER ledger_entry_server_time BEFORE INSERT ON ledger_entry
    FOR EACH ROW EXECUTE FUNCTION programme_server_time();
CREATE TRIGGER ledger_entry_append_only BEFORE UPDATE OR DELETE ON ledger_entry
    FOR EACH ROW EXECUTE FUNCTION forbid_change();

-- 30% spot checks: one draw per month and community, from a recorded seed; never redrawn.
CREATE TABLE spot_check_draw (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    month           date NOT NULL CHECK (extract(day FROM month) = 1),
    community_code  char(12) NOT NULL REFERENCES community(code),
    seed            text NOT NULL CHECK (seed <> ''),
    -- The slips the sample was drawn from, in id order: with the seed, anyone can redo the draw.
    population_ids  bigint[] NOT NULL,
    population      integer NOT NULL CHECK (population = cardinality(population_ids)),
    sample_size     integer NOT NULL CHECK (sample_size >= 0 AND sample_size <= population),
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    recorded_by     text NOT NULL,
    UNIQUE (month, community_code)
);
CREATE TRIGGER spot_check_draw_server_time BEFORE INSERT ON spot_check_draw
    FOR EACH ROW EXECUTE FUNCTION programme_server_time();
CREATE TRIGGER spot_check_draw_append_only BEFORE UPDATE OR DELETE ON spot_check_draw
    FOR EACH ROW EXECUTE FUNCTION forbid_change();

CREATE TABLE spot_check_item (
    draw_id  bigint NOT NULL REFERENCES spot_check_draw(id),
    slip_id  bigint NOT NULL UNIQUE REFERENCES confirmation_slip(id),
    PRIMARY KEY (draw_id, slip_id)
);
CREATE TRIGGER spot_check_item_append_only BEFORE UPDATE OR DELETE ON spot_check_item
    FOR EACH ROW EXECUTE FUNCTION forbid_change();

-- Findings are appended; the latest one per slip counts.
CREATE TABLE spot_check_finding (
    id                      bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    draw_id                 bigint NOT NULL,
    slip_id                 bigint NOT NULL,
    finding                 text NOT NULL CHECK (finding IN ('match', 'discrepancy', 'missing')),
    payable_government_fen  bigint CHECK (payable_government_fen IS NULL OR payable_government_fen >= 0),
    note                    text,
    recorded_at             timestamptz NOT NULL DEFAULT now(),
    recorded_by             text NOT NULL,
    FOREIGN KEY (draw_id, slip_id) REFERENCES spot_check_item (draw_id, slip_id),
    CHECK ((finding = 'discrepancy') = (payable_government_fen IS NOT NULL))
);
CREATE INDEX spot_check_finding_slip_idx ON spot_check_finding (slip_id, id);
CREATE TRIGGER spot_check_finding_server_time BEFORE INSERT ON spot_check_finding
    FOR EACH ROW EXECUTE FUNCTION programme_server_time();
CREATE TRIGGER spot_check_finding_append_only BEFORE UPDATE OR DELETE ON spot_check_finding
    FOR EACH ROW EXECUTE FUNCTION forbid_change();
"""


def upgrade() -> None:
    execute_script(SCHEMA)


def downgrade() -> None:
    raise NotImplementedError("the programme schema is not downgraded; restore from backup instead")
