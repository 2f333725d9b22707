//! Test support for Surge's integration tests: real Postgres, real Kafka, isolated per test.
//!
//! [`TestEnv::new`] creates a database of its own (migrated) on the Postgres named by
//! `DATABASE_URL` and a topic prefix of its own on the broker named by `SURGE_KAFKA_BROKERS`,
//! with the event topics created, so tests run in parallel without seeing each other.
//! `./dev test` starts both and drops what tests left behind on its next run. [`faults`] has
//! what fault tests need: a private broker to stop, a proxy to cut Postgres off.

pub mod faults;

use rdkafka::admin::{AdminClient, AdminOptions};
use rdkafka::client::DefaultClientContext;
use sqlx::{Connection, PgConnection, PgPool};
use std::time::Duration;
use surge_runtime::{AuthConfig, DatabaseConfig, KafkaConfig, Role};

pub const DEFAULT_ADMIN_URL: &str = "postgres://surge:surge@127.0.0.1:5432/surge";
/// Databases made for tests start with this; `./dev test` drops leftovers.
pub const TEST_DB_PREFIX: &str = "surge_t_";

pub struct TestEnv {
    pub db: DatabaseConfig,
    pub kafka: KafkaConfig,
    pub pool: PgPool,
    /// HS256 with a secret of this test's own: services started for it check tokens with it.
    pub auth: AuthConfig,
    db_name: String,
    admin_url: String,
}

fn admin_url() -> String {
    std::env::var("DATABASE_URL").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_string())
}

/// The URL of another database on the same server.
fn with_database(url: &str, db: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let base = base.rsplit_once('/').map_or(base, |(b, _)| b);
    match query {
        Some(q) => format!("{base}/{db}?{q}"),
        None => format!("{base}/{db}"),
    }
}

impl TestEnv {
    /// A migrated database and created topics, both new.
    pub async fn new() -> TestEnv {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let db_name = format!("{TEST_DB_PREFIX}{}", &id[..16]);
        let admin_url = admin_url();
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .expect("Postgres is reachable at DATABASE_URL (start it with ./dev up)");
        sqlx::query(&format!("CREATE DATABASE {db_name}"))
            .execute(&mut admin)
            .await
            .expect("the test role may create databases");
        let db = DatabaseConfig {
            url: with_database(&admin_url, &db_name).into(),
            max_connections: 20,
        };
        let pool = surge_runtime::db::connect(&db).await.expect("test database reachable");
        surge_runtime::db::migrate(&pool).await.expect("migrations apply");
        let brokers = std::env::var("SURGE_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
        let kafka = KafkaConfig {
            brokers,
            topic_prefix: format!("t{}.", &id[..12]),
            partitions: 3,
        };
        surge_runtime::kafka::ensure_topics(&kafka)
            .await
            .expect("Kafka is reachable at SURGE_KAFKA_BROKERS (start it with ./dev up)");
        TestEnv {
            db,
            kafka,
            pool,
            auth: AuthConfig::hs256(format!("test-secret-{}", uuid::Uuid::new_v4().simple())),
            db_name,
            admin_url,
        }
    }

    /// A bearer token for `subject` with `role`, valid for an hour.
    pub fn token(&self, subject: &str, role: Role) -> String {
        self.auth
            .build()
            .expect("test auth config is valid")
            .issue(subject, role, Duration::from_secs(3600))
            .expect("HS256 tokens can be issued")
    }

    /// A token signed with the right key that expired an hour ago.
    pub fn expired_token(&self, subject: &str, role: Role) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.auth
            .build()
            .expect("test auth config is valid")
            .sign(&surge_runtime::auth::Claims {
                sub: subject.to_string(),
                role,
                iss: self.auth.issuer.clone(),
                aud: self.auth.audience.clone(),
                iat: now - 7200,
                exp: now - 3600,
            })
            .expect("HS256 tokens can be signed")
    }

    /// An HTTP client that calls as an admin (tests of other things than access rules).
    pub fn http(&self) -> reqwest::Client {
        self.client_as("test-admin", Role::Admin)
    }

    /// An HTTP client that sends a token for `subject` with `role` on every request.
    pub fn client_as(&self, subject: &str, role: Role) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        let value = format!("Bearer {}", self.token(subject, role));
        headers.insert(
            reqwest::header::AUTHORIZATION,
            value.parse().expect("a token is a valid header value"),
        );
        reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .expect("HTTP client builds")
    }

    /// The URL of this test's database through `proxy` (same credentials and name).
    pub fn url_via(&self, proxy: std::net::SocketAddr) -> String {
        let (scheme_creds, rest) = self.db.expose_url().split_once('@').expect("URL with credentials");
        let path = rest.split_once('/').map_or("", |(_, p)| p);
        format!("{scheme_creds}@{proxy}/{path}")
    }

    /// Host and port of the Postgres server.
    pub fn postgres_addr(&self) -> std::net::SocketAddr {
        let rest = self.db.expose_url().split_once('@').map_or("", |(_, r)| r);
        let host_port = rest.split('/').next().unwrap_or("127.0.0.1:5432");
        let host_port = if host_port.contains(':') {
            host_port.to_string()
        } else {
            format!("{host_port}:5432")
        };
        std::net::ToSocketAddrs::to_socket_addrs(&host_port)
            .ok()
            .and_then(|mut a| a.next())
            .expect("Postgres address resolves")
    }

    pub fn topic(&self, stream_type: surge_events::StreamType) -> String {
        surge_events::topics::topic_for(&self.kafka.topic_prefix, stream_type)
    }

    /// Drops the database and the topics. Tests call it at their end; leftovers of a failed
    /// test are dropped by the next `./dev test`.
    pub async fn cleanup(self) {
        self.pool.close().await;
        if let Ok(admin) =
            surge_runtime::kafka::client_config(&self.kafka).create::<AdminClient<DefaultClientContext>>()
        {
            let topics = surge_events::topics::all_topics(&self.kafka.topic_prefix);
            let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
            let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
            let _ = admin.delete_topics(&refs, &opts).await;
        }
        if let Ok(mut admin) = PgConnection::connect(&self.admin_url).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.db_name))
                .execute(&mut admin)
                .await;
        }
    }
}

/// Polls `check` every 50 ms until it returns `Some` or `timeout` passes.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Polls a `SELECT count(*) …` until it returns `want` or `timeout` passes; true if it did.
pub async fn count_reaches(pool: &sqlx::PgPool, sql: &str, want: i64, timeout: Duration) -> bool {
    eventually(timeout, || async {
        let n: i64 = sqlx::query_scalar(sql).fetch_one(pool).await.ok()?;
        (n == want).then_some(())
    })
    .await
    .is_some()
}

/// The shutdown future a [`Service`] hands to the service it runs (every service's `run`
/// takes one): it completes when the service is stopped, or when its [`Service`] is dropped.
pub type StopSignal = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>>;

/// A service of a test running as a task (on port 0 where it listens): stop it gracefully, or
/// kill it (abort its task) as a crash would.
pub struct Service {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Service {
    /// Runs `run(stop)` as a task; `stop` completes when [`Service::stop`] is called.
    pub fn spawn<F>(run: impl FnOnce(StopSignal) -> F) -> Service
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let signal: StopSignal = Box::pin(async move {
            let _ = stopped.await;
        });
        Service {
            stop,
            task: tokio::spawn(run(signal)),
        }
    }

    /// Signals the service to stop and waits until it has (it must end cleanly).
    pub async fn stop(self) {
        let _ = self.stop.send(());
        self.task.await.expect("service ends cleanly");
    }

    /// Aborts the service's task, as a crash would.
    pub async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swaps_the_database_of_a_url() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/surge", "x"),
            "postgres://u:p@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/surge?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
    }
}
