//! Surge's event log, read by position.
//!
//! Owns the one correct way to read "everything after position P" ([`position`]): positions
//! are allocated when a writer inserts, not when it commits, so a transaction that took
//! position 995 can commit after another one that took 1000 has committed and been read.
//! A reader that moves its cursor past 1000 would never see 995. [`safe_position`] returns a
//! position below which no event can appear any more, and [`read_all`] reads only up to it.
//! [`stream_heads`] and [`read_stream`] serve readers that heal by stream version.
//!
//! It never decides anything and never writes views. (The write path still lives in
//! `surge-command`'s `store` module; it moves here with the store issue.)

pub mod position;

pub use position::{count_events, read_all, read_stream, safe_position, stream_heads, ReadAll, StoreError};
