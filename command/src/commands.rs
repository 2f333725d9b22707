//! Command handling: load state, let the aggregates decide, append what they decided.
//!
//! Every handler is `load → decide → append` inside a bounded retry on version conflicts
//! (the commands here commute: reserving for two different orders can be decided in either
//! order, so a clash only means "decide again on the newer state"). A command that touches
//! several streams (cancelling an order releases each SKU) appends them all in one
//! transaction: all or nothing. Placing an order goes through the per-SKU lanes of
//! [`crate::sequencer`], which batch many orders into one such transaction.
//!
//! An item split into stock buckets: a transition of an order goes to the bucket each line was
//! reserved from (the line records it), so a payment sells and a release returns stock there;
//! admin commands on the item (add, restock, change the buckets) lock and decide on all its
//! buckets at once ([`crate::buckets::lock_items`]). A release or expiry also gives the order's
//! units back to the customer's purchase allowance, in the same transaction.

pub use crate::answers::{CommandError, OrderAccepted};
use crate::buckets::{cache_items, lock_items, BucketAppends};
use crate::domain::buckets::BucketEvents;
use crate::domain::payment::{on_captured_charge, CapturedCharge, Settled, Settlement};
use crate::domain::{
    checkout, Aggregate, DomainError, Inventory, InventoryCommand, ItemStock, NewItem, Order, OrderCommand, OrderStatus,
};
use crate::idempotency::IdempotencyKey;
use crate::sequencer::{PlaceJob, Sequencer, SequencerSettings};
use crate::store::{state_cache, Committed, EventStore, StateCache, StoreError, StreamAppend};
use backon::{ExponentialBuilder, Retryable};
use chrono::Utc;
use serde::Serialize;
use sha2::Digest;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use surge_events::order::CancelReason;
use surge_events::{CustomerId, EventMetadata, Money, OrderId, Sku, StreamId};

/// A new catalog item with its opening stock.
#[derive(Debug, Clone)]
pub struct AddItem {
    pub sku: Sku,
    pub name: String,
    pub category: String,
    pub price: Money,
    pub initial_stock: i64,
    /// How many stock buckets (streams) the item's stock is split into; 1: not split.
    pub buckets: u32,
    /// The most units one customer may hold reserved or bought at once.
    pub max_per_customer: Option<i64>,
}

/// An order as the customer asks for it: SKUs and quantities. Prices come from the catalog.
#[derive(Debug, Clone, Serialize)]
pub struct PlaceOrder {
    pub customer_id: CustomerId,
    pub lines: Vec<(Sku, i64)>,
}

#[derive(Debug, Clone)]
pub struct CommandSettings {
    pub reservation_ttl: Duration,
    pub max_conflict_retries: usize,
    /// The per-SKU lanes every order goes through (group commit).
    pub sequencer: SequencerSettings,
    /// This command API instance's id: which stock bucket of each item it takes from first.
    pub instance_id: Arc<str>,
}

impl Default for CommandSettings {
    fn default() -> Self {
        CommandSettings {
            reservation_ttl: Duration::from_secs(15 * 60),
            max_conflict_retries: 8,
            sequencer: SequencerSettings::default(),
            instance_id: default_instance_id().into(),
        }
    }
}

/// The instance id when none is configured: the host's name and this process's id.
pub fn default_instance_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "surge".into());
    format!("{host}-{}", std::process::id())
}

/// Rows kept beside the events of a transition, in the same transaction.
enum Bookkeeping<'a> {
    /// The order's hold is over (cancelled or expired): forget its deadline.
    ReservationSettled,
    /// A payment was submitted: queue it for the payment worker.
    PaymentSubmitted { token: &'a str },
    /// The payment settled (paid, failed or refunded): forget it and the hold's deadline.
    PaymentSettled,
}

impl Bookkeeping<'_> {
    async fn apply(&self, conn: &mut sqlx::PgConnection, order_id: OrderId) -> Result<(), StoreError> {
        match self {
            Bookkeeping::ReservationSettled => surge_store::deadlines::forget(conn, order_id).await?,
            Bookkeeping::PaymentSubmitted { token } => {
                sqlx::query("INSERT INTO pending_payments (order_id, payment_token) VALUES ($1, $2)")
                    .bind(order_id.0)
                    .bind(token)
                    .execute(conn)
                    .await?;
            }
            Bookkeeping::PaymentSettled => surge_store::deadlines::forget_with_payment(conn, order_id).await?,
        }
        Ok(())
    }
}

/// The write side's application service, shared by the HTTP handlers and the workers.
#[derive(Clone)]
pub struct Commands {
    store: EventStore,
    inventory: StateCache<Inventory>,
    orders: StateCache<Order>,
    sequencer: Sequencer,
    settings: CommandSettings,
}

impl Commands {
    pub fn new(store: EventStore, settings: CommandSettings) -> Self {
        let inventory = state_cache(100_000);
        let sequencer = Sequencer::new(
            store.clone(),
            inventory.clone(),
            settings.sequencer,
            settings.instance_id.clone(),
        );
        Commands {
            store,
            inventory,
            orders: state_cache(100_000),
            sequencer,
            settings,
        }
    }

    pub fn store(&self) -> &EventStore {
        &self.store
    }

    /// Runs `attempt` again on version conflicts, a bounded number of times with jittered backoff;
    /// when they are used up the conflict is answered with the stream's current version.
    async fn retrying<T, F, Fut>(&self, attempt: F) -> Result<T, CommandError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, CommandError>>,
    {
        let policy = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(1))
            .with_max_delay(Duration::from_millis(50))
            .with_max_times(self.settings.max_conflict_retries)
            .with_jitter();
        match attempt.retry(policy).when(CommandError::is_store_conflict).await {
            Err(CommandError::Store(StoreError::Conflict { stream_id, .. })) => {
                let current_version = self
                    .store
                    .stream_version(&surge_events::StreamId(stream_id.clone()))
                    .await?;
                Err(CommandError::Conflict {
                    stream_id,
                    current_version,
                })
            }
            other => other,
        }
    }

    /// Decides on every bucket of one item and appends the events, with all the item's bucket
    /// streams (at least `min_streams` of them) locked and read in the transaction like every
    /// other writer of them (lanes, order transitions) does.
    async fn on_item(
        &self,
        sku: &Sku,
        min_streams: u32,
        decide: impl Fn(&ItemStock) -> Result<BucketEvents, DomainError>,
        meta: &EventMetadata,
    ) -> Result<Committed, CommandError> {
        let result = self
            .retrying(|| async {
                let mut tx = self.store.pool().begin().await?;
                let min: BTreeMap<Sku, u32> = [(sku.clone(), min_streams)].into_iter().collect();
                let mut locked = lock_items(&mut tx, &self.inventory, std::slice::from_ref(sku), &min).await?;
                let item = locked.items.remove(sku).unwrap_or_default();
                let events = decide(&item)?;
                let mut appends = BucketAppends::default();
                for (k, e) in &events {
                    appends.push(&locked.versions, sku, *k, e, meta);
                }
                let after = appends.versions_after();
                let committed = EventStore::append_in(&mut tx, &appends.into_appends()).await?;
                self.store.commit(tx, &committed).await?;
                let mut item = item;
                item.evolve_all(&events);
                self.sequencer.bucket_counts().note(sku, item.settings().buckets);
                cache_items(&self.inventory, &[(sku.clone(), item)].into_iter().collect(), &after).await;
                Ok(committed)
            })
            .await;
        // Stock may be back (a restock, a move): the item is no longer refused from memory,
        // whatever came of the command (an unknown outcome may have committed).
        self.sequencer.sold_out().stock_returned([sku]);
        result.map_err(|e| e.or_unknown_outcome(|| format!("/v1/catalog/items/{sku}")))
    }

    async fn load_order(&self, order_id: OrderId) -> Result<(i64, Order), CommandError> {
        let (version, order) = self.store.load(&self.orders, &order_id.stream_id()).await?;
        if version == 0 {
            return Err(DomainError::UnknownOrder(order_id).into());
        }
        Ok((version, order))
    }

    #[tracing::instrument(skip_all, fields(sku = %cmd.sku, buckets = cmd.buckets))]
    pub async fn add_item(&self, cmd: AddItem, meta: &EventMetadata) -> Result<Committed, CommandError> {
        let item = NewItem {
            sku: cmd.sku.clone(),
            name: cmd.name.clone(),
            category: cmd.category.clone(),
            price: cmd.price.clone(),
            initial_stock: cmd.initial_stock,
            buckets: cmd.buckets,
            max_per_customer: cmd.max_per_customer,
        };
        let streams = cmd.buckets.clamp(1, crate::domain::MAX_BUCKETS);
        self.on_item(&cmd.sku, streams, |stock| stock.add_item(&item), meta)
            .await
    }

    /// Adds stock, spread over the item's buckets.
    #[tracing::instrument(skip_all, fields(sku = %sku, quantity))]
    pub async fn restock(&self, sku: &Sku, quantity: i64, meta: &EventMetadata) -> Result<Committed, CommandError> {
        self.on_item(sku, 1, |stock| stock.restock(sku, quantity), meta).await
    }

    /// Splits the item's stock into `buckets` buckets from now on (available stock is spread
    /// over them; holds stay where they are).
    #[tracing::instrument(skip_all, fields(sku = %sku, buckets))]
    pub async fn set_buckets(&self, sku: &Sku, buckets: i64, meta: &EventMetadata) -> Result<Committed, CommandError> {
        let streams = u32::try_from(buckets).unwrap_or(1).clamp(1, crate::domain::MAX_BUCKETS);
        self.on_item(sku, streams, |stock| stock.set_buckets(sku, buckets), meta)
            .await
    }

    /// Sets (or lifts, with `None`) the most units one customer may hold of the item.
    #[tracing::instrument(skip_all, fields(sku = %sku))]
    pub async fn set_purchase_limit(
        &self,
        sku: &Sku,
        max_per_customer: Option<i64>,
        meta: &EventMetadata,
    ) -> Result<Committed, CommandError> {
        self.on_item(sku, 1, |stock| stock.set_purchase_limit(sku, max_per_customer), meta)
            .await
    }

    /// Places an order: reserves every line's stock and records the order, all or nothing.
    #[tracing::instrument(skip_all, fields(customer = %cmd.customer_id, lines = cmd.lines.len()))]
    pub async fn place_order(
        &self,
        cmd: PlaceOrder,
        key: Option<IdempotencyKey>,
        meta: &EventMetadata,
    ) -> Result<OrderAccepted, CommandError> {
        // A repeated key is answered by the lane (its claim fails and the stored answer is
        // read then), so the first request of a key costs no lookup.
        let order_id = OrderId::new();
        let expires_at = Utc::now()
            + chrono::Duration::from_std(self.settings.reservation_ttl).unwrap_or(chrono::Duration::minutes(15));
        self.sequencer
            .place(PlaceJob {
                order: checkout::PlaceOrder {
                    order_id,
                    customer_id: cmd.customer_id.clone(),
                    lines: cmd.lines.clone(),
                    reservation_expires_at: expires_at,
                },
                key,
                meta: meta.clone(),
            })
            .await
    }

    /// Decides `cmd` on the order and `per_line` on each SKU it holds stock of (in the bucket
    /// the line was reserved from), appends all of it in one transaction together with the
    /// `bookkeeping` rows (and, when `releases`, the order's purchase allowance given back),
    /// retrying on conflicts.
    async fn transition(
        &self,
        order_id: OrderId,
        cmd: OrderCommand,
        per_line: impl Fn(&Sku) -> InventoryCommand,
        bookkeeping: Bookkeeping<'_>,
        releases: bool,
        meta: &EventMetadata,
    ) -> Result<Committed, CommandError> {
        let mut skus = Vec::new();
        let result = self
            .retrying(|| async {
                let (version, order) = self.load_order(order_id).await?;
                let events = order.decide(&cmd)?;
                let mut appends = vec![StreamAppend::new(order_id.stream_id(), version, &events, meta)];
                let mut lines: Vec<(Sku, u32)> = order.lines.iter().map(|l| (l.sku.clone(), l.bucket)).collect();
                lines.sort();
                lines.dedup();
                // The buckets' streams are locked before they are read, as the sequencer's lanes
                // do: a payment and a lane writing the same bucket take turns instead of conflicting.
                // Bucket 0 of an item (its catalog entry) is read beside, without its lock.
                let mut tx = self.store.pool().begin().await?;
                let streams: Vec<StreamId> = lines.iter().map(|(s, k)| s.bucket_stream_id(*k)).collect();
                EventStore::lock_streams(&mut tx, &streams).await?;
                let mut to_load = streams.clone();
                to_load.extend(lines.iter().filter(|(_, k)| *k != 0).map(|(s, _)| s.stream_id()));
                let loaded = EventStore::load_many_in(&mut tx, &self.inventory, &to_load).await?;
                let (own, firsts) = loaded.split_at(streams.len());
                let mut firsts = firsts.iter();
                for (((sku, k), stream), (sku_version, state)) in lines.iter().zip(streams).zip(own) {
                    let state = if *k == 0 {
                        state.clone()
                    } else {
                        let first = firsts.next().map(|(_, f)| f.clone()).unwrap_or_default();
                        state.clone().in_bucket(*k, &first)
                    };
                    let sku_events = state.decide(&per_line(sku))?;
                    if !sku_events.is_empty() {
                        appends.push(StreamAppend::new(stream, *sku_version, &sku_events, meta));
                    }
                }
                let committed = EventStore::append_in(&mut tx, &appends).await?;
                bookkeeping.apply(&mut tx, order_id).await?;
                if releases {
                    surge_store::allowances::release(&mut tx, order_id).await?;
                }
                self.store.commit(tx, &committed).await?;
                Ok((committed, lines))
            })
            .await
            .map(|(committed, lines)| {
                skus.extend(lines.into_iter().map(|(sku, _)| sku));
                committed
            });
        if releases {
            // Stock is back on sale (or may be, if the outcome is unknown): not sold out.
            match &result {
                Ok(_) => self.sequencer.sold_out().stock_returned(&skus),
                // Only a commit whose outcome is not known may have put stock back.
                Err(CommandError::Store(StoreError::CommitOutcomeUnknown(_))) => {
                    self.sequencer.sold_out().stock_returned_anywhere()
                }
                Err(_) => {}
            }
        }
        result.map_err(|e| e.or_unknown_outcome(|| format!("/v1/orders/{order_id}")))
    }

    /// Cancels a placed order and puts its stock back on sale, in one transaction.
    #[tracing::instrument(skip_all, fields(order_id = %order_id))]
    pub async fn cancel_order(
        &self,
        order_id: OrderId,
        reason: CancelReason,
        meta: &EventMetadata,
    ) -> Result<Committed, CommandError> {
        self.transition(
            order_id,
            OrderCommand::CancelOrder { reason },
            |sku| InventoryCommand::ReleaseReservation {
                sku: sku.clone(),
                order_id,
            },
            Bookkeeping::ReservationSettled,
            true,
            meta,
        )
        .await
    }

    /// The hold of an unpaid order ran out: cancel it and expire its reservations. An order
    /// whose payment is being settled (or its outcome reconciled) is left to the payment, hold
    /// and all; a settled one needs nothing.
    #[tracing::instrument(skip_all, fields(order_id = %order_id))]
    pub async fn expire_order(&self, order_id: OrderId) -> Result<Option<Committed>, CommandError> {
        let (_, order) = self.load_order(order_id).await?;
        match order.status {
            OrderStatus::Placed => {
                let meta = EventMetadata::new("expiry-worker");
                let now = Utc::now();
                self.transition(
                    order_id,
                    OrderCommand::CancelOrder {
                        reason: CancelReason::ReservationExpired,
                    },
                    |sku| InventoryCommand::ExpireReservation {
                        sku: sku.clone(),
                        order_id,
                        now,
                    },
                    Bookkeeping::ReservationSettled,
                    true,
                    &meta,
                )
                .await
                .map(Some)
            }
            OrderStatus::PaymentPending => Ok(None),
            _ => {
                let mut conn = self.store.pool().acquire().await?;
                Bookkeeping::ReservationSettled.apply(&mut conn, order_id).await?;
                Ok(None)
            }
        }
    }

    /// Records a payment attempt for a placed order; the payment worker settles it.
    #[tracing::instrument(skip_all, fields(order_id = %order_id))]
    pub async fn submit_payment(
        &self,
        order_id: OrderId,
        token: &str,
        meta: &EventMetadata,
    ) -> Result<Committed, CommandError> {
        crate::domain::payment::check_token(token)?;
        let fingerprint = hex::encode(&sha2::Sha256::digest(token.as_bytes())[..8]);
        self.retrying(|| async {
            let (version, order) = self.load_order(order_id).await?;
            let events = order.decide(&OrderCommand::SubmitPayment {
                token_fingerprint: fingerprint.clone(),
            })?;
            let mut tx = self.store.pool().begin().await?;
            let committed = EventStore::append_in(
                &mut tx,
                &[StreamAppend::new(order_id.stream_id(), version, &events, meta)],
            )
            .await?;
            Bookkeeping::PaymentSubmitted { token }.apply(&mut tx, order_id).await?;
            self.store.commit(tx, &committed).await?;
            Ok(committed)
        })
        .await
        .map_err(|e| e.or_unknown_outcome(|| format!("/v1/orders/{order_id}")))
    }

    /// Records a payment's definite outcome: paid (the held stock is sold) or failed (it is
    /// released). A captured charge the order can no longer take (its stock is gone, or it is
    /// no longer awaiting payment) is answered with [`Settled::MustRefund`]: the caller gives
    /// the money back and records it with [`Self::refund_payment`]. A failure for an order no
    /// longer awaiting payment, or a charge it recorded already, only clears the bookkeeping.
    #[tracing::instrument(skip_all, fields(order_id = %order_id))]
    pub async fn settle_payment(
        &self,
        order_id: OrderId,
        settlement: Settlement,
        meta: &EventMetadata,
    ) -> Result<Settled, CommandError> {
        let (_, order) = self.load_order(order_id).await?;
        let clear = || async {
            let mut conn = self.store.pool().acquire().await?;
            Bookkeeping::PaymentSettled.apply(&mut conn, order_id).await?;
            Ok::<_, CommandError>(Settled::Recorded)
        };
        match settlement {
            Settlement::Paid { reference } => match on_captured_charge(order.status) {
                CapturedCharge::Confirm => {
                    let paid = self
                        .transition(
                            order_id,
                            OrderCommand::ConfirmPayment {
                                payment_reference: reference.clone(),
                            },
                            |sku| InventoryCommand::CommitReservation {
                                sku: sku.clone(),
                                order_id,
                            },
                            Bookkeeping::PaymentSettled,
                            false,
                            meta,
                        )
                        .await;
                    match paid {
                        Ok(_) => Ok(Settled::Recorded),
                        Err(CommandError::Domain(DomainError::NoReservation { .. })) => Ok(Settled::MustRefund {
                            reference,
                            reason: "the stock was no longer held".into(),
                        }),
                        Err(e) => Err(e),
                    }
                }
                CapturedCharge::AlreadyRecorded => clear().await,
                CapturedCharge::Refund => Ok(Settled::MustRefund {
                    reference,
                    reason: format!("the order was {} before the charge was confirmed", order.status),
                }),
            },
            Settlement::Failed { reason } if order.status == OrderStatus::PaymentPending => {
                self.transition(
                    order_id,
                    OrderCommand::FailPayment { reason },
                    |sku| InventoryCommand::ReleaseReservation {
                        sku: sku.clone(),
                        order_id,
                    },
                    Bookkeeping::PaymentSettled,
                    true,
                    meta,
                )
                .await?;
                Ok(Settled::Recorded)
            }
            Settlement::Failed { .. } => clear().await,
        }
    }

    /// Records that a captured charge was given back: `PaymentRefunded`, any stock the order
    /// still holds released, its payment and hold bookkeeping cleared, in one transaction.
    #[tracing::instrument(skip_all, fields(order_id = %order_id))]
    pub async fn refund_payment(
        &self,
        order_id: OrderId,
        payment_reference: String,
        reason: String,
        meta: &EventMetadata,
    ) -> Result<Committed, CommandError> {
        self.transition(
            order_id,
            OrderCommand::RefundPayment {
                payment_reference,
                reason,
            },
            |sku| InventoryCommand::ReleaseReservation {
                sku: sku.clone(),
                order_id,
            },
            Bookkeeping::PaymentSettled,
            true,
            meta,
        )
        .await
    }

    /// The current state of an order as the write side sees it.
    pub async fn order(&self, order_id: OrderId) -> Result<(i64, Order), CommandError> {
        self.load_order(order_id).await
    }

    /// The current state of a SKU's inventory (its bucket 0) as the write side sees it.
    pub async fn inventory(&self, sku: &Sku) -> Result<(i64, Inventory), CommandError> {
        Ok(self.store.load(&self.inventory, &sku.stream_id()).await?)
    }

    /// Every bucket of an item as the write side sees it now (read without their locks).
    pub async fn item_stock(&self, sku: &Sku) -> Result<ItemStock, CommandError> {
        let (_, first) = self.inventory(sku).await?;
        let n = ItemStock::new(vec![first.clone()]).streams();
        let mut states = vec![first];
        for k in 1..n {
            states.push(self.store.load(&self.inventory, &sku.bucket_stream_id(k)).await?.1);
        }
        Ok(ItemStock::new(states))
    }

    /// This command API instance's id (which bucket of each item it prefers).
    pub fn instance_id(&self) -> &str {
        &self.settings.instance_id
    }
}
