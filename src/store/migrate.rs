//! Schema migrations, embedded in the binary so that `sigil serve` needs no files beside it.

use std::borrow::Cow;

use futures_core::future::BoxFuture;
use sqlx::error::BoxDynError;
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::AnyPool;

use super::Backend;

/// (version, description, SQL) per backend, in order.
const SQLITE: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/sqlite/0001_initial.sql"),
    ),
    (
        2,
        "revocation sequence",
        include_str!("../../migrations/sqlite/0002_revocation_seq.sql"),
    ),
    (
        3,
        "single renewal",
        include_str!("../../migrations/sqlite/0003_single_renewal.sql"),
    ),
    (
        4,
        "lean indexes",
        include_str!("../../migrations/sqlite/0004_lean_indexes.sql"),
    ),
];
const POSTGRES: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "revocation sequence",
        include_str!("../../migrations/postgres/0002_revocation_seq.sql"),
    ),
    (
        3,
        "single renewal",
        include_str!("../../migrations/postgres/0003_single_renewal.sql"),
    ),
    (
        4,
        "lean indexes",
        include_str!("../../migrations/postgres/0004_lean_indexes.sql"),
    ),
];

#[derive(Debug)]
struct Embedded(&'static [(i64, &'static str, &'static str)]);

impl MigrationSource<'static> for Embedded {
    fn resolve(self) -> BoxFuture<'static, Result<Vec<Migration>, BoxDynError>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|(v, d, sql)| {
                    Migration::new(
                        *v,
                        Cow::Borrowed(*d),
                        MigrationType::Simple,
                        Cow::Borrowed(*sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// Brings the schema up to date. PostgreSQL replicas starting together serialize on the
/// migrator's advisory lock.
pub async fn run(pool: &AnyPool, backend: Backend) -> anyhow::Result<()> {
    let source = match backend {
        Backend::Sqlite => Embedded(SQLITE),
        Backend::Postgres => Embedded(POSTGRES),
    };
    run_from(pool, source).await
}

async fn run_from(pool: &AnyPool, source: Embedded) -> anyhow::Result<()> {
    let migrator = Migrator::new(source)
        .await
        .map_err(|e| anyhow::anyhow!("loading migrations: {e}"))?;
    migrator
        .run(pool)
        .await
        .map_err(|e| anyhow::anyhow!("running migrations: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use sqlx::Row;

    use super::*;

    async fn count(pool: &AnyPool, sql: &str) -> i64 {
        sqlx::query(sql)
            .fetch_one(pool)
            .await
            .unwrap()
            .try_get(0)
            .unwrap()
    }

    /// A database written by the schema before the table rebuild keeps its rows, and the
    /// rebuilt tables still refuse a spent token and a second renewal.
    #[tokio::test]
    async fn sqlite_rebuild_keeps_rows_and_guarantees() {
        sqlx::any::install_default_drivers();
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}?mode=rwc", dir.path().join("sigil.db").display());
        // One connection, so that the pragma holds where the migrations run, as the server's
        // own connections have it.
        let pool = sqlx::any::AnyPoolOptions::new()
            .max_connections(1)
            .connect(&url)
            .await
            .unwrap();
        sqlx::query("PRAGMA foreign_keys = ON")
            .execute(&pool)
            .await
            .unwrap();
        run_from(&pool, Embedded(&SQLITE[..3])).await.unwrap();

        let cert = "INSERT INTO certificates (serial, issuer_key_id, identity, sans, \
                    not_before, not_after, key_fingerprint, key_type, der, status, token_jti, \
                    renewed_from, created_at) VALUES ($1, 'k', 'svc', '[]', 0, 10, 'f', \
                    'ecdsa-p256', x'30', 'active', $2, $3, 1)";
        sqlx::query("INSERT INTO tokens VALUES ('jti-1', 'ci', 'svc', 10, 1)")
            .execute(&pool)
            .await
            .unwrap();
        for (serial, jti, from) in [("01", Some("jti-1"), None), ("02", None, Some("01"))] {
            sqlx::query(cert)
                .bind(serial)
                .bind(jti)
                .bind(from)
                .execute(&pool)
                .await
                .unwrap();
        }

        run(&pool, Backend::Sqlite).await.unwrap();

        assert_eq!(count(&pool, "SELECT COUNT(*) FROM tokens").await, 1);
        assert_eq!(count(&pool, "SELECT COUNT(*) FROM certificates").await, 2);
        assert_eq!(
            count(
                &pool,
                "SELECT COUNT(*) FROM certificates WHERE serial = '01' AND token_jti = 'jti-1' \
                 AND der = x'30' AND status = 'active'"
            )
            .await,
            1
        );
        let spent_again = sqlx::query("INSERT INTO tokens VALUES ('jti-1', 'ci', 'svc', 10, 2)")
            .execute(&pool)
            .await;
        assert!(spent_again.is_err(), "a spent token was stored twice");
        let renewed_again = sqlx::query(cert)
            .bind("03")
            .bind(None::<String>)
            .bind(Some("01"))
            .execute(&pool)
            .await;
        assert!(renewed_again.is_err(), "certificate 01 renewed twice");
        // Certificates from tokens all have no predecessor; the index allows any number.
        sqlx::query(cert)
            .bind("04")
            .bind(None::<String>)
            .bind(None::<String>)
            .execute(&pool)
            .await
            .unwrap();

        // What each issuance now writes: the table and three indexes.
        let indexes: Vec<String> = sqlx::query(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'certificates' \
             ORDER BY name",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get(0).unwrap())
        .collect();
        assert_eq!(
            indexes,
            [
                "certificates_by_created",
                "certificates_by_identity",
                "certificates_renewed_once",
                "certificates_revoked",
                "sqlite_autoindex_certificates_1",
            ]
        );
    }
}
