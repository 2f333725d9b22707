//! The access matrix: every route of both APIs, called without credentials, with bad ones,
//! with an expired token, with the wrong role and as another customer.

use crate::support;
use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};
use std::time::Duration;
use surge_runtime::auth::new_api_key;
use surge_runtime::Role;
use surge_testkit::{eventually, TestEnv};

/// How a request authenticates.
#[derive(Clone, Copy, Debug)]
enum Cred<'a> {
    Anonymous,
    Garbage,
    Expired,
    ForeignSigner,
    As(&'a str, Role),
    ApiKey(&'a str),
}

struct Matrix<'a> {
    env: &'a TestEnv,
    http: reqwest::Client,
    foreign: String,
}

impl Matrix<'_> {
    fn authed(&self, req: RequestBuilder, cred: Cred) -> RequestBuilder {
        match cred {
            Cred::Anonymous => req,
            Cred::Garbage => req.bearer_auth("not-a-jwt"),
            Cred::Expired => req.bearer_auth(self.env.expired_token("alice", Role::Admin)),
            Cred::ForeignSigner => req.bearer_auth(&self.foreign),
            Cred::As(sub, role) => req.bearer_auth(self.env.token(sub, role)),
            Cred::ApiKey(key) => req.header("x-api-key", key),
        }
    }

    async fn call(&self, method: Method, url: &str, body: Option<Value>, cred: Cred<'_>) -> (u16, Value) {
        let mut req = self.authed(self.http.request(method.clone(), url), cred);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        if status == 401 {
            assert!(
                r.headers().contains_key("www-authenticate"),
                "{method} {url}: 401 names the scheme"
            );
        }
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// 401 for each kind of missing or bad credentials, with the `unauthenticated` problem.
    async fn refuses_unauthenticated(&self, method: Method, url: &str, body: Option<Value>, anonymous_allowed: bool) {
        let mut creds = vec![
            Cred::Garbage,
            Cred::Expired,
            Cred::ForeignSigner,
            Cred::ApiKey("surge_nobody_0000"),
        ];
        if !anonymous_allowed {
            creds.push(Cred::Anonymous);
        }
        for cred in creds {
            let (status, p) = self.call(method.clone(), url, body.clone(), cred).await;
            assert_eq!(status, 401, "{method} {url} with {cred:?}: {p}");
            assert_eq!(p["type"], "https://surge.dev/problems/unauthenticated");
        }
    }

    async fn forbids(&self, method: Method, url: &str, body: Option<Value>, cred: Cred<'_>) {
        let (status, p) = self.call(method.clone(), url, body, cred).await;
        assert_eq!(status, 403, "{method} {url} as {cred:?}: {p}");
        assert_eq!(p["type"], "https://surge.dev/problems/forbidden");
    }

    async fn allows(&self, method: Method, url: &str, body: Option<Value>, cred: Cred<'_>, want: u16) -> Value {
        let (status, b) = self.call(method.clone(), url, body, cred).await;
        assert_eq!(status, want, "{method} {url} as {cred:?}: {b}");
        b
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_answers_401_without_valid_credentials_and_403_without_the_right() {
    let mut env = TestEnv::new().await;
    let (storefront_key, entry) = new_api_key("storefront", Role::Service);
    env.auth.api_keys.push(entry);
    let (cmd, command) = support::command_api(&env).await;
    let (qry, query) = support::query_api(&env, true).await;
    let relay = support::relay(&env).await;
    let projector = support::projector(&env, 50).await;
    let foreign = surge_runtime::AuthConfig::hs256("some-other-deploy-secret-0123456789")
        .build()
        .unwrap()
        .issue("alice", Role::Admin, Duration::from_secs(600))
        .unwrap();
    let m = Matrix {
        env: &env,
        http: reqwest::Client::new(),
        foreign,
    };
    let (post, get) = (Method::POST, Method::GET);
    let alice = Cred::As("alice", Role::Customer);
    let mallory = Cred::As("mallory", Role::Customer);
    let admin = Cred::As("ops", Role::Admin);
    let analyst = Cred::As("ana", Role::Analyst);
    let service = Cred::As("shop", Role::Service);

    // Catalog administration: admins only.
    let item = json!({"sku": "AUTH-1", "name": "n", "category": "c", "price": {"minor": 100, "currency": "EUR"}, "initial_stock": 100});
    let items_url = format!("{cmd}/v1/catalog/items");
    m.refuses_unauthenticated(post.clone(), &items_url, Some(item.clone()), false)
        .await;
    for who in [alice, service, analyst] {
        m.forbids(post.clone(), &items_url, Some(item.clone()), who).await;
    }
    m.allows(post.clone(), &items_url, Some(item), admin, 201).await;
    let restock_url = format!("{cmd}/v1/inventory/AUTH-1/restock");
    let restock = Some(json!({"quantity": 5}));
    m.refuses_unauthenticated(post.clone(), &restock_url, restock.clone(), false)
        .await;
    for who in [alice, service, analyst] {
        m.forbids(post.clone(), &restock_url, restock.clone(), who).await;
    }
    m.allows(post.clone(), &restock_url, restock, admin, 200).await;

    // Orders: a customer for itself, a service (token or API key) for anyone, never an analyst.
    let orders_url = format!("{cmd}/v1/orders");
    let order = |c: &str| Some(json!({"customer_id": c, "lines": [{"sku": "AUTH-1", "quantity": 1}]}));
    m.refuses_unauthenticated(post.clone(), &orders_url, order("alice"), false)
        .await;
    m.forbids(post.clone(), &orders_url, order("alice"), mallory).await;
    m.forbids(post.clone(), &orders_url, order("alice"), analyst).await;
    let placed = m.allows(post.clone(), &orders_url, order("alice"), alice, 202).await;
    let alices = placed["order_id"].as_str().unwrap().to_string();
    let by_key = m
        .allows(
            post.clone(),
            &orders_url,
            order("bob"),
            Cred::ApiKey(&storefront_key),
            202,
        )
        .await;
    let bobs = by_key["order_id"].as_str().unwrap().to_string();
    m.allows(post.clone(), &orders_url, order("carol"), service, 202).await;

    for action in ["payment", "cancel"] {
        let url = format!("{cmd}/v1/orders/{alices}/{action}");
        let body = (action == "payment").then(|| json!({"payment_token": "tok_visa_4242"}));
        m.refuses_unauthenticated(post.clone(), &url, body.clone(), false).await;
        m.forbids(post.clone(), &url, body.clone(), mallory).await;
        m.forbids(post.clone(), &url, body.clone(), analyst).await;
    }
    // Bob's order is cancelled by bob himself; alice's is paid by her.
    let bob = Cred::As("bob", Role::Customer);
    m.allows(post.clone(), &format!("{cmd}/v1/orders/{bobs}/cancel"), None, bob, 200)
        .await;
    let pay = Some(json!({"payment_token": "tok_visa_4242"}));
    m.allows(
        post.clone(),
        &format!("{cmd}/v1/orders/{alices}/payment"),
        pay,
        alice,
        202,
    )
    .await;

    // Reads: the catalog is public, but bad credentials are still refused.
    for url in [
        format!("{qry}/v1/catalog/items"),
        format!("{qry}/v1/catalog/items/AUTH-1"),
    ] {
        let read = eventually(Duration::from_secs(15), || async {
            let (s, _) = m.call(get.clone(), &url, None, Cred::Anonymous).await;
            (s == 200).then_some(())
        })
        .await;
        assert!(read.is_some(), "{url} readable anonymously");
        m.refuses_unauthenticated(get.clone(), &url, None, true).await;
    }
    let order_url = format!("{qry}/v1/orders/{alices}");
    let visible = eventually(Duration::from_secs(15), || async {
        let (s, _) = m.call(get.clone(), &order_url, None, alice).await;
        (s == 200).then_some(())
    })
    .await;
    assert!(visible.is_some(), "alice reads her order");
    m.refuses_unauthenticated(get.clone(), &order_url, None, false).await;
    m.forbids(get.clone(), &order_url, None, mallory).await;
    for who in [analyst, admin, service, Cred::ApiKey(&storefront_key)] {
        m.allows(get.clone(), &order_url, None, who, 200).await;
    }
    let history = format!("{qry}/v1/customers/alice/orders");
    m.refuses_unauthenticated(get.clone(), &history, None, false).await;
    m.forbids(get.clone(), &history, None, mallory).await;
    m.allows(get.clone(), &history, None, alice, 200).await;
    m.allows(get.clone(), &history, None, analyst, 200).await;
    let sales = format!("{qry}/v1/stats/sales");
    m.refuses_unauthenticated(get.clone(), &sales, None, false).await;
    for who in [alice, service] {
        m.forbids(get.clone(), &sales, None, who).await;
    }
    m.allows(get.clone(), &sales, None, analyst, 200).await;
    m.allows(get.clone(), &sales, None, admin, 200).await;

    // The console's session cookie opens the query API's console, never the command API.
    let cookie = format!("surge_session={}", env.token("ops", Role::Admin));
    let r = m
        .http
        .post(&orders_url)
        .header("cookie", &cookie)
        .json(&order("alice"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401, "the command API takes no session cookie");
    let r = m
        .http
        .get(format!("{qry}/console/api/whoami"))
        .header("cookie", &cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "the console takes it");

    // Health, readiness and the contracts stay open to probes and tools.
    for url in [
        format!("{cmd}/healthz"),
        format!("{cmd}/readyz"),
        format!("{qry}/readyz"),
        format!("{cmd}/openapi.json"),
        format!("{qry}/openapi.json"),
    ] {
        m.allows(get.clone(), &url, None, Cred::Anonymous, 200).await;
    }

    projector.stop().await;
    relay.stop().await;
    query.stop().await;
    command.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_without_any_authentication_configured_refuses_to_start() {
    let mut env = TestEnv::new().await;
    env.auth = surge_runtime::AuthConfig::default();
    let config =
        surge_command::CommandApiConfig::new("127.0.0.1:0".parse().unwrap(), support::db(&env), env.auth.clone());
    let err = surge_command::CommandApp::build(config).await.err().expect("refused");
    assert!(err.to_string().contains("no authentication configured"), "{err}");
    env.cleanup().await;
}
