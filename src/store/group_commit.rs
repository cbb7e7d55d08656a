//! Group commit of issuance records.
//!
//! Every issuance writes four rows (token, identity, certificate, audit event) and waits for
//! one durable commit. Written one issuance per transaction, a burst of requests paid for each
//! of them a commit, four statements and their round trips; on SQLite, whose database has one
//! writer at a time, the connections also queued inside SQLite's busy handler, which polls
//! with sleeps of up to 100 ms, and latencies reached seconds.
//!
//! Here one task per server writes all issuance records. It takes every record waiting, up to
//! [`MAX_GROUP`], writes the whole group with one multi-row statement per table in one
//! transaction, commits once, and only then answers each caller: no caller learns that its
//! record is stored before the commit that stores it has returned. A record refused on its own
//! (its token already spent, its identity disabled) leaves no row behind and does not hold up
//! the others.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use sqlx::pool::PoolConnection;
use sqlx::{Acquire, Any, AnyPool, Row};
use tokio::sync::{mpsc, oneshot};

use super::{NewAuditEvent, NewCertificate};
use crate::error::{Error, Result};

/// Most records in one transaction. Larger groups save little once the commit is shared and
/// hold the write lock (which revocations also need) longer.
const MAX_GROUP: usize = 128;
/// Records waiting for the writer before callers wait to enqueue.
const QUEUE: usize = 4 * MAX_GROUP;

struct Job {
    cert: NewCertificate,
    audit: NewAuditEvent,
    done: oneshot::Sender<Result<()>>,
}

/// The handle callers enqueue records through; the writer stops when every handle is gone.
#[derive(Clone)]
pub(super) struct IssuanceWriter {
    jobs: mpsc::Sender<Job>,
}

impl IssuanceWriter {
    /// Starts the writer task on the current runtime. `pool` is the writer's own pool of one
    /// connection; `gate` is the store's SQLite write gate, taken for each group like any
    /// other write transaction.
    pub(super) fn start(pool: AnyPool, gate: Option<Arc<tokio::sync::Mutex<()>>>) -> Self {
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(run(pool, gate, queue));
        IssuanceWriter { jobs }
    }

    /// Records one issuance and returns once it is committed, or with the reason it is not.
    pub(super) async fn record(&self, cert: &NewCertificate, audit: &NewAuditEvent) -> Result<()> {
        let (done, committed) = oneshot::channel();
        let job = Job {
            cert: cert.clone(),
            audit: audit.clone(),
            done,
        };
        self.jobs
            .send(job)
            .await
            .map_err(|_| Error::internal("recording issuance: the writer task has stopped"))?;
        committed
            .await
            .map_err(|_| Error::internal("recording issuance: the writer task dropped it"))?
    }
}

async fn run(
    pool: AnyPool,
    gate: Option<Arc<tokio::sync::Mutex<()>>>,
    mut queue: mpsc::Receiver<Job>,
) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while queue.recv_many(&mut group, MAX_GROUP).await > 0 {
        // Requests whose signatures are being checked on this runtime's threads right now
        // are about to enqueue; letting them run first joins them to this group instead of
        // the next, and a larger group shares its commit among more callers. With nothing
        // else to run, this returns at once.
        tokio::task::yield_now().await;
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let mut refused: Vec<Option<Error>> = group.iter().map(|_| None).collect();
        let turn = match &gate {
            Some(g) => Some(g.clone().lock_owned().await),
            None => None,
        };
        let written = match pool.acquire().await {
            Ok(mut conn) => {
                let written = write_group(&mut conn, &group, &mut refused).await;
                // A connection that failed (a database restart, a lost link) is closed
                // rather than given back; the next group opens another.
                if written.is_err() {
                    conn.close_on_drop();
                }
                written
            }
            Err(e) => Err(e.into()),
        };
        drop(turn);
        for (job, refusal) in group.drain(..).zip(refused) {
            let outcome = match &written {
                // Nothing of the group is stored; every caller may retry.
                Err(e) => Err(Error::new(e.kind, e.code, e.detail.clone())),
                Ok(()) => refusal.map_or(Ok(()), Err),
            };
            // A caller that went away (request timeout) no longer waits; its record stands.
            let _ = job.done.send(outcome);
        }
    }
}

/// `(?, ?), (?, ?), ...` with the `?` of `row` numbered `$1`, `$2`, ... across `rows` rows.
fn values(row: &str, rows: usize) -> String {
    let mut out = String::with_capacity(rows * (row.len() + 16));
    let mut n = 0;
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        for c in row.chars() {
            if c == '?' {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            } else {
                out.push(c);
            }
        }
    }
    out
}

/// The statement inserting `rows` certificates; bind each with [`bind_certificate`].
pub(super) fn insert_certificates(rows: usize) -> String {
    format!(
        "INSERT INTO certificates (serial, issuer_key_id, identity, sans, not_before, \
         not_after, key_fingerprint, key_type, der, status, token_jti, provisioner, \
         renewed_from, created_at) VALUES {}",
        values("(?, ?, ?, ?, ?, ?, ?, ?, ?, 'active', ?, ?, ?, ?)", rows)
    )
}

/// Binds one certificate's values, in the column order of [`insert_certificates`].
pub(super) fn bind_certificate<'q>(
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    cert: &'q NewCertificate,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    q.bind(&cert.serial)
        .bind(&cert.issuer_key_id)
        .bind(&cert.identity)
        .bind(serde_json::to_string(&cert.sans).unwrap_or_else(|_| "[]".into()))
        .bind(cert.not_before)
        .bind(cert.not_after)
        .bind(&cert.key_fingerprint)
        .bind(&cert.key_type)
        .bind(&cert.der)
        .bind(cert.token.as_ref().map(|t| t.jti.clone()))
        .bind(&cert.provisioner)
        .bind(&cert.renewed_from)
        .bind(cert.created_at)
}

fn replayed() -> Error {
    Error::unauthenticated(
        "token-replayed",
        "token has already been used; each token authorizes one certificate",
    )
}

fn disabled(identity: &str) -> Error {
    Error::forbidden(
        "identity-disabled",
        format!(
            "identity {identity:?} is disabled; an operator must enable it before it gets \
             certificates"
        ),
    )
}

/// Writes a group in one transaction and commits it. Records refused on their own are marked
/// in `refused` and leave no row behind.
///
/// Each table gets one multi-row statement per group, whatever its size, which keeps the round
/// trips to the database (on SQLite, hand-offs to the connection's thread) at six per group.
/// The statement texts, one per table and group size, are prepared and cached on the writer's
/// own connection only (when every pooled connection cached them, the server grew past 100 MB
/// under load on SQLite). sqlx keeps the 100 most recently used; group sizes that swing widely
/// under changing load prepare some of them again, one more round trip each.
async fn write_group(
    conn: &mut PoolConnection<Any>,
    group: &[Job],
    refused: &mut [Option<Error>],
) -> Result<()> {
    let mut tx = conn.begin().await?;

    // Step 1: spend the tokens. A token spent before, here or at another replica, or earlier
    // in this group, makes its record a replay. Rows go in jti order, so that replicas
    // spending the same tokens wait for one another in one order instead of deadlocking.
    let jti = |i: usize| group[i].cert.token.as_ref().map(|t| t.jti.as_str());
    let mut spending: Vec<usize> = (0..group.len()).filter(|&i| jti(i).is_some()).collect();
    spending.sort_by_key(|&i| (jti(i), i));
    spending.dedup_by(|later, first| {
        let same = jti(*later) == jti(*first);
        if same {
            refused[*later] = Some(replayed());
        }
        same
    });
    let mut spent: HashSet<String> = HashSet::new();
    if !spending.is_empty() {
        let sql = format!(
            "INSERT INTO tokens (jti, provisioner, identity, expires_at, consumed_at) VALUES {} \
             ON CONFLICT (jti) DO NOTHING RETURNING jti",
            values("(?, ?, ?, ?, ?)", spending.len())
        );
        let mut q = sqlx::query(&sql);
        for &i in &spending {
            let cert = &group[i].cert;
            if let Some(t) = &cert.token {
                q = q
                    .bind(&t.jti)
                    .bind(&t.provisioner)
                    .bind(&cert.identity)
                    .bind(t.expires_at)
                    .bind(cert.created_at);
            }
        }
        for row in q.fetch_all(&mut *tx).await? {
            spent.insert(row.try_get("jti")?);
        }
    }
    for &i in &spending {
        if jti(i).is_some_and(|j| !spent.contains(j)) {
            refused[i] = Some(replayed());
        }
    }

    // Step 2: the identities. The upsert takes each identity's row lock, which orders these
    // issuances against a concurrent identity revocation: either the revocation sees their
    // certificates, or they see the identity disabled. A disabled identity's row is locked but
    // not updated, so it is not returned. Rows go in name order, for the same reason as above.
    let mut names: BTreeMap<&str, i64> = BTreeMap::new();
    for (job, _) in group
        .iter()
        .zip(refused.iter())
        .filter(|(_, r)| r.is_none())
    {
        let at = names.entry(&job.cert.identity).or_insert(0);
        *at = (*at).max(job.cert.created_at);
    }
    let names: Vec<(&str, i64)> = names.into_iter().collect();
    let mut enabled: HashSet<String> = HashSet::new();
    if !names.is_empty() {
        let sql = format!(
            "INSERT INTO identities (name, enabled, changed_at, last_issued_at) VALUES {} \
             ON CONFLICT (name) DO UPDATE SET last_issued_at = excluded.last_issued_at \
             WHERE identities.enabled = 1 RETURNING name",
            values("(?, 1, ?, ?)", names.len())
        );
        let mut q = sqlx::query(&sql);
        for (name, at) in &names {
            q = q.bind(*name).bind(*at).bind(*at);
        }
        for row in q.fetch_all(&mut *tx).await? {
            enabled.insert(row.try_get("name")?);
        }
    }
    // A record refused here had its token spent in step 1; giving the token back leaves no
    // row behind.
    let mut unspend = Vec::new();
    for (i, job) in group.iter().enumerate() {
        if refused[i].is_none() && !enabled.contains(&job.cert.identity) {
            refused[i] = Some(disabled(&job.cert.identity));
            unspend.extend(jti(i));
        }
    }
    if !unspend.is_empty() {
        let sql = format!(
            "DELETE FROM tokens WHERE jti IN ({})",
            values("?", unspend.len())
        );
        let mut q = sqlx::query(&sql);
        for j in &unspend {
            q = q.bind(*j);
        }
        q.execute(&mut *tx).await?;
    }

    // Step 3: the certificates and audit events of the records that stand.
    let kept: Vec<&Job> = group
        .iter()
        .zip(refused.iter())
        .filter(|(_, r)| r.is_none())
        .map(|(job, _)| job)
        .collect();
    if !kept.is_empty() {
        let sql = insert_certificates(kept.len());
        let mut q = sqlx::query(&sql);
        for job in &kept {
            q = bind_certificate(q, &job.cert);
        }
        q.execute(&mut *tx).await?;

        let sql = format!(
            "INSERT INTO audit_events (at, action, actor, identity, serial, detail) VALUES {}",
            values("(?, ?, ?, ?, ?, ?)", kept.len())
        );
        let mut q = sqlx::query(&sql);
        for job in &kept {
            let e = &job.audit;
            q = q
                .bind(job.cert.created_at)
                .bind(e.action)
                .bind(&e.actor)
                .bind(&e.identity)
                .bind(&e.serial)
                .bind(e.detail.to_string());
        }
        q.execute(&mut *tx).await?;
    }

    tx.commit().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::values;

    #[test]
    fn numbers_placeholders_across_rows() {
        assert_eq!(values("(?, 1, ?)", 1), "($1, 1, $2)");
        assert_eq!(
            values("(?, 1, ?)", 3),
            "($1, 1, $2), ($3, 1, $4), ($5, 1, $6)"
        );
        assert_eq!(values("?", 2), "$1, $2");
    }
}
