//! Integration tests of the whole system, on the real Postgres and the real Kafka broker.

mod analyst;
mod auth;
mod compose;
mod console;
mod faults;
mod flow;
mod loadgen;
mod observability;
mod query;
mod replay;
mod support;
mod views;
