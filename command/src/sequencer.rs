//! The per-SKU sequencer: group commit for a hot item.
//!
//! In a flash sale thousands of checkouts hit one SKU at once. Deciding each on its own would
//! make them collide on the SKU stream's version and retry, or queue on a row lock. Instead,
//! orders go to one in-process lane per SKU (the order's SKU with the longest queue): a task
//! that drains what is queued (up to `max_batch`), decides every order in turn against the
//! SKUs' states in memory (the domain's [`checkout::place`]: all lines reserved or none), and
//! appends the whole batch (the SKUs' `StockReserved` events, each order's `OrderPlaced`, their
//! idempotency keys and reservation deadlines) in ONE transaction. Each caller still gets its
//! own answer: accepted with its own consistency token, or refused with its reason.
//!
//! Other writers of the same SKUs (another lane with a multi-SKU order, a payment, a
//! cancellation, an expiry, another process) take turns with the lane: each takes the SKU
//! streams' advisory locks in one order inside its transaction and reads them there. The lane
//! is an optimisation and the locks spare retries; the guard is the event store's version
//! check: a writer that skipped the locks makes the append conflict, the lane reloads and
//! decides the batch again (bounded), so nothing oversells.
//! A full lane refuses at once ([`CommandError::Overloaded`]) instead of queueing unboundedly.

use crate::answers::{CommandError, OrderAccepted};
use crate::domain::checkout::{self, PlaceOrder};
use crate::domain::{DomainError, Inventory};
use crate::idempotency::{self, IdempotencyKey};
use crate::store::{EventStore, NewEvent, StateCache, StoreError, StreamAppend};
use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use surge_events::{EventMetadata, OrderId, Sku, StreamId};
use surge_store::idempotency::Answer;
use tokio::sync::{mpsc, oneshot};

/// One order, waiting in the lane of its hottest SKU.
pub struct PlaceJob {
    pub order: PlaceOrder,
    pub key: Option<IdempotencyKey>,
    pub meta: EventMetadata,
}

type Reply = oneshot::Sender<Result<OrderAccepted, CommandError>>;

#[derive(Debug, Clone, Copy)]
pub struct SequencerSettings {
    /// Orders waiting per SKU before new ones are refused.
    pub queue_depth: usize,
    /// Most orders decided and committed in one transaction.
    pub max_batch: usize,
    pub max_conflict_retries: usize,
}

impl Default for SequencerSettings {
    fn default() -> Self {
        SequencerSettings {
            queue_depth: 4096,
            max_batch: 256,
            max_conflict_retries: 8,
        }
    }
}

/// A lane as its callers see it: where to queue, and how long its batches take lately.
#[derive(Clone)]
struct LaneHandle {
    tx: mpsc::Sender<(PlaceJob, Reply)>,
    /// Moving average of a batch's decide-and-commit time, in microseconds.
    batch_micros: Arc<AtomicU64>,
}

#[derive(Clone)]
pub struct Sequencer {
    lanes: moka::sync::Cache<Sku, LaneHandle>,
    store: EventStore,
    inventory: StateCache<Inventory>,
    settings: SequencerSettings,
}

impl Sequencer {
    pub fn new(store: EventStore, inventory: StateCache<Inventory>, settings: SequencerSettings) -> Self {
        Sequencer {
            // An idle lane is dropped; its task ends once its queue is drained.
            lanes: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(60))
                .build(),
            store,
            inventory,
            settings,
        }
    }

    /// Orders waiting in the lane of `sku`.
    pub fn queue_depth(&self, sku: &Sku) -> usize {
        self.lanes
            .get(sku)
            .map_or(0, |l| self.settings.queue_depth - l.tx.capacity())
    }

    /// How long an order joining the lane of `sku` now would wait: the batches ahead of it
    /// times how long a batch takes lately.
    pub fn estimated_wait(&self, sku: &Sku) -> Duration {
        let Some(lane) = self.lanes.get(sku) else {
            return Duration::ZERO;
        };
        let queued = self.settings.queue_depth - lane.tx.capacity();
        let batches = queued.div_ceil(self.settings.max_batch.max(1)) as u64;
        Duration::from_micros(batches * lane.batch_micros.load(Ordering::Relaxed))
    }

    fn lane(&self, sku: &Sku) -> LaneHandle {
        self.lanes.get_with(sku.clone(), || {
            let (tx, rx) = mpsc::channel(self.settings.queue_depth.max(1));
            let batch_micros = Arc::new(AtomicU64::new(0));
            let lane = Lane {
                sku: sku.clone(),
                store: self.store.clone(),
                inventory: self.inventory.clone(),
                settings: self.settings,
                batch_micros: batch_micros.clone(),
            };
            tokio::spawn(lane.run(rx));
            LaneHandle { tx, batch_micros }
        })
    }

    fn overloaded(&self, sku: Sku) -> CommandError {
        CommandError::Overloaded {
            estimated_wait: self.estimated_wait(&sku),
            queue_depth: self.queue_depth(&sku),
            sku,
        }
    }

    /// Queues the order in the lane of its SKU with the longest queue (the hot item of a
    /// flash sale), and waits for its own answer.
    pub async fn place(&self, job: PlaceJob) -> Result<OrderAccepted, CommandError> {
        let Some(sku) = job
            .order
            .lines
            .iter()
            .map(|(sku, _)| sku)
            .min_by_key(|sku| (std::cmp::Reverse(self.queue_depth(sku)), (*sku).clone()))
            .cloned()
        else {
            return Err(DomainError::InvalidLineCount {
                count: 0,
                max: crate::domain::MAX_LINES,
            }
            .into());
        };
        let (reply, answer) = oneshot::channel();
        match self.lane(&sku).tx.try_send((job, reply)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Err(self.overloaded(sku)),
            Err(mpsc::error::TrySendError::Closed((job, reply))) => {
                // The lane went idle and ended between lookup and send: start a new one.
                self.lanes.invalidate(&sku);
                if self.lane(&sku).tx.try_send((job, reply)).is_err() {
                    return Err(self.overloaded(sku));
                }
            }
        }
        // Orders waiting in every lane, for dashboards (the lanes take them off in batches).
        metrics::gauge!("surge_sequencer_waiting_orders").increment(1.0);
        answer.await.unwrap_or(Err(CommandError::LaneStopped))
    }
}

struct Lane {
    sku: Sku,
    batch_micros: Arc<AtomicU64>,
    store: EventStore,
    inventory: StateCache<Inventory>,
    settings: SequencerSettings,
}

/// What became of one job in a batch attempt.
enum Outcome {
    Accepted(OrderAccepted),
    Refused(DomainError),
    /// Its key was already used by a committed request: answer what that one stored.
    Replay,
    /// Same key as an earlier job of this batch: answer as that one.
    SameAs(usize),
    /// Accepted, but the commit failed and the store could not tell whether it took: the
    /// order may have been placed.
    Unknown(OrderId),
}

impl Lane {
    async fn run(self, mut rx: mpsc::Receiver<(PlaceJob, Reply)>) {
        let mut batch = Vec::with_capacity(self.settings.max_batch);
        while rx.recv_many(&mut batch, self.settings.max_batch.max(1)).await > 0 {
            metrics::histogram!("surge_sequencer_batch_size").record(batch.len() as f64);
            metrics::histogram!("surge_sequencer_queue_depth").record((batch.len() + rx.len()) as f64);
            metrics::gauge!("surge_sequencer_waiting_orders").decrement(batch.len() as f64);
            let (jobs, replies): (Vec<PlaceJob>, Vec<Reply>) = std::mem::take(&mut batch).into_iter().unzip();
            let policy = ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(1))
                .with_max_delay(Duration::from_millis(50))
                .with_max_times(self.settings.max_conflict_retries)
                .with_jitter();
            let started = std::time::Instant::now();
            let result = (|| self.commit_batch(&jobs))
                .retry(policy)
                .when(|e: &StoreError| e.is_conflict())
                .await;
            let took = started.elapsed().as_micros() as u64;
            let before = self.batch_micros.load(Ordering::Relaxed);
            let average = if before == 0 { took } else { (before * 7 + took) / 8 };
            self.batch_micros.store(average, Ordering::Relaxed);
            match result {
                Ok(outcomes) => self.answer(&jobs, outcomes, replies).await,
                Err(e) => {
                    let stream_id = self.sku.stream_id();
                    let err = match e {
                        e if e.is_conflict() => match self.store.stream_version(&stream_id).await {
                            Ok(current_version) => CommandError::Conflict {
                                stream_id: stream_id.0,
                                current_version,
                            },
                            Err(e) => CommandError::Store(e),
                        },
                        e => CommandError::Store(e),
                    };
                    for reply in replies {
                        let _ = reply.send(Err(clone_error(&err)));
                    }
                }
            }
        }
    }

    async fn answer(&self, jobs: &[PlaceJob], outcomes: Vec<Outcome>, replies: Vec<Reply>) {
        let mut answers: Vec<Option<Result<OrderAccepted, CommandError>>> = Vec::with_capacity(jobs.len());
        for (job, outcome) in jobs.iter().zip(&outcomes) {
            answers.push(match outcome {
                Outcome::Accepted(a) => Some(Ok(a.clone())),
                Outcome::Refused(e) => Some(Err(e.clone().into())),
                Outcome::Replay => Some(self.replay(job).await),
                Outcome::Unknown(order_id) => Some(Err(CommandError::outcome_unknown_of_order(*order_id))),
                Outcome::SameAs(_) => None,
            });
        }
        for (i, reply) in replies.into_iter().enumerate() {
            let answer = match (&outcomes[i], &answers[i]) {
                (Outcome::SameAs(first), _) => match &answers[*first] {
                    Some(Ok(a)) if same_request(&jobs[i], &jobs[*first]) => Ok(a.clone()),
                    Some(Ok(_)) => Err(CommandError::IdempotencyKeyReused),
                    Some(Err(e)) => Err(clone_error(e)),
                    None => Err(CommandError::LaneStopped),
                },
                (_, Some(Ok(a))) => Ok(a.clone()),
                (_, Some(Err(e))) => Err(clone_error(e)),
                (_, None) => Err(CommandError::LaneStopped),
            };
            let _ = reply.send(answer);
        }
    }

    async fn replay(&self, job: &PlaceJob) -> Result<OrderAccepted, CommandError> {
        let Some(key) = &job.key else {
            return Err(CommandError::LaneStopped);
        };
        match idempotency::lookup::<OrderAccepted>(self.store.pool(), key).await? {
            Some(answer) => answer,
            None => Err(CommandError::IdempotencyKeyReused),
        }
    }

    /// Decides every job against the current state of the SKUs it orders and commits the
    /// batch at once.
    async fn commit_batch(&self, jobs: &[PlaceJob]) -> Result<Vec<Outcome>, StoreError> {
        let mut tx = self.store.pool().begin().await?;

        // Idempotency: the first job per key claims it; later ones in the batch follow it.
        // (Keys are claimed before any stream lock is taken, so a claim waiting for another
        // transaction never holds a lock that transaction waits for.)
        let mut first_with_key: HashMap<(&str, &str), usize> = HashMap::new();
        let mut outcomes: Vec<Option<Outcome>> = (0..jobs.len()).map(|_| None).collect();
        let mut to_claim = Vec::new();
        for (i, job) in jobs.iter().enumerate() {
            if let Some(k) = &job.key {
                match first_with_key.get(&(k.scope.as_str(), k.key.as_str())) {
                    Some(&first) => outcomes[i] = Some(Outcome::SameAs(first)),
                    None => {
                        first_with_key.insert((k.scope.as_str(), k.key.as_str()), i);
                        to_claim.push(i);
                    }
                }
            }
        }
        let keys: Vec<&IdempotencyKey> = to_claim.iter().filter_map(|&i| jobs[i].key.as_ref()).collect();
        let claimed = idempotency::claim_many(&mut tx, &keys).await?;
        for (&i, ok) in to_claim.iter().zip(claimed) {
            if !ok {
                outcomes[i] = Some(Outcome::Replay);
            }
        }

        // Every SKU of the batch (the lane's own, and those of multi-SKU orders), locked
        // against the other writers of these SKUs (lanes, payments, cancellations), then read.
        let mut skus: Vec<&Sku> = jobs.iter().flat_map(|j| j.order.lines.iter().map(|(s, _)| s)).collect();
        skus.sort();
        skus.dedup();
        let streams: Vec<StreamId> = skus.iter().map(|s| s.stream_id()).collect();
        EventStore::lock_streams(&mut tx, &streams).await?;
        let loaded = EventStore::load_many_in(&mut tx, &self.inventory, &streams).await?;
        let mut inventories: BTreeMap<Sku, Inventory> = BTreeMap::new();
        let mut states: BTreeMap<Sku, SkuBatch> = BTreeMap::new();
        for (sku, (version, state)) in skus.into_iter().cloned().zip(loaded) {
            inventories.insert(sku.clone(), state);
            states.insert(
                sku,
                SkuBatch {
                    version,
                    events: Vec::new(),
                },
            );
        }

        let mut orders = Vec::new();
        let mut accepted_idx = Vec::new();
        for (i, job) in jobs.iter().enumerate() {
            if outcomes[i].is_some() {
                continue;
            }
            // Evolves `inventories` by the order's reservations, so the next job sees them.
            match checkout::place(&job.order, &mut inventories) {
                Ok(placement) => {
                    for (sku, e) in &placement.reservations {
                        if let Some(b) = states.get_mut(sku) {
                            b.events.push(NewEvent::new(e, &job.meta));
                        }
                    }
                    let order_stream = job.order.order_id.stream_id();
                    orders.push(StreamAppend::new(order_stream, 0, &placement.order, &job.meta));
                    accepted_idx.push((i, placement.total));
                }
                Err(e) => outcomes[i] = Some(Outcome::Refused(e)),
            }
        }
        let refused_keys: Vec<&IdempotencyKey> = jobs
            .iter()
            .zip(&outcomes)
            .filter(|(_, o)| matches!(o, Some(Outcome::Refused(_))))
            .filter_map(|(j, _)| j.key.as_ref())
            .collect();
        idempotency::release_many(&mut tx, &refused_keys).await?;

        // What the lane's SKUs are after this batch, for the state cache once it commits.
        let after: Vec<(StreamId, i64, Inventory)> = states
            .iter()
            .filter(|(_, b)| !b.events.is_empty())
            .filter_map(|(sku, b)| {
                let state = inventories.get(sku)?.clone();
                Some((sku.stream_id(), b.version + b.events.len() as i64, state))
            })
            .collect();
        let mut appended = None;
        if !accepted_idx.is_empty() {
            let mut appends: Vec<StreamAppend> = states
                .into_iter()
                .filter(|(_, b)| !b.events.is_empty())
                .map(|(sku, b)| StreamAppend {
                    stream_id: sku.stream_id(),
                    stream_type: surge_events::StreamType::Inventory,
                    expected_version: b.version,
                    events: b.events,
                })
                .collect();
            let n_reserved: usize = appends.iter().map(|a| a.events.len()).sum();
            appends.extend(orders);
            let committed = EventStore::append_in(&mut tx, &appends).await?;
            let deadlines: Vec<(OrderId, DateTime<Utc>)> = accepted_idx
                .iter()
                .map(|(i, _)| (jobs[*i].order.order_id, jobs[*i].order.reservation_expires_at))
                .collect();
            // Events were stored in `appends` order: the SKUs' first, then one OrderPlaced per order.
            let mut answers = Vec::new();
            for (n, (i, total)) in accepted_idx.into_iter().enumerate() {
                let job = &jobs[i];
                let answer = OrderAccepted {
                    order_id: job.order.order_id,
                    status: "placed".into(),
                    total,
                    reservation_expires_at: job.order.reservation_expires_at,
                    consistency_token: committed.positions.get(n_reserved + n).copied().unwrap_or(0),
                };
                if let Some(k) = &job.key {
                    answers.push(Answer {
                        scope: &k.scope,
                        key: &k.key,
                        status: 202,
                        response: serde_json::to_value(&answer).unwrap_or_default(),
                    });
                }
                outcomes[i] = Some(Outcome::Accepted(answer));
            }
            // The reservations' deadlines and the keys' answers in one statement (one round
            // trip less per batch: the hot lane's batches are back to back).
            surge_store::deadlines::insert_with_answers(&mut tx, &deadlines, &answers).await?;
            appended = Some(committed);
        }
        let commit = match &appended {
            // A lost reply to COMMIT is found out: callers must not hear "retry" for orders
            // that were placed.
            Some(committed) => self.store.commit(tx, committed).await,
            None => tx.commit().await.map_err(StoreError::from),
        };
        match commit {
            Ok(()) => {}
            Err(StoreError::CommitOutcomeUnknown(_)) => {
                // The SKUs' states after the batch are not cached: the store may not hold them.
                return Ok(outcomes
                    .into_iter()
                    .map(|o| match o {
                        Some(Outcome::Accepted(a)) => Outcome::Unknown(a.order_id),
                        o => o.unwrap_or(Outcome::Replay),
                    })
                    .collect());
            }
            Err(e) => return Err(e),
        }
        // The next batch then reads only what others appended since (usually nothing).
        for (stream, version, state) in after {
            self.inventory.insert(stream, Arc::new((version, state))).await;
        }
        Ok(outcomes.into_iter().map(|o| o.unwrap_or(Outcome::Replay)).collect())
    }
}

/// One SKU's part of a batch: its version as loaded and the events the batch decided for it
/// (its state, as evolved by the batch so far, is decided on by [`checkout::place`]).
struct SkuBatch {
    version: i64,
    events: Vec<NewEvent>,
}

fn same_request(a: &PlaceJob, b: &PlaceJob) -> bool {
    match (&a.key, &b.key) {
        (Some(x), Some(y)) => x.request_hash == y.request_hash,
        _ => false,
    }
}

fn clone_error(e: &CommandError) -> CommandError {
    match e {
        CommandError::Domain(d) => CommandError::Domain(d.clone()),
        CommandError::Conflict {
            stream_id,
            current_version,
        } => CommandError::Conflict {
            stream_id: stream_id.clone(),
            current_version: *current_version,
        },
        CommandError::IdempotencyKeyReused => CommandError::IdempotencyKeyReused,
        CommandError::Overloaded {
            sku,
            queue_depth,
            estimated_wait,
        } => CommandError::Overloaded {
            sku: sku.clone(),
            queue_depth: *queue_depth,
            estimated_wait: *estimated_wait,
        },
        CommandError::LaneStopped => CommandError::LaneStopped,
        CommandError::StoreUnavailable(s) => CommandError::StoreUnavailable(s.clone()),
        CommandError::OutcomeUnknown { check } => CommandError::OutcomeUnknown { check: check.clone() },
        // Every caller of a failed batch gets the failure; an outage stays an outage (503).
        CommandError::Store(StoreError::Database(
            e @ (sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_)),
        )) => CommandError::StoreUnavailable(e.to_string()),
        CommandError::Store(s) => CommandError::Store(StoreError::Database(sqlx::Error::Protocol(s.to_string()))),
    }
}
