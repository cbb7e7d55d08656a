-- A counter that every revoking transaction advances, and the value each stored CRL covers.
-- The CRL builder compares the two instead of timestamps: a revocation whose transaction
-- commits late, or whose replica's clock is behind, still advances the counter past what the
-- served CRL covers, so it is never missed.
CREATE TABLE counters (
    name    TEXT PRIMARY KEY,
    value   BIGINT NOT NULL
);

ALTER TABLE crls ADD COLUMN revocation_seq BIGINT NOT NULL DEFAULT 0;
