//! Postgres connections and the schema migrations (the files live in `schema/migrations`).

use crate::DatabaseConfig;
use sqlx::postgres::{PgPool, PgPoolOptions};
use std::time::Duration;

/// The migrations of the event store and the views, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../schema/migrations");

/// Opens a pool; fails fast (5 s) when Postgres is not reachable, and no statement may run
/// longer than 10 s (a stuck query must not hold a connection through a spike).
pub async fn connect(config: &DatabaseConfig) -> Result<PgPool, sqlx::Error> {
    let options = config.connect_options()?.options([("statement_timeout", "10s")]);
    PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
}

/// Applies pending migrations; idempotent.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    MIGRATOR.run(pool).await
}

/// Ready when Postgres answers within 2 s and every migration this binary knows is applied.
pub async fn check_ready(pool: &PgPool) -> Result<(), String> {
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let applied = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query_scalar::<_, Option<i64>>("SELECT max(version) FROM _sqlx_migrations WHERE success").fetch_one(pool),
    )
    .await;
    match applied {
        Err(_) => Err("Postgres did not answer within 2 s".into()),
        Ok(Err(e)) => Err(format!("Postgres is not reachable: {e}")),
        Ok(Ok(v)) if v.unwrap_or(0) < latest => Err(format!(
            "migrations not applied (run `surge migrate`): at {v:?}, need {latest}"
        )),
        Ok(Ok(_)) => Ok(()),
    }
}

/// Samples the pool's connections into `surge_db_pool_connections{pool, state}` every few
/// seconds, until the pool is closed.
pub fn report_pool_usage(pool: PgPool, name: &'static str) {
    tokio::spawn(async move {
        while !pool.is_closed() {
            let (size, idle) = (pool.size() as f64, pool.num_idle() as f64);
            metrics::gauge!("surge_db_pool_connections", "pool" => name, "state" => "idle").set(idle);
            metrics::gauge!("surge_db_pool_connections", "pool" => name, "state" => "busy").set(size - idle);
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });
}

/// Whether a database error means "the database is not there right now" (worth a retry, a
/// 503) rather than a fault of the request or of ours: pool exhausted or closed, connection
/// lost (also mid-message, as when the server crashes), and the server's own SQLSTATE classes
/// 08 (connection exception), 53 (insufficient resources) and 57P (shutting down, crashed,
/// starting up).
pub fn is_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("53") || c.starts_with("57P")),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::is_unavailable;

    #[test]
    fn lost_connections_are_unavailable_and_bad_queries_are_not() {
        assert!(is_unavailable(&sqlx::Error::PoolTimedOut));
        assert!(is_unavailable(&sqlx::Error::Protocol(
            "database: terminating connection due to unexpected postmaster exit".into()
        )));
        assert!(!is_unavailable(&sqlx::Error::RowNotFound));
        assert!(!is_unavailable(&sqlx::Error::ColumnNotFound("x".into())));
    }
}
