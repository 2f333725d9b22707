//! The replay's bulk load (events folded in memory, rows written with `COPY`, secondary
//! indexes built after the load) against the live projector's path, on the real Postgres and
//! Kafka: the rebuilt views hold exactly the rows the live path folds from a mixed history,
//! and a replay run while writers keep committing and one transaction holds an earlier
//! position open waits for it, keeps its events, and leaves the live projector to go on from
//! there with no gap and nothing applied twice.

use chrono::{DateTime, Duration as Minutes, Utc};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sqlx::{Connection, PgConnection};
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use surge_events::inventory::{
    BucketsChanged, ItemAdded, PurchaseLimitSet, ReservationExpired, ReservationReleased, StockCommitted, StockMovedIn,
    StockMovedOut, StockReserved, StockRestocked,
};
use surge_events::order::{
    CancelReason, OrderCancelled, OrderLine, OrderPaid, OrderPlaced, OrderShipped, PaymentFailed, PaymentRefunded,
    PaymentSubmitted,
};
use surge_events::{
    decode, Currency, CustomerId, EventEnvelope, EventMetadata, InventoryEvent, Money, OrderEvent, OrderId, Payload,
    Sku, StreamId, StreamOf, StreamType,
};
use surge_projections::catalog::{self, CatalogRow};
use surge_projections::orders::{self, OrderRow};
use surge_projections::replay::{replay, ReplayConfig, ReplayProgress, Source};
use surge_projections::{BatchStats, Projection, Projector, ProjectorConfig};
use surge_store::append::{self, NewEvent, StreamAppend};
use surge_testkit::{eventually, Service, TestEnv};

fn eur(minor: i64) -> Money {
    Money::new(minor, Currency::parse("EUR").unwrap()).unwrap()
}

/// Events to append, stream by stream, with the versions the streams have reached.
#[derive(Default)]
struct History {
    versions: HashMap<StreamId, i64>,
}

impl History {
    /// One append of `events` to `stream` continuing from its version (applied to the versions
    /// kept here: the caller appends it or the test fails anyway).
    fn on<P: Payload>(&mut self, stream: StreamId, events: &[P]) -> StreamAppend {
        let v = self.versions.entry(stream.clone()).or_insert(0);
        let meta = EventMetadata::new("bulk-replay-test");
        let append = StreamAppend {
            stream_id: stream,
            stream_type: P::STREAM_TYPE,
            expected_version: *v,
            events: events.iter().map(|e| NewEvent::new(e, &meta)).collect(),
        };
        *v += events.len() as i64;
        append
    }
}

async fn commit(pool: &sqlx::PgPool, appends: &[StreamAppend]) {
    let mut tx = pool.begin().await.unwrap();
    let committed = append::append(&mut tx, appends).await.unwrap();
    append::commit(pool, tx, &committed).await.unwrap();
}

fn item(sku: &Sku, stock: i64) -> InventoryEvent {
    InventoryEvent::ItemAdded(ItemAdded {
        sku: sku.clone(),
        name: format!("Item {sku}"),
        category: "bulk".into(),
        price: eur(250),
        initial_stock: stock,
    })
}

/// How an order of [`order_appends`] ends.
#[derive(Debug, Clone, Copy)]
enum Fate {
    Placed,
    Cancelled,
    Expired,
    Paid,
    Shipped,
    PaymentFailed,
    Refunded,
}

const FATES: [Fate; 7] = [
    Fate::Placed,
    Fate::Cancelled,
    Fate::Expired,
    Fate::Paid,
    Fate::Shipped,
    Fate::PaymentFailed,
    Fate::Refunded,
];

/// The appends of one order on bucket `bucket` of `sku`, placed and taken to `fate`, in one
/// transaction (as the command side writes an order with its reservation).
fn order_appends(
    h: &mut History,
    sku: &Sku,
    bucket: u32,
    customer: &str,
    quantity: i64,
    fate: Fate,
) -> Vec<StreamAppend> {
    let order_id = OrderId::new();
    let price = eur(250);
    let total = price.checked_mul(quantity).unwrap();
    let expires_at = DateTime::<Utc>::from_timestamp(1_900_000_000, 0).unwrap() + Minutes::minutes(15);
    let mut order = vec![OrderEvent::OrderPlaced(OrderPlaced {
        order_id,
        customer_id: CustomerId::parse(customer).unwrap(),
        lines: vec![OrderLine {
            sku: sku.clone(),
            quantity,
            unit_price: price.clone(),
            bucket,
        }],
        total: total.clone(),
        reservation_expires_at: expires_at,
    })];
    let mut stock = vec![InventoryEvent::StockReserved(StockReserved {
        sku: sku.clone(),
        order_id,
        quantity,
        expires_at,
    })];
    let release = InventoryEvent::ReservationReleased(ReservationReleased {
        sku: sku.clone(),
        order_id,
        quantity,
    });
    let sold = InventoryEvent::StockCommitted(StockCommitted {
        sku: sku.clone(),
        order_id,
        quantity,
        unit_price: price.clone(),
    });
    let submitted = OrderEvent::PaymentSubmitted(PaymentSubmitted {
        order_id,
        token_fingerprint: "tok".into(),
    });
    let paid = OrderEvent::OrderPaid(OrderPaid {
        order_id,
        payment_reference: format!("pay-{}", order_id.0.simple()),
        amount: total.clone(),
    });
    let cancelled = |reason| OrderEvent::OrderCancelled(OrderCancelled { order_id, reason });
    match fate {
        Fate::Placed => {}
        Fate::Cancelled => {
            order.push(cancelled(CancelReason::CustomerRequest));
            stock.push(release);
        }
        Fate::Expired => {
            order.push(cancelled(CancelReason::ReservationExpired));
            stock.push(InventoryEvent::ReservationExpired(ReservationExpired {
                sku: sku.clone(),
                order_id,
                quantity,
            }));
        }
        Fate::Paid | Fate::Shipped => {
            order.extend([submitted, paid]);
            stock.push(sold);
            if matches!(fate, Fate::Shipped) {
                order.push(OrderEvent::OrderShipped(OrderShipped { order_id }));
            }
        }
        Fate::PaymentFailed => {
            order.extend([
                submitted,
                OrderEvent::PaymentFailed(PaymentFailed {
                    order_id,
                    reason: "declined".into(),
                }),
                cancelled(CancelReason::PaymentFailed),
            ]);
            stock.push(release);
        }
        Fate::Refunded => {
            order.extend([
                submitted,
                cancelled(CancelReason::ReservationExpired),
                OrderEvent::PaymentRefunded(PaymentRefunded {
                    order_id,
                    payment_reference: "late".into(),
                    amount: total,
                    reason: "the order was cancelled meanwhile".into(),
                }),
            ]);
            stock.push(InventoryEvent::ReservationExpired(ReservationExpired {
                sku: sku.clone(),
                order_id,
                quantity,
            }));
        }
    }
    vec![
        h.on(sku.bucket_stream_id(bucket), &stock),
        h.on(order_id.stream_id(), &order),
    ]
}

/// Every row of the three view tables, in key order.
async fn view_rows(
    pool: &sqlx::PgPool,
) -> (
    Vec<CatalogRow>,
    Vec<OrderRow>,
    Vec<(String, DateTime<Utc>, i64, i64, String)>,
) {
    let mut conn = pool.acquire().await.unwrap();
    let items = catalog::load_all(&mut conn, "catalog_items").await.unwrap();
    let orders = orders::load_all(&mut conn, "orders").await.unwrap();
    let sales =
        sqlx::query_as("SELECT sku, minute, units, revenue_minor, currency FROM sales_by_minute ORDER BY sku, minute")
            .fetch_all(&mut *conn)
            .await
            .unwrap();
    (items, orders, sales)
}

fn config(env: &TestEnv, progress: Option<ReplayProgress>) -> ReplayConfig {
    ReplayConfig {
        db: env.db.clone(),
        projections: Projection::ALL.to_vec(),
        batch_size: 7,
        max_rows_in_memory: ReplayConfig::DEFAULT_MAX_ROWS_IN_MEMORY,
        dry_run: false,
        source: Source::Store,
        kafka: env.kafka.clone(),
        progress,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_rebuild_holds_exactly_the_rows_the_live_path_folds() {
    let env = TestEnv::new().await;
    let mut h = History::default();
    let (one, split, limited) = (
        Sku::parse("BK-ONE").unwrap(),
        Sku::parse("BK-SPLIT").unwrap(),
        Sku::parse("BK-LIMIT").unwrap(),
    );
    commit(
        &env.pool,
        &[
            h.on(one.stream_id(), &[item(&one, 500)]),
            h.on(split.stream_id(), &[item(&split, 400)]),
            h.on(
                limited.stream_id(),
                &[
                    item(&limited, 300),
                    InventoryEvent::PurchaseLimitSet(PurchaseLimitSet {
                        sku: limited.clone(),
                        max_per_customer: Some(4),
                    }),
                ],
            ),
        ],
    )
    .await;
    // The split item: two buckets, 150 units moved to bucket 1 in one transaction.
    commit(
        &env.pool,
        &[
            h.on(
                split.stream_id(),
                &[
                    InventoryEvent::BucketsChanged(BucketsChanged {
                        sku: split.clone(),
                        buckets: 2,
                    }),
                    InventoryEvent::StockMovedOut(StockMovedOut {
                        sku: split.clone(),
                        to_bucket: 1,
                        quantity: 150,
                    }),
                ],
            ),
            h.on(
                split.bucket_stream_id(1),
                &[InventoryEvent::StockMovedIn(StockMovedIn {
                    sku: split.clone(),
                    from_bucket: 0,
                    quantity: 150,
                })],
            ),
        ],
    )
    .await;
    for i in 0..84usize {
        let (sku, bucket) = match i % 4 {
            0 => (&one, 0),
            1 => (&split, 0),
            2 => (&split, 1),
            _ => (&limited, 0),
        };
        let appends = order_appends(
            &mut h,
            sku,
            bucket,
            &format!("cust-{}", i % 9),
            1 + (i % 3) as i64,
            FATES[i % 7],
        );
        commit(&env.pool, &appends).await;
        if i % 20 == 0 {
            commit(
                &env.pool,
                &[h.on(
                    one.stream_id(),
                    &[InventoryEvent::StockRestocked(StockRestocked {
                        sku: one.clone(),
                        quantity: 25,
                    })],
                )],
            )
            .await;
        }
    }

    // The live path: every event, in position order, through the projector's apply, a few
    // at a time, each batch in its own transaction.
    let mut conn = env.pool.acquire().await.unwrap();
    let up_to = surge_store::safe_position(&mut conn, Duration::from_secs(5))
        .await
        .unwrap();
    let all = surge_store::read_all(
        &mut conn,
        &surge_store::ReadAll {
            after: 0,
            up_to,
            stream_type: None,
            limit: i64::MAX,
        },
    )
    .await
    .unwrap();
    drop(conn);
    for p in Projection::ALL {
        let events: Vec<EventEnvelope> = all
            .iter()
            .filter(|e| e.stream_type == p.stream_type())
            .cloned()
            .collect();
        let mut stats = BatchStats::default();
        for batch in events.chunks(5) {
            let mut tx = env.pool.begin().await.unwrap();
            let not_folded = p
                .apply(&mut tx, &p.live_tables(), batch.to_vec(), &mut stats)
                .await
                .unwrap();
            assert!(not_folded.is_empty(), "{p}: {not_folded:?}");
            tx.commit().await.unwrap();
        }
        assert_eq!(
            stats.applied,
            events.len(),
            "{p}: the live path applies every event once"
        );
    }
    let live = view_rows(&env.pool).await;
    let statuses: std::collections::BTreeSet<&str> = live.1.iter().map(|o| o.status.as_str()).collect();
    assert_eq!(
        statuses.into_iter().collect::<Vec<_>>(),
        ["cancelled", "paid", "placed", "refunded", "shipped"],
        "a mixed history"
    );
    assert_eq!(live.0.len(), 3);
    assert_eq!(live.1.len(), 84);
    assert!(!live.2.is_empty(), "sales were made");
    let split_row = live.0.iter().find(|r| r.sku == "BK-SPLIT").unwrap();
    assert_eq!(
        split_row.bucket_versions.len(),
        2,
        "the split item's row has both buckets"
    );

    let reports = replay(&config(&env, None)).await.expect("replay succeeds");
    let read: u64 = reports.iter().map(|r| r.events).sum();
    assert_eq!(read, all.len() as u64, "the replay read every event once");
    let rebuilt = view_rows(&env.pool).await;
    assert_eq!(rebuilt.0, live.0, "catalog_items, row by row");
    assert_eq!(rebuilt.1.len(), live.1.len());
    for (r, l) in rebuilt.1.iter().zip(&live.1) {
        assert_eq!(r, l, "orders, row by row");
    }
    assert_eq!(rebuilt.2, live.2, "sales_by_minute, row by row");

    // With room for 2 rows in memory, the load stops after its first page and the rest is
    // folded batch by batch onto what it wrote: the same rows.
    let bounded = ReplayConfig {
        max_rows_in_memory: 2,
        ..config(&env, None)
    };
    let reports = replay(&bounded).await.expect("bounded replay succeeds");
    let read: u64 = reports.iter().map(|r| r.events).sum();
    assert_eq!(read, all.len() as u64, "the bounded replay read every event once");
    let rebuilt = view_rows(&env.pool).await;
    assert_eq!(rebuilt.0, live.0, "catalog_items, row by row (bounded)");
    assert_eq!(rebuilt.1, live.1, "orders, row by row (bounded)");
    assert_eq!(rebuilt.2, live.2, "sales_by_minute, row by row (bounded)");

    // The new generation has the live tables' indexes, secondary ones included, and no other
    // generation is left behind.
    let indexes: Vec<(String, i64)> = sqlx::query_as(
        "SELECT tablename::text, count(*) FROM pg_indexes WHERE schemaname = 'public' \
         AND tablename IN ('orders', 'catalog_items', 'sales_by_minute') GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&env.pool)
    .await
    .unwrap();
    assert_eq!(
        indexes,
        [
            ("catalog_items".to_string(), 2),
            ("orders".to_string(), 2),
            ("sales_by_minute".to_string(), 2)
        ]
    );
    let customer_index: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_indexes WHERE tablename = 'orders' \
         AND indexdef LIKE '%(customer_id, placed_at DESC, order_id DESC)%'",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(customer_index, 1, "customer_orders' index is built again");
    let leftovers: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' \
         AND (tablename LIKE '%\\_g1%' OR tablename LIKE '%\\_old')",
    )
    .fetch_one(&env.pool)
    .await
    .unwrap();
    assert_eq!(leftovers, 0);
    env.cleanup().await;
}

/// What the views must hold: every stream of the store folded with the views' pure folds.
async fn folded_store(pool: &sqlx::PgPool) -> (Vec<CatalogRow>, Vec<OrderRow>) {
    let sql = format!(
        "SELECT {} FROM events ORDER BY stream_id, version",
        surge_events::ENVELOPE_COLUMNS
    );
    let rows = sqlx::query(&sql).fetch_all(pool).await.unwrap();
    let mut items: BTreeMap<String, CatalogRow> = BTreeMap::new();
    let mut orders: BTreeMap<uuid::Uuid, OrderRow> = BTreeMap::new();
    for row in &rows {
        let env = EventEnvelope::from_row(row).unwrap();
        match env.stream_type {
            StreamType::Inventory => {
                let e: InventoryEvent = decode(&env).unwrap();
                let key = e.sku().to_string();
                let (row, _) = catalog::fold(items.remove(&key), &env, &e);
                items.insert(key, row.unwrap());
            }
            StreamType::Order => {
                let e: OrderEvent = decode(&env).unwrap();
                let Some(StreamOf::Order(OrderId(id))) = env.stream_id.parse() else {
                    panic!("{} is not an order stream", env.stream_id)
                };
                let row = orders::fold(orders.remove(&id), &env, &e).unwrap();
                orders.insert(id, row);
            }
        }
    }
    (items.into_values().collect(), orders.into_values().collect())
}

/// Stands in for the relay: publishes every committed event (up to the store's safe position,
/// in position order) to its topic, keyed by stream, until told to stop.
fn publish_log(env: &TestEnv, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    let (db, kafka) = (env.db.clone(), env.kafka.clone());
    tokio::spawn(async move {
        let producer: FutureProducer = surge_runtime::kafka::client_config(&kafka).create().unwrap();
        let mut conn = PgConnection::connect(db.expose_url()).await.unwrap();
        let (mut after, mut published) = (0i64, 0u64);
        loop {
            let last_round = stop.load(Ordering::SeqCst);
            let up_to = surge_store::safe_position(&mut conn, Duration::from_secs(30))
                .await
                .unwrap();
            let read = surge_store::ReadAll {
                after,
                up_to,
                stream_type: None,
                limit: 10_000,
            };
            let events = surge_store::read_all(&mut conn, &read).await.unwrap();
            for e in &events {
                let topic = surge_events::topics::topic_for(&kafka.topic_prefix, e.stream_type);
                let payload = e.to_json();
                producer
                    .send(
                        FutureRecord::to(&topic).key(e.stream_id.as_str()).payload(&payload),
                        Duration::from_secs(10),
                    )
                    .await
                    .map_err(|(e, _)| e)
                    .unwrap();
                after = e.position;
                published += 1;
            }
            if events.is_empty() {
                if last_round {
                    return published;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bulk_replay_keeps_a_transaction_held_open_and_the_projector_goes_on_after_it() {
    let env = TestEnv::new().await;
    let mut h = History::default();
    let skus: Vec<Sku> = (0..4).map(|i| Sku::parse(format!("HO-{i}")).unwrap()).collect();
    let items: Vec<StreamAppend> = skus.iter().map(|s| h.on(s.stream_id(), &[item(s, 100_000)])).collect();
    commit(&env.pool, &items).await;
    let stop_publishing = Arc::new(AtomicBool::new(false));
    let publisher = publish_log(&env, stop_publishing.clone());
    let projector = {
        let mut config = ProjectorConfig::new(env.db.clone(), env.kafka.clone());
        config.admin_addr = "127.0.0.1:0".parse().unwrap();
        config.batch_size = 20;
        let projector = Projector::build(config).await.expect("projector starts");
        Service::spawn(|s| async move { projector.run(s).await })
    };

    // A transaction draws positions (an order on its own SKU) and stays open ...
    let held_sku = Sku::parse("HO-HELD").unwrap();
    let held_appends = {
        let mut appends = vec![h.on(held_sku.stream_id(), &[item(&held_sku, 10)])];
        appends.extend(order_appends(&mut h, &held_sku, 0, "held", 2, Fate::Paid));
        appends
    };
    let held_order = held_appends[2].stream_id.clone();
    let mut held = env.pool.begin().await.unwrap();
    let held_commit = append::append(&mut held, &held_appends).await.unwrap();

    // ... while four writers keep committing orders after it, each its own SKU.
    let stop_writing = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = skus
        .iter()
        .enumerate()
        .map(|(w, sku)| {
            let (pool, stop, sku) = (env.pool.clone(), stop_writing.clone(), sku.clone());
            let mut h = History::default();
            h.versions.insert(sku.stream_id(), 1);
            tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::SeqCst) || n < 10 {
                    let appends = order_appends(&mut h, &sku, 0, &format!("w{w}"), 1, FATES[n % 7]);
                    commit(&pool, &appends).await;
                    n += 1;
                }
                n
            })
        })
        .collect();

    let progress = ReplayProgress::default();
    let run = tokio::spawn({
        let config = config(&env, Some(progress.clone()));
        async move { replay(&config).await }
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        progress.snapshot().switched.is_empty(),
        "no generation is switched to while a transaction below its end is open"
    );
    append::commit(&env.pool, held, &held_commit).await.unwrap();
    let reports = run.await.unwrap().expect("replay succeeds");
    assert_eq!(reports.len(), 2);

    // Right after the switch the views have the late transaction's events.
    let (held_status, held_version): (String, i64) =
        sqlx::query_as("SELECT status, version FROM orders WHERE order_id = $1")
            .bind(match held_order.parse() {
                Some(StreamOf::Order(OrderId(id))) => id,
                _ => panic!("{held_order} is not an order stream"),
            })
            .fetch_one(&env.pool)
            .await
            .expect("the held order is in the rebuilt orders view");
    assert_eq!((held_status.as_str(), held_version), ("paid", 3));
    let held_item: (i64, i64) = sqlx::query_as("SELECT available, sold FROM catalog_items WHERE sku = 'HO-HELD'")
        .fetch_one(&env.pool)
        .await
        .expect("the held item is in the rebuilt catalog");
    assert_eq!(held_item, (8, 2));

    // Writers go on after the switch; the live projector folds what follows into the new
    // generation, skipping what the replay already applied.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_writing.store(true, Ordering::SeqCst);
    let mut written = 0;
    for w in writers {
        written += w.await.unwrap();
    }
    assert!(written >= 40);
    stop_publishing.store(true, Ordering::SeqCst);
    let published = publisher.await.unwrap();
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(published as i64, events, "every event reached Kafka");
    let expected = folded_store(&env.pool).await;
    let matched = eventually(Duration::from_secs(60), || async {
        let (items, orders, _) = view_rows(&env.pool).await;
        (items == expected.0 && orders == expected.1).then_some(())
    })
    .await;
    let (items, orders, _) = view_rows(&env.pool).await;
    assert!(
        matched.is_some(),
        "the views equal the fold of the store: {} of {} orders, {} of {} items",
        orders.len(),
        expected.1.len(),
        items.len(),
        expected.0.len()
    );
    let dead: i64 = sqlx::query_scalar("SELECT count(*) FROM dead_letters")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(dead, 0);
    projector.stop().await;
    env.cleanup().await;
}
