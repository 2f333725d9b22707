//! Command handling: load state, let the aggregates decide, append what they decided.
//!
//! Every handler is `load → decide → append` inside a bounded retry on version conflicts
//! (the commands here commute: reserving for two different orders can be decided in either
//! order, so a clash only means "decide again on the newer state"). A command that touches
//! several streams (cancelling an order releases each SKU) appends them all in one
//! transaction: all or nothing. Placing an order goes through the per-SKU lanes of
//! [`crate::sequencer`], which batch many orders into one such transaction.

pub use crate::answers::{CommandError, OrderAccepted};
use crate::domain::payment::{on_captured_charge, CapturedCharge, Settled, Settlement};
use crate::domain::{checkout, Aggregate, DomainError, Inventory, InventoryCommand, Order, OrderCommand, OrderStatus};
use crate::idempotency::IdempotencyKey;
use crate::sequencer::{PlaceJob, Sequencer, SequencerSettings};
use crate::store::{state_cache, Committed, EventStore, StateCache, StoreError, StreamAppend};
use backon::{ExponentialBuilder, Retryable};
use chrono::Utc;
use serde::Serialize;
use sha2::Digest;
use std::future::Future;
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
}

/// An order as the customer asks for it: SKUs and quantities. Prices come from the catalog.
#[derive(Debug, Clone, Serialize)]
pub struct PlaceOrder {
    pub customer_id: CustomerId,
    pub lines: Vec<(Sku, i64)>,
}

#[derive(Debug, Clone, Copy)]
pub struct CommandSettings {
    pub reservation_ttl: Duration,
    pub max_conflict_retries: usize,
    /// The per-SKU lanes every order goes through (group commit).
    pub sequencer: SequencerSettings,
}

impl Default for CommandSettings {
    fn default() -> Self {
        CommandSettings {
            reservation_ttl: Duration::from_secs(15 * 60),
            max_conflict_retries: 8,
            sequencer: SequencerSettings::default(),
        }
    }
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
        let sequencer = Sequencer::new(store.clone(), inventory.clone(), settings.sequencer);
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

    /// Decides `cmd` on one SKU and appends its events, with the SKU's stream locked and read
    /// in the transaction like every other writer of it (lanes, order transitions) does.
    async fn on_sku(&self, sku: &Sku, cmd: InventoryCommand, meta: &EventMetadata) -> Result<Committed, CommandError> {
        self.retrying(|| async {
            let stream = [sku.stream_id()];
            let mut tx = self.store.pool().begin().await?;
            EventStore::lock_streams(&mut tx, &stream).await?;
            let (version, state) = EventStore::load_many_in(&mut tx, &self.inventory, &stream)
                .await?
                .pop()
                .unwrap_or_default();
            let events = state.decide(&cmd)?;
            let [stream] = stream;
            let committed =
                EventStore::append_in(&mut tx, &[StreamAppend::new(stream, version, &events, meta)]).await?;
            self.store.commit(tx, &committed).await?;
            Ok(committed)
        })
        .await
        .map_err(|e| e.or_unknown_outcome(|| format!("/v1/catalog/items/{sku}")))
    }

    async fn load_order(&self, order_id: OrderId) -> Result<(i64, Order), CommandError> {
        let (version, order) = self.store.load(&self.orders, &order_id.stream_id()).await?;
        if version == 0 {
            return Err(DomainError::UnknownOrder(order_id).into());
        }
        Ok((version, order))
    }

    #[tracing::instrument(skip_all, fields(sku = %cmd.sku))]
    pub async fn add_item(&self, cmd: AddItem, meta: &EventMetadata) -> Result<Committed, CommandError> {
        let add = InventoryCommand::AddItem {
            sku: cmd.sku.clone(),
            name: cmd.name.clone(),
            category: cmd.category.clone(),
            price: cmd.price.clone(),
            initial_stock: cmd.initial_stock,
        };
        self.on_sku(&cmd.sku, add, meta).await
    }

    #[tracing::instrument(skip_all, fields(sku = %sku, quantity))]
    pub async fn restock(&self, sku: &Sku, quantity: i64, meta: &EventMetadata) -> Result<Committed, CommandError> {
        let restock = InventoryCommand::Restock {
            sku: sku.clone(),
            quantity,
        };
        self.on_sku(sku, restock, meta).await
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

    /// Decides `cmd` on the order and `per_line` on each SKU it holds stock of, appends all of
    /// it in one transaction together with the `bookkeeping` rows, retrying on conflicts.
    async fn transition(
        &self,
        order_id: OrderId,
        cmd: OrderCommand,
        per_line: impl Fn(&Sku) -> InventoryCommand,
        bookkeeping: Bookkeeping<'_>,
        meta: &EventMetadata,
    ) -> Result<Committed, CommandError> {
        self.retrying(|| async {
            let (version, order) = self.load_order(order_id).await?;
            let events = order.decide(&cmd)?;
            let mut appends = vec![StreamAppend::new(order_id.stream_id(), version, &events, meta)];
            let mut skus: Vec<_> = order.lines.iter().map(|l| l.sku.clone()).collect();
            skus.sort();
            skus.dedup();
            // The SKUs' streams are locked before they are read, as the sequencer's lanes do:
            // a payment and a lane writing the same SKU take turns instead of conflicting.
            let mut tx = self.store.pool().begin().await?;
            let streams: Vec<StreamId> = skus.iter().map(|s| s.stream_id()).collect();
            EventStore::lock_streams(&mut tx, &streams).await?;
            let loaded = EventStore::load_many_in(&mut tx, &self.inventory, &streams).await?;
            for ((sku, stream), (sku_version, state)) in skus.iter().zip(streams).zip(loaded) {
                let sku_events = state.decide(&per_line(sku))?;
                if !sku_events.is_empty() {
                    appends.push(StreamAppend::new(stream, sku_version, &sku_events, meta));
                }
            }
            let committed = EventStore::append_in(&mut tx, &appends).await?;
            bookkeeping.apply(&mut tx, order_id).await?;
            self.store.commit(tx, &committed).await?;
            Ok(committed)
        })
        .await
        .map_err(|e| e.or_unknown_outcome(|| format!("/v1/orders/{order_id}")))
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
            meta,
        )
        .await
    }

    /// The current state of an order as the write side sees it.
    pub async fn order(&self, order_id: OrderId) -> Result<(i64, Order), CommandError> {
        self.load_order(order_id).await
    }

    /// The current state of a SKU's inventory as the write side sees it.
    pub async fn inventory(&self, sku: &Sku) -> Result<(i64, Inventory), CommandError> {
        Ok(self.store.load(&self.inventory, &sku.stream_id()).await?)
    }
}
