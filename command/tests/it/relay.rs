//! The relay is killed mid-publish and started again: nothing is missing on Kafka, and a
//! duplicate is only ever the same event (same event id) again. Two relays: one active, and
//! the standby takes over when the active one stops or is cut off from Postgres. A send that
//! fails aborts its round's Kafka transaction, so consumers see each stream in version order.

use crate::support::{db, read_topic, start_api, start_relay};
use futures::future::{join_all, BoxFuture};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::Message;
use serde_json::json;
use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use surge_command::relay::{KafkaPublisher, Publisher};
use surge_command::store::{EventStore, StreamAppend};
use surge_command::{Relay, RelayConfig};
use surge_events::inventory::{InventoryEvent, ReservationReleased};
use surge_events::{EventEnvelope, EventMetadata, OrderId, Sku, StreamType};
use surge_runtime::DatabaseConfig;
use surge_testkit::TestEnv;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_killed_mid_publish_loses_nothing() {
    let env = TestEnv::new().await;
    let api = start_api(&env).await;
    for sku in ["R-1", "R-2", "R-3"] {
        api.add_item(sku, 1000).await;
    }
    let orders = (0..300).map(|i| {
        let api = &api;
        async move {
            let sku = ["R-1", "R-2", "R-3"][i % 3];
            api.post(
                "/v1/orders",
                json!({"customer_id": format!("c{i}"), "lines": [{"sku": sku, "quantity": 1}]}),
            )
            .await
        }
    });
    assert!(join_all(orders).await.iter().all(|(s, _)| *s == 202));
    let stored: Vec<(Uuid, String, i64)> =
        sqlx::query_as("SELECT event_id, stream_id, version FROM events ORDER BY position")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(stored.len(), 3 + 300 + 300);

    // Start a relay and kill it (abort, no graceful stop) as soon as it has published some.
    let (_, relay) = start_relay(&env).await;
    let pool = env.pool.clone();
    surge_testkit::eventually(Duration::from_secs(30), || {
        let pool = pool.clone();
        async move {
            let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
                .fetch_one(&pool)
                .await
                .ok()?;
            (left < 603).then_some(())
        }
    })
    .await
    .expect("the relay starts publishing");
    relay.abort();
    let _ = relay.await;

    // A new relay takes over (the killed one's lock went with its connection).
    let (stop, relay) = start_relay(&env).await;
    assert!(
        surge_testkit::count_reaches(&env.pool, "SELECT count(*) FROM outbox", 0, Duration::from_secs(60)).await,
        "the outbox drains"
    );

    let mut published = read_topic(&env, StreamType::Order, |s| s.len() >= 300).await;
    published.extend(read_topic(&env, StreamType::Inventory, |s| s.len() >= 303).await);
    let stored_ids: HashSet<Uuid> = stored.iter().map(|(id, _, _)| *id).collect();
    let published_ids: HashSet<Uuid> = published.iter().map(|e| e.event_id).collect();
    assert_eq!(published_ids, stored_ids, "every stored event is on Kafka");

    // A duplicate is the same event: same id, same stream and version.
    let by_id: HashMap<Uuid, (String, i64)> = stored.into_iter().map(|(id, s, v)| (id, (s, v))).collect();
    for e in &published {
        assert_eq!(by_id[&e.event_id], (e.stream_id.0.clone(), e.version));
    }
    // After dropping repeats, each stream arrives in version order.
    let mut first_seen = HashSet::new();
    let mut last_version: HashMap<String, i64> = HashMap::new();
    for e in &published {
        if first_seen.insert(e.event_id) {
            let last = last_version.entry(e.stream_id.0.clone()).or_insert(0);
            assert!(e.version > *last, "{} v{} after v{}", e.stream_id, e.version, last);
            *last = e.version;
        }
    }

    stop.cancel();
    relay.await.unwrap();
    api.stop().await;
    env.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn of_two_relays_one_is_active_and_the_other_takes_over() {
    let env = TestEnv::new().await;
    let api = start_api(&env).await;
    api.add_item("L-1", 100).await;
    let holders = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND ((classid::bigint << 32) | objid::bigint) = $1",
        )
        .bind(surge_command::relay::RELAY_LOCK_KEY)
        .fetch_one(&env.pool)
        .await
        .unwrap()
    };
    // A first, so that it is the active one; B stands by.
    let (stop_a, a) = start_relay(&env).await;
    surge_testkit::eventually(Duration::from_secs(10), || async {
        (holders().await == 1).then_some(())
    })
    .await
    .expect("one relay holds the lock");
    let (stop_b, b) = start_relay(&env).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(holders().await, 1, "never two active relays");

    // Stop the active one: the standby takes over and publishes what comes next.
    stop_a.cancel();
    a.await.unwrap();
    for i in 0..20 {
        let (s, _) = api
            .post(
                "/v1/orders",
                json!({"customer_id": format!("l{i}"), "lines": [{"sku": "L-1", "quantity": 1}]}),
            )
            .await;
        assert_eq!(s, 202);
    }
    assert!(
        surge_testkit::count_reaches(&env.pool, "SELECT count(*) FROM outbox", 0, Duration::from_secs(30)).await,
        "the remaining relay drains the outbox"
    );
    assert_eq!(holders().await, 1);
    stop_b.cancel();
    b.await.unwrap();
    api.stop().await;
    env.cleanup().await;
}

/// Sessions holding the relay's advisory lock in this test's database.
async fn lock_holders(env: &TestEnv) -> i64 {
    sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted \
         AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
         AND ((classid::bigint << 32) | objid::bigint) = $1",
    )
    .bind(surge_command::relay::RELAY_LOCK_KEY)
    .fetch_one(&env.pool)
    .await
    .unwrap()
}

fn spawn_relay(relay: Relay) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let stop = CancellationToken::new();
    let s = stop.clone();
    (
        stop,
        tokio::spawn(async move { relay.run(s.cancelled_owned()).await.unwrap() }),
    )
}

/// Checks what reached Kafka as a consumer that skips repeats (a version it already has) sees
/// it: every stream from version 1 up to its last stored version, one version after the other.
fn assert_each_stream_in_order(published: &[EventEnvelope], stored: &[(Uuid, String, i64)]) {
    let mut last: HashMap<&str, i64> = HashMap::new();
    for e in published {
        let seen = last.entry(e.stream_id.as_str()).or_insert(0);
        if e.version <= *seen {
            continue;
        }
        assert_eq!(
            e.version,
            *seen + 1,
            "{} reached Kafka with v{} right after v{}",
            e.stream_id,
            e.version,
            seen
        );
        *seen = e.version;
    }
    let mut want: HashMap<&str, i64> = HashMap::new();
    for (_, stream, version) in stored {
        let v = want.entry(stream.as_str()).or_insert(0);
        *v = (*v).max(*version);
    }
    assert_eq!(last, want, "every stream reached Kafka up to its last version");
}

/// Sends through the real producer, but the first send of each chosen position fails at once,
/// as a message timeout during a leader election would (the message never reaches the topic).
struct FailingOnce {
    inner: KafkaPublisher,
    positions: Mutex<HashSet<i64>>,
}

impl Publisher for FailingOnce {
    fn start(&self) -> BoxFuture<'_, Result<(), KafkaError>> {
        self.inner.start()
    }

    fn begin(&self) -> Result<(), KafkaError> {
        self.inner.begin()
    }

    fn send<'a>(&'a self, env: &'a EventEnvelope) -> BoxFuture<'a, Result<(), KafkaError>> {
        if self.positions.lock().unwrap().remove(&env.position) {
            return Box::pin(async { Err(KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)) });
        }
        self.inner.send(env)
    }

    fn commit(&self) -> BoxFuture<'_, Result<(), KafkaError>> {
        self.inner.commit()
    }

    fn abort(&self) -> BoxFuture<'_, Result<(), KafkaError>> {
        self.inner.abort()
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        self.inner.stop()
    }
}

/// Every record of `topic`'s log, those of aborted transactions included, as a consumer with
/// `isolation.level=read_uncommitted` reads them, until `n` were seen (or 30 s pass).
async fn read_uncommitted(env: &TestEnv, stream_type: StreamType, n: usize) -> Vec<EventEnvelope> {
    let consumer: StreamConsumer = surge_runtime::kafka::client_config(&env.kafka)
        .set("group.id", format!("{}raw-{}", env.kafka.topic_prefix, Uuid::new_v4()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_uncommitted")
        .create()
        .unwrap();
    consumer.subscribe(&[&env.topic(stream_type)]).unwrap();
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while seen.len() < n {
            let m = consumer.recv().await.expect("kafka message");
            seen.push(EventEnvelope::from_json(m.payload().unwrap()).unwrap());
        }
    })
    .await;
    seen
}

/// Version 5 of three streams fails once, in a round that holds versions 6.. of them too: that
/// round's transaction is aborted, so the log holds v6 before v5 (as a `read_uncommitted`
/// reader sees), but consumers (`read_committed`) see each stream in version order.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_send_aborts_its_round_so_consumers_see_each_stream_in_order() {
    let env = TestEnv::new().await;
    let api = start_api(&env).await;
    let skus = ["F-1", "F-2", "F-3"];
    for sku in skus {
        api.add_item(sku, 1000).await;
    }
    for i in 0..60 {
        let (s, _) = api
            .post(
                "/v1/orders",
                json!({"customer_id": format!("f{i}"), "lines": [{"sku": skus[i % 3], "quantity": 1}]}),
            )
            .await;
        assert_eq!(s, 202);
    }
    let stored: Vec<(Uuid, String, i64)> =
        sqlx::query_as("SELECT event_id, stream_id, version FROM events ORDER BY position")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    // Version 5 of each SKU's stream fails once; its versions 6.. are in the same round.
    let failing: HashSet<i64> =
        sqlx::query_scalar("SELECT position FROM events WHERE stream_type = 'inventory' AND version = 5")
            .fetch_all(&env.pool)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(failing.len(), 3);

    let config = RelayConfig::new(db(&env, 4), env.kafka.clone());
    let publisher = FailingOnce {
        inner: KafkaPublisher::new(&config).unwrap(),
        positions: Mutex::new(failing),
    };
    let relay = Relay::build_with(config, Arc::new(publisher)).await.unwrap();
    let (stop, relay) = spawn_relay(relay);
    assert!(
        surge_testkit::count_reaches(&env.pool, "SELECT count(*) FROM outbox", 0, Duration::from_secs(30)).await,
        "the outbox drains"
    );

    let inventory_events = stored.iter().filter(|(_, s, _)| s.starts_with("inventory-")).count();
    let mut published = read_topic(&env, StreamType::Inventory, |s| s.len() >= inventory_events).await;
    published.extend(read_topic(&env, StreamType::Order, |s| s.len() >= 60).await);
    assert_each_stream_in_order(&published, &stored);

    // The aborted round did reach the log, out of order: what kept it from consumers is the abort.
    let log = read_uncommitted(&env, StreamType::Inventory, inventory_events + 1).await;
    assert!(
        log.len() > inventory_events,
        "the aborted round's records are in the log"
    );
    let reordered = log.iter().position(|e| e.version == 6).is_some_and(|six| {
        log.iter()
            .position(|e| e.stream_id == log[six].stream_id && e.version == 5)
            > Some(six)
    });
    assert!(reordered, "the log holds a v6 before its stream's v5");

    stop.cancel();
    relay.await.unwrap();
    api.stop().await;
    env.cleanup().await;
}

/// A link to Postgres that can be frozen like a network cut: bytes stop flowing both ways but
/// neither side sees the connection close (unlike `TcpProxy::cut`, which closes both sides, so
/// the server would drop the session and its lock at once). New connections hang too.
struct Partition {
    addr: SocketAddr,
    frozen: watch::Sender<bool>,
}

impl Partition {
    async fn start(target: SocketAddr) -> Partition {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (frozen, _) = watch::channel(false);
        let f = frozen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let f = f.clone();
                tokio::spawn(async move {
                    Self::thawed(&mut f.subscribe()).await;
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::spawn(Self::pump(client_read, server_write, f.subscribe()));
                    tokio::spawn(Self::pump(server_read, client_write, f.subscribe()));
                });
            }
        });
        Partition { addr, frozen }
    }

    async fn thawed(frozen: &mut watch::Receiver<bool>) {
        let _ = frozen.wait_for(|f| !f).await;
    }

    /// Forwards bytes while thawed; while frozen it reads nothing and holds what it has read.
    async fn pump(
        mut from: tokio::net::tcp::OwnedReadHalf,
        mut to: tokio::net::tcp::OwnedWriteHalf,
        mut frozen: watch::Receiver<bool>,
    ) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            Self::thawed(&mut frozen).await;
            let n = tokio::select! {
                read = from.read(&mut buf) => match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                },
                _ = frozen.wait_for(|f| *f) => continue,
            };
            Self::thawed(&mut frozen).await;
            if to.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    }

    fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    fn thaw(&self) {
        self.frozen.send_replace(false);
    }
}

/// Forwards to the real producer and notes when each send was started.
struct Recording {
    inner: KafkaPublisher,
    sends: Mutex<Vec<Instant>>,
}

impl Recording {
    fn new(config: &RelayConfig) -> Arc<Recording> {
        Arc::new(Recording {
            inner: KafkaPublisher::new(config).unwrap(),
            sends: Mutex::new(Vec::new()),
        })
    }

    fn sends(&self) -> Vec<Instant> {
        self.sends.lock().unwrap().clone()
    }
}

impl Publisher for Recording {
    fn start(&self) -> BoxFuture<'_, Result<(), KafkaError>> {
        self.inner.start()
    }

    fn begin(&self) -> Result<(), KafkaError> {
        self.inner.begin()
    }

    fn send<'a>(&'a self, env: &'a EventEnvelope) -> BoxFuture<'a, Result<(), KafkaError>> {
        self.sends.lock().unwrap().push(Instant::now());
        self.inner.send(env)
    }

    fn commit(&self) -> BoxFuture<'_, Result<(), KafkaError>> {
        self.inner.commit()
    }

    fn abort(&self) -> BoxFuture<'_, Result<(), KafkaError>> {
        self.inner.abort()
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        self.inner.stop()
    }
}

/// How long a standby may take to publish after the active relay was cut off from Postgres
/// (docs/operations.md, "Relay failover").
const TAKEOVER_BOUND: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_cut_off_from_postgres_is_replaced_within_the_bound_and_stays_quiet() {
    let env = TestEnv::new().await;
    let api = Arc::new(start_api(&env).await);
    api.add_item("P-1", 100_000).await;
    api.add_item("P-2", 100_000).await;
    // A steady trickle of orders all along, so that there is always something to publish.
    let ordering = CancellationToken::new();
    let orders = tokio::spawn({
        let (api, ordering) = (api.clone(), ordering.clone());
        async move {
            let mut i = 0;
            while !ordering.is_cancelled() {
                let sku = ["P-1", "P-2"][i % 2];
                let (s, _) = api
                    .post(
                        "/v1/orders",
                        json!({"customer_id": format!("p{i}"), "lines": [{"sku": sku, "quantity": 1}]}),
                    )
                    .await;
                assert_eq!(s, 202);
                i += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });

    // A reaches Postgres through the link that will be cut; it becomes the active relay.
    let partition = Partition::start(env.postgres_addr()).await;
    let a_config = RelayConfig::new(
        DatabaseConfig {
            url: env.url_via(partition.addr).into(),
            max_connections: 4,
        },
        env.kafka.clone(),
    );
    let a_sends = Recording::new(&a_config);
    let (stop_a, a) = spawn_relay(Relay::build_with(a_config, a_sends.clone()).await.unwrap());
    surge_testkit::eventually(Duration::from_secs(10), || async {
        (lock_holders(&env).await == 1 && !a_sends.sends().is_empty()).then_some(())
    })
    .await
    .expect("A is active and publishing");
    // B, on a direct connection, stands by.
    let b_config = RelayConfig::new(db(&env, 4), env.kafka.clone());
    let b_sends = Recording::new(&b_config);
    let (stop_b, b) = spawn_relay(Relay::build_with(b_config, b_sends.clone()).await.unwrap());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(b_sends.sends().is_empty(), "B stands by while A is active");

    let cut = Instant::now();
    partition.freeze();
    let first_b = surge_testkit::eventually(TAKEOVER_BOUND + Duration::from_secs(20), || async {
        b_sends.sends().first().copied()
    })
    .await
    .expect("B takes over");
    let takeover = first_b - cut;
    println!(
        "relay failover: B published {} ms after A was cut off",
        takeover.as_millis()
    );
    assert!(takeover < TAKEOVER_BOUND, "B took over after {takeover:?}");

    // The link comes back: whatever A still had under way must not reach Kafka or Postgres now.
    tokio::time::sleep(Duration::from_secs(1)).await;
    partition.thaw();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let late: Vec<_> = a_sends.sends().into_iter().filter(|t| *t >= first_b).collect();
    assert!(late.is_empty(), "A published {} events after B took over", late.len());
    assert_eq!(lock_holders(&env).await, 1, "one active relay after the link is back");

    ordering.cancel();
    orders.await.unwrap();
    assert!(
        surge_testkit::count_reaches(&env.pool, "SELECT count(*) FROM outbox", 0, Duration::from_secs(30)).await,
        "the outbox drains"
    );
    let stored: Vec<(Uuid, String, i64)> =
        sqlx::query_as("SELECT event_id, stream_id, version FROM events ORDER BY position")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    let inventory_events = stored.iter().filter(|(_, s, _)| s.starts_with("inventory-")).count();
    let order_events = stored.len() - inventory_events;
    let mut published = read_topic(&env, StreamType::Inventory, |s| s.len() >= inventory_events).await;
    published.extend(read_topic(&env, StreamType::Order, |s| s.len() >= order_events).await);
    assert_each_stream_in_order(&published, &stored);

    stop_a.cancel();
    stop_b.cancel();
    a.await.unwrap();
    b.await.unwrap();
    Arc::try_unwrap(api).ok().expect("orders are done").stop().await;
    env.cleanup().await;
}

/// Fills the outbox with `events` events over `streams` inventory streams through the event
/// store's append (all streams in each append, so their positions interleave), then times a
/// relay from its start until the outbox is empty: events per second, and how long the relay
/// took to its first delivery (starting up). Checks the topic after.
async fn drain_rate(streams: usize, events: usize) -> (f64, Duration) {
    let env = TestEnv::new().await;
    let store = EventStore::new(env.pool.clone());
    let meta = EventMetadata::new("bench");
    let skus: Vec<Sku> = (0..streams).map(|i| Sku::parse(format!("HOT-{i}")).unwrap()).collect();
    let per_append = (2000 / streams).max(1);
    let mut version = 0;
    while version * streams < events {
        let n = per_append.min(events / streams - version);
        let appends: Vec<StreamAppend> = skus
            .iter()
            .map(|sku| {
                let released: Vec<InventoryEvent> = (0..n)
                    .map(|_| {
                        InventoryEvent::ReservationReleased(ReservationReleased {
                            sku: sku.clone(),
                            order_id: OrderId::new(),
                            quantity: 1,
                        })
                    })
                    .collect();
                StreamAppend::new(sku.stream_id(), version as i64, &released, &meta)
            })
            .collect();
        store.append(&appends).await.unwrap();
        version += n;
    }
    let stored: Vec<(Uuid, String, i64)> =
        sqlx::query_as("SELECT event_id, stream_id, version FROM events ORDER BY position")
            .fetch_all(&env.pool)
            .await
            .unwrap();
    assert_eq!(stored.len(), events);

    let started = Instant::now();
    let (stop, relay) = start_relay(&env).await;
    let mut first_delivery = None;
    loop {
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&env.pool)
            .await
            .unwrap();
        if left < events as i64 && first_delivery.is_none() {
            first_delivery = Some(started.elapsed());
        }
        if left == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "{left} events still in the outbox"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rate = events as f64 / started.elapsed().as_secs_f64();
    stop.cancel();
    relay.await.unwrap();

    let published = read_topic(&env, StreamType::Inventory, |s| s.len() >= events).await;
    assert_each_stream_in_order(&published, &stored);
    env.cleanup().await;
    (rate, first_delivery.unwrap_or_default())
}

/// How fast the relay drains a backlog of one hot stream (a flash sale's SKU) and of many.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a measurement: cargo test -p surge-command --test it relay::relay_throughput -- --ignored --nocapture"]
async fn relay_throughput() {
    for (streams, events) in [(1, 20_000), (1000, 20_000)] {
        let (rate, first) = drain_rate(streams, events).await;
        println!(
            "relay throughput: {events} events over {streams} stream(s): {rate:.0} events/s \
             (first delivery {} ms after the relay's start)",
            first.as_millis()
        );
    }
}
