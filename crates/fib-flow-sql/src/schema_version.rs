//! Refusing a database migrated by a newer fib-flow.
//!
//! diesel_migrations only runs what is pending and ignores applied versions it does not know,
//! so `setup()` on a database a newer build had migrated used to succeed, and this build then
//! read and wrote a schema it does not understand.

use diesel::backend::Backend;
use diesel::migration::MigrationSource;
use diesel_migrations::{EmbeddedMigrations, MigrationHarness};
use fib_flow_ports::PortError;

/// Fails with [`PortError::SchemaTooNew`] when `conn`'s database has an applied migration that
/// `migrations` does not contain. Run it under the same lock as the migrations themselves.
pub fn check_not_newer<DB, C>(
    backend: &'static str,
    conn: &mut C,
    migrations: &EmbeddedMigrations,
) -> Result<(), PortError>
where
    DB: Backend,
    C: MigrationHarness<DB>,
    EmbeddedMigrations: MigrationSource<DB>,
{
    let known: Vec<String> = MigrationSource::<DB>::migrations(migrations)
        .map_err(|error| {
            PortError::Config(format!(
                "{backend}: cannot list the embedded migrations: {error}"
            ))
        })?
        .iter()
        .map(|migration| migration.name().version().to_string())
        .collect();
    let applied = conn.applied_migrations().map_err(|error| {
        PortError::Config(format!(
            "{backend}: cannot read the applied migrations: {error}"
        ))
    })?;
    let newest_unknown = applied
        .iter()
        .map(ToString::to_string)
        .filter(|version| !known.contains(version))
        .max();
    match newest_unknown {
        None => Ok(()),
        Some(database_version) => Err(PortError::SchemaTooNew {
            backend,
            database_version,
            supported_version: known.iter().max().cloned().unwrap_or_default(),
        }),
    }
}
