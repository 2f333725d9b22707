//! Integration tests of the whole system, on the real Postgres and the real Kafka broker.

mod analyst;
mod auth;
mod checkpoints;
mod compose;
mod console;
mod export;
mod faults;
mod flow;
mod fresh_start;
mod helm;
mod observability;
mod query;
mod replay;
mod safe_reads;
mod support;
mod views;
