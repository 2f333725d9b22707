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
//! Shedding is by time, not by count: each lane fits its recent batches' times as a fixed time
//! per batch plus a time per order (`LaneTimes`), and an order that would wait past the
//! latency budget (50 ms by default) is refused at once ([`CommandError::Overloaded`], 503
//! with `Retry-After`) instead of joining a queue it cannot
//! leave in time; the queue's length is only the last bound. An order for an item this
//! instance saw sold out (every bucket, definitively, under the locks) is refused from memory
//! for a short while ([`SequencerSettings::sold_out_ttl`]) without taking a lane's turn: the
//! note is dropped at once when this instance puts stock back (restock, cancel, expiry,
//! failed payment), and by time when another instance may have.
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
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};
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
    /// Longest an order may expect to wait in a lane (queue and its own batch); one that would
    /// wait longer is refused at once. Zero: no time limit (only `queue_depth`).
    pub latency_budget: Duration,
    /// How long an item seen sold out is refused from memory. Zero: never.
    pub sold_out_ttl: Duration,
}

impl SequencerSettings {
    pub const DEFAULT_QUEUE_DEPTH: usize = 4096;
    pub const DEFAULT_LATENCY_BUDGET_MS: u64 = 50;
    pub const DEFAULT_SOLD_OUT_TTL_MS: u64 = 1000;
}

impl Default for SequencerSettings {
    fn default() -> Self {
        SequencerSettings {
            queue_depth: Self::DEFAULT_QUEUE_DEPTH,
            max_batch: 256,
            max_conflict_retries: 8,
            latency_budget: Duration::from_millis(Self::DEFAULT_LATENCY_BUDGET_MS),
            sold_out_ttl: Duration::from_millis(Self::DEFAULT_SOLD_OUT_TTL_MS),
        }
    }
}

/// Microseconds since the first time this process asked (0 is kept for "not busy").
fn now_micros() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64 + 1
}

/// A batch's time as fitted: a fixed part and a part per order, packed in one `u64` so
/// readers never see one half of an update (fixed µs in the high half, ns per order in the
/// low; 0: nothing known).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct BatchModel {
    fixed_micros: u32,
    per_order_nanos: u32,
}

impl BatchModel {
    fn pack(self) -> u64 {
        (u64::from(self.fixed_micros) << 32) | u64::from(self.per_order_nanos)
    }

    fn unpack(v: u64) -> BatchModel {
        BatchModel {
            fixed_micros: (v >> 32) as u32,
            per_order_nanos: v as u32,
        }
    }

    /// From the fit's (fixed µs, µs per order); at least 1 µs fixed, so it reads as known.
    fn of(fixed: f64, per_order: f64) -> BatchModel {
        BatchModel {
            fixed_micros: (fixed as u32).max(1),
            per_order_nanos: (per_order * 1000.0) as u32,
        }
    }

    fn known(self) -> bool {
        self != BatchModel::default()
    }
}

/// What a lane's callers know of how fast it goes: a batch takes a fixed time (one
/// transaction: locks, reads, the commit and its fsync) plus a time per order in it, fitted
/// from the lane's recent batches. A new lane starts from the model its instance's lanes
/// last fitted (`seed`): every lane writes to the same Postgres.
struct LaneTimes {
    /// [`BatchModel`], packed.
    model: AtomicU64,
    /// The model this instance's lanes last fitted, shared by them all.
    seed: Arc<AtomicU64>,
    /// When the batch being decided now started ([`now_micros`]); 0 between batches.
    busy_since: AtomicU64,
    /// Orders in the batch being decided now.
    running_size: AtomicU64,
    /// The fit itself; only the lane's task touches it (once per batch).
    fit: std::sync::Mutex<BatchFit>,
}

/// Exponentially weighted least squares of batch time (µs) over batch size (orders).
#[derive(Default, Debug, Clone, Copy)]
struct BatchFit {
    batches: u64,
    mean_size: f64,
    mean_micros: f64,
    var_size: f64,
    var_micros: f64,
    cov: f64,
}

impl BatchFit {
    /// Weight of the newest batch.
    const WEIGHT: f64 = 1.0 / 16.0;
    /// Batches the weights amount to, as independent samples ((2 - w) / w).
    const SAMPLES: f64 = (2.0 - Self::WEIGHT) / Self::WEIGHT;
    /// Standard errors added to the fitted time per order (the cautious side of it).
    const ERRORS: f64 = 2.0;
    /// Batches before a slope is fitted at all.
    const MIN_BATCHES: u64 = 8;

    fn add(&mut self, size: f64, micros: f64) {
        if self.batches == 0 {
            (self.mean_size, self.mean_micros) = (size, micros);
        } else {
            let a = Self::WEIGHT;
            let (dx, dy) = (size - self.mean_size, micros - self.mean_micros);
            self.mean_size += a * dx;
            self.mean_micros += a * dy;
            self.var_size = (1.0 - a) * (self.var_size + a * dx * dx);
            self.var_micros = (1.0 - a) * (self.var_micros + a * dy * dy);
            self.cov = (1.0 - a) * (self.cov + a * dx * dy);
        }
        self.batches += 1;
    }

    /// The time per order the recent batches tell apart from the fixed time, on its cautious
    /// side: the fitted slope plus two standard errors (sizes that hardly varied, or times
    /// lost in fsync jitter, give a wide error and so a high time per order); `None` before
    /// there is anything to fit.
    fn slope(&self) -> Option<f64> {
        if self.var_size <= f64::EPSILON || self.batches < Self::MIN_BATCHES {
            return None;
        }
        let slope = self.cov / self.var_size;
        let residual = (self.var_micros - slope * self.cov).max(0.0);
        let error = (residual / (Self::SAMPLES * self.var_size)).sqrt();
        Some(slope + Self::ERRORS * error)
    }

    /// (fixed µs, µs per order). Until the batches tell them apart, every order is taken to
    /// cost its share of the mean (the cautious reading: a queue twice the usual size takes
    /// twice as long); the slope is never below zero nor above that share, the fixed time never
    /// below zero.
    fn model(&self) -> (f64, f64) {
        let share = self.mean_micros / self.mean_size.max(1.0);
        let per_order = self.slope().unwrap_or(share).clamp(0.0, share);
        let fixed = (self.mean_micros - per_order * self.mean_size.max(1.0)).max(0.0);
        (fixed, per_order)
    }
}

impl LaneTimes {
    fn new(seed: Arc<AtomicU64>) -> LaneTimes {
        LaneTimes {
            model: AtomicU64::new(0),
            seed,
            busy_since: AtomicU64::new(0),
            running_size: AtomicU64::new(0),
            fit: Default::default(),
        }
    }

    /// This lane's model, or until it has one, its instance's (which may have one by now).
    fn model(&self) -> BatchModel {
        match self.model.load(Ordering::Relaxed) {
            0 => BatchModel::unpack(self.seed.load(Ordering::Relaxed)),
            own => BatchModel::unpack(own),
        }
    }

    /// Whether this lane has a model (its own or its instance's).
    fn known(&self) -> bool {
        self.model().known()
    }

    fn expected_wait(&self, queued: usize, max_batch: usize) -> Duration {
        self.expected_wait_at(now_micros(), queued, max_batch)
    }

    /// How long an order joining at `now` ([`now_micros`]), behind `queued` others, would take
    /// to be answered: what is left of the batch in progress, then the batches that carry the
    /// orders ahead of it and itself (at most `max_batch` each: a fixed time per batch and a
    /// time per order). A batch in progress that has run longer than its model says (a stalled
    /// disk, a lock held elsewhere) makes the fixed time what it has run so far, at once,
    /// without waiting for the fit. Zero for an idle lane with nothing queued: it always takes
    /// the next order (and so learns its batch time again after a stall).
    fn expected_wait_at(&self, now: u64, queued: usize, max_batch: usize) -> Duration {
        let model = self.model();
        let since = self.busy_since.load(Ordering::Relaxed);
        if since == 0 && (queued == 0 || !model.known()) {
            return Duration::ZERO;
        }
        let ahead = queued as u64 + 1;
        let batches = ahead.div_ceil(max_batch.max(1) as u64);
        let running = if since == 0 {
            0.0
        } else {
            now.saturating_sub(since) as f64
        };
        if !model.known() {
            // No batch finished yet in this instance: the one in progress is all there is to
            // go by (the caller lets such a lane take one batch at most).
            return Duration::from_micros((running * batches as f64) as u64);
        }
        let per_order = f64::from(model.per_order_nanos) / 1000.0;
        let (mut fixed, mut left) = (f64::from(model.fixed_micros), 0.0);
        if since != 0 {
            let running_size = self.running_size.load(Ordering::Relaxed) as f64;
            fixed = fixed.max(running - per_order * running_size);
            left = (fixed + per_order * running_size - running).max(0.0);
        }
        let own = fixed * batches as f64 + per_order * ahead as f64;
        Duration::from_micros((left + own) as u64)
    }

    fn started(&self, size: usize) {
        self.running_size.store(size as u64, Ordering::Relaxed);
        self.busy_since.store(now_micros(), Ordering::Relaxed);
    }

    /// The batch begun at `started` is answered. A failed batch teaches nothing of how long
    /// batches take (a dead database fails fast, a pool timeout slowly): only its end counts.
    fn finished(&self, started: Instant, size: usize, succeeded: bool) {
        self.busy_since.store(0, Ordering::Relaxed);
        if !succeeded {
            return;
        }
        let took = started.elapsed().as_micros() as f64;
        let (fixed, per_order) = {
            let mut fit = self.fit.lock().unwrap_or_else(|p| p.into_inner());
            fit.add(size.max(1) as f64, took);
            fit.model()
        };
        let model = BatchModel::of(fixed, per_order).pack();
        self.model.store(model, Ordering::Relaxed);
        self.seed.store(model, Ordering::Relaxed);
    }
}

/// A lane as its callers see it: where to queue, and how long its batches take lately.
#[derive(Clone)]
struct LaneHandle {
    tx: mpsc::Sender<(PlaceJob, Reply)>,
    times: Arc<LaneTimes>,
}

/// Items seen sold out lately, refused from memory (see the module's documentation).
#[derive(Clone)]
pub struct SoldOut {
    items: moka::sync::Cache<Sku, ()>,
    /// Bumped whenever this instance puts stock back: a batch that read its stock before a
    /// bump may not note an item sold out after it.
    returns: Arc<AtomicU64>,
    enabled: bool,
}

impl SoldOut {
    fn new(ttl: Duration) -> Self {
        SoldOut {
            items: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl.max(Duration::from_millis(1)))
                .build(),
            returns: Arc::new(AtomicU64::new(0)),
            enabled: !ttl.is_zero(),
        }
    }

    /// Stock of `skus` may be back on sale (this instance committed a restock or a release).
    pub fn stock_returned<'a>(&self, skus: impl IntoIterator<Item = &'a Sku>) {
        self.returns.fetch_add(1, Ordering::SeqCst);
        for sku in skus {
            self.items.invalidate(sku);
        }
    }

    /// Stock of any item may be back on sale (a release whose outcome is not known).
    pub fn stock_returned_anywhere(&self) {
        self.returns.fetch_add(1, Ordering::SeqCst);
        self.items.invalidate_all();
    }

    fn epoch(&self) -> u64 {
        self.returns.load(Ordering::SeqCst)
    }

    /// Notes `sku` sold out, as read by a batch that started at `epoch`. Inserted first and
    /// checked after: stock returned between the two takes the note away again.
    fn note(&self, sku: &Sku, epoch: u64) {
        if self.enabled && self.epoch() == epoch {
            self.items.insert(sku.clone(), ());
            if self.epoch() != epoch {
                self.items.invalidate(sku);
            }
        }
    }

    /// The order's first line, when its item is noted sold out and its quantity one the lane
    /// would look at stock for: the lane decides lines in order, so it would refuse this
    /// order out of stock too (a bad quantity or an unknown item later in the order is its
    /// own answer, and stays the lane's).
    fn first_sold_out<'a>(&self, order: &'a PlaceOrder) -> Option<&'a (Sku, i64)> {
        if !self.enabled {
            return None;
        }
        order
            .lines
            .first()
            .filter(|(sku, q)| (1..=crate::domain::MAX_QUANTITY).contains(q) && self.items.contains_key(sku))
    }
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
    sold_out: SoldOut,
    /// The batch model this instance's lanes last fitted: where a new lane starts.
    batch_model: Arc<AtomicU64>,
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
            sold_out: SoldOut::new(settings.sold_out_ttl),
            batch_model: Arc::default(),
        }
    }

    /// Where items seen sold out are noted (commands that put stock back clear them).
    pub fn sold_out(&self) -> &SoldOut {
        &self.sold_out
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
            .map_or(0, |l| self.settings.queue_depth.saturating_sub(l.tx.capacity()))
    }

    /// How long an order joining the lane of `sku` now would wait to be answered.
    pub fn estimated_wait(&self, sku: &Sku) -> Duration {
        let Some(lane) = self.lanes.get(&(sku.clone(), self.preferred(sku))) else {
            return Duration::ZERO;
        };
        let queued = self.settings.queue_depth.saturating_sub(lane.tx.capacity());
        lane.times.expected_wait(queued, self.settings.max_batch)
    }

    fn lane(&self, key: &LaneKey) -> LaneHandle {
        self.lanes.get_with(key.clone(), || {
            let (tx, rx) = mpsc::channel(self.settings.queue_depth.max(1));
            let times = Arc::new(LaneTimes::new(self.batch_model.clone()));
            let lane = Lane {
                sku: key.0.clone(),
                bucket: key.1,
                store: self.store.clone(),
                inventory: self.inventory.clone(),
                settings: self.settings,
                times: times.clone(),
                instance_id: self.instance_id.clone(),
                bucket_counts: self.bucket_counts.clone(),
                sold_out: self.sold_out.clone(),
            };
            tokio::spawn(lane.run(rx));
            LaneHandle { tx, times }
        })
    }

    fn overloaded(&self, sku: Sku, reason: &'static str, queue_depth: usize, estimated_wait: Duration) -> CommandError {
        metrics::counter!("surge_sequencer_shed_total", "reason" => reason).increment(1);
        CommandError::Overloaded {
            estimated_wait,
            queue_depth,
            sku,
        }
    }

    /// The lane of `sku` is full: refused with what its queue and wait are now.
    fn queue_full(&self, sku: Sku) -> CommandError {
        let (queued, wait) = (self.queue_depth(&sku), self.estimated_wait(&sku));
        self.overloaded(sku, "queue-full", queued, wait)
    }

    /// An order without an idempotency key for an item noted sold out, refused without the
    /// lane. `None` otherwise. An order with a key goes to the lane: the key's first request
    /// may still be in a batch (here or on another instance), and only the lane's claim waits
    /// for it; the lane answers a sold-out item's orders hundreds to a transaction.
    fn refuse_sold_out(&self, job: &PlaceJob) -> Option<Result<OrderAccepted, CommandError>> {
        if job.key.is_some() {
            return None;
        }
        let (sku, requested) = self.sold_out.first_sold_out(&job.order)?;
        metrics::counter!("surge_sequencer_sold_out_from_memory_total").increment(1);
        Some(Err(DomainError::OutOfStock {
            sku: sku.clone(),
            requested: *requested,
            available: 0,
        }
        .into()))
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
        if let Some(answer) = self.refuse_sold_out(&job) {
            return answer;
        }
        let key = (sku.clone(), self.preferred(&sku));
        let mut lane = self.lane(&key);
        if lane.tx.is_closed() {
            // The lane's task ended (idle, or it failed mid-batch): a new one, with no history.
            self.lanes.invalidate(&key);
            lane = self.lane(&key);
        }
        let budget = self.settings.latency_budget;
        if !budget.is_zero() {
            let queued = self.settings.queue_depth.saturating_sub(lane.tx.capacity());
            let wait = lane.times.expected_wait(queued, self.settings.max_batch);
            if wait > budget {
                return Err(self.overloaded(sku, "latency-budget", queued, wait));
            }
            // Before any batch of this instance has finished nothing says how long one takes:
            // such a lane takes one batch of orders, not a queue of them.
            if !lane.times.known() && queued >= self.settings.max_batch.max(1) {
                return Err(self.overloaded(sku, "latency-budget", queued, wait.max(budget)));
            }
        }
        let (reply, answer) = oneshot::channel();
        let queued_at = Instant::now();
        match lane.tx.try_send((job, reply)) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Err(self.queue_full(sku)),
            Err(mpsc::error::TrySendError::Closed((job, reply))) => {
                // The lane went idle and ended between lookup and send: start a new one.
                self.lanes.invalidate(&key);
                if self.lane(&key).tx.try_send((job, reply)).is_err() {
                    return Err(self.queue_full(sku));
                }
            }
        }
        // Orders waiting in every lane, for dashboards (the lanes take them off in batches).
        metrics::gauge!("surge_sequencer_waiting_orders").increment(1.0);
        let answer = answer.await.unwrap_or(Err(CommandError::LaneStopped));
        // In the lane: its queue and its batch (what the latency budget is about).
        metrics::histogram!("surge_sequencer_order_seconds").record(queued_at.elapsed().as_secs_f64());
        answer
    }
}

struct Lane {
    sku: Sku,
    bucket: u32,
    times: Arc<LaneTimes>,
    sold_out: SoldOut,
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
            let started = Instant::now();
            self.times.started(jobs.len());
            let epoch = self.sold_out.epoch();
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
                            self.answer(&jobs, std::mem::take(outcomes), replies).await;
                            self.times.finished(started, jobs.len(), false);
                            continue;
                        }
                    }
                }
            }
            // The lane is busy until every order of the batch is answered (answering a replayed
            // key reads its stored answer). A commit whose outcome is unknown (a timeout) is no
            // batch time either.
            let succeeded = matches!(&result, Ok(o) if !o.iter().any(|o| matches!(o, Outcome::Unknown(_))));
            match result {
                Ok(outcomes) => {
                    self.note_sold_out(&outcomes, epoch);
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
            self.times.finished(started, jobs.len(), succeeded);
        }
    }

    /// Notes the items a committed batch found sold out (definitively: a refusal, not a
    /// deferral to the other buckets), unless the batch's outcome is not known.
    fn note_sold_out(&self, outcomes: &[Outcome], epoch: u64) {
        if outcomes.iter().any(|o| matches!(o, Outcome::Unknown(_))) {
            return;
        }
        for o in outcomes {
            if let Outcome::Refused(DomainError::OutOfStock { sku, available: 0, .. }) = o {
                self.sold_out.note(sku, epoch);
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A lane whose batches take `fixed_ms` plus `per_order_us` for each order.
    fn times(fixed_ms: u32, per_order_us: u32) -> LaneTimes {
        let t = LaneTimes::new(Arc::default());
        let model = BatchModel {
            fixed_micros: fixed_ms * 1000,
            per_order_nanos: per_order_us * 1000,
        };
        t.model.store(model.pack(), Ordering::Relaxed);
        t
    }

    /// The lane has been deciding a batch of `size` for `running` at the time returned.
    fn busy_for(t: &LaneTimes, running: Duration, size: u64) -> u64 {
        let now = 1_000_000_000;
        t.running_size.store(size, Ordering::Relaxed);
        t.busy_since.store(now - running.as_micros() as u64, Ordering::Relaxed);
        now
    }

    #[test]
    fn a_lane_without_history_expects_no_wait() {
        let t = LaneTimes::new(Arc::default());
        assert!(!t.known());
        assert_eq!(t.expected_wait(100, 256), Duration::ZERO);
    }

    #[test]
    fn an_idle_lane_with_nothing_queued_takes_the_next_order() {
        assert_eq!(times(900, 10).expected_wait(0, 256), Duration::ZERO);
    }

    #[test]
    fn an_order_behind_one_other_waits_one_batch_of_two() {
        assert_eq!(times(10, 100).expected_wait(1, 256), Duration::from_micros(10_200));
    }

    #[test]
    fn a_long_queue_costs_its_orders_not_a_batch_each() {
        // 29 ahead + this one in one batch: 10 ms + 30 x 100 µs.
        assert_eq!(times(10, 100).expected_wait(29, 256), Duration::from_millis(13));
    }

    #[test]
    fn a_queue_longer_than_a_batch_waits_for_every_batch_ahead() {
        // 600 orders in batches of at most 256: 3 fixed times and 600 orders' time.
        assert_eq!(times(20, 100).expected_wait(599, 256), Duration::from_millis(60 + 60));
    }

    #[test]
    fn the_batch_in_progress_counts_what_is_left_of_it() {
        // A batch of 10 (10 ms + 10 x 100 µs = 11 ms) 4 ms in: 7 ms left, then 10.1 ms.
        let t = times(10, 100);
        let now = busy_for(&t, Duration::from_millis(4), 10);
        assert_eq!(t.expected_wait_at(now, 0, 256), Duration::from_micros(17_100));
    }

    #[test]
    fn a_batch_running_longer_than_its_model_sets_the_fixed_time_at_once() {
        // 200 ms into a batch of 10: its fixed time is at least 199 ms, so is every one ahead.
        let t = times(10, 100);
        let now = busy_for(&t, Duration::from_millis(200), 10);
        assert_eq!(t.expected_wait_at(now, 0, 256), Duration::from_micros(199_100));
        assert_eq!(
            t.expected_wait_at(now, 599, 256),
            Duration::from_micros(3 * 199_000 + 60_000),
            "three batches ahead"
        );
    }

    #[test]
    fn a_first_batch_that_stalls_counts_before_any_batch_finished() {
        let t = LaneTimes::new(Arc::default());
        let now = busy_for(&t, Duration::from_millis(100), 1);
        assert_eq!(t.expected_wait_at(now, 0, 256), Duration::from_millis(100));
        assert_eq!(
            t.expected_wait_at(now, 300, 256),
            Duration::from_millis(200),
            "two batches"
        );
    }

    #[test]
    fn a_new_lane_starts_from_what_its_instance_learned() {
        let seed = Arc::new(AtomicU64::new(0));
        let first = LaneTimes::new(seed.clone());
        first.started(8);
        first.finished(Instant::now() - Duration::from_millis(8), 8, true);
        let next = LaneTimes::new(seed.clone());
        assert!(next.known());
        assert_eq!(next.model(), first.model());
    }

    #[test]
    fn a_lane_made_before_its_instance_knew_anything_learns_from_it_later() {
        let seed = Arc::new(AtomicU64::new(0));
        let early = LaneTimes::new(seed.clone());
        assert!(!early.known());
        let other = LaneTimes::new(seed);
        other.started(4);
        other.finished(Instant::now() - Duration::from_millis(4), 4, true);
        assert!(early.known(), "the instance's model, until the lane has its own");
    }

    #[test]
    fn the_fit_separates_the_fixed_time_from_the_time_per_order() {
        // Batches of 3 ms + 40 µs per order (± 200 µs), sizes varying as a sale's do.
        let mut fit = BatchFit::default();
        for i in 0..200u64 {
            let size = 1 + (i * 37) % 120;
            let noise = if i % 2 == 0 { 200.0 } else { -200.0 };
            fit.add(size as f64, 3000.0 + 40.0 * size as f64 + noise);
        }
        let (fixed, per_order) = fit.model();
        assert!((fixed - 3000.0).abs() < 150.0, "{fixed}");
        assert!((per_order - 40.0).abs() < 3.0, "{per_order}");
    }

    #[test]
    fn until_sizes_vary_every_order_costs_its_share_of_the_batch() {
        let mut fit = BatchFit::default();
        for _ in 0..20 {
            fit.add(10.0, 5000.0);
        }
        assert_eq!(fit.model(), (0.0, 500.0));
    }

    #[test]
    fn a_slope_lost_in_the_noise_is_taken_on_its_cautious_side() {
        // Sizes 1-4, each batch 4 ms ± 1 ms of fsync jitter, whatever its size: the fitted
        // slope is noise around 0, so the time per order is its upper bound, well above 0
        // (a frozen 0 would let a burst queue hundreds) and below the mean share.
        let mut fit = BatchFit::default();
        for i in 0..200u64 {
            let size = 1 + i % 4;
            let jitter = [900.0, -700.0, 300.0, -1000.0, 100.0][(i % 5) as usize];
            fit.add(size as f64, 4000.0 + jitter);
        }
        let share = fit.mean_micros / fit.mean_size;
        let (_, per_order) = fit.model();
        assert!(per_order > 100.0 && per_order < share, "{per_order} (share {share})");
    }

    #[test]
    fn a_noisy_fit_never_gives_a_negative_time() {
        // Bigger batches that happened to be faster: no negative time per order, and none
        // above the mean share (which would make the fixed time negative).
        let mut fit = BatchFit::default();
        for i in 0..50u64 {
            let size = 1 + i % 20;
            fit.add(size as f64, 9000.0 - 300.0 * size as f64);
        }
        let (fixed, per_order) = fit.model();
        assert_eq!(per_order, 0.0);
        assert!(fixed > 0.0);
        let mut fit = BatchFit::default();
        for i in 0..50u64 {
            let size = 1 + i % 20;
            fit.add(size as f64, (1000 * size) as f64 - 900.0);
        }
        let (fixed, per_order) = fit.model();
        assert!(fixed >= 0.0 && per_order <= fit.mean_micros / fit.mean_size);
    }

    #[test]
    fn a_finished_batch_feeds_the_fit_and_ends_the_busy_time() {
        let t = LaneTimes::new(Arc::default());
        let started = Instant::now() - Duration::from_millis(8);
        t.started(8);
        assert_ne!(t.busy_since.load(Ordering::Relaxed), 0);
        t.finished(started, 8, true);
        assert_eq!(t.busy_since.load(Ordering::Relaxed), 0, "not busy after a batch");
        // One batch: all of it is the orders' share, nothing fixed yet (1 µs marks "known").
        let model = BatchModel::unpack(t.model.load(Ordering::Relaxed));
        assert_eq!(model.fixed_micros, 1);
        assert!(model.per_order_nanos >= 1_000_000, "8 ms / 8 orders: {model:?}");
        assert!(t.expected_wait(7, 256) >= Duration::from_millis(8));
    }

    #[test]
    fn a_failed_batch_teaches_nothing() {
        let t = LaneTimes::new(Arc::default());
        t.started(8);
        t.finished(Instant::now() - Duration::from_secs(30), 8, false);
        assert_eq!(t.busy_since.load(Ordering::Relaxed), 0, "not busy after it");
        assert!(!t.known(), "a pool timeout's 30 s is not a batch time");
    }
}
