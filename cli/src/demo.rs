//! `surge demo`: seeds a small catalog and runs a short flash sale against running services,
//! then shows what the write side accepted and what the read side serves.

use anyhow::{bail, Context};
use clap::Args;
use futures::future::join_all;
use reqwest::{Client, StatusCode};
use serde_json::{json, Value};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Args)]
pub struct DemoConfig {
    /// Base URL of the command API.
    #[arg(long, env = "SURGE_COMMAND_URL", default_value = "http://127.0.0.1:8080")]
    pub command_url: String,
    /// Base URL of the query API.
    #[arg(long, env = "SURGE_QUERY_URL", default_value = "http://127.0.0.1:8081")]
    pub query_url: String,
    /// Shoppers rushing the hot item.
    #[arg(long, default_value_t = 200)]
    pub shoppers: usize,
    /// Units of the hot item on sale.
    #[arg(long, default_value_t = 50)]
    pub hot_stock: i64,
    /// Admin endpoints (/metrics) of the relay and the projector.
    #[arg(long, default_value = "http://127.0.0.1:9101")]
    pub relay_admin_url: String,
    #[arg(long, default_value = "http://127.0.0.1:9102")]
    pub projector_admin_url: String,
    #[command(flatten)]
    pub credentials: crate::credentials::ClientAuth,
}

/// Waits (60 s at most: a brand-new broker takes a while to form a consumer group) until
/// `base` answers `/readyz` with 200; says what it waits for when that takes a while.
pub async fn wait_ready(client: &Client, base: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut told = false;
    loop {
        let why = match client.get(format!("{base}/readyz")).send().await {
            Ok(r) if r.status().is_success() => return Ok(()),
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => e.to_string(),
        };
        if !told && started.elapsed() > Duration::from_secs(3) {
            println!("   waiting for {base} to be ready: {}", why.trim());
            told = true;
        }
        if started.elapsed() > Duration::from_secs(60) {
            bail!("{base} is not ready after 60 s: {}", why.trim());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// GET `url`, honouring 503 + Retry-After as a well-behaved client does (15 s at most).
async fn get_patiently(client: &Client, url: &str, headers: &[(&str, String)]) -> anyhow::Result<reqwest::Response> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let mut request = client.get(url);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let r = request.send().await.with_context(|| format!("GET {url}"))?;
        let retry_after = r
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match retry_after {
            Some(secs) if r.status() == StatusCode::SERVICE_UNAVAILABLE && Instant::now() < deadline => {
                println!("   GET {url} -> 503, retrying after {secs} s as asked");
                tokio::time::sleep(Duration::from_secs(secs.clamp(1, 5))).await;
            }
            _ => return Ok(r),
        }
    }
}

/// How long a client asked to come back (503 `hot-sku-overloaded`) waits before it does:
/// the answer's `estimated_wait_ms` (10 ms to 1 s), plus up to as much again of jitter so the
/// refused do not all come back at once; `None` for any other answer.
pub fn come_back_after(status: u16, body: &Value) -> Option<Duration> {
    let overloaded = status == StatusCode::SERVICE_UNAVAILABLE.as_u16()
        && body["type"]
            .as_str()
            .is_some_and(|t| t.ends_with("/hot-sku-overloaded"));
    overloaded.then(|| {
        let ms = body["estimated_wait_ms"].as_u64().unwrap_or(50).clamp(10, 1000);
        Duration::from_millis(ms + rand::random::<u64>() % ms)
    })
}

async fn post(client: &Client, url: String, body: Value) -> anyhow::Result<(StatusCode, Value)> {
    let r = client
        .post(&url)
        .json(&body)
        .send()
        .await
        .with_context(|| format!("POST {url}"))?;
    let status = r.status();
    let body = r.json::<Value>().await.unwrap_or(Value::Null);
    Ok((status, body))
}

pub async fn run(config: DemoConfig) -> anyhow::Result<()> {
    // The demo is an admin (catalog, payments on the shoppers' behalf); each shopper orders
    // with a customer token of its own, as a storefront's users would.
    let client = config
        .credentials
        .client("demo", Client::builder().timeout(Duration::from_secs(30)))?;
    let (cmd, qry) = (
        config.command_url.trim_end_matches('/'),
        config.query_url.trim_end_matches('/'),
    );
    // The sale starts only when the whole pipeline can follow it: both APIs, the relay, and
    // the projector with its partitions assigned and its lag known.
    for base in [
        cmd,
        qry,
        config.relay_admin_url.trim_end_matches('/'),
        config.projector_admin_url.trim_end_matches('/'),
    ] {
        wait_ready(&client, base).await?;
    }

    // SKUs unique per run, so the demo can run again on the same database.
    let run = format!("{:X}", chrono::Utc::now().timestamp_millis() % 0x1000_0000);
    let hot = format!("DROP-{run}");
    let catalog = [
        (hot.clone(), "Limited sneaker drop", "shoes", 12_900, config.hot_stock),
        (format!("TEE-{run}"), "Logo tee", "apparel", 2_500, 500),
        (format!("CAP-{run}"), "Cap", "apparel", 1_900, 300),
    ];
    println!("== Seeding the catalog");
    for (sku, name, category, price, stock) in &catalog {
        let (status, body) = post(
            &client,
            format!("{cmd}/v1/catalog/items"),
            json!({"sku": sku, "name": name, "category": category,
                   "price": {"minor": price, "currency": "EUR"}, "initial_stock": stock}),
        )
        .await?;
        if status != StatusCode::CREATED {
            bail!("adding {sku} answered {status}: {body}");
        }
        println!(
            "   {sku:<14} {name:<22} {stock:>4} units at {}.{:02} EUR",
            price / 100,
            price % 100
        );
    }

    println!(
        "\n== Flash sale: {} shoppers rush {} units of {hot}",
        config.shoppers, config.hot_stock
    );
    let started = Instant::now();
    let attempts = (0..config.shoppers).map(|i| {
        let client = client.clone();
        let run = run.clone();
        let url = format!("{cmd}/v1/orders");
        let mut lines = vec![json!({"sku": hot, "quantity": 1})];
        if i % 3 == 0 {
            lines.push(json!({"sku": catalog[1].0, "quantity": 2}));
        }
        let customer = format!("shopper-{i}");
        let token = config.credentials.issue(&customer, surge_runtime::Role::Customer);
        let body = json!({"customer_id": customer, "lines": lines});
        async move {
            let Ok(token) = token else {
                return (StatusCode::UNAUTHORIZED, Value::Null, 0);
            };
            // A shopper refused because the item's lane is busier than its latency budget
            // comes back when the answer says, with the same idempotency key (10 s at most).
            let deadline = Instant::now() + Duration::from_secs(10);
            let mut shed = 0usize;
            loop {
                let r = client
                    .post(&url)
                    .bearer_auth(&token)
                    .header("idempotency-key", format!("demo-{run}-{i}"))
                    .json(&body)
                    .send()
                    .await;
                let (s, b) = match r {
                    Ok(r) => {
                        let s = r.status();
                        (s, r.json::<Value>().await.unwrap_or(Value::Null))
                    }
                    Err(_) => (StatusCode::SERVICE_UNAVAILABLE, Value::Null),
                };
                let Some(wait) = come_back_after(s.as_u16(), &b) else {
                    return (s, b, shed);
                };
                if Instant::now() >= deadline {
                    return (s, b, shed);
                }
                shed += 1;
                tokio::time::sleep(wait).await;
            }
        }
    });
    let answered = join_all(attempts).await;
    let retried: usize = answered.iter().filter(|(_, _, n)| *n > 0).count();
    let sheds: usize = answered.iter().map(|(_, _, n)| n).sum();
    let results: Vec<(StatusCode, Value)> = answered.into_iter().map(|(s, b, _)| (s, b)).collect();
    let elapsed = started.elapsed();
    let accepted: Vec<&Value> = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::ACCEPTED)
        .map(|(_, b)| b)
        .collect();
    let sold_out = results
        .iter()
        .filter(|(s, b)| {
            *s == StatusCode::UNPROCESSABLE_ENTITY && b["type"].as_str().is_some_and(|t| t.ends_with("/out-of-stock"))
        })
        .count();
    let mut other: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    for (s, b) in &results {
        let sold_out =
            *s == StatusCode::UNPROCESSABLE_ENTITY && b["type"].as_str().is_some_and(|t| t.ends_with("/out-of-stock"));
        if *s != StatusCode::ACCEPTED && !sold_out {
            let kind = b["type"].as_str().and_then(|t| t.rsplit('/').next()).unwrap_or("-");
            *other.entry(format!("{} {kind}", s.as_u16())).or_default() += 1;
        }
    }
    println!(
        "   {} accepted, {} refused as sold out, in {:.0} ms",
        accepted.len(),
        sold_out,
        elapsed.as_secs_f64() * 1000.0
    );
    for (kind, n) in &other {
        println!("   {n} answered {kind}");
    }
    if sheds > 0 {
        println!(
            "   {retried} shoppers were asked to come back ({sheds} times in all: 503 hot-sku-overloaded, \
             the lane was busier than its latency budget) and did, with the same idempotency key"
        );
    }
    if accepted.len() as i64 > config.hot_stock {
        bail!(
            "oversold: {} orders accepted for {} units",
            accepted.len(),
            config.hot_stock
        );
    }

    let Some(first) = accepted.first() else {
        bail!("no order was accepted")
    };
    let order_id = first["order_id"].as_str().unwrap_or_default().to_string();
    println!("\n== One shopper changes their mind: cancel {order_id}");
    let (status, body) = post(&client, format!("{cmd}/v1/orders/{order_id}/cancel"), json!({})).await?;
    println!("   {status}: {body}");
    let token = body["consistency_token"].as_i64().unwrap_or(0);

    println!("\n== The read side (query API, fed by Kafka through the projectors)");
    let item_url = format!("{qry}/v1/catalog/items/{hot}");
    let r = get_patiently(&client, &item_url, &[("x-consistency-token", token.to_string())]).await?;
    let (status, cache) = (r.status(), header(&r, "x-cache"));
    let etag = header(&r, "etag");
    let item: Value = r.json().await.unwrap_or(Value::Null);
    println!(
        "   GET {item_url} (waiting for token {token}) -> {status}, x-cache: {cache}\n   available {} / reserved {} / sold {} (version {})",
        item["available"], item["reserved"], item["sold"], item["version"]
    );
    let r = client.get(&item_url).send().await?;
    println!(
        "   again -> {}, x-cache: {}, x-data-age-ms: {}",
        r.status(),
        header(&r, "x-cache"),
        header(&r, "x-data-age-ms")
    );
    let r = client.get(&item_url).header("if-none-match", &etag).send().await?;
    println!("   with If-None-Match {etag} -> {}", r.status());
    let order_url = format!("{qry}/v1/orders/{order_id}");
    let r = get_patiently(&client, &order_url, &[("x-consistency-token", token.to_string())]).await?;
    let order: Value = r.json().await.unwrap_or(Value::Null);
    println!(
        "   GET {order_url} -> status {}, total {}",
        order["status"], order["total"]
    );

    let expected_reserved = accepted.len() as i64 - 1;
    if item["reserved"].as_i64() != Some(expected_reserved) {
        bail!(
            "the view shows {} reserved, expected {expected_reserved}",
            item["reserved"]
        );
    }
    println!("\n== Three shoppers pay (one card is declined)");
    let payers: Vec<String> = accepted
        .iter()
        .skip(1)
        .take(3)
        .filter_map(|b| b["order_id"].as_str().map(str::to_string))
        .collect();
    for (i, id) in payers.iter().enumerate() {
        let token = if i == 2 { "tok_decline_demo" } else { "tok_visa_demo" };
        let (status, _) = post(
            &client,
            format!("{cmd}/v1/orders/{id}/payment"),
            json!({"payment_token": token}),
        )
        .await?;
        println!("   POST /v1/orders/{id}/payment ({token}) -> {status}");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for id in &payers {
        loop {
            let r = client.get(format!("{qry}/v1/orders/{id}")).send().await?;
            let order: Value = r.json().await.unwrap_or(Value::Null);
            let status = order["status"].as_str().unwrap_or_default().to_string();
            if ["paid", "payment_failed", "refunded"].contains(&status.as_str()) || Instant::now() > deadline {
                println!("   order {id}: {status}");
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    println!("\n== Metrics (sum over labels, from each process's /metrics)");
    let sources = [
        ("command API", format!("{cmd}/metrics")),
        ("query API", format!("{qry}/metrics")),
        (
            "relay",
            format!("{}/metrics", config.relay_admin_url.trim_end_matches('/')),
        ),
        (
            "projector",
            format!("{}/metrics", config.projector_admin_url.trim_end_matches('/')),
        ),
    ];
    for (name, url) in sources {
        let Ok(r) = client.get(&url).send().await else {
            println!("   {name}: {url} not reachable");
            continue;
        };
        let text = r.text().await.unwrap_or_default();
        println!("   {name} ({url})");
        for (family, total) in metric_totals(&text) {
            println!("     {family:<48} {total:>12.3}");
        }
    }

    println!("\n== Where to look");
    println!("   command API   {cmd}  (POST /v1/orders, /v1/orders/{{id}}/cancel, /v1/inventory/{{sku}}/restock)");
    println!("   query API     {qry}/v1/catalog/items  {qry}/v1/orders/{{id}}  {qry}/v1/stats/sales");
    println!(
        "   metrics       {cmd}/metrics  {qry}/metrics  {}/metrics  {}/metrics",
        config.relay_admin_url, config.projector_admin_url
    );
    println!("   console       {qry}/console  (sign in with: surge token --role admin --sub you; `./dev services` keeps it up)");
    println!("   dashboards    deploy/grafana/surge.json, alerts in deploy/prometheus/alerts.yml");
    println!(
        "   event store   surge export --format csv --stream-id inventory-{hot}  (the hot SKU's history; the console browses any stream)"
    );
    Ok(())
}

/// Each `surge_` family's samples summed (histograms by their `_count`).
fn metric_totals(exposition: &str) -> std::collections::BTreeMap<String, f64> {
    let mut totals = std::collections::BTreeMap::new();
    for line in exposition.lines().filter(|l| l.starts_with("surge_")) {
        let name = &line[..line.find(['{', ' ']).unwrap_or(line.len())];
        if name.ends_with("_bucket") || name.ends_with("_sum") {
            continue;
        }
        let value: f64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).unwrap_or(0.0);
        *totals.entry(name.to_string()).or_insert(0.0) += value;
    }
    totals
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string()
}
