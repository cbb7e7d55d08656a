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
    let migrator = Migrator::new(source)
        .await
        .map_err(|e| anyhow::anyhow!("loading migrations: {e}"))?;
    migrator
        .run(pool)
        .await
        .map_err(|e| anyhow::anyhow!("running migrations: {e}"))?;
    Ok(())
}
