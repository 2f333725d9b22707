//! Deliveries end to end: orders placed through the real command API, the real `surge
//! webhooks` process, real receivers on loopback.

use crate::support::{summary, Receiver, Reply, Rig};
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};
use surge_webhooks::signature;
use surge_webhooks::UrlPolicy;

const ALL: [&str; 6] = [
    "order.placed",
    "order.paid",
    "order.payment_failed",
    "order.cancelled",
    "order.expired",
    "order.refunded",
];

#[tokio::test]
async fn deliveries_are_signed_with_the_secret_shown_at_registration() {
    let rig = Rig::start(|_| {}).await;
    let receiver = Receiver::start().await;
    let (webhook, secret) = rig.register(&format!("{}/hooks", receiver.url), &ALL).await;
    rig.add_item("SIGNED-1", 5).await;
    let order = rig.place("SIGNED-1").await;
    rig.pay(&order).await;

    let got = receiver
        .until(20, |r| r.iter().filter(|r| r.status == 204).count() >= 2)
        .await;
    let types: Vec<String> = got.iter().map(|r| r.event_type()).collect();
    assert_eq!(types, ["order.placed", "order.paid"], "{:?}", summary(&got));
    let now = chrono::Utc::now().timestamp();
    for r in &got {
        assert_eq!(r.path, "/hooks");
        assert_eq!(r.header("content-type"), "application/json");
        let header = r.header("surge-signature");
        assert_eq!(
            signature::verify(&secret, &header, r.body.as_bytes(), now, 300),
            Ok(()),
            "the receiver's check with the registration's secret passes: {header}"
        );
        assert_eq!(
            signature::verify("whsec_someone_else", &header, r.body.as_bytes(), now, 300),
            Err(signature::SignatureError::Mismatch)
        );
        let body = r.json();
        assert_eq!(body["order_id"], Value::String(order.clone()));
        assert_eq!(
            r.header("surge-event-id"),
            body["id"].as_str().unwrap(),
            "the event id header is the body's id"
        );
        assert!(!r.header("surge-delivery-id").is_empty());
    }
    assert_eq!(got[0].json()["order_version"], 1);
    assert_eq!(got[0].json()["data"]["total"]["minor"], 1000);
    assert_eq!(got[1].json()["data"]["amount"]["minor"], 1000);
    // Both delivered, first attempt each.
    let delivered = rig.until_deliveries(webhook, "delivered", 2, 10).await;
    assert!(
        delivered.iter().all(|d| d["attempts"] == 1 && d["last_status"] == 204),
        "{delivered:?}"
    );
    rig.stop().await;
}

#[tokio::test]
async fn failed_attempts_are_retried_after_500s_and_timeouts_then_delivered() {
    let rig = Rig::start(|c| c.timeout_ms = 300).await;
    let receiver = Receiver::start().await;
    // First a 500, then an answer slower than the deliverer waits, then a 200.
    receiver.answer(|_, n| match n {
        0 => Reply::Status(500),
        1 => Reply::Slow(Duration::from_millis(1500), 200),
        _ => Reply::Status(200),
    });
    let (webhook, _) = rig.register(&receiver.url, &["order.placed"]).await;
    rig.add_item("RETRY-1", 5).await;
    rig.place("RETRY-1").await;

    // The slow answer is logged (as a 200 it never got to send) when it starts.
    let got = receiver.until(20, |r| r.len() >= 3).await;
    let delivered = rig.until_deliveries(webhook, "delivered", 1, 10).await;
    let got_all = receiver.received();
    assert_eq!(got_all.len(), 3, "{:?}", summary(&got_all));
    let event_ids: Vec<String> = got.iter().map(|r| r.header("surge-event-id")).collect();
    assert!(
        event_ids.iter().all(|id| *id == event_ids[0]),
        "one event, sent three times: {event_ids:?}"
    );
    let attempts: Vec<String> = got.iter().map(|r| r.header("surge-attempt")).collect();
    assert_eq!(attempts, ["1", "2", "3"]);
    assert_eq!(delivered[0]["attempts"], 3);
    assert_eq!(delivered[0]["last_status"], 200);
    rig.stop().await;
}

#[tokio::test]
async fn changes_of_each_order_arrive_in_order_under_concurrent_orders() {
    let rig = Rig::start(|c| c.concurrency = 16).await;
    let receiver = Receiver::start().await;
    // Every third request fails: retries must not let a later change of an order overtake.
    receiver.answer(|_, n| {
        if n % 3 == 1 {
            Reply::Status(503)
        } else {
            Reply::Status(200)
        }
    });
    rig.register(&receiver.url, &ALL).await;
    rig.add_item("ORDERED-1", 100).await;
    let orders = futures::future::join_all((0..10).map(|i| {
        let rig = &rig;
        async move {
            let order = rig.place("ORDERED-1").await;
            if i % 2 == 0 {
                rig.pay(&order).await;
            } else {
                rig.cancel(&order).await;
            }
            (order, if i % 2 == 0 { "order.paid" } else { "order.cancelled" })
        }
    }))
    .await;

    let got = receiver
        .until(40, |r| r.iter().filter(|r| r.status == 200).count() >= 20)
        .await;
    let mut by_order: HashMap<String, Vec<(String, u16)>> = HashMap::new();
    for r in &got {
        by_order
            .entry(r.order_id())
            .or_default()
            .push((r.event_type(), r.status));
    }
    for (order, last) in &orders {
        let seen = &by_order[order];
        let accepted: Vec<&str> = seen
            .iter()
            .filter(|(_, s)| *s == 200)
            .map(|(t, _)| t.as_str())
            .collect();
        assert_eq!(accepted, ["order.placed", *last], "order {order}: {seen:?}");
        // Nothing of the second change was sent before the first was acknowledged.
        let placed_ok = seen.iter().position(|(t, s)| t == "order.placed" && *s == 200).unwrap();
        let first_later = seen.iter().position(|(t, _)| t != "order.placed").unwrap();
        assert!(placed_ok < first_later, "order {order}: {seen:?}");
    }
    assert!(
        got.iter().any(|r| r.status == 503),
        "some attempts failed and were retried"
    );
    rig.stop().await;
}

#[tokio::test]
async fn a_delivery_dies_after_its_attempts_and_is_redelivered() {
    let rig = Rig::start(|c| c.max_attempts = 3).await;
    let receiver = Receiver::start().await;
    receiver.answer(|_, _| Reply::Status(500));
    let (webhook, _) = rig.register(&receiver.url, &["order.placed", "order.paid"]).await;
    rig.add_item("DEAD-1", 5).await;
    let order = rig.place("DEAD-1").await;

    let dead = rig.until_deliveries(webhook, "dead", 1, 20).await;
    assert_eq!(dead[0]["attempts"], 3);
    assert_eq!(dead[0]["last_status"], 500);
    assert_eq!(dead[0]["event_type"], "order.placed");
    assert_eq!(receiver.received().len(), 3, "exactly the configured attempts");

    // The order's next change waits behind the dead one: never sent ahead of it.
    rig.pay(&order).await;
    let held = rig.until_deliveries(webhook, "pending", 1, 20).await;
    assert_eq!(held[0]["event_type"], "order.paid");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 3, "{:?}", summary(&receiver.received()));
    assert_eq!(rig.deliveries(webhook, Some("pending")).await[0]["attempts"], 0);

    // The receiver is fixed; the operator redelivers the dead one.
    receiver.answer(|_, _| Reply::Status(200));
    let id = dead[0]["id"].as_str().unwrap();
    let path = format!("/v1/webhooks/{webhook}/deliveries/{id}/redeliver");
    let (status, body) = rig.call(&rig.service, reqwest::Method::POST, &path, None).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["state"], "pending");
    assert_eq!(body["attempts"], 0);

    let got = receiver
        .until(20, |r| r.iter().filter(|r| r.status == 200).count() == 2)
        .await;
    let delivered: Vec<String> = got.iter().filter(|r| r.status == 200).map(|r| r.event_type()).collect();
    assert_eq!(delivered, ["order.placed", "order.paid"]);
    rig.until_deliveries(webhook, "delivered", 2, 10).await;

    // Only dead deliveries are redelivered.
    let (status, body) = rig.call(&rig.service, reqwest::Method::POST, &path, None).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["type"], "https://surge.dev/problems/delivery-not-dead");
    let unknown = format!("/v1/webhooks/{webhook}/deliveries/{}/redeliver", uuid::Uuid::new_v4());
    assert_eq!(
        rig.call(&rig.service, reqwest::Method::POST, &unknown, None).await.0,
        404
    );

    let metrics = reqwest::get(format!("{}/metrics", rig.webhooks_admin.as_ref().unwrap()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for outcome in ["delivered", "retried", "dead"] {
        assert!(
            metrics.contains(&format!("surge_webhook_deliveries_total{{outcome=\"{outcome}\"}}")),
            "{outcome} in {metrics}"
        );
    }
    assert!(metrics.contains("surge_webhook_oldest_pending_seconds"), "{metrics}");
    rig.stop().await;
}

#[tokio::test]
async fn a_redirect_is_not_followed() {
    let rig = Rig::start(|c| c.max_attempts = 2).await;
    let receiver = Receiver::start().await;
    receiver.answer(|_, _| Reply::Redirect("/elsewhere".into()));
    let (webhook, _) = rig
        .register(&format!("{}/hooks", receiver.url), &["order.placed"])
        .await;
    rig.add_item("REDIRECT-1", 5).await;
    rig.place("REDIRECT-1").await;

    let dead = rig.until_deliveries(webhook, "dead", 1, 20).await;
    assert_eq!(dead[0]["last_status"], 302);
    assert!(
        dead[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("redirects are not followed"),
        "{dead:?}"
    );
    let got = receiver.received();
    assert_eq!(got.len(), 2, "{:?}", summary(&got));
    assert!(
        got.iter().all(|r| r.path == "/hooks"),
        "the redirect's target was never called: {:?}",
        summary(&got)
    );
    rig.stop().await;
}

#[tokio::test]
async fn a_paused_endpoint_gets_nothing_until_resumed() {
    let rig = Rig::start(|_| {}).await;
    let paused = Receiver::start().await;
    let witness = Receiver::start().await;
    let (webhook, _) = rig.register(&paused.url, &["order.placed"]).await;
    rig.register(&witness.url, &["order.placed"]).await;
    rig.add_item("PAUSE-1", 5).await;

    let (status, body) = rig
        .call(
            &rig.service,
            reqwest::Method::POST,
            &format!("/v1/webhooks/{webhook}/pause"),
            None,
        )
        .await;
    assert_eq!((status, body["state"].as_str()), (200, Some("paused")), "{body}");
    let while_paused = rig.place("PAUSE-1").await;
    // The other endpoint got it: the fan-out is past it.
    witness
        .until(20, |r| r.iter().any(|r| r.order_id() == while_paused))
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(paused.received().is_empty(), "{:?}", summary(&paused.received()));
    assert!(rig.deliveries(webhook, None).await.is_empty());

    let (status, body) = rig
        .call(
            &rig.service,
            reqwest::Method::POST,
            &format!("/v1/webhooks/{webhook}/resume"),
            None,
        )
        .await;
    assert_eq!((status, body["state"].as_str()), (200, Some("active")), "{body}");
    let after = rig.place("PAUSE-1").await;
    let got = paused.until(20, |r| !r.is_empty()).await;
    assert_eq!(got.len(), 1, "{:?}", summary(&got));
    assert_eq!(got[0].order_id(), after);
    rig.stop().await;
}

#[tokio::test]
async fn a_change_committed_before_a_pause_is_delivered_even_if_fanned_out_after_it() {
    // No `surge webhooks` yet: the fan-out has not read anything when the endpoint is paused.
    let mut rig = Rig::without_webhooks(UrlPolicy::loopback_allowed()).await;
    let receiver = Receiver::start().await;
    let (webhook, _) = rig.register(&receiver.url, &["order.placed"]).await;
    rig.add_item("PAUSE-LATE-1", 5).await;
    let before = rig.place("PAUSE-LATE-1").await;

    let (status, body) = rig
        .call(
            &rig.service,
            reqwest::Method::POST,
            &format!("/v1/webhooks/{webhook}/pause"),
            None,
        )
        .await;
    assert_eq!((status, body["state"].as_str()), (200, Some("paused")), "{body}");
    let while_paused = rig.place("PAUSE-LATE-1").await;

    // Now the fan-out runs, with the endpoint paused: the change from before the pause is
    // queued (and waits), the one from while it was paused is not.
    rig.start_webhooks(|_| {}).await;
    let pending = rig.until_deliveries(webhook, "pending", 1, 20).await;
    assert_eq!(pending[0]["order_id"].as_str(), Some(before.as_str()), "{pending:?}");
    assert_eq!(pending[0]["attempts"], 0, "not attempted while paused: {pending:?}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(receiver.received().is_empty(), "{:?}", summary(&receiver.received()));

    let (status, body) = rig
        .call(
            &rig.service,
            reqwest::Method::POST,
            &format!("/v1/webhooks/{webhook}/resume"),
            None,
        )
        .await;
    assert_eq!((status, body["state"].as_str()), (200, Some("active")), "{body}");
    let after = rig.place("PAUSE-LATE-1").await;
    let got = receiver.until(20, |r| r.len() >= 2).await;
    // Two orders: no order between them is promised.
    let mut orders: Vec<String> = got.iter().map(|r| r.order_id()).collect();
    orders.sort();
    let mut expected = vec![before.clone(), after.clone()];
    expected.sort();
    assert_eq!(orders, expected, "{:?}", summary(&got));
    let delivered = rig.until_deliveries(webhook, "delivered", 2, 10).await;
    assert!(
        delivered
            .iter()
            .all(|d| d["order_id"].as_str() != Some(while_paused.as_str())),
        "nothing of the change committed while paused: {delivered:?}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 2, "{:?}", summary(&receiver.received()));
    assert_eq!(rig.deliveries(webhook, None).await.len(), 2);
    rig.stop().await;
}

#[tokio::test]
async fn pauses_and_resumes_before_the_fan_out_reads_count_by_when_each_change_was_committed() {
    // The fan-out is far behind (not running): two pause/resume cycles happen before it reads
    // any of the changes.
    let mut rig = Rig::without_webhooks(UrlPolicy::loopback_allowed()).await;
    let receiver = Receiver::start().await;
    let (webhook, _) = rig.register(&receiver.url, &["order.placed"]).await;
    rig.add_item("PAUSE-CYCLE-1", 10).await;
    let mut owed = Vec::new();
    let mut not_owed = Vec::new();
    for _ in 0..2 {
        owed.push(rig.place("PAUSE-CYCLE-1").await);
        // Twice: pausing a paused endpoint changes nothing.
        for (route, state) in [("pause", "paused"), ("pause", "paused")] {
            let (status, body) = rig
                .call(
                    &rig.service,
                    reqwest::Method::POST,
                    &format!("/v1/webhooks/{webhook}/{route}"),
                    None,
                )
                .await;
            assert_eq!((status, body["state"].as_str()), (200, Some(state)), "{body}");
        }
        not_owed.push(rig.place("PAUSE-CYCLE-1").await);
        let (status, body) = rig
            .call(
                &rig.service,
                reqwest::Method::POST,
                &format!("/v1/webhooks/{webhook}/resume"),
                None,
            )
            .await;
        assert_eq!((status, body["state"].as_str()), (200, Some("active")), "{body}");
    }
    owed.push(rig.place("PAUSE-CYCLE-1").await);

    rig.start_webhooks(|_| {}).await;
    let got = receiver.until(20, |r| r.len() >= owed.len()).await;
    let mut orders: Vec<String> = got.iter().map(|r| r.order_id()).collect();
    orders.sort();
    owed.sort();
    assert_eq!(orders, owed, "{:?}", summary(&got));
    rig.until_deliveries(webhook, "delivered", owed.len(), 10).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let all = rig.deliveries(webhook, None).await;
    assert_eq!(all.len(), owed.len(), "{all:?}");
    assert!(
        all.iter()
            .all(|d| !not_owed.iter().any(|o| d["order_id"].as_str() == Some(o.as_str()))),
        "nothing committed while paused: {all:?}"
    );
    rig.stop().await;
}

#[tokio::test]
async fn a_slow_receiver_does_not_slow_order_placement() {
    let rig = Rig::start(|c| c.timeout_ms = 10_000).await;
    let receiver = Receiver::start().await;
    receiver.answer(|_, _| Reply::Slow(Duration::from_secs(3), 200));
    rig.register(&receiver.url, &ALL).await;
    rig.add_item("SLOW-1", 100).await;
    // Warm up the lane and the connections.
    rig.place("SLOW-1").await;
    receiver.until(20, |r| !r.is_empty()).await;

    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    let mut while_busy = 0;
    for _ in 0..20 {
        let t = Instant::now();
        rig.place("SLOW-1").await;
        slowest = slowest.max(t.elapsed());
        if receiver.in_flight() > 0 {
            while_busy += 1;
        }
    }
    let total = started.elapsed();
    assert!(
        while_busy >= 10,
        "the receiver was busy while orders were placed ({while_busy} of 20)"
    );
    assert!(
        slowest < Duration::from_millis(750),
        "slowest placement {slowest:?} with a 3 s receiver"
    );
    assert!(total < Duration::from_secs(5), "20 placements took {total:?}");
    rig.stop().await;
}

#[tokio::test]
async fn a_name_or_address_that_became_private_is_refused_when_delivering() {
    // Registered while loopback was allowed; the deliverer's own policy no longer allows it
    // (as if the name had been re-pointed at a private address since: DNS rebinding).
    let mut rig = Rig::without_webhooks(UrlPolicy::loopback_allowed()).await;
    rig.start_webhooks(|c| {
        c.policy = UrlPolicy {
            allow_http: true,
            allow_nets: Vec::new(),
        };
        c.max_attempts = 2;
    })
    .await;
    let receiver = Receiver::start().await;
    let port = receiver.url.rsplit(':').next().unwrap().to_string();
    let (by_name, _) = rig
        .register(&format!("http://localhost:{port}/"), &["order.placed"])
        .await;
    let (by_address, _) = rig
        .register(&format!("http://127.0.0.1:{port}/"), &["order.placed"])
        .await;
    rig.add_item("REBIND-1", 5).await;
    rig.place("REBIND-1").await;

    for webhook in [by_name, by_address] {
        let dead = rig.until_deliveries(webhook, "dead", 1, 20).await;
        let error = dead[0]["last_error"].as_str().unwrap();
        assert!(error.contains("refused") && error.contains("loopback"), "{error}");
        assert_eq!(dead[0]["last_status"], Value::Null);
    }
    assert!(receiver.received().is_empty(), "nothing reached the receiver");
    rig.stop().await;
}

#[tokio::test]
async fn a_change_committed_late_is_delivered_not_skipped() {
    use surge_events::order::OrderPlaced;
    use surge_events::{Currency, CustomerId, EventMetadata, Money, OrderEvent, OrderId};
    use surge_store::append::StreamAppend;

    let rig = Rig::start(|_| {}).await;
    let receiver = Receiver::start().await;
    rig.register(&receiver.url, &["order.placed"]).await;
    rig.add_item("LATE-1", 10).await;

    // A writer draws its position and holds its transaction open...
    let late = OrderId::new();
    let placed = OrderEvent::OrderPlaced(OrderPlaced {
        order_id: late,
        customer_id: CustomerId::parse("shopper-late").unwrap(),
        lines: Vec::new(),
        total: Money::new(0, Currency::parse("EUR").unwrap()).unwrap(),
        reservation_expires_at: chrono::Utc::now() + chrono::Duration::minutes(15),
    });
    let mut tx = rig.env.pool.begin().await.unwrap();
    let appended = surge_store::append::append(
        &mut tx,
        &[StreamAppend::new(
            late.stream_id(),
            0,
            &[placed],
            &EventMetadata::new("test:late"),
        )],
    )
    .await
    .unwrap();
    // ...while other writers commit orders after it.
    let mut after = Vec::new();
    for _ in 0..3 {
        after.push(rig.place("LATE-1").await);
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    // The fan-out does not move past a position that can still appear: nothing yet.
    assert!(receiver.received().is_empty(), "{:?}", summary(&receiver.received()));

    surge_store::append::commit(&rig.env.pool, tx, &appended).await.unwrap();
    let got = receiver.until(20, |r| r.len() >= 4).await;
    let orders: Vec<String> = got.iter().map(|r| r.order_id()).collect();
    assert_eq!(orders.len(), 4, "each change once: {orders:?}");
    assert!(
        orders.contains(&late.0.to_string()),
        "the late commit is not skipped: {orders:?}"
    );
    for order in &after {
        assert!(orders.contains(order), "{order} in {orders:?}");
    }
    rig.stop().await;
}
