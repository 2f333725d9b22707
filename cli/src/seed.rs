//! `surge seed`: writes a generated history straight through the event store's batch append
//! (for replay benchmarks and analyst practice): items, then orders that are placed (stock
//! reserved), some paid (stock sold), some cancelled (stock released). Deterministic per seed.

use clap::Args;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::time::Instant;
use surge_command::store::{EventStore, NewEvent, StreamAppend};
use surge_events::inventory::{ItemAdded, ReservationReleased, StockCommitted, StockReserved};
use surge_events::order::{CancelReason, OrderCancelled, OrderPaid, OrderPlaced, PaymentSubmitted};
use surge_events::{
    Currency, CustomerId, EventMetadata, InventoryEvent, Money, OrderEvent, OrderId, OrderLine, Payload, Sku, StreamId,
    StreamType,
};
use surge_runtime::DatabaseConfig;

#[derive(Debug, Clone, Args)]
pub struct SeedConfig {
    #[command(flatten)]
    pub db: DatabaseConfig,
    /// Events to write (about).
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Distinct SKUs.
    #[arg(long, default_value_t = 200)]
    pub skus: usize,
    /// Events per transaction.
    #[arg(long, default_value_t = 5000)]
    pub batch: usize,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

/// Streams and their events of one batch, in the order they were generated.
#[derive(Default)]
struct Batch {
    order: Vec<StreamId>,
    streams: HashMap<StreamId, (StreamType, i64, Vec<NewEvent>)>,
    events: usize,
}

impl Batch {
    fn push<P: Payload>(&mut self, stream: StreamId, version_before: i64, event: &P, meta: &EventMetadata) {
        let entry = self.streams.entry(stream.clone()).or_insert_with(|| {
            self.order.push(stream);
            (P::STREAM_TYPE, version_before, Vec::new())
        });
        entry.2.push(NewEvent::new(event, meta));
        self.events += 1;
    }

    fn appends(&mut self) -> Vec<StreamAppend> {
        let mut streams = std::mem::take(&mut self.streams);
        self.events = 0;
        std::mem::take(&mut self.order)
            .into_iter()
            .filter_map(|id| {
                streams
                    .remove(&id)
                    .map(|(stream_type, expected_version, events)| StreamAppend {
                        stream_id: id,
                        stream_type,
                        expected_version,
                        events,
                    })
            })
            .collect()
    }
}

pub async fn run(config: SeedConfig) -> anyhow::Result<()> {
    let pool = surge_runtime::db::connect(&config.db).await?;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(config.seed);
    let eur = Currency::parse("EUR")?;
    let meta = EventMetadata::new("seed");
    let started = Instant::now();
    let run = format!("{:X}", chrono::Utc::now().timestamp_millis() % 0x1000_0000);
    let skus: Vec<Sku> = (0..config.skus.max(1))
        .map(|i| Sku::parse(format!("S{run}-{i}")))
        .collect::<Result<_, _>>()?;
    let mut versions: HashMap<Sku, i64> = HashMap::new();
    let mut batch = Batch::default();
    let mut written = 0u64;
    for (i, sku) in skus.iter().enumerate() {
        let added = InventoryEvent::ItemAdded(ItemAdded {
            sku: sku.clone(),
            name: format!("Seeded item {i}"),
            category: format!("cat-{}", i % 10),
            price: Money::new(100 + (i as i64 % 50) * 100, eur.clone())?,
            initial_stock: 1_000_000_000,
        });
        batch.push(sku.stream_id(), 0, &added, &meta);
        versions.insert(sku.clone(), 1);
    }
    while written + (batch.events as u64) < config.events {
        let sku = &skus[rng.gen_range(0..skus.len())];
        let quantity = rng.gen_range(1..4);
        let order_id = OrderId::new();
        let price = Money::new(100, eur.clone())?;
        let expires_at = chrono::Utc::now() + chrono::Duration::minutes(15);
        let v = versions.get(sku).copied().unwrap_or(0);
        // A stream appears once per batch: its events continue from the version it had then.
        let before = batch.streams.get(&sku.stream_id()).map_or(v, |s| s.1);
        let reserve = InventoryEvent::StockReserved(StockReserved {
            sku: sku.clone(),
            order_id,
            quantity,
            expires_at,
        });
        batch.push(sku.stream_id(), before, &reserve, &meta);
        let mut sku_events = 1;
        let placed = OrderEvent::OrderPlaced(OrderPlaced {
            order_id,
            customer_id: CustomerId::parse(format!("c{}", rng.gen_range(0..10_000)))?,
            lines: vec![OrderLine {
                sku: sku.clone(),
                quantity,
                unit_price: price.clone(),
                bucket: 0,
            }],
            total: price.checked_mul(quantity)?,
            reservation_expires_at: expires_at,
        });
        let mut order_events = vec![placed];
        match rng.gen_range(0..4) {
            0 => {
                order_events.push(OrderEvent::OrderCancelled(OrderCancelled {
                    order_id,
                    reason: CancelReason::CustomerRequest,
                }));
                let release = InventoryEvent::ReservationReleased(ReservationReleased {
                    sku: sku.clone(),
                    order_id,
                    quantity,
                });
                batch.push(sku.stream_id(), before, &release, &meta);
                sku_events += 1;
            }
            1 | 2 => {
                order_events.push(OrderEvent::PaymentSubmitted(PaymentSubmitted {
                    order_id,
                    token_fingerprint: "seed".into(),
                }));
                order_events.push(OrderEvent::OrderPaid(OrderPaid {
                    order_id,
                    payment_reference: format!("seed-{}", order_id.0.simple()),
                    amount: price.checked_mul(quantity)?,
                }));
                let commit = InventoryEvent::StockCommitted(StockCommitted {
                    sku: sku.clone(),
                    order_id,
                    quantity,
                    unit_price: price.clone(),
                });
                batch.push(sku.stream_id(), before, &commit, &meta);
                sku_events += 1;
            }
            _ => {}
        }
        versions.insert(sku.clone(), v + sku_events);
        for e in &order_events {
            batch.push(order_id.stream_id(), 0, e, &meta);
        }
        if batch.events >= config.batch {
            written += flush(&pool, &mut batch).await?;
        }
    }
    written += flush(&pool, &mut batch).await?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "seeded {written} events over {} SKUs in {secs:.1} s ({:.0} events/s)",
        skus.len(),
        written as f64 / secs
    );
    Ok(())
}

async fn flush(pool: &sqlx::PgPool, batch: &mut Batch) -> anyhow::Result<u64> {
    let appends = batch.appends();
    if appends.is_empty() {
        return Ok(0);
    }
    let mut tx = pool.begin().await?;
    let committed = EventStore::append_in(&mut tx, &appends).await?;
    tx.commit().await?;
    Ok(committed.positions.len() as u64)
}
