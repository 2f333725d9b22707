//! Surge's event log and its side tables: the only SQL on `events`, `outbox`,
//! `idempotency_keys`, `reservation_deadlines` and `projection_checkpoints`.
//!
//! Owns the write path ([`append`]): writers lock the streams they will append to
//! ([`append::lock_streams`]), read them ([`append::read_streams_after`]), append with
//! optimistic concurrency (`(stream_id, version)` is unique: a clash is
//! [`StoreError::Conflict`]) together with the events' outbox rows, and commit through
//! [`append::commit`], which finds out whether a commit whose reply was lost took.
//! Beside the events, in the writer's transaction: [`idempotency`] keys (claimed, released,
//! looked up) and reservation [`deadlines`] (written with an order, forgotten with the
//! transition that ends its hold, claimed by the expiry worker), and purchase [`allowances`]
//! (the units each customer holds of an item with a purchase limit).
//!
//! Owns the one correct way to read "everything after position P" ([`position`]): positions
//! are allocated when a writer inserts, not when it commits, so a transaction that took
//! position 995 can commit after another one that took 1000 has committed and been read.
//! A reader that moves its cursor past 1000 would never see 995. [`safe_position`] returns a
//! position below which no event can appear any more, and [`read_all`] reads only up to it.
//! [`bulk`] reads the same way in large pages with the payloads left as JSON text (a replay's
//! rebuild decodes each once, straight into its typed event).
//! [`Subscription`] catches up from a position and then follows, through that same safe read.
//! [`stream_heads`] and [`read_stream`] serve readers that heal by stream version; [`log`]
//! serves operators and analysts (one stream, one checkout, exports with filters, imports, stats);
//! [`checkpoints`] keeps where each projection is in each Kafka partition; [`outbox`] is the
//! relay's queue; [`commit_times`] says when events were committed (PostgreSQL's commit
//! timestamps), for the event-to-view latency of load runs. Every module answers the one
//! [`StoreError`] ([`error`]).
//!
//! It never decides anything and never writes views: what the events mean (aggregates, the
//! checkout decision) is `surge-domain`'s, and it depends on `surge-events` only.

pub mod allowances;
pub mod append;
pub mod bulk;
pub mod checkpoints;
pub mod commit_times;
pub mod deadlines;
pub mod error;
pub mod idempotency;
pub mod log;
pub mod outbox;
pub mod position;
pub mod reads;
pub mod subscription;

pub use error::{is_transient, StoreError};
pub use position::{count_events, read_all, read_stream, safe_position, stream_heads, ReadAll};
pub use subscription::Subscription;
