-- Every issuance inserts one entry into each index of `certificates` and `tokens`, and on
-- SQLite each entry in a random place dirties a page that the commit writes to the WAL and a
-- checkpoint writes again. This drops the indexes that added work and no guarantee:
--
-- * UNIQUE (issuer_key_id, serial) and UNIQUE token_jti restated what the primary keys hold.
--   The serial alone is unique, and a token is single-use because its jti is the key of
--   `tokens`, which an issuance spends in the same transaction that inserts its certificate.
-- * The foreign key from token_jti to tokens held for the same reason; without an index on
--   token_jti it would make deleting a token scan every certificate.
-- * The index on revoked_at served no query.
-- * The single-renewal index now holds renewals only, not every certificate with NULL.
--
-- `tokens` becomes a WITHOUT ROWID table: one b-tree keyed by jti instead of a table plus an
-- index on it. SQLite cannot drop a table constraint, so both tables are rebuilt.

CREATE TABLE tokens_new (
    jti             TEXT PRIMARY KEY,
    provisioner     TEXT NOT NULL,
    identity        TEXT NOT NULL,
    expires_at      BIGINT NOT NULL,
    consumed_at     BIGINT NOT NULL
) WITHOUT ROWID;
INSERT INTO tokens_new (jti, provisioner, identity, expires_at, consumed_at)
    SELECT jti, provisioner, identity, expires_at, consumed_at FROM tokens;

CREATE TABLE certificates_new (
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
    token_jti           TEXT,
    provisioner         TEXT,
    renewed_from        TEXT,
    created_at          BIGINT NOT NULL
);
INSERT INTO certificates_new (serial, issuer_key_id, identity, sans, not_before, not_after,
        key_fingerprint, key_type, der, status, revoked_at, revocation_reason, token_jti,
        provisioner, renewed_from, created_at)
    SELECT serial, issuer_key_id, identity, sans, not_before, not_after, key_fingerprint,
        key_type, der, status, revoked_at, revocation_reason, token_jti, provisioner,
        renewed_from, created_at
    FROM certificates;

DROP TABLE certificates;
DROP TABLE tokens;
ALTER TABLE tokens_new RENAME TO tokens;
ALTER TABLE certificates_new RENAME TO certificates;

CREATE INDEX certificates_by_identity ON certificates (identity, created_at);
CREATE INDEX certificates_by_created ON certificates (created_at, serial);
CREATE INDEX certificates_revoked ON certificates (issuer_key_id, not_after) WHERE status = 'revoked';
-- A certificate may be renewed once: whichever of two renewals of it commits second is refused.
CREATE UNIQUE INDEX certificates_renewed_once ON certificates (renewed_from)
    WHERE renewed_from IS NOT NULL;
