//! The stream API against the real client analysts use (`eventstore` 4.0.0), on a real server
//! (port 0) over a database of its own, with events written through the store's write path.

mod access;
mod limits;
mod reads;
mod subscriptions;
mod support;
mod tls;
