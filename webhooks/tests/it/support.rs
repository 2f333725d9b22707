//! One test's world: the real command API (orders go through the real write path), the real
//! `surge webhooks` process, and real HTTP receivers on loopback whose answers a test chooses.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use surge_command::{CommandApiConfig, CommandApp};
use surge_runtime::{DatabaseConfig, Role};
use surge_testkit::{Service, TestEnv};
use surge_webhooks::{UrlPolicy, WebhooksApp, WebhooksConfig};
use uuid::Uuid;

/// How a receiver answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16),
    /// Waits, then answers (the deliverer may have given up by then).
    Slow(Duration, u16),
    /// A 302 to this path of the same receiver.
    Redirect(String),
}

/// One request a receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub headers: HeaderMap,
    pub body: String,
    /// What the receiver answered (or was going to, for a slow answer).
    pub status: u16,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("a webhook body is JSON")
    }
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    }
    pub fn event_type(&self) -> String {
        self.json()["type"].as_str().unwrap_or_default().to_string()
    }
    pub fn order_id(&self) -> String {
        self.json()["order_id"].as_str().unwrap_or_default().to_string()
    }
}

type Decide = Arc<dyn Fn(&Value, usize) -> Reply + Send + Sync>;

#[derive(Clone)]
struct ReceiverState {
    log: Arc<Mutex<Vec<Received>>>,
    decide: Arc<Mutex<Decide>>,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
}

pub struct Receiver {
    pub url: String,
    state: ReceiverState,
    _server: tokio::task::JoinHandle<()>,
}

async fn receive(State(state): State<ReceiverState>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    use std::sync::atomic::Ordering;
    let body = String::from_utf8_lossy(&body).into_owned();
    let parsed: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let reply = {
        let decide = state.decide.lock().unwrap().clone();
        let n = state.log.lock().unwrap().len();
        decide(&parsed, n)
    };
    let status = match &reply {
        Reply::Status(s) | Reply::Slow(_, s) => *s,
        Reply::Redirect(_) => 302,
    };
    state.log.lock().unwrap().push(Received {
        path: uri.path().to_string(),
        headers,
        body,
        status,
    });
    match reply {
        Reply::Status(s) => StatusCode::from_u16(s).unwrap().into_response(),
        Reply::Slow(wait, s) => {
            state.in_flight.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(wait).await;
            state.in_flight.fetch_sub(1, Ordering::SeqCst);
            StatusCode::from_u16(s).unwrap().into_response()
        }
        Reply::Redirect(to) => (StatusCode::FOUND, [(axum::http::header::LOCATION, to)]).into_response(),
    }
}

impl Receiver {
    /// A receiver on 127.0.0.1:0 that answers 204 until told otherwise.
    pub async fn start() -> Receiver {
        let state = ReceiverState {
            log: Arc::default(),
            decide: Arc::new(Mutex::new(Arc::new(|_: &Value, _| Reply::Status(204)))),
            in_flight: Arc::default(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let app = axum::Router::new().fallback(receive).with_state(state.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver {
            url,
            state,
            _server: server,
        }
    }

    /// From now on, answer request number `n` (0-based, over all requests) with `decide(body, n)`.
    pub fn answer(&self, decide: impl Fn(&Value, usize) -> Reply + Send + Sync + 'static) {
        *self.state.decide.lock().unwrap() = Arc::new(decide);
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.log.lock().unwrap().clone()
    }

    /// Requests it is sleeping on right now.
    pub fn in_flight(&self) -> usize {
        self.state.in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until `done` holds for what was received (at most `secs`).
    pub async fn until(&self, secs: u64, done: impl Fn(&[Received]) -> bool) -> Vec<Received> {
        let ok = surge_testkit::eventually(Duration::from_secs(secs), || async {
            let got = self.received();
            done(&got).then_some(())
        })
        .await;
        let got = self.received();
        assert!(
            ok.is_some(),
            "receiver did not get what was expected in {secs} s; got {:#?}",
            summary(&got)
        );
        got
    }
}

pub fn summary(got: &[Received]) -> Vec<String> {
    got.iter()
        .map(|r| format!("{} {} {} -> {}", r.path, r.order_id(), r.event_type(), r.status))
        .collect()
}

pub struct Rig {
    pub env: TestEnv,
    pub api: String,
    pub admin: reqwest::Client,
    pub service: reqwest::Client,
    api_task: Service,
    webhooks: Option<Service>,
    pub webhooks_admin: Option<String>,
}

fn db(env: &TestEnv, connections: u32) -> DatabaseConfig {
    DatabaseConfig {
        max_connections: connections,
        ..env.db.clone()
    }
}

/// Fast retries for tests: attempts a few tens of milliseconds apart.
pub fn quick(config: &mut WebhooksConfig) {
    config.backoff_base_ms = 20;
    config.backoff_cap_ms = 100;
    config.timeout_ms = 2_000;
}

impl Rig {
    /// The command API (registrations may point at loopback) and `surge webhooks` with
    /// loopback allowed, tuned by `tune`.
    pub async fn start(tune: impl FnOnce(&mut WebhooksConfig)) -> Rig {
        let mut rig = Rig::without_webhooks(UrlPolicy::loopback_allowed()).await;
        rig.start_webhooks(tune).await;
        rig
    }

    /// The command API only, registrations checked with `policy`.
    pub async fn without_webhooks(policy: UrlPolicy) -> Rig {
        let env = TestEnv::new().await;
        let mut config = CommandApiConfig::new("127.0.0.1:0".parse().unwrap(), db(&env, 10), env.auth.clone());
        config.webhooks = policy;
        config.gateway_latency_ms = 1;
        let app = CommandApp::build(config).await.expect("command API starts");
        let api = format!("http://{}", app.local_addr());
        let api_task = Service::spawn(|stop| async move { app.run(stop).await.unwrap() });
        Rig {
            admin: env.http(),
            service: env.client_as("storefront", Role::Service),
            env,
            api,
            api_task,
            webhooks: None,
            webhooks_admin: None,
        }
    }

    pub async fn start_webhooks(&mut self, tune: impl FnOnce(&mut WebhooksConfig)) {
        let mut config = WebhooksConfig::new(db(&self.env, 8), UrlPolicy::loopback_allowed());
        quick(&mut config);
        tune(&mut config);
        let app = WebhooksApp::build(config).await.expect("webhooks starts");
        self.webhooks_admin = Some(format!("http://{}", app.local_addr()));
        self.webhooks = Some(Service::spawn(|stop| async move { app.run(stop).await.unwrap() }));
    }

    pub async fn stop(self) {
        if let Some(w) = self.webhooks {
            w.stop().await;
        }
        self.api_task.stop().await;
        self.env.cleanup().await;
    }

    pub async fn call(
        &self,
        client: &reqwest::Client,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = client.request(method, format!("{}{path}", self.api));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(&self.admin, reqwest::Method::POST, path, Some(body)).await
    }

    /// Registers `url` for `types` as a storefront; the id and the secret.
    pub async fn register(&self, url: &str, types: &[&str]) -> (Uuid, String) {
        let (status, body) = self
            .call(
                &self.service,
                reqwest::Method::POST,
                "/v1/webhooks",
                Some(json!({"url": url, "event_types": types})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        (
            body["id"].as_str().unwrap().parse().unwrap(),
            body["secret"].as_str().unwrap().to_string(),
        )
    }

    pub async fn add_item(&self, sku: &str, stock: i64) {
        let (status, body) = self
            .post(
                "/v1/catalog/items",
                json!({"sku": sku, "name": format!("Item {sku}"), "category": "test",
                       "price": {"minor": 1000, "currency": "EUR"}, "initial_stock": stock}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }

    /// Places an order of one `sku`; its id.
    pub async fn place(&self, sku: &str) -> String {
        let (status, body) = self
            .post(
                "/v1/orders",
                json!({"customer_id": "shopper-1", "lines": [{"sku": sku, "quantity": 1}]}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
        body["order_id"].as_str().unwrap().to_string()
    }

    pub async fn pay(&self, order_id: &str) {
        let (status, body) = self
            .post(
                &format!("/v1/orders/{order_id}/payment"),
                json!({"payment_token": "tok_visa_4242"}),
            )
            .await;
        assert_eq!(status, 202, "{body}");
    }

    pub async fn cancel(&self, order_id: &str) {
        let r = self
            .admin
            .post(format!("{}/v1/orders/{order_id}/cancel", self.api))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
    }

    /// An endpoint's deliveries (first page, up to 200), optionally of one state.
    pub async fn deliveries(&self, webhook: Uuid, state: Option<&str>) -> Vec<Value> {
        let query = state.map(|s| format!("&state={s}")).unwrap_or_default();
        let (status, body) = self
            .call(
                &self.service,
                reqwest::Method::GET,
                &format!("/v1/webhooks/{webhook}/deliveries?limit=200{query}"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["items"].as_array().unwrap().clone()
    }

    /// Waits until the endpoint has `n` deliveries in `state`.
    pub async fn until_deliveries(&self, webhook: Uuid, state: &str, n: usize, secs: u64) -> Vec<Value> {
        let found = surge_testkit::eventually(Duration::from_secs(secs), || async {
            let d = self.deliveries(webhook, Some(state)).await;
            (d.len() == n).then_some(d)
        })
        .await;
        match found {
            Some(d) => d,
            None => panic!(
                "expected {n} {state} deliveries; all: {:#}",
                Value::Array(self.deliveries(webhook, None).await)
            ),
        }
    }
}
