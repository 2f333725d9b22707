//! Surge's webhooks: a storefront backend registers an endpoint, and Surge tells it when one of
//! its orders changes status (placed, paid, payment failed, cancelled, expired, refunded) with a
//! signed JSON POST: at least once, in order per order, with retries and a dead-letter state.
//!
//! Owns the webhook tables (`webhook_endpoints`, `webhook_deliveries`,
//! `webhook_fanout_cursor`; all their SQL is in [`tables`]) and the `surge webhooks` process
//! ([`app`]): the [`fanout`] follows the log through `surge-store`'s safe read and queues a
//! delivery per change per subscribed endpoint, in the transaction that moves its cursor; the
//! [`deliverer`] claims due deliveries and sends them through the hardened [`client`]. What is
//! sent is [`notification`]'s, how it is signed [`signature`]'s, where it may go [`address`]'s
//! (SSRF: https and public addresses only unless config allows more, checked at registration
//! and again on every connection). The registration API ([`api`]) is served by the command API.
//! [`error`] is what the workers fail with.
//!
//! It never writes or reads the log's tables itself (only through `surge-store`), never runs in
//! the request path of a command (a slow receiver cannot slow checkout), and depends on no
//! service crate (`surge-command` mounts its routes, not the other way round).
//!
//! Modules import one way: `app` → `deliverer` → `client` → `address`; `app` → `fanout` →
//! `tables` → `notification`; `api` → `tables`, `address`, `signature`.

pub mod address;
pub mod api;
pub mod app;
pub mod client;
pub mod deliverer;
pub mod error;
pub mod fanout;
pub mod notification;
pub mod signature;
pub mod tables;

pub use address::UrlPolicy;
pub use app::{WebhooksApp, WebhooksConfig};
