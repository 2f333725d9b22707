//! Integration tests of the webhooks on the real Postgres, the real command API and real HTTP
//! receivers on loopback (allowed by config here, as it is nowhere by default).

mod delivery;
mod registration;
mod support;
