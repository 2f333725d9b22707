//! Stock buckets across command API instances, and purchase limits (#18): several instances
//! sell one hot item from different streams without ever overselling, and a customer never
//! holds more of a limited item than its limit, through any instance and any bucket.

use crate::support::{start_api_with, Api};
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use surge_command::commands::{AddItem, CommandSettings, Commands, PlaceOrder};
use surge_command::domain::payment::Settlement;
use surge_command::domain::{preferred_bucket, ItemStock};
use surge_command::store::EventStore;
use surge_events::order::CancelReason;
use surge_events::{decode, Currency, CustomerId, EventEnvelope, EventMetadata, InventoryEvent, Money, OrderId, Sku};
use surge_testkit::TestEnv;

/// A command API instance named `id` (port 0), with rate limits out of the way of a load test.
async fn instance(env: &TestEnv, id: &str) -> Api {
    let id = id.to_string();
    start_api_with(env, move |c| {
        c.instance_id = Some(id);
        c.rate_limit_per_sec = 1_000_000;
        c.rate_limit_burst = 1_000_000;
        c.expiry_worker = false;
        c.payment_worker = false;
    })
    .await
}

async fn add_split_item(api: &Api, sku: &str, stock: i64, buckets: u32, limit: Option<i64>) {
    let (status, body) = api
        .post(
            "/v1/catalog/items",
            json!({"sku": sku, "name": format!("Item {sku}"), "category": "test",
                   "price": {"minor": 1000, "currency": "EUR"}, "initial_stock": stock,
                   "buckets": buckets, "max_per_customer": limit}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

/// Every event of the item's bucket streams, folded stream by stream in version order:
/// no bucket ever below zero, moves net to zero; returns the item's buckets as folded.
async fn audit_item(env: &TestEnv, sku: &str) -> ItemStock {
    let streams: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT stream_id FROM events WHERE stream_id = $1 OR stream_id LIKE $2 ORDER BY stream_id",
    )
    .bind(format!("inventory-{sku}"))
    .bind(format!("inventory-{sku}#%"))
    .fetch_all(&env.pool)
    .await
    .unwrap();
    let store = EventStore::new(env.pool.clone());
    let mut envelopes: Vec<EventEnvelope> = Vec::new();
    for stream in streams {
        envelopes.extend(store.read_stream(&surge_events::StreamId(stream), 0).await.unwrap());
    }
    let mut stock = ItemStock::default();
    let (mut moved_out, mut moved_in) = (0, 0);
    let mut last: HashMap<String, i64> = HashMap::new();
    for env in envelopes {
        let (of, bucket) = env.stream_id.inventory_bucket().expect("a bucket stream");
        assert_eq!(of.as_str(), sku);
        let before = last.insert(env.stream_id.0.clone(), env.version).unwrap_or(0);
        assert_eq!(env.version, before + 1, "{} has no gaps", env.stream_id);
        let event: InventoryEvent = decode(&env).unwrap();
        match &event {
            InventoryEvent::StockMovedOut(m) => moved_out += m.quantity,
            InventoryEvent::StockMovedIn(m) => moved_in += m.quantity,
            _ => {}
        }
        stock.evolve(bucket, &event);
        assert!(
            stock.buckets[bucket as usize].available >= 0,
            "bucket {bucket} of {sku} went negative"
        );
    }
    assert_eq!(moved_out, moved_in, "moves net to zero");
    stock
}

/// The catalog view, folded from the store by the projection's own apply path (a heal: every
/// bucket stream is a key of its own, merged into the item's one row), shows the item's totals,
/// settings and each bucket's version; a second heal finds nothing behind.
async fn view_matches(env: &TestEnv, sku: &str, folded: &ItemStock) {
    let catalog = surge_projections::view::Projection::named("catalog").expect("the catalog view");
    let tables = vec!["catalog_items".to_string(), "sales_by_minute".to_string()];
    let mut conn = env.pool.acquire().await.unwrap();
    let healed = surge_projections::heal::heal_from_store(&mut conn, catalog, &tables)
        .await
        .unwrap();
    assert!(healed.events > 0);
    let again = surge_projections::heal::heal_from_store(&mut conn, catalog, &tables)
        .await
        .unwrap();
    assert_eq!(again.events, 0, "every bucket's version is kept");
    let row: (i64, i64, i64, i32, Option<i64>, Vec<i64>, i64) = sqlx::query_as(
        "SELECT available, reserved, sold, buckets, max_per_customer, bucket_versions, version \
         FROM catalog_items WHERE sku = $1",
    )
    .bind(sku)
    .fetch_one(&env.pool)
    .await
    .unwrap();
    let heads: Vec<i64> = {
        let store = EventStore::new(env.pool.clone());
        let mut heads = Vec::new();
        for k in 0..folded.streams() {
            heads.push(
                store
                    .stream_version(&Sku::parse(sku).unwrap().bucket_stream_id(k))
                    .await
                    .unwrap(),
            );
        }
        heads
    };
    let settings = folded.settings();
    assert_eq!(
        row,
        (
            folded.available(),
            folded.reserved(),
            folded.sold(),
            settings.buckets as i32,
            settings.max_per_customer,
            heads.clone(),
            heads.iter().sum::<i64>()
        ),
        "the view's row of {sku}"
    );
}

/// Units added to the item: opening stock and restocks.
async fn units_added(env: &TestEnv, sku: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum(coalesce((payload->>'initial_stock')::bigint, (payload->>'quantity')::bigint)), 0)::bigint \
         FROM events WHERE (stream_id = $1 OR stream_id LIKE $2) AND event_type IN ('ItemAdded', 'StockRestocked')",
    )
    .bind(format!("inventory-{sku}"))
    .bind(format!("inventory-{sku}#%"))
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

/// The bucket each order's units of `sku` were reserved from.
async fn bucket_of_orders(env: &TestEnv, sku: &str) -> HashMap<String, u32> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT stream_id, payload->>'order_id' FROM events WHERE event_type = 'StockReserved' \
         AND (stream_id = $1 OR stream_id LIKE $2)",
    )
    .bind(format!("inventory-{sku}"))
    .bind(format!("inventory-{sku}#%"))
    .fetch_all(&env.pool)
    .await
    .unwrap();
    rows.into_iter()
        .map(|(stream, order)| (order, surge_events::StreamId(stream).inventory_bucket().unwrap().1))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_sell_a_hot_item_in_three_buckets_exactly_once() {
    let env = TestEnv::new().await;
    let ids = ["cmd-0", "cmd-1", "cmd-2"];
    let mut apis = Vec::new();
    for id in ids {
        apis.push(instance(&env, id).await);
    }
    let (sku, stock, orders) = ("HOT-3", 5_000, 20_000);
    add_split_item(&apis[0], sku, stock, 3, None).await;
    let item = Sku::parse(sku).unwrap();
    let own: Vec<u32> = ids.iter().map(|id| preferred_bucket(id, &item, 3)).collect();
    let mut distinct = own.clone();
    distinct.sort();
    assert_eq!(distinct, vec![0, 1, 2], "numbered instances own distinct buckets");

    let started = Instant::now();
    let results: Vec<(usize, u16, Value)> = futures::stream::iter(0..orders)
        .map(|i| {
            let api = &apis[i % 3];
            async move {
                let (status, body) = api
                    .post(
                        "/v1/orders",
                        json!({"customer_id": format!("c{i}"), "lines": [{"sku": sku, "quantity": 1}]}),
                    )
                    .await;
                (i % 3, status, body)
            }
        })
        .buffer_unordered(192)
        .collect()
        .await;
    let took = started.elapsed();

    let accepted: Vec<&(usize, u16, Value)> = results.iter().filter(|(_, s, _)| *s == 202).collect();
    let refused: Vec<&(usize, u16, Value)> = results.iter().filter(|(_, s, _)| *s == 422).collect();
    let others: Vec<&(usize, u16, Value)> = results.iter().filter(|(_, s, _)| *s != 202 && *s != 422).collect();
    assert!(
        others.is_empty(),
        "every order answered 202 or 422: {:?}",
        &others[..others.len().min(3)]
    );
    assert_eq!(accepted.len(), stock as usize, "exactly the stock is sold");
    assert_eq!(refused.len(), orders - stock as usize);
    for (_, _, body) in &refused {
        assert_eq!(body["type"], "https://surge.dev/problems/out-of-stock", "{body}");
    }

    // The store: every bucket folded in order never below zero, moves net to zero, every
    // unit held once; one OrderPlaced and one reservation per accepted order.
    let item_stock = audit_item(&env, sku).await;
    assert_eq!(units_added(&env, sku).await, stock);
    assert_eq!(item_stock.available(), 0);
    assert_eq!(
        item_stock.reserved(),
        stock,
        "oversell invariant over all buckets together"
    );
    let per_bucket: Vec<(i64, i64)> = item_stock.buckets.iter().map(|b| (b.available, b.reserved())).collect();
    assert_eq!(per_bucket.len(), 3);
    let placed: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'OrderPlaced'")
        .fetch_one(&env.pool)
        .await
        .unwrap();
    assert_eq!(placed, stock);
    let buckets = bucket_of_orders(&env, sku).await;
    assert_eq!(buckets.len(), stock as usize, "one reservation per order");

    // Where each instance's accepted orders came from.
    let mut split = vec![[0usize; 3]; 3];
    for (instance, _, body) in &accepted {
        let order = body["order_id"].as_str().unwrap();
        split[*instance][buckets[order] as usize] += 1;
    }
    let mut own_share = Vec::new();
    for (i, counts) in split.iter().enumerate() {
        let total: usize = counts.iter().sum();
        own_share.push(counts[own[i] as usize] as f64 / total.max(1) as f64);
    }
    println!(
        "{orders} orders, {stock} units in 3 buckets over 3 instances: {:?}; accepted per instance by bucket {split:?} \
         (own buckets {own:?}, own share {own_share:.2?}), per bucket (available, reserved) {per_bucket:?}",
        took
    );
    for (i, share) in own_share.iter().enumerate() {
        assert!(*share > 0.5, "instance {i} sold mostly from its own bucket: {split:?}");
    }
    assert!(took < Duration::from_secs(120), "took {took:?}");

    for api in apis {
        api.stop().await;
    }
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_customer_through_three_instances_never_passes_the_limit() {
    let env = TestEnv::new().await;
    let mut apis = Vec::new();
    for id in ["cmd-0", "cmd-1", "cmd-2"] {
        apis.push(instance(&env, id).await);
    }
    add_split_item(&apis[0], "LIM-1", 100, 3, Some(2)).await;

    let order = json!({"customer_id": "alice", "lines": [{"sku": "LIM-1", "quantity": 1}]});
    let results: Vec<(u16, Value)> = futures::stream::iter(0..30)
        .map(|i| {
            let (api, order) = (&apis[i % 3], order.clone());
            async move { api.post("/v1/orders", order).await }
        })
        .buffer_unordered(30)
        .collect()
        .await;
    let accepted: Vec<&Value> = results.iter().filter(|(s, _)| *s == 202).map(|(_, b)| b).collect();
    assert_eq!(accepted.len(), 2, "at most the limit, and stock is plenty: {results:?}");
    for (status, body) in results.iter().filter(|(s, _)| *s != 202) {
        assert_eq!(*status, 422, "{body}");
        assert_eq!(body["type"], "https://surge.dev/problems/purchase-limit", "{body}");
        assert_eq!(body["max_per_customer"], 2);
        assert_eq!(body["held"], 2);
    }
    let sku = Sku::parse("LIM-1").unwrap();
    let alice = CustomerId::parse("alice").unwrap();
    assert_eq!(
        surge_store::allowances::held_by(&env.pool, &sku, &alice).await.unwrap(),
        2
    );
    // Another customer is not limited by alice's units.
    let (s, body) = apis[1]
        .post(
            "/v1/orders",
            json!({"customer_id": "bob", "lines": [{"sku": "LIM-1", "quantity": 2}]}),
        )
        .await;
    assert_eq!(s, 202, "{body}");

    // A cancelled order's unit comes back to the allowance: one more, and no more.
    let first = accepted[0]["order_id"].as_str().unwrap();
    let (s, body) = apis[2].post(&format!("/v1/orders/{first}/cancel"), json!({})).await;
    assert_eq!(s, 200, "{body}");
    assert_eq!(
        surge_store::allowances::held_by(&env.pool, &sku, &alice).await.unwrap(),
        1
    );
    let (s, body) = apis[1].post("/v1/orders", order.clone()).await;
    assert_eq!(s, 202, "one more after the cancellation: {body}");
    let (s, body) = apis[0].post("/v1/orders", order.clone()).await;
    assert_eq!(
        (s, body["type"].as_str()),
        (422, Some("https://surge.dev/problems/purchase-limit"))
    );

    // Lifting the limit lets alice buy more; setting it again counts what she holds.
    let put = |path: &str, body: Value| {
        let (http, url) = (apis[0].http.clone(), format!("{}{path}", apis[0].url));
        async move {
            let r = http.put(url).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (s, body) = put("/v1/catalog/items/LIM-1/purchase-limit", json!({"max_per_customer": 0})).await;
    assert_eq!(
        (s, body["type"].as_str()),
        (422, Some("https://surge.dev/problems/invalid-purchase-limit"))
    );
    let (s, body) = put(
        "/v1/catalog/items/LIM-1/purchase-limit",
        json!({"max_per_customer": null}),
    )
    .await;
    assert_eq!(s, 200, "{body}");
    let (s, body) = apis[2].post("/v1/orders", order.clone()).await;
    assert_eq!(s, 202, "no limit any more: {body}");
    let (s, _) = put("/v1/catalog/items/LIM-1/purchase-limit", json!({"max_per_customer": 2})).await;
    assert_eq!(s, 200);
    let (s, body) = apis[1].post("/v1/orders", order).await;
    assert_eq!(
        (s, body["type"].as_str()),
        (422, Some("https://surge.dev/problems/purchase-limit"))
    );

    let item_stock = audit_item(&env, "LIM-1").await;
    assert_eq!(item_stock.available() + item_stock.reserved(), 100);
    view_matches(&env, "LIM-1", &item_stock).await;
    for api in apis {
        api.stop().await;
    }
    env.cleanup().await;
}

fn eur(minor: i64) -> Money {
    Money::new(minor, Currency::parse("EUR").unwrap()).unwrap()
}

fn commands_of(env: &TestEnv, instance: &str, ttl: Duration) -> Commands {
    Commands::new(
        EventStore::new(env.pool.clone()),
        CommandSettings {
            reservation_ttl: ttl,
            instance_id: instance.into(),
            ..CommandSettings::default()
        },
    )
}

async fn place(c: &Commands, customer: &str, sku: &Sku, quantity: i64) -> OrderId {
    c.place_order(
        PlaceOrder {
            customer_id: CustomerId::parse(customer).unwrap(),
            lines: vec![(sku.clone(), quantity)],
        },
        None,
        &EventMetadata::new("test"),
    )
    .await
    .unwrap()
    .order_id
}

fn per_bucket(stock: &ItemStock) -> Vec<(i64, i64, i64)> {
    stock
        .buckets
        .iter()
        .map(|b| (b.available, b.reserved(), b.sold))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changing_buckets_with_holds_outstanding_returns_stock_to_the_right_buckets() {
    let env = TestEnv::new().await;
    let meta = EventMetadata::new("test");
    let sku = Sku::parse("CHG-1").unwrap();
    // An instance whose preferred bucket is 2 once the item has three.
    let instance = (0..3)
        .map(|n| format!("cmd-{n}"))
        .find(|id| preferred_bucket(id, &sku, 3) == 2)
        .unwrap();
    let c = commands_of(&env, &instance, Duration::from_secs(1));
    let slow = commands_of(&env, &instance, Duration::from_secs(3600));
    c.add_item(
        AddItem {
            sku: sku.clone(),
            name: "Change".into(),
            category: "test".into(),
            price: eur(500),
            initial_stock: 12,
            buckets: 1,
            max_per_customer: None,
        },
        &meta,
    )
    .await
    .unwrap();
    // Three holds in bucket 0 (not split yet): to cancel, to expire, to pay.
    let to_cancel = place(&slow, "a", &sku, 2).await;
    let to_expire = place(&c, "b", &sku, 2).await;
    let to_pay = place(&slow, "c", &sku, 2).await;
    c.set_buckets(&sku, 3, &meta).await.unwrap();
    let stock = c.item_stock(&sku).await.unwrap();
    assert_eq!(
        per_bucket(&stock),
        vec![(2, 6, 0), (2, 0, 0), (2, 0, 0)],
        "available spread, holds stay"
    );
    // A hold in bucket 2, this instance's own (`c` changed the buckets, so it knows there are
    // three; another instance learns it from its next batch).
    let in_two = place(&c, "d", &sku, 1).await;
    assert_eq!(bucket_of_orders(&env, "CHG-1").await[&in_two.to_string()], 2);
    // Shrink: bucket 2's available stock moves back, its hold stays.
    c.set_buckets(&sku, 2, &meta).await.unwrap();
    let stock = c.item_stock(&sku).await.unwrap();
    assert_eq!(per_bucket(&stock), vec![(3, 6, 0), (2, 0, 0), (0, 1, 0)]);
    assert_eq!(stock.settings().buckets, 2);
    assert_eq!(stock.streams(), 3, "the removed bucket is still read");

    // Cancel, expire, pay: each goes to the bucket that held it.
    c.cancel_order(to_cancel, CancelReason::CustomerRequest, &meta)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(c.expire_order(to_expire).await.unwrap().is_some());
    c.submit_payment(to_pay, "tok_visa_4242", &meta).await.unwrap();
    c.settle_payment(
        to_pay,
        Settlement::Paid {
            reference: "ch_1".into(),
        },
        &meta,
    )
    .await
    .unwrap();
    c.cancel_order(in_two, CancelReason::CustomerRequest, &meta)
        .await
        .unwrap();
    let stock = c.item_stock(&sku).await.unwrap();
    assert_eq!(
        per_bucket(&stock),
        vec![(7, 0, 2), (2, 0, 0), (1, 0, 0)],
        "released to bucket 0, expired to 0, sold in 0, released to the removed bucket 2"
    );
    let audited = audit_item(&env, "CHG-1").await;
    assert_eq!(per_bucket(&audited), per_bucket(&stock), "the store folds to the same");
    assert_eq!(
        audited.available() + audited.reserved() + audited.sold(),
        12,
        "totals exact"
    );

    view_matches(&env, "CHG-1", &audited).await;

    // The stock left in the removed bucket is still sold: one order for all that is left
    // gathers it (a definitive look at every bucket, with move pairs).
    place(&slow, "e", &sku, 10).await;
    let stock = c.item_stock(&sku).await.unwrap();
    assert_eq!(stock.available(), 0);
    assert_eq!(stock.reserved(), 10);
    let refused = slow
        .place_order(
            PlaceOrder {
                customer_id: CustomerId::parse("f").unwrap(),
                lines: vec![(sku.clone(), 1)],
            },
            None,
            &meta,
        )
        .await;
    assert!(
        matches!(
            refused,
            Err(surge_command::commands::CommandError::Domain(
                surge_command::domain::DomainError::OutOfStock { available: 0, .. }
            ))
        ),
        "{refused:?}"
    );
    audit_item(&env, "CHG-1").await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restock_spreads_over_the_buckets_and_bad_values_are_problems() {
    let env = TestEnv::new().await;
    let api = instance(&env, "cmd-0").await;
    add_split_item(&api, "RST-1", 0, 3, None).await;
    let (s, body) = api.post("/v1/inventory/RST-1/restock", json!({"quantity": 7})).await;
    assert_eq!(s, 200, "{body}");
    let stock = audit_item(&env, "RST-1").await;
    assert_eq!(
        stock.buckets.iter().map(|b| b.available).collect::<Vec<_>>(),
        vec![3, 2, 2]
    );

    let put = |path: String, body: Value| {
        let (http, url) = (api.http.clone(), format!("{}{path}", api.url));
        async move {
            let r = http.put(url).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (s, body) = put("/v1/catalog/items/RST-1/buckets".into(), json!({"buckets": 0})).await;
    assert_eq!(
        (s, body["type"].as_str()),
        (422, Some("https://surge.dev/problems/invalid-buckets"))
    );
    let (s, body) = put("/v1/catalog/items/RST-1/buckets".into(), json!({"buckets": 65})).await;
    assert_eq!(
        (s, body["type"].as_str()),
        (422, Some("https://surge.dev/problems/invalid-buckets"))
    );
    let (s, body) = put("/v1/catalog/items/RST-1/buckets".into(), json!({"buckets": 2, "x": 1})).await;
    assert_eq!(s, 400, "{body}");
    let (s, body) = put("/v1/catalog/items/NOPE/buckets".into(), json!({"buckets": 2})).await;
    assert_eq!(
        (s, body["type"].as_str()),
        (422, Some("https://surge.dev/problems/unknown-item"))
    );
    let (s, body) = api
        .post(
            "/v1/catalog/items",
            json!({"sku": "BAD-1", "name": "n", "category": "c", "price": {"minor": 1, "currency": "EUR"},
                   "buckets": 0}),
        )
        .await;
    assert_eq!(
        (s, body["type"].as_str()),
        (422, Some("https://surge.dev/problems/invalid-buckets"))
    );
    let (s, body) = put("/v1/catalog/items/RST-1/buckets".into(), json!({"buckets": 2})).await;
    assert_eq!(s, 200, "{body}");
    let stock = audit_item(&env, "RST-1").await;
    assert_eq!(
        stock.buckets.iter().map(|b| b.available).collect::<Vec<_>>(),
        vec![4, 3, 0]
    );
    // A customer's role may not change an item.
    let customer = env.client_as("alice", surge_runtime::Role::Customer);
    let r = customer
        .put(format!("{}/v1/catalog/items/RST-1/buckets", api.url))
        .json(&json!({"buckets": 3}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    api.stop().await;
    env.cleanup().await;
}
