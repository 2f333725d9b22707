//! The store's write path on the real Postgres, each test on a migrated database
//! of its own (`#[sqlx::test]`: the store needs no broker).

mod log_reads;
mod write_path;
