//! Bad input gets a problem+json with a stable type: never a panic, never a 500.

use crate::support::start_api;
use serde_json::{json, Value};
use surge_runtime::Role;
use surge_testkit::TestEnv;

async fn raw(api: &crate::support::Api, path: &str, content_type: &str, body: &'static str) -> (u16, String, Value) {
    let r = api
        .http
        .post(format!("{}{path}", api.url))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, ct, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_problems_with_stable_types() {
    let env = TestEnv::new().await;
    let api = start_api(&env).await;
    api.add_item("P-1", 3).await;
    let problem = |slug: &str| format!("https://surge.dev/problems/{slug}");

    let cases: [(&str, &str, &'static str, u16, &str); 8] = [
        ("/v1/orders", "application/json", "{not json", 400, "malformed-json"),
        (
            "/v1/orders",
            "application/json",
            r#"{"customer_id":"a","lines":[],"extra":1}"#,
            400,
            "invalid-body",
        ),
        (
            "/v1/orders",
            "application/json",
            r#"{"customer_id":"a b","lines":[]}"#,
            400,
            "invalid-body",
        ),
        ("/v1/orders", "text/plain", "{}", 415, "unsupported-media-type"),
        (
            "/v1/orders",
            "application/json",
            r#"{"customer_id":"a","lines":[]}"#,
            422,
            "invalid-line-count",
        ),
        (
            "/v1/orders",
            "application/json",
            r#"{"customer_id":"a","lines":[{"sku":"P-1","quantity":0}]}"#,
            422,
            "invalid-quantity",
        ),
        (
            "/v1/orders",
            "application/json",
            r#"{"customer_id":"a","lines":[{"sku":"NOPE","quantity":1}]}"#,
            422,
            "unknown-item",
        ),
        (
            "/v1/inventory/P-1/restock",
            "application/json",
            r#"{"quantity":-5}"#,
            422,
            "invalid-quantity",
        ),
    ];
    for (path, ct, body, status, slug) in cases {
        let (s, content_type, p) = raw(&api, path, ct, body).await;
        assert_eq!(
            (s, p["type"].as_str().unwrap_or_default()),
            (status, problem(slug).as_str()),
            "{body}: {p}"
        );
        assert_eq!(content_type, "application/problem+json");
        assert_eq!(p["status"], status);
    }

    let (s, p) = api.post("/v1/orders/not-a-uuid/cancel", json!({})).await;
    assert_eq!(
        (s, p["type"].as_str().unwrap()),
        (400, problem("invalid-path").as_str())
    );
    let (s, p) = api
        .post(&format!("/v1/orders/{}/cancel", uuid::Uuid::now_v7()), json!({}))
        .await;
    assert_eq!(
        (s, p["type"].as_str().unwrap()),
        (404, problem("unknown-order").as_str())
    );
    let (s, p) = api
        .post(
            "/v1/catalog/items",
            json!({"sku": "P-1", "name": "again", "category": "x", "price": {"minor": 1, "currency": "EUR"}}),
        )
        .await;
    assert_eq!((s, p["type"].as_str().unwrap()), (409, problem("item-exists").as_str()));

    // Too large a body is refused before it is read.
    let big = format!(r#"{{"customer_id":"a","lines":[],"pad":"{}"}}"#, "x".repeat(100_000));
    let r = api
        .http
        .post(format!("{}/v1/orders", api.url))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 413);

    // Restock works and moves the token forward.
    let (s, a) = api.post("/v1/inventory/P-1/restock", json!({"quantity": 5})).await;
    assert_eq!(s, 200);
    assert!(a["consistency_token"].as_i64().unwrap() > 1);

    api.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_lists_every_command() {
    let env = TestEnv::new().await;
    let api = start_api(&env).await;
    let doc = api.openapi().await;
    let paths = doc["paths"].as_object().unwrap();
    for path in [
        "/v1/catalog/items",
        "/v1/inventory/{sku}/restock",
        "/v1/orders",
        "/v1/orders/{order_id}/cancel",
        "/v1/orders/{order_id}/payment",
    ] {
        assert!(paths[path]["post"].is_object(), "{path} documented");
    }
    assert!(doc["components"]["schemas"]["PlaceOrderRequest"].is_object());
    api.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_limit_clients_get_429_with_retry_after() {
    let env = TestEnv::new().await;
    let api = crate::support::start_api_with(&env, |c| {
        c.rate_limit_per_sec = 1;
        c.rate_limit_burst = 3;
    })
    .await;
    // Clients are told apart by who they authenticate as.
    let (a, b) = (
        env.client_as("client-a", Role::Admin),
        env.client_as("client-b", Role::Admin),
    );
    let restock = |who: &'static str| {
        let client = if who == "client-a" { &a } else { &b };
        client
            .post(format!("{}/v1/inventory/NOPE/restock", api.url))
            .json(&json!({"quantity": 1}))
            .send()
    };
    for left in (0..3).rev() {
        let r = restock("client-a").await.unwrap();
        assert_eq!(r.status().as_u16(), 422, "within the burst the command itself answers");
        assert_eq!(r.headers()["ratelimit-limit"], "3");
        assert_eq!(r.headers()["ratelimit-remaining"], left.to_string().as_str());
    }
    let r = restock("client-a").await.unwrap();
    assert_eq!(r.status().as_u16(), 429);
    let retry_after: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry_after));
    let p: Value = r.json().await.unwrap();
    assert_eq!(p["type"], "https://surge.dev/problems/rate-limited");
    // Another client is not held back by the first one's limit; health is never limited.
    assert_eq!(restock("client-b").await.unwrap().status().as_u16(), 422);
    for _ in 0..5 {
        let r = api.http.get(format!("{}/healthz", api.url)).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }
    api.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn security_headers_always_and_cors_only_for_configured_origins() {
    let env = TestEnv::new().await;
    let api = crate::support::start_api_with(&env, |c| c.cors_origins = vec!["https://shop.example".into()]).await;
    let r = api.http.get(format!("{}/healthz", api.url)).send().await.unwrap();
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert_eq!(r.headers()["x-frame-options"], "DENY");
    assert!(r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .contains("default-src 'none'"));
    let preflight = |origin: &'static str| {
        api.http
            .request(reqwest::Method::OPTIONS, format!("{}/v1/orders", api.url))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type,idempotency-key")
            .send()
    };
    let r = preflight("https://shop.example").await.unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "https://shop.example");
    let r = preflight("https://evil.example").await.unwrap();
    assert!(!r.headers().contains_key("access-control-allow-origin"));
    api.stop().await;
    env.cleanup().await;
}
