-- Every issuance inserts one entry into each index of `certificates` and `tokens`. This drops
-- the indexes that added work and no guarantee:
--
-- * UNIQUE (issuer_key_id, serial) and UNIQUE token_jti restated what the primary keys hold.
--   The serial alone is unique, and a token is single-use because its jti is the key of
--   `tokens`, which an issuance spends in the same transaction that inserts its certificate.
-- * The foreign key from token_jti to tokens held for the same reason; without an index on
--   token_jti it would make deleting a token scan every certificate.
-- * The index on revoked_at served no query.
-- * The single-renewal index now holds renewals only, not every certificate with NULL.

ALTER TABLE certificates
    DROP CONSTRAINT certificates_issuer_key_id_serial_key,
    DROP CONSTRAINT certificates_token_jti_fkey,
    DROP CONSTRAINT certificates_token_jti_key;
DROP INDEX certificates_revoked_at;
DROP INDEX certificates_renewed_once;
-- A certificate may be renewed once: whichever of two renewals of it commits second is refused.
CREATE UNIQUE INDEX certificates_renewed_once ON certificates (renewed_from)
    WHERE renewed_from IS NOT NULL;
