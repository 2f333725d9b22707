//! Reads with a count: one stream (forwards or backwards from a revision) and `$all` (forwards
//! or backwards from a position, filtered), page by page so that a long read holds no
//! connection while the client takes its time.
//!
//! `$all` is read only up to a safe position taken when the read starts ([`safe_position`]):
//! an event whose transaction commits late can never appear below what a reader was shown.
//! One stream is read by version: a stream's versions are unique and each writer decides from
//! the committed head, so version n + 1 cannot commit before version n, and a stream read needs
//! no safe position.
//!
//! Every page first checks that the client is still there, and a filtered `$all` read looks at
//! a bounded number of events (`SURGE_STREAM_SCAN_LIMIT`), so that a filter that never matches
//! neither scans the whole log nor outlives its client.

use crate::error::{send, Out, Stop};
use crate::filter::EventFilter;
use crate::recorded::{self, UuidForm};
use crate::request::{AllFrom, Direction, StreamFrom};
use sqlx::PgPool;
use std::time::Duration;
use surge_events::{EventEnvelope, StreamId};
use surge_store::position::ReadAll;
use surge_store::{read_all, read_stream, reads::read_all_backwards, safe_position};

/// Events per page of a read.
const PAGE: i64 = 500;
/// Longest a read waits for writers in flight when it takes its safe position.
pub const SAFE_WAIT: Duration = Duration::from_secs(30);

/// Surge's version of a stream revision (saturating: a revision past any stream reads nothing).
pub fn version_of(revision: u64) -> i64 {
    i64::try_from(revision).unwrap_or(i64::MAX - 1).saturating_add(1)
}

/// A store position of a client's commit position (saturating).
pub fn store_position(commit: u64) -> i64 {
    i64::try_from(commit).unwrap_or(i64::MAX)
}

fn page_size(left: u64) -> i64 {
    i64::try_from(left).unwrap_or(i64::MAX).min(PAGE)
}

/// How a read with a count goes: which way, how many, the id form, and whether the client
/// understands first/last stream position messages (compatibility 1 and above).
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub direction: Direction,
    pub count: u64,
    pub form: UuidForm,
    pub compatibility: u32,
}

/// The current version of `stream` (0: no such stream).
pub async fn stream_head(pool: &PgPool, stream: &StreamId) -> Result<i64, Stop> {
    Ok(surge_store::append::stream_version(pool, stream).await?)
}

/// Up to `count` events of `stream` from `from`; `StreamNotFound` for a stream without events.
pub async fn stream(pool: &PgPool, stream: &StreamId, from: StreamFrom, shape: Shape, out: &Out) -> Result<(), Stop> {
    let Shape {
        direction,
        count,
        form,
        compatibility,
    } = shape;
    let head = stream_head(pool, stream).await?;
    if head == 0 {
        return send(out, recorded::stream_not_found(stream.as_str())).await;
    }
    let mut left = count;
    match direction {
        Direction::Forwards => {
            let mut next = match from {
                StreamFrom::Start => 1,
                StreamFrom::End => head.saturating_add(1),
                StreamFrom::Revision(r) => version_of(r),
            };
            while left > 0 && next <= head {
                if out.is_closed() {
                    return Err(Stop::Gone);
                }
                let to = next.saturating_add(page_size(left) - 1).min(head);
                let events = read_stream(&mut *pool.acquire().await?, stream, next, to).await?;
                let Some(last) = events.last() else { break };
                next = last.version + 1;
                for e in &events {
                    send(out, recorded::event(e, form)).await?;
                    left -= 1;
                }
            }
            if compatibility >= 1 && next > head {
                send(out, recorded::last_stream_position(recorded::revision(head))).await?;
            }
        }
        Direction::Backwards => {
            let mut next = match from {
                StreamFrom::Start => 1,
                StreamFrom::End => head,
                StreamFrom::Revision(r) => version_of(r).min(head),
            };
            while left > 0 && next >= 1 {
                if out.is_closed() {
                    return Err(Stop::Gone);
                }
                let lowest = (next - page_size(left) + 1).max(1);
                let events = read_stream(&mut *pool.acquire().await?, stream, lowest, next).await?;
                if events.is_empty() {
                    break;
                }
                next = lowest - 1;
                for e in events.iter().rev().take(usize::try_from(left).unwrap_or(usize::MAX)) {
                    send(out, recorded::event(e, form)).await?;
                    left -= 1;
                }
            }
            if compatibility >= 1 && next < 1 {
                send(out, recorded::first_stream_position(0)).await?;
            }
        }
    }
    Ok(())
}

/// Up to `count` events of `$all` from `from` that pass `filter`, never past a safe position.
/// Forwards from a position includes the event at it; backwards from a position starts below it.
/// A filtered read looks at no more than `scan_limit` events: then it ends as if it had reached
/// the end, with what it found (the client reads on from there).
pub async fn all(
    pool: &PgPool,
    from: AllFrom,
    filter: Option<&EventFilter>,
    shape: Shape,
    scan_limit: u64,
    out: &Out,
) -> Result<(), Stop> {
    let Shape {
        direction, count, form, ..
    } = shape;
    let up_to = safe_position(&mut *pool.acquire().await?, SAFE_WAIT).await?;
    let mut left = count;
    let limit = if filter.is_some() { scan_limit } else { u64::MAX };
    let mut looked_at: u64 = 0;
    match direction {
        Direction::Forwards => {
            let mut after = match from {
                AllFrom::Start => 0,
                AllFrom::End => return Ok(()),
                AllFrom::Position(p) => store_position(p).saturating_sub(1),
            };
            while left > 0 && after < up_to {
                let Some(size) = next_page(out, looked_at, limit).await? else {
                    break;
                };
                let read = ReadAll {
                    after,
                    up_to,
                    stream_type: None,
                    limit: size,
                };
                let events = read_all(&mut *pool.acquire().await?, &read).await?;
                let Some(last) = events.last() else { break };
                after = last.position;
                looked_at += events.len() as u64;
                for e in passing(filter, events).await? {
                    send(out, recorded::event(&e, form)).await?;
                    left -= 1;
                    if left == 0 {
                        break;
                    }
                }
            }
        }
        Direction::Backwards => {
            let mut before = match from {
                AllFrom::Start => return Ok(()),
                AllFrom::End => up_to.saturating_add(1),
                AllFrom::Position(p) => store_position(p),
            };
            while left > 0 && before > 1 {
                let Some(size) = next_page(out, looked_at, limit).await? else {
                    break;
                };
                let events = read_all_backwards(&mut *pool.acquire().await?, before, up_to, size).await?;
                let Some(last) = events.last() else { break };
                before = last.position;
                looked_at += events.len() as u64;
                for e in passing(filter, events).await? {
                    send(out, recorded::event(&e, form)).await?;
                    left -= 1;
                    if left == 0 {
                        break;
                    }
                }
            }
        }
    }
    if left > 0 && looked_at >= limit {
        metrics::counter!("surge_stream_reads_scan_limited_total").increment(1);
        tracing::debug!(looked_at, "stream API: filtered $all read ended at its scan limit");
    }
    Ok(())
}

/// Before each page of a read: `Gone` when the client has gone (a read that sends nothing
/// would not notice otherwise), a turn for the other tasks of the worker, and how many events
/// the page may hold (`None`: the read has looked at `limit` events).
async fn next_page(out: &Out, looked_at: u64, limit: u64) -> Result<Option<i64>, Stop> {
    if out.is_closed() {
        return Err(Stop::Gone);
    }
    tokio::task::yield_now().await;
    let room = limit.saturating_sub(looked_at);
    Ok((room > 0).then(|| page_size(room)))
}

/// The events of a page that pass `filter`, in order.
async fn passing(filter: Option<&EventFilter>, events: Vec<EventEnvelope>) -> Result<Vec<EventEnvelope>, Stop> {
    let Some(filter) = filter else { return Ok(events) };
    let (events, passes) = filter.select(events).await.map_err(Stop::Failed)?;
    Ok(events
        .into_iter()
        .zip(passes)
        .filter_map(|(e, pass)| pass.then_some(e))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_and_positions_saturate() {
        assert_eq!(version_of(0), 1);
        assert_eq!(version_of(u64::MAX), i64::MAX);
        assert_eq!(store_position(u64::MAX), i64::MAX);
        assert_eq!(page_size(3), 3);
        assert_eq!(page_size(u64::MAX), PAGE);
    }
}
