-- sigil schema, SQLite flavour. Times are seconds since the Unix epoch (UTC) so that the
-- same queries serve SQLite and PostgreSQL without type mapping.

CREATE TABLE identities (
    name            TEXT PRIMARY KEY,
    enabled         BIGINT NOT NULL,  -- 1 or 0; an integer keeps one query for both backends
    changed_at      BIGINT NOT NULL,
    last_issued_at  BIGINT
);

-- A row here means the token was spent. The primary key is what makes a token single-use
-- across every replica.
CREATE TABLE tokens (
    jti             TEXT PRIMARY KEY,
    provisioner     TEXT NOT NULL,
    identity        TEXT NOT NULL,
    expires_at      BIGINT NOT NULL,
    consumed_at     BIGINT NOT NULL
);

CREATE TABLE certificates (
    serial              TEXT PRIMARY KEY,
    issuer_key_id       TEXT NOT NULL,
    identity            TEXT NOT NULL,
    sans                TEXT NOT NULL,
    not_before          BIGINT NOT NULL,
    not_after           BIGINT NOT NULL,
    key_fingerprint     TEXT NOT NULL,
    key_type            TEXT NOT NULL,
    der                 BLOB NOT NULL,
    status              TEXT NOT NULL CHECK (status IN ('active', 'revoked')),
    revoked_at          BIGINT,
    revocation_reason   TEXT,
    token_jti           TEXT UNIQUE REFERENCES tokens (jti),
    provisioner         TEXT,
    renewed_from        TEXT,
    created_at          BIGINT NOT NULL,
    UNIQUE (issuer_key_id, serial)
);
CREATE INDEX certificates_by_identity ON certificates (identity, created_at);
CREATE INDEX certificates_by_created ON certificates (created_at, serial);
CREATE INDEX certificates_revoked ON certificates (issuer_key_id, not_after) WHERE status = 'revoked';
CREATE INDEX certificates_revoked_at ON certificates (revoked_at);

CREATE TABLE audit_events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at          BIGINT NOT NULL,
    action      TEXT NOT NULL,
    actor       TEXT NOT NULL,
    identity    TEXT,
    serial      TEXT,
    detail      TEXT NOT NULL
);

-- Admin keys are stored only as SHA-256 hashes.
CREATE TABLE admin_keys (
    id          TEXT PRIMARY KEY,
    hash        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

-- The newest published CRL per scope, and the counter its numbers are drawn from.
CREATE TABLE crls (
    scope           TEXT PRIMARY KEY,
    last_number     BIGINT NOT NULL,
    number          BIGINT,
    this_update     BIGINT,
    next_update     BIGINT,
    entries         BIGINT,
    der             BLOB
);
