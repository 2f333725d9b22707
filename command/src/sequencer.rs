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
//!
//! An item split into stock buckets has one lane per bucket: this instance queues its orders in
//! the lane of its preferred bucket ([`crate::domain::preferred_bucket`] of its instance id), so
//! N instances append to N different streams of a hot item instead of taking turns on one. A
//! lane decides against its own bucket only; an order its bucket cannot serve (out of stock
//! there) is not refused by it but decided again right after the batch, in a transaction that
//! locks every bucket of the order's items ([`crate::buckets::lock_items`]): reserved from a
//! bucket with enough, or from stock moved into one, or refused out of stock with every bucket
//! seen under its lock. Items with a purchase limit have the customers' units locked and read
//! in the same transaction ([`surge_store::allowances`]), after the stream locks.

use crate::answers::{CommandError, OrderAccepted};
use crate::buckets::{cache_items, lock_items, BucketAppends};
use crate::domain::checkout::{self, Held, PlaceOrder, Placement};
use crate::domain::{preferred_bucket, DomainError, Inventory, ItemStock};
use crate::idempotency::{self, IdempotencyKey};
use crate::store::{EventStore, StateCache, StoreError, StreamAppend};
use backon::{ExponentialBuilder, Retryable};
use chrono::{DateTime, Utc};
use sqlx::PgConnection;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use surge_events::{CustomerId, EventMetadata, OrderId, Sku, StreamId};
use surge_store::allowances::{self, Counted};
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

/// A lane's key: an item and one of its stock buckets.
type LaneKey = (Sku, u32);

#[derive(Clone)]
pub struct Sequencer {
    lanes: moka::sync::Cache<LaneKey, LaneHandle>,
    store: EventStore,
    inventory: StateCache<Inventory>,
    settings: SequencerSettings,
    /// This command API instance's id: which bucket of each item it prefers.
    instance_id: Arc<str>,
    /// How many buckets each item has, as last read (by a lane or an admin command).
    bucket_counts: BucketCounts,
}

/// How many buckets each item has, as last read: where an order is queued, and which bucket
/// of an order's other items a lane decides on.
#[derive(Clone)]
pub struct BucketCounts(moka::sync::Cache<Sku, u32>);

impl BucketCounts {
    fn new() -> Self {
        BucketCounts(moka::sync::Cache::builder().max_capacity(100_000).build())
    }
    /// The item's bucket count as last read (1 until it was read once).
    pub fn get(&self, sku: &Sku) -> u32 {
        self.0.get(sku).unwrap_or(1)
    }
    pub fn note(&self, sku: &Sku, buckets: u32) {
        if self.0.get(sku) != Some(buckets) {
            self.0.insert(sku.clone(), buckets);
        }
    }
}

impl Sequencer {
    pub fn new(
        store: EventStore,
        inventory: StateCache<Inventory>,
        settings: SequencerSettings,
        instance_id: Arc<str>,
    ) -> Self {
        Sequencer {
            // An idle lane is dropped; its task ends once its queue is drained.
            lanes: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(60))
                .build(),
            store,
            inventory,
            settings,
            instance_id,
            bucket_counts: BucketCounts::new(),
        }
    }

    /// Where the item's bucket count is noted (admin commands note what they changed).
    pub fn bucket_counts(&self) -> &BucketCounts {
        &self.bucket_counts
    }

    /// The bucket of `sku` this instance takes from first, by the item's bucket count as last
    /// read (bucket 0 until the item was read once: a stale count only changes where the lane
    /// looks first, never what it may sell).
    pub fn preferred(&self, sku: &Sku) -> u32 {
        preferred_bucket(&self.instance_id, sku, self.bucket_counts.get(sku))
    }

    /// Orders waiting in this instance's lane of `sku`.
    pub fn queue_depth(&self, sku: &Sku) -> usize {
        self.lanes
            .get(&(sku.clone(), self.preferred(sku)))
            .map_or(0, |l| self.settings.queue_depth - l.tx.capacity())
    }

    /// How long an order joining the lane of `sku` now would wait: the batches ahead of it
    /// times how long a batch takes lately.
    pub fn estimated_wait(&self, sku: &Sku) -> Duration {
        let Some(lane) = self.lanes.get(&(sku.clone(), self.preferred(sku))) else {
            return Duration::ZERO;
        };
        let queued = self.settings.queue_depth - lane.tx.capacity();
        let batches = queued.div_ceil(self.settings.max_batch.max(1)) as u64;
        Duration::from_micros(batches * lane.batch_micros.load(Ordering::Relaxed))
    }

    fn lane(&self, key: &LaneKey) -> LaneHandle {
        self.lanes.get_with(key.clone(), || {
            let (tx, rx) = mpsc::channel(self.settings.queue_depth.max(1));
            let batch_micros = Arc::new(AtomicU64::new(0));
            let lane = Lane {
                sku: key.0.clone(),
                bucket: key.1,
                store: self.store.clone(),
                inventory: self.inventory.clone(),
                settings: self.settings,
                batch_micros: batch_micros.clone(),
                instance_id: self.instance_id.clone(),
                bucket_counts: self.bucket_counts.clone(),
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

    /// Queues the order in this instance's lane of its SKU with the longest queue (the hot
    /// item of a flash sale), and waits for its own answer.
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
        let key = (sku.clone(), self.preferred(&sku));
        let (reply, answer) = oneshot::channel();
        match self.lane(&key).tx.try_send((job, reply)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Err(self.overloaded(sku)),
            Err(mpsc::error::TrySendError::Closed((job, reply))) => {
                // The lane went idle and ended between lookup and send: start a new one.
                self.lanes.invalidate(&key);
                if self.lane(&key).tx.try_send((job, reply)).is_err() {
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
    bucket: u32,
    batch_micros: Arc<AtomicU64>,
    store: EventStore,
    inventory: StateCache<Inventory>,
    settings: SequencerSettings,
    instance_id: Arc<str>,
    bucket_counts: BucketCounts,
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
    /// The lane's bucket could not serve it: decided next on every bucket of its items.
    Deferred,
}

/// How a batch's orders are decided once their streams are locked and read.
enum Deciding {
    /// A lane's: every SKU on one bucket (the lane's own for its SKU, this instance's
    /// preferred one for the others); out of stock there defers the order.
    OneBucket(BTreeMap<Sku, Inventory>),
    /// The slow path's: every bucket of every SKU, read under their locks; out of stock here
    /// is definitive.
    AnyBucket {
        items: BTreeMap<Sku, ItemStock>,
        preferred: BTreeMap<Sku, u32>,
    },
}

impl Deciding {
    fn place(&mut self, order: &PlaceOrder, held: &mut Held) -> Result<Placement, DomainError> {
        match self {
            Deciding::OneBucket(inventories) => checkout::place(order, inventories, held),
            Deciding::AnyBucket { items, preferred } => checkout::place_from_any(order, items, preferred, held),
        }
    }

    /// Whether the item has other buckets a refusal of this one may have missed.
    fn has_other_buckets(&self, sku: &Sku) -> bool {
        match self {
            Deciding::OneBucket(inventories) => inventories.get(sku).is_some_and(|s| {
                let settings = s.settings;
                settings.buckets.max(settings.high_water) > 1
            }),
            Deciding::AnyBucket { .. } => false,
        }
    }

    /// The purchase limit of `sku`, if it has one.
    fn limit(&self, sku: &Sku) -> Option<i64> {
        match self {
            Deciding::OneBucket(inventories) => inventories.get(sku).and_then(|s| s.settings.max_per_customer),
            Deciding::AnyBucket { items, .. } => items.get(sku).and_then(|i| i.settings().max_per_customer),
        }
    }
}

impl Lane {
    fn retry_policy(&self) -> ExponentialBuilder {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(1))
            .with_max_delay(Duration::from_millis(50))
            .with_max_times(self.settings.max_conflict_retries)
            .with_jitter()
    }

    async fn run(self, mut rx: mpsc::Receiver<(PlaceJob, Reply)>) {
        let mut batch = Vec::with_capacity(self.settings.max_batch);
        while rx.recv_many(&mut batch, self.settings.max_batch.max(1)).await > 0 {
            metrics::histogram!("surge_sequencer_batch_size").record(batch.len() as f64);
            metrics::histogram!("surge_sequencer_queue_depth").record((batch.len() + rx.len()) as f64);
            metrics::gauge!("surge_sequencer_waiting_orders").decrement(batch.len() as f64);
            let (jobs, replies): (Vec<PlaceJob>, Vec<Reply>) = std::mem::take(&mut batch).into_iter().unzip();
            let started = std::time::Instant::now();
            let all: Vec<usize> = (0..jobs.len()).collect();
            let mut result = (|| self.commit_batch(&jobs, &all, false))
                .retry(self.retry_policy())
                .when(|e: &StoreError| e.is_conflict())
                .await;
            if let Ok(outcomes) = &mut result {
                let deferred: Vec<usize> = (0..jobs.len())
                    .filter(|&i| matches!(outcomes[i], Outcome::Deferred))
                    .collect();
                if !deferred.is_empty() {
                    metrics::counter!("surge_sequencer_slow_path_orders_total").increment(deferred.len() as u64);
                    let slow = (|| self.commit_batch(&jobs, &deferred, true))
                        .retry(self.retry_policy())
                        .when(|e: &StoreError| e.is_conflict())
                        .await;
                    match slow {
                        Ok(mut slow_outcomes) => {
                            for &i in &deferred {
                                outcomes[i] = std::mem::replace(&mut slow_outcomes[i], Outcome::Replay);
                            }
                        }
                        Err(e) => {
                            let err = self.batch_error(e).await;
                            let mut replies: Vec<Option<Reply>> = replies.into_iter().map(Some).collect();
                            for &i in &deferred {
                                if let Some(reply) = replies[i].take() {
                                    let _ = reply.send(Err(clone_error(&err)));
                                }
                                outcomes[i] = Outcome::Replay;
                            }
                            self.record_time(started);
                            self.answer(&jobs, std::mem::take(outcomes), replies).await;
                            continue;
                        }
                    }
                }
            }
            self.record_time(started);
            match result {
                Ok(outcomes) => {
                    self.answer(&jobs, outcomes, replies.into_iter().map(Some).collect())
                        .await
                }
                Err(e) => {
                    let err = self.batch_error(e).await;
                    for reply in replies {
                        let _ = reply.send(Err(clone_error(&err)));
                    }
                }
            }
        }
    }

    fn record_time(&self, started: std::time::Instant) {
        let took = started.elapsed().as_micros() as u64;
        let before = self.batch_micros.load(Ordering::Relaxed);
        let average = if before == 0 { took } else { (before * 7 + took) / 8 };
        self.batch_micros.store(average, Ordering::Relaxed);
    }

    async fn batch_error(&self, e: StoreError) -> CommandError {
        let stream_id = self.sku.bucket_stream_id(self.bucket);
        match e {
            e if e.is_conflict() => match self.store.stream_version(&stream_id).await {
                Ok(current_version) => CommandError::Conflict {
                    stream_id: stream_id.0,
                    current_version,
                },
                Err(e) => CommandError::Store(e),
            },
            e => CommandError::Store(e),
        }
    }

    /// Answers every job whose reply is still there (`None`: answered already).
    async fn answer(&self, jobs: &[PlaceJob], outcomes: Vec<Outcome>, replies: Vec<Option<Reply>>) {
        let mut answers: Vec<Option<Result<OrderAccepted, CommandError>>> = Vec::with_capacity(jobs.len());
        for ((job, outcome), reply) in jobs.iter().zip(&outcomes).zip(&replies) {
            answers.push(match outcome {
                Outcome::Accepted(a) => Some(Ok(a.clone())),
                Outcome::Refused(e) => Some(Err(e.clone().into())),
                Outcome::Replay if reply.is_some() => Some(self.replay(job).await),
                Outcome::Replay => None,
                Outcome::Unknown(order_id) => Some(Err(CommandError::outcome_unknown_of_order(*order_id))),
                Outcome::SameAs(_) | Outcome::Deferred => None,
            });
        }
        for (i, reply) in replies.into_iter().enumerate() {
            let Some(reply) = reply else { continue };
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

    /// Locks and reads what the lane decides on: its own bucket of its SKU, and this
    /// instance's preferred bucket of every other SKU of the batch (with bucket 0 of each,
    /// read without its lock, for the catalog entry and settings).
    async fn lock_one_bucket(
        &self,
        conn: &mut PgConnection,
        skus: &[Sku],
    ) -> Result<(Deciding, BTreeMap<StreamId, i64>), StoreError> {
        let buckets: Vec<u32> = skus
            .iter()
            .map(|sku| {
                if *sku == self.sku {
                    self.bucket
                } else {
                    preferred_bucket(&self.instance_id, sku, self.bucket_counts.get(sku))
                }
            })
            .collect();
        let streams: Vec<StreamId> = skus.iter().zip(&buckets).map(|(s, k)| s.bucket_stream_id(*k)).collect();
        EventStore::lock_streams(conn, &streams).await?;
        let firsts: Vec<StreamId> = skus
            .iter()
            .zip(&buckets)
            .filter(|(_, k)| **k != 0)
            .map(|(s, _)| s.stream_id())
            .collect();
        let mut to_load = streams.clone();
        to_load.extend(firsts.iter().cloned());
        let loaded = EventStore::load_many_in(conn, &self.inventory, &to_load).await?;
        let (own, first_states) = loaded.split_at(streams.len());
        let firsts: BTreeMap<&StreamId, &Inventory> = firsts.iter().zip(first_states.iter().map(|(_, s)| s)).collect();
        let mut inventories = BTreeMap::new();
        let mut versions = BTreeMap::new();
        for (((sku, k), stream), (version, state)) in skus.iter().zip(&buckets).zip(&streams).zip(own) {
            let first = firsts.get(&sku.stream_id()).copied().unwrap_or(state);
            self.bucket_counts.note(sku, first.settings.buckets);
            inventories.insert(sku.clone(), state.clone().in_bucket(*k, first));
            versions.insert(stream.clone(), *version);
        }
        Ok((Deciding::OneBucket(inventories), versions))
    }

    /// Decides the jobs `which` of `jobs` and commits them at once: on the lane's bucket
    /// (`anywhere` false), or on every bucket of their items (`anywhere` true, the slow path).
    async fn commit_batch(
        &self,
        jobs: &[PlaceJob],
        which: &[usize],
        anywhere: bool,
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut tx = self.store.pool().begin().await?;

        // Idempotency: the first job per key claims it; later ones in the batch follow it.
        // (Keys are claimed before any stream lock is taken, so a claim waiting for another
        // transaction never holds a lock that transaction waits for.)
        let mut first_with_key: HashMap<(&str, &str), usize> = HashMap::new();
        let mut outcomes: Vec<Option<Outcome>> = (0..jobs.len()).map(|_| Some(Outcome::Replay)).collect();
        for &i in which {
            outcomes[i] = None;
        }
        let mut to_claim = Vec::new();
        for &i in which {
            if let Some(k) = &jobs[i].key {
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

        // Every SKU of the batch, locked against the other writers of these SKUs (lanes of
        // any instance, payments, cancellations, admin changes), then read.
        let mut skus: Vec<Sku> = which
            .iter()
            .flat_map(|&i| jobs[i].order.lines.iter().map(|(s, _)| s.clone()))
            .collect();
        skus.sort();
        skus.dedup();
        let (mut deciding, versions) = if anywhere {
            let locked = lock_items(&mut tx, &self.inventory, &skus, &BTreeMap::new()).await?;
            for (sku, item) in &locked.items {
                self.bucket_counts.note(sku, item.settings().buckets);
            }
            let preferred = locked
                .items
                .iter()
                .map(|(sku, item)| {
                    (
                        sku.clone(),
                        preferred_bucket(&self.instance_id, sku, item.settings().buckets),
                    )
                })
                .collect();
            (
                Deciding::AnyBucket {
                    items: locked.items,
                    preferred,
                },
                locked.versions,
            )
        } else {
            self.lock_one_bucket(&mut tx, &skus).await?
        };

        // The customers' units of the limited items they order, locked after the streams.
        let mut limited: Vec<(Sku, CustomerId)> = which
            .iter()
            .filter(|&&i| outcomes[i].is_none())
            .flat_map(|&i| {
                let order = &jobs[i].order;
                order
                    .lines
                    .iter()
                    .filter(|(s, _)| deciding.limit(s).is_some())
                    .map(|(s, _)| (s.clone(), order.customer_id.clone()))
            })
            .collect();
        limited.sort();
        limited.dedup();
        allowances::lock(&mut tx, &limited).await?;
        let units = allowances::held(&mut tx, &limited).await?;
        let mut held: Held = limited.into_iter().zip(units).collect();

        let mut stock = BucketAppends::default();
        let mut orders = Vec::new();
        let mut accepted_idx = Vec::new();
        let mut counted = Vec::new();
        for &i in which {
            if outcomes[i].is_some() {
                continue;
            }
            let job = &jobs[i];
            // Evolves the states by the order's reservations, so the next job sees them.
            match deciding.place(&job.order, &mut held) {
                Ok(placement) => {
                    for (sku, k, e) in placement.moves.iter().chain(&placement.reservations) {
                        stock.push(&versions, sku, *k, e, &job.meta);
                    }
                    counted.extend(placement.counted.iter().map(|(sku, units)| Counted {
                        order_id: job.order.order_id,
                        sku: sku.clone(),
                        customer_id: job.order.customer_id.clone(),
                        units: *units,
                    }));
                    let order_stream = job.order.order_id.stream_id();
                    orders.push(StreamAppend::new(order_stream, 0, &placement.order, &job.meta));
                    accepted_idx.push((i, placement.total));
                }
                Err(DomainError::OutOfStock { sku, .. }) if deciding.has_other_buckets(&sku) => {
                    outcomes[i] = Some(Outcome::Deferred);
                }
                Err(e) => outcomes[i] = Some(Outcome::Refused(e)),
            }
        }
        // Refused and deferred orders give their keys back (the slow path claims them again).
        let released_keys: Vec<&IdempotencyKey> = which
            .iter()
            .filter(|&&i| matches!(outcomes[i], Some(Outcome::Refused(_)) | Some(Outcome::Deferred)))
            .filter_map(|&i| jobs[i].key.as_ref())
            .collect();
        idempotency::release_many(&mut tx, &released_keys).await?;

        let after = stock.versions_after();
        let mut appended = None;
        if !accepted_idx.is_empty() {
            let n_stock = stock.len();
            let mut appends = stock.into_appends();
            appends.extend(orders);
            let committed = EventStore::append_in(&mut tx, &appends).await?;
            allowances::record(&mut tx, &counted).await?;
            let deadlines: Vec<(OrderId, DateTime<Utc>)> = accepted_idx
                .iter()
                .map(|(i, _)| (jobs[*i].order.order_id, jobs[*i].order.reservation_expires_at))
                .collect();
            // Events were stored in `appends` order: the buckets' first, then one OrderPlaced per order.
            let mut answers = Vec::new();
            for (n, (i, total)) in accepted_idx.into_iter().enumerate() {
                let job = &jobs[i];
                let answer = OrderAccepted {
                    order_id: job.order.order_id,
                    status: "placed".into(),
                    total,
                    reservation_expires_at: job.order.reservation_expires_at,
                    consistency_token: committed.positions.get(n_stock + n).copied().unwrap_or(0),
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
                // The states after the batch are not cached: the store may not hold them.
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
        match &deciding {
            Deciding::OneBucket(inventories) => {
                for (stream, version) in after {
                    if let Some(state) = stream.inventory_bucket().and_then(|(sku, _)| inventories.get(&sku)) {
                        self.inventory.insert(stream, Arc::new((version, state.clone()))).await;
                    }
                }
            }
            Deciding::AnyBucket { items, .. } => cache_items(&self.inventory, items, &after).await,
        }
        Ok(outcomes.into_iter().map(|o| o.unwrap_or(Outcome::Replay)).collect())
    }
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
