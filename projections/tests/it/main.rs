//! The projections' apply path on the real Postgres, each test on a migrated database of its
//! own (`#[sqlx::test]`); the projector with Kafka is tested end to end in `cli/tests/it`.

mod a_new_view;
mod bulk_replay;
mod replay_edges;
