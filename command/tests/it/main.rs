//! Integration tests of the write side on the real Postgres and the real Kafka broker.

mod api;
mod buckets;
mod checkout;
mod commit_outcome;
mod contract;
mod relay;
mod shedding;
mod shedding_races;
mod support;
mod upcasting;
mod workers;
