//! `surge-loadgen` against the real services (started in-process, on port 0) on the real
//! Postgres and Kafka broker, each test on a database and topic prefix of its own.

mod bench;
mod event_to_view;
mod loadgen;
