//! The only module with SQL. One interface over SQLite (the embedded default) and PostgreSQL
//! (production, several replicas).
//!
//! Queries go through sqlx's `Any` driver and are written once in the SQL both databases
//! speak: `$n` placeholders, times as integer seconds, `ON CONFLICT`, `RETURNING`. Where a
//! backend has the better tool (PostgreSQL advisory locks) it is used behind this interface.
//!
//! Every write transaction begins with `begin_write` and starts with a write statement.
//! SQLite writers of this process queue in order at a gate there; SQLite then takes its
//! write lock at the first statement, waiting under `busy_timeout` only for another process
//! (a command-line tool on the same file), instead of failing a read-to-write upgrade with
//! `SQLITE_BUSY`.

mod group_commit;
mod migrate;

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};

use crate::error::{Error, Result};

/// Which database is behind the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// How long a request waits for a database connection before it is answered 503.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long SQLite waits for another writer before giving up.
const SQLITE_BUSY_TIMEOUT_MS: u32 = 5000;
/// The advisory lock key PostgreSQL replicas take while building a CRL ("sigilcrl").
const CRL_LOCK_KEY: i64 = 0x7369_6769_6c63_726c;
/// The counter row every revoking transaction advances.
const REVOCATION_SEQ: &str = "revocations";

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite only: write transactions queue here, in arrival order, for the one write lock.
    /// SQLite's own wait for that lock (`busy_timeout`) sleeps and polls, which under load
    /// lets some writers wait seconds while later ones go first.
    write_gate: Option<Arc<tokio::sync::Mutex<()>>>,
    /// The one writer of token-based issuance records, which commits them in groups.
    issuances: group_commit::IssuanceWriter,
}

/// A write transaction, holding its place in SQLite's queue of writers until it ends.
type WriteTx = (
    Option<tokio::sync::OwnedMutexGuard<()>>,
    sqlx::Transaction<'static, sqlx::Any>,
);

/// A token being spent by an issuance.
#[derive(Debug, Clone)]
pub struct SpentToken {
    pub jti: String,
    pub provisioner: String,
    pub expires_at: i64,
}

/// A certificate about to be recorded.
#[derive(Debug, Clone)]
pub struct NewCertificate {
    pub serial: String,
    pub issuer_key_id: String,
    pub identity: String,
    pub sans: Vec<String>,
    pub not_before: i64,
    pub not_after: i64,
    pub key_fingerprint: String,
    pub key_type: String,
    pub der: Vec<u8>,
    pub token: Option<SpentToken>,
    pub provisioner: Option<String>,
    pub renewed_from: Option<String>,
    pub created_at: i64,
}

/// One audit event. `detail` is free-form JSON; it never holds a token, a key or a CSR.
#[derive(Debug, Clone)]
pub struct NewAuditEvent {
    pub action: &'static str,
    pub actor: String,
    pub identity: Option<String>,
    pub serial: Option<String>,
    pub detail: serde_json::Value,
}

/// A certificate as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct CertificateRecord {
    pub serial: String,
    pub identity: String,
    pub sans: Vec<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub not_before: time::OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub not_after: time::OffsetDateTime,
    /// `active`, `revoked` or `expired`, as of the moment it was read.
    pub status: &'static str,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<time::OffsetDateTime>,
    pub revocation_reason: Option<String>,
    pub key_type: String,
    pub key_fingerprint: String,
    pub provisioner: Option<String>,
    pub token_jti: Option<String>,
    pub renewed_from: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: time::OffsetDateTime,
    #[serde(skip)]
    pub der: Vec<u8>,
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: time::OffsetDateTime,
    pub action: String,
    pub actor: String,
    pub identity: Option<String>,
    pub serial: Option<String>,
    pub detail: serde_json::Value,
}

/// Filter and page for listing certificates.
#[derive(Debug, Clone, Default)]
pub struct CertificateQuery {
    pub identity: Option<String>,
    /// `active`, `revoked` or `expired`.
    pub status: Option<String>,
    /// Only certificates that expire before this time.
    pub expires_before: Option<i64>,
    pub limit: i64,
    /// Keyset cursor: (created_at, serial) of the last row of the previous page.
    pub after: Option<(i64, String)>,
}

/// One CRL entry as stored.
pub struct RevokedEntry {
    pub serial: String,
    pub revoked_at: i64,
    pub reason: Option<String>,
}

/// What is known of a published CRL without reading its bytes: replicas poll this often.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CrlInfo {
    pub number: i64,
    pub this_update: i64,
    pub next_update: i64,
    pub entries: i64,
    /// The revocation sequence number this CRL covers: every revocation that took a number up
    /// to this one is listed (or has since expired).
    pub revocation_seq: i64,
}

/// A published CRL.
#[derive(Clone)]
pub struct StoredCrl {
    pub info: CrlInfo,
    pub der: Vec<u8>,
}

/// Outcome of a revocation by serial.
pub struct Revocation {
    pub record: CertificateRecord,
    /// True when this call changed the record (first revocation or a reason upgrade).
    pub changed: bool,
}

/// Held while this replica builds a CRL; other replicas skip their build meanwhile.
pub struct CrlBuildLock {
    _tx: Option<sqlx::Transaction<'static, sqlx::Any>>,
}

fn time_of(secs: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

const CERT_COLUMNS: &str = "serial, identity, sans, not_before, not_after, status, revoked_at, \
     revocation_reason, key_type, key_fingerprint, provisioner, token_jti, renewed_from, \
     created_at, der";

fn cert_from_row(row: &AnyRow, now: i64) -> Result<CertificateRecord> {
    let sans: String = row.try_get("sans")?;
    let stored_status: String = row.try_get("status")?;
    let not_after: i64 = row.try_get("not_after")?;
    let status = match stored_status.as_str() {
        "revoked" => "revoked",
        _ if not_after <= now => "expired",
        _ => "active",
    };
    Ok(CertificateRecord {
        serial: row.try_get("serial")?,
        identity: row.try_get("identity")?,
        sans: serde_json::from_str(&sans).unwrap_or_default(),
        not_before: time_of(row.try_get("not_before")?),
        not_after: time_of(not_after),
        status,
        revoked_at: row.try_get::<Option<i64>, _>("revoked_at")?.map(time_of),
        revocation_reason: row.try_get("revocation_reason")?,
        key_type: row.try_get("key_type")?,
        key_fingerprint: row.try_get("key_fingerprint")?,
        provisioner: row.try_get("provisioner")?,
        token_jti: row.try_get("token_jti")?,
        renewed_from: row.try_get("renewed_from")?,
        created_at: time_of(row.try_get("created_at")?),
        der: row.try_get("der")?,
    })
}

impl Store {
    /// Connects and runs the migrations for the backend the URL names.
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            anyhow::bail!("database URL must start with sqlite: or postgres://");
        };
        let mut opts = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(ACQUIRE_TIMEOUT);
        if backend == Backend::Sqlite {
            opts = opts.after_connect(|conn, _| {
                Box::pin(async move {
                    // WAL lets readers run beside the writer; FULL sync makes a commit durable
                    // before the certificate it records is sent.
                    sqlx::query(&format!(
                        "PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}; \
                         PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                         PRAGMA foreign_keys = ON"
                    ))
                    .execute(conn)
                    .await?;
                    Ok(())
                })
            });
        }
        // The issuance writer has a pool of one connection of its own, beside the others: on
        // SQLite a connection's page cache is dropped whenever another connection has
        // committed since its last transaction, so a writer taking whichever connection came
        // next read the pages of every index it writes from the file again for each group.
        // The pool still checks its connection before each group and replaces an old or
        // broken one.
        let writer_pool = opts.clone().max_connections(1).connect_lazy(url)?;
        let pool = opts
            .connect(url)
            .await
            .map_err(|e| anyhow::anyhow!("connecting to the database: {e}"))?;
        migrate::run(&pool, backend).await?;
        if backend == Backend::Sqlite {
            restrict_sqlite_files(url);
        }
        let write_gate =
            (backend == Backend::Sqlite).then(|| Arc::new(tokio::sync::Mutex::new(())));
        let issuances = group_commit::IssuanceWriter::start(writer_pool, write_gate.clone());
        Ok(Store {
            pool,
            backend,
            write_gate,
            issuances,
        })
    }

    /// Begins a transaction that writes; every write transaction starts here.
    async fn begin_write(&self) -> Result<WriteTx> {
        let turn = match &self.write_gate {
            Some(gate) => Some(gate.clone().lock_owned().await),
            None => None,
        };
        Ok((turn, self.pool.begin().await?))
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Connections open and idle, and the most the pool may open, for metrics.
    pub fn pool_usage(&self) -> (u32, usize, u32) {
        (
            self.pool.size(),
            self.pool.num_idle(),
            self.pool.options().get_max_connections(),
        )
    }

    /// Answers whether the database takes a query now.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Records an issuance: spends the token, checks the identity is enabled, writes the
    /// certificate and its audit event, all in one transaction. Nothing is written unless
    /// all of it is.
    ///
    /// # Errors
    ///
    /// `token-replayed` (401) when the token was already spent, here or at another replica;
    /// `identity-disabled` (403) when the identity has been disabled; `certificate-revoked`
    /// (403) when the certificate a renewal replaces has been revoked.
    ///
    /// Issuances with a token share a transaction and its commit with the issuances waiting
    /// beside them (see `group_commit`); this returns only once the commit holding the record
    /// has returned. Renewals, which also lock the certificate they replace, commit on their
    /// own. Known shortcoming: a burst of renewals therefore pays one commit each; bringing
    /// them into the group writer needs it to lock and check each renewed certificate too.
    pub async fn record_issuance(
        &self,
        cert: &NewCertificate,
        audit: &NewAuditEvent,
    ) -> Result<()> {
        let Some(old) = &cert.renewed_from else {
            return self.issuances.record(cert, audit).await;
        };
        // A renewal: no token to spend, but the certificate it replaces to lock.
        let (_turn, mut tx) = self.begin_write().await?;
        // The identity's row orders this renewal against a concurrent identity revocation:
        // either the revocation sees the new certificate, or this renewal sees the identity
        // disabled. On PostgreSQL the row is locked in share mode, so that issuances for one
        // identity (a fleet starting at once) do not queue behind each other's commits, while
        // a revocation's update waits for all of them and later issuances wait for it.
        // SQLite's single writer orders everything already. `last_issued_at` is therefore
        // written only with the row: updating it per issuance would take the row exclusively.
        sqlx::query(
            "INSERT INTO identities (name, enabled, changed_at, last_issued_at) \
             VALUES ($1, 1, $2, $2) ON CONFLICT (name) DO NOTHING",
        )
        .bind(&cert.identity)
        .bind(cert.created_at)
        .execute(&mut *tx)
        .await?;
        let lock = match self.backend {
            Backend::Postgres => " FOR SHARE",
            Backend::Sqlite => "",
        };
        let enabled: i64 = sqlx::query(&format!(
            "SELECT enabled FROM identities WHERE name = $1{lock}"
        ))
        .bind(&cert.identity)
        .fetch_one(&mut *tx)
        .await?
        .try_get("enabled")?;
        if enabled == 0 {
            return Err(Error::forbidden(
                "identity-disabled",
                format!(
                    "identity {:?} is disabled; an operator must enable it before it gets \
                     certificates",
                    cert.identity
                ),
            ));
        }
        // A renewal checked its certificate before signing; a revocation committed since
        // must still win. The no-op update takes the old row's lock, after the identity's
        // (the order identity revocation uses too, so the two cannot deadlock).
        let still_active = sqlx::query(
            "UPDATE certificates SET status = status WHERE serial = $1 AND status = 'active'",
        )
        .bind(old)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if still_active == 0 {
            return Err(Error::forbidden(
                "certificate-revoked",
                format!(
                    "certificate {old} was revoked while it was being renewed; request a new \
                     one with a token"
                ),
            ));
        }
        let sql = group_commit::insert_certificates(1);
        let inserted = group_commit::bind_certificate(sqlx::query(&sql), cert)
            .execute(&mut *tx)
            .await;
        if let Err(sqlx::Error::Database(db)) = &inserted {
            // The unique key on renewed_from: this certificate was renewed already.
            if db.is_unique_violation() {
                return Err(Error::forbidden(
                    "already-renewed",
                    format!(
                        "certificate {old} has been renewed already and may not renew again; \
                         renew with its newest successor, or request a new one with a token"
                    ),
                ));
            }
        }
        inserted?;
        insert_audit(&mut tx, cert.created_at, audit).await?;
        // Known shortcoming: when the database commits but the connection dies before its
        // answer arrives, the caller gets 503 while the token is spent, and a retry with the
        // same token is refused as replayed; answering such a retry (same jti, same public
        // key) with the recorded certificate would make the retry safe.
        tx.commit().await?;
        Ok(())
    }

    /// Writes one audit event on its own.
    pub async fn audit(&self, at: i64, event: &NewAuditEvent) -> Result<()> {
        let (_turn, mut tx) = self.begin_write().await?;
        insert_audit(&mut tx, at, event).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn certificate(&self, serial: &str, now: i64) -> Result<Option<CertificateRecord>> {
        let row = sqlx::query(&format!(
            "SELECT {CERT_COLUMNS} FROM certificates WHERE serial = $1"
        ))
        .bind(serial)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| cert_from_row(&r, now)).transpose()
    }

    pub async fn identity_enabled(&self, identity: &str) -> Result<bool> {
        let row = sqlx::query("SELECT enabled FROM identities WHERE name = $1")
            .bind(identity)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => r.try_get::<i64, _>("enabled")? != 0,
            None => true,
        })
    }

    /// Revokes one certificate. Revoking again keeps the first date; only an upgrade of the
    /// reason to keyCompromise is recorded.
    pub async fn revoke_certificate(
        &self,
        serial: &str,
        reason: &str,
        now: i64,
        actor: &str,
    ) -> Result<Revocation> {
        let (_turn, mut tx) = self.begin_write().await?;
        let first = sqlx::query(
            "UPDATE certificates SET status = 'revoked', revoked_at = $2, revocation_reason = $3 \
             WHERE serial = $1 AND status = 'active'",
        )
        .bind(serial)
        .bind(now)
        .bind(reason)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let upgraded = if first == 0 && reason == "keyCompromise" {
            sqlx::query(
                "UPDATE certificates SET revocation_reason = 'keyCompromise' \
                 WHERE serial = $1 AND status = 'revoked' \
                 AND (revocation_reason IS NULL OR revocation_reason <> 'keyCompromise')",
            )
            .bind(serial)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        } else {
            0
        };
        let row = sqlx::query(&format!(
            "SELECT {CERT_COLUMNS} FROM certificates WHERE serial = $1"
        ))
        .bind(serial)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Err(Error::not_found(
                "unknown-serial",
                format!("no certificate has serial {serial}"),
            ));
        };
        let record = cert_from_row(&row, now)?;
        let changed = first + upgraded > 0;
        if changed {
            advance_revocation_seq(&mut tx).await?;
            let event = NewAuditEvent {
                action: if first > 0 {
                    "revoke"
                } else {
                    "revoke-reason-upgrade"
                },
                actor: actor.to_owned(),
                identity: Some(record.identity.clone()),
                serial: Some(serial.to_owned()),
                detail: serde_json::json!({ "reason": reason }),
            };
            insert_audit(&mut tx, now, &event).await?;
        }
        tx.commit().await?;
        Ok(Revocation { record, changed })
    }

    /// Disables an identity and revokes all its unexpired certificates. Returns how many
    /// certificates this call revoked.
    ///
    /// # Errors
    ///
    /// `unknown-identity` (404) when no certificate was ever recorded for the identity.
    pub async fn revoke_identity(
        &self,
        identity: &str,
        reason: &str,
        now: i64,
        actor: &str,
    ) -> Result<u64> {
        let (_turn, mut tx) = self.begin_write().await?;
        // The update takes the identity's row lock first, which orders this revocation against
        // concurrent issuances (see record_issuance).
        set_enabled(&mut tx, identity, false, now).await?;
        let revoked = sqlx::query(
            "UPDATE certificates SET status = 'revoked', revoked_at = $2, revocation_reason = $3 \
             WHERE identity = $1 AND status = 'active' AND not_after > $2",
        )
        .bind(identity)
        .bind(now)
        .bind(reason)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let upgraded = if reason == "keyCompromise" {
            sqlx::query(
                "UPDATE certificates SET revocation_reason = 'keyCompromise' \
                 WHERE identity = $1 AND status = 'revoked' AND not_after > $2 \
                 AND (revocation_reason IS NULL OR revocation_reason <> 'keyCompromise')",
            )
            .bind(identity)
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected()
        } else {
            0
        };
        if revoked + upgraded > 0 {
            advance_revocation_seq(&mut tx).await?;
        }
        let event = NewAuditEvent {
            action: "revoke-identity",
            actor: actor.to_owned(),
            identity: Some(identity.to_owned()),
            serial: None,
            detail: serde_json::json!({
                "reason": reason,
                "revoked": revoked,
                "reason_upgraded": upgraded,
            }),
        };
        insert_audit(&mut tx, now, &event).await?;
        tx.commit().await?;
        Ok(revoked)
    }

    /// Enables an identity again. Its revoked certificates stay revoked.
    ///
    /// # Errors
    ///
    /// `unknown-identity` (404) when no certificate was ever recorded for the identity.
    pub async fn enable_identity(&self, identity: &str, now: i64, actor: &str) -> Result<()> {
        let (_turn, mut tx) = self.begin_write().await?;
        set_enabled(&mut tx, identity, true, now).await?;
        let event = NewAuditEvent {
            action: "enable-identity",
            actor: actor.to_owned(),
            identity: Some(identity.to_owned()),
            serial: None,
            detail: serde_json::json!({}),
        };
        insert_audit(&mut tx, now, &event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Lists certificates, newest first, with a keyset cursor.
    pub async fn list_certificates(
        &self,
        q: &CertificateQuery,
        now: i64,
    ) -> Result<Vec<CertificateRecord>> {
        let mut sql = format!("SELECT {CERT_COLUMNS} FROM certificates WHERE 1 = 1");
        let mut n = 0;
        let mut next = || {
            n += 1;
            format!("${n}")
        };
        if q.identity.is_some() {
            sql += &format!(" AND identity = {}", next());
        }
        let now_param = next();
        match q.status.as_deref() {
            Some("active") => sql += &format!(" AND status = 'active' AND not_after > {now_param}"),
            Some("revoked") => sql += " AND status = 'revoked'",
            Some("expired") => {
                sql += &format!(" AND status = 'active' AND not_after <= {now_param}")
            }
            _ => sql += &format!(" AND {now_param} = {now_param}"),
        }
        if q.expires_before.is_some() {
            sql += &format!(" AND not_after < {}", next());
        }
        if q.after.is_some() {
            let (t, s) = (next(), next());
            sql += &format!(" AND (created_at < {t} OR (created_at = {t} AND serial < {s}))");
        }
        sql += &format!(" ORDER BY created_at DESC, serial DESC LIMIT {}", next());

        let mut query = sqlx::query(&sql);
        if let Some(identity) = &q.identity {
            query = query.bind(identity);
        }
        query = query.bind(now);
        if let Some(t) = q.expires_before {
            query = query.bind(t);
        }
        if let Some((t, s)) = &q.after {
            query = query.bind(*t).bind(s);
        }
        let rows = query.bind(q.limit).fetch_all(&self.pool).await?;
        rows.iter().map(|r| cert_from_row(r, now)).collect()
    }

    /// Lists audit events, newest first; `before` is the id of the last event already seen.
    pub async fn list_audit(&self, limit: i64, before: Option<i64>) -> Result<Vec<AuditRecord>> {
        let rows = sqlx::query(
            "SELECT id, at, action, actor, identity, serial, detail FROM audit_events \
             WHERE id < $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(before.unwrap_or(i64::MAX))
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                let detail: String = r.try_get("detail")?;
                Ok(AuditRecord {
                    id: r.try_get("id")?,
                    at: time_of(r.try_get("at")?),
                    action: r.try_get("action")?,
                    actor: r.try_get("actor")?,
                    identity: r.try_get("identity")?,
                    serial: r.try_get("serial")?,
                    detail: serde_json::from_str(&detail).unwrap_or(serde_json::Value::Null),
                })
            })
            .collect()
    }

    pub async fn insert_admin_key(&self, id: &str, hash_hex: &str, now: i64) -> Result<()> {
        let (_turn, mut tx) = self.begin_write().await?;
        sqlx::query("INSERT INTO admin_keys (id, hash, created_at) VALUES ($1, $2, $3)")
            .bind(id)
            .bind(hash_hex)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let event = NewAuditEvent {
            action: "create-admin-key",
            actor: "sigil init".into(),
            identity: None,
            serial: None,
            detail: serde_json::json!({ "admin_key_id": id }),
        };
        insert_audit(&mut tx, now, &event).await?;
        tx.commit().await?;
        Ok(())
    }

    /// (id, SHA-256 hex) of every admin key not revoked.
    pub async fn admin_key_hashes(&self) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query("SELECT id, hash FROM admin_keys WHERE revoked_at IS NULL")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("id")?, r.try_get("hash")?)))
            .collect()
    }

    pub async fn admin_key_count(&self) -> Result<i64> {
        Ok(sqlx::query("SELECT COUNT(*) AS n FROM admin_keys")
            .fetch_one(&self.pool)
            .await?
            .try_get("n")?)
    }

    /// Takes the CRL build lock if no other replica holds it. SQLite has one process, whose
    /// builder is already serialized, so there it always succeeds.
    pub async fn try_crl_build_lock(&self) -> Result<Option<CrlBuildLock>> {
        if self.backend == Backend::Sqlite {
            return Ok(Some(CrlBuildLock { _tx: None }));
        }
        let mut tx = self.pool.begin().await?;
        let got: bool = sqlx::query("SELECT pg_try_advisory_xact_lock($1) AS got")
            .bind(CRL_LOCK_KEY)
            .fetch_one(&mut *tx)
            .await?
            .try_get("got")?;
        Ok(got.then_some(CrlBuildLock { _tx: Some(tx) }))
    }

    /// Draws the next CRL number for `scope`. Numbers only grow, across restarts and
    /// replicas, because they come from one counter row updated atomically.
    pub async fn next_crl_number(&self, scope: &str) -> Result<i64> {
        let (_turn, mut tx) = self.begin_write().await?;
        let n: i64 = sqlx::query(
            "INSERT INTO crls (scope, last_number) VALUES ($1, 1) \
             ON CONFLICT (scope) DO UPDATE SET last_number = crls.last_number + 1 \
             RETURNING last_number",
        )
        .bind(scope)
        .fetch_one(&mut *tx)
        .await?
        .try_get("last_number")?;
        tx.commit().await?;
        Ok(n)
    }

    /// Hands `each` every revoked certificate of one issuer that has not yet expired, row by
    /// row as the database returns them, so that a CRL of a million entries is never held as
    /// database rows too. Returns the revocation sequence number the entries cover.
    pub async fn for_each_revoked(
        &self,
        issuer_key_id: &str,
        now: i64,
        mut each: impl FnMut(RevokedEntry) -> Result<()>,
    ) -> Result<i64> {
        // The counter is read first. A revocation that took a number up to this one has
        // committed, so the entry query below, which starts later, sees it; a revocation
        // still in flight takes a larger number and causes the next build.
        let revocation_seq = self.revocation_seq().await?;
        let mut rows = sqlx::query(
            "SELECT serial, revoked_at, revocation_reason FROM certificates \
             WHERE issuer_key_id = $1 AND status = 'revoked' AND not_after > $2",
        )
        .bind(issuer_key_id)
        .bind(now)
        .fetch(&self.pool);
        while let Some(row) = std::future::poll_fn(|cx| rows.as_mut().poll_next(cx)).await {
            let r = row?;
            each(RevokedEntry {
                serial: r.try_get("serial")?,
                revoked_at: r.try_get("revoked_at")?,
                reason: r.try_get("revocation_reason")?,
            })?;
        }
        Ok(revocation_seq)
    }

    /// Publishes a CRL unless a newer one is already stored. Returns whether it was stored.
    pub async fn store_crl(&self, scope: &str, crl: &StoredCrl) -> Result<bool> {
        let (_turn, mut tx) = self.begin_write().await?;
        let stored = sqlx::query(
            "UPDATE crls SET number = $2, this_update = $3, next_update = $4, entries = $5, \
             der = $6, revocation_seq = $7 WHERE scope = $1 AND (number IS NULL OR number < $2)",
        )
        .bind(scope)
        .bind(crl.info.number)
        .bind(crl.info.this_update)
        .bind(crl.info.next_update)
        .bind(crl.info.entries)
        .bind(&crl.der)
        .bind(crl.info.revocation_seq)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(stored > 0)
    }

    /// The newest published CRL of `scope`, without its bytes.
    pub async fn latest_crl_info(&self, scope: &str) -> Result<Option<CrlInfo>> {
        let row = sqlx::query(
            "SELECT number, this_update, next_update, entries, revocation_seq FROM crls \
             WHERE scope = $1 AND der IS NOT NULL",
        )
        .bind(scope)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(CrlInfo {
                number: r.try_get("number")?,
                this_update: r.try_get("this_update")?,
                next_update: r.try_get("next_update")?,
                entries: r.try_get("entries")?,
                revocation_seq: r.try_get("revocation_seq")?,
            })
        })
        .transpose()
    }

    /// The bytes of the CRL of `scope` numbered `number`; `None` once a newer one replaced it.
    pub async fn crl_der(&self, scope: &str, number: i64) -> Result<Option<Vec<u8>>> {
        let row = sqlx::query("SELECT der FROM crls WHERE scope = $1 AND number = $2")
            .bind(scope)
            .bind(number)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| Ok(r.try_get("der")?)).transpose()
    }

    /// The number of the newest committed revocation, to notice revocations made here or at
    /// other replicas; 0 before the first.
    pub async fn revocation_seq(&self) -> Result<i64> {
        let row = sqlx::query("SELECT value FROM counters WHERE name = $1")
            .bind(REVOCATION_SEQ)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => r.try_get("value")?,
            None => 0,
        })
    }
}

/// Takes the next revocation sequence number inside a revoking transaction. The row lock it
/// takes makes numbers follow commit order, which the CRL builder relies on.
async fn advance_revocation_seq(tx: &mut sqlx::Transaction<'_, sqlx::Any>) -> Result<()> {
    sqlx::query(
        "INSERT INTO counters (name, value) VALUES ($1, 1) \
         ON CONFLICT (name) DO UPDATE SET value = counters.value + 1",
    )
    .bind(REVOCATION_SEQ)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Sets an identity's switch; `unknown-identity` (404) if no certificate was ever recorded
/// for it.
async fn set_enabled(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    identity: &str,
    enabled: bool,
    now: i64,
) -> Result<()> {
    let known = sqlx::query("UPDATE identities SET enabled = $3, changed_at = $2 WHERE name = $1")
        .bind(identity)
        .bind(now)
        .bind(i64::from(enabled))
        .execute(&mut **tx)
        .await?
        .rows_affected();
    if known == 0 {
        return Err(unknown_identity(identity));
    }
    Ok(())
}

fn unknown_identity(identity: &str) -> Error {
    Error::not_found(
        "unknown-identity",
        format!("no certificate was ever issued to identity {identity:?}; check the name"),
    )
}

async fn insert_audit(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    at: i64,
    e: &NewAuditEvent,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_events (at, action, actor, identity, serial, detail) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(at)
    .bind(e.action)
    .bind(&e.actor)
    .bind(&e.identity)
    .bind(&e.serial)
    .bind(e.detail.to_string())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Makes the SQLite database and its journal files readable by their owner only: they hold
/// the audit trail and every identity, which other local users have no business reading.
fn restrict_sqlite_files(url: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or(path);
    if path.is_empty() || path.starts_with(':') {
        return;
    }
    for suffix in ["", "-wal", "-shm"] {
        let file = format!("{path}{suffix}");
        if std::path::Path::new(&file).exists() {
            if let Err(e) = std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
            {
                tracing::warn!(file, error = %e, "could not make the database file private");
            }
        }
    }
}
