//! Catch-up subscriptions: the history and then the live log through ONE read path, so there is
//! no switch from "history" to "live" where an event could be lost or sent twice.
//!
//! `$all` follows [`surge_store::Subscription`]: every read stops at a safe position, so an
//! event whose transaction commits late is sent when it commits, in position order, and the
//! cursor never passes it. A full batch is followed by the next read at once; an idle log is
//! looked at every `poll`. The client is told `CaughtUp` when a read first reaches the head, and
//! a filtered subscription gets a checkpoint every `checkpoint_every` events looked at (and at
//! the catch-up), so that it can resume without looking at them again.
//!
//! One stream is followed by version, for the reason given in [`crate::read`].

use crate::error::{send, Out, Stop};
use crate::filter::EventFilter;
use crate::read::{self, store_position, version_of, SAFE_WAIT};
use crate::recorded::{self, UuidForm};
use crate::request::{AllFrom, StreamFrom};
use sqlx::PgPool;
use std::time::Duration;
use surge_events::StreamId;
use surge_store::{read_stream, safe_position, Subscription};

/// Events per read while catching up.
pub const BATCH: i64 = 1000;

/// How a `$all` subscription paces itself: how long an idle one waits before it looks at the
/// log again, and the most events a filtered one looks at without sending the client anything
/// (then it sends a checkpoint).
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    pub poll: Duration,
    pub scan_limit: u64,
}

fn new_subscription_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Waits `poll` for new events, or stops when the client has gone.
async fn idle(out: &Out, poll: Duration) -> Result<(), Stop> {
    if out.is_closed() {
        return Err(Stop::Gone);
    }
    tokio::time::sleep(poll).await;
    Ok(())
}

/// Follows `$all` after `from`, forever (until the client goes or a read fails).
pub async fn all(
    pool: &PgPool,
    from: AllFrom,
    filter: Option<&EventFilter>,
    form: UuidForm,
    pace: Pace,
    out: &Out,
) -> Result<(), Stop> {
    send(out, recorded::confirmation(new_subscription_id())).await?;
    let checkpoint_every = filter.map_or(u64::MAX, |f| f.checkpoint_every.min(pace.scan_limit.max(1)));
    let after = match from {
        AllFrom::Start => 0,
        AllFrom::Position(p) => store_position(p),
        AllFrom::End => safe_position(&mut *pool.acquire().await?, SAFE_WAIT).await?,
    };
    let mut subscription = Subscription::after(after, None).batch(BATCH);
    let mut caught_up = false;
    let mut looked_at: u64 = 0;
    loop {
        // A filter that matches nothing sends nothing: the client's leaving is seen here.
        if out.is_closed() {
            return Err(Stop::Gone);
        }
        tokio::task::yield_now().await;
        // The connection goes back to the pool before anything is sent: a slow client holds none.
        let events = subscription.next(&mut *pool.acquire().await?, Duration::ZERO).await?;
        let batch = events.len();
        match filter {
            None => {
                for e in &events {
                    send(out, recorded::event(e, form)).await?;
                }
            }
            Some(f) => {
                let (events, passes) = f.select(events).await.map_err(Stop::Failed)?;
                for (e, pass) in events.iter().zip(passes) {
                    if pass {
                        send(out, recorded::event(e, form)).await?;
                    }
                    looked_at += 1;
                    if looked_at >= checkpoint_every {
                        looked_at = 0;
                        send(out, recorded::checkpoint(e.position)).await?;
                    }
                }
            }
        }
        // A short batch reached the safe position it read up to: the head, as of now.
        if (batch as i64) < BATCH && !caught_up {
            caught_up = true;
            if filter.is_some() {
                looked_at = 0;
                send(out, recorded::checkpoint(subscription.position())).await?;
            }
            send(out, recorded::caught_up()).await?;
            tracing::debug!(
                position = subscription.position(),
                "stream API: $all subscription caught up"
            );
        }
        if batch == 0 {
            idle(out, pace.poll).await?;
        }
    }
}

/// Follows one stream after `from`, forever (until the client goes or a read fails).
pub async fn stream(
    pool: &PgPool,
    stream: &StreamId,
    from: StreamFrom,
    form: UuidForm,
    poll: Duration,
    out: &Out,
) -> Result<(), Stop> {
    send(out, recorded::confirmation(new_subscription_id())).await?;
    // The version of the last event sent (the subscription starts after it).
    let mut after = match from {
        StreamFrom::Start => 0,
        StreamFrom::Revision(r) => version_of(r),
        StreamFrom::End => read::stream_head(pool, stream).await?,
    };
    let mut caught_up = false;
    loop {
        let events = read_stream(
            &mut *pool.acquire().await?,
            stream,
            after.saturating_add(1),
            after.saturating_add(BATCH),
        )
        .await?;
        if let Some(last) = events.last() {
            after = last.version;
        }
        for e in &events {
            send(out, recorded::event(e, form)).await?;
        }
        if (events.len() as i64) < BATCH && !caught_up {
            caught_up = true;
            send(out, recorded::caught_up()).await?;
        }
        if events.is_empty() {
            idle(out, poll).await?;
        }
    }
}
