//! Moka caches of serialized view rows, and the invalidator that keeps them fresh.
//!
//! An entry is the response body of one row, serialized once, with its ETag and stream
//! version. A miss loads the row once however many requests wait for it (`try_get_with`
//! coalesces them). The invalidator of each query process reads every partition of both event
//! topics, starting where the projectors' checkpoints are (so it sees every event the views
//! may not reflect yet, and every process sees every event) and, for an event of
//! version `v`, evicts the entry and remembers `v` as the key's floor: a row read from a view
//! that has not reached `v` yet is served but not cached, so the cache never keeps a value
//! older than an event it has already seen (also when the event arrives while the row is
//! being read: a loaded row is checked against the floor again once it is in the cache).

use crate::encoding::Compressed;
use axum::http::HeaderValue;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use moka::future::Cache;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::Message;
use rdkafka::{Offset, TopicPartitionList};
use serde::Deserialize;
use sqlx::PgPool;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use surge_events::{StreamId, StreamOf, StreamType};
use surge_runtime::KafkaConfig;
use tokio_util::sync::CancellationToken;

/// One cached response body, with what every answer of it sends ready-made: its ETag as a
/// header value, and its compressed forms once asked for.
#[derive(Debug, Clone)]
pub struct CachedView {
    pub body: Bytes,
    /// The customer whose data this is (orders), checked on every read, cached or not.
    pub owner: Option<String>,
    pub etag: String,
    pub etag_header: HeaderValue,
    pub version: i64,
    pub last_position: i64,
    pub updated_at: DateTime<Utc>,
    pub compressed: Compressed,
}

impl CachedView {
    /// The view of a row at `version`; its ETag is `"v<version>"`.
    pub fn new(
        body: Bytes,
        owner: Option<String>,
        version: i64,
        last_position: i64,
        updated_at: DateTime<Utc>,
    ) -> Self {
        let etag = format!("\"v{version}\"");
        CachedView {
            body,
            owner,
            etag_header: HeaderValue::from_str(&etag).unwrap_or_else(|_| HeaderValue::from_static("\"v\"")),
            etag,
            version,
            last_position,
            updated_at,
            compressed: Compressed::default(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheStatus {
    Hit,
    Miss,
    /// Read through: caching is off, or the row is older than an event already seen.
    Bypass,
    /// The views' database failed or was too slow: the last value this process saw.
    Stale,
}

impl CacheStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CacheStatus::Hit => "hit",
            CacheStatus::Miss => "miss",
            CacheStatus::Bypass => "bypass",
            CacheStatus::Stale => "stale",
        }
    }
}

#[derive(Debug)]
enum Miss {
    NotFound,
    Stale(CachedView),
    Db(sqlx::Error),
}

#[derive(Clone)]
pub struct ViewCache {
    name: &'static str,
    entries: Cache<String, Arc<CachedView>>,
    /// The last value loaded per key, kept after eviction: served (flagged stale) when the
    /// database fails, so a Postgres hiccup during a spike does not blank the catalog.
    last_known: Cache<String, Arc<CachedView>>,
    db_timeout: Duration,
    floors: Cache<String, i64>,
    enabled: bool,
    /// `surge_cache_requests_total` of each [`CacheStatus`], registered once (a lookup by
    /// labels per read costs more than the cache hit it counts).
    counted: [metrics::Counter; 4],
}

impl ViewCache {
    pub fn new(name: &'static str, capacity: u64, ttl: Duration, enabled: bool) -> Self {
        // Counters start at zero, so dashboards show "none" rather than "no data".
        metrics::counter!("surge_cache_evictions_total", "cache" => name, "cause" => "size").increment(0);
        ViewCache {
            name,
            last_known: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            db_timeout: Duration::from_secs(1),
            entries: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .eviction_listener(move |_, _, cause| {
                    let cause = format!("{cause:?}").to_lowercase();
                    metrics::counter!("surge_cache_evictions_total", "cache" => name, "cause" => cause).increment(1);
                })
                .build(),
            floors: Cache::builder()
                .max_capacity(capacity)
                .time_to_live(Duration::from_secs(300))
                .build(),
            enabled,
            counted: [
                CacheStatus::Hit,
                CacheStatus::Miss,
                CacheStatus::Bypass,
                CacheStatus::Stale,
            ]
            .map(|s| metrics::counter!("surge_cache_requests_total", "cache" => name, "result" => s.as_str())),
        }
    }

    fn count(&self, status: CacheStatus) {
        self.counted[status as usize].increment(1);
    }

    /// The cached entry of `key`, if there is one (counted as a hit); nothing is loaded.
    pub async fn peek(&self, key: &str) -> Option<Arc<CachedView>> {
        if !self.enabled {
            return None;
        }
        let hit = self.entries.get(key).await?;
        self.count(CacheStatus::Hit);
        Some(hit)
    }

    /// The entry for `key`, loading it with `load` on a miss (once for all concurrent misses).
    pub async fn get_or_load<F, Fut>(
        &self,
        key: &str,
        load: F,
    ) -> Result<Option<(Arc<CachedView>, CacheStatus)>, sqlx::Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<CachedView>, sqlx::Error>>,
    {
        let found = self.lookup(key, load).await;
        if let Ok(Some((_, status))) = &found {
            self.count(*status);
        }
        found
    }

    async fn lookup<F, Fut>(&self, key: &str, load: F) -> Result<Option<(Arc<CachedView>, CacheStatus)>, sqlx::Error>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<CachedView>, sqlx::Error>>,
    {
        if !self.enabled {
            return Ok(load().await?.map(|v| (Arc::new(v), CacheStatus::Bypass)));
        }
        if let Some(hit) = self.entries.get(key).await {
            return Ok(Some((hit, CacheStatus::Hit)));
        }
        let db_timeout = self.db_timeout;
        let floors = self.floors.clone();
        let loaded = self
            .entries
            .try_get_with(key.to_string(), async move {
                let loaded = tokio::time::timeout(db_timeout, load())
                    .await
                    .unwrap_or(Err(sqlx::Error::PoolTimedOut));
                // The floor as of now, after the load: it may have risen while the row was read.
                let floor = floors.get(key).await.unwrap_or(0);
                match loaded {
                    Ok(Some(v)) if v.version >= floor => Ok(Arc::new(v)),
                    Ok(Some(v)) => Err(Miss::Stale(v)),
                    Ok(None) => Err(Miss::NotFound),
                    Err(e) => Err(Miss::Db(e)),
                }
            })
            .await;
        match loaded {
            Ok(v) => {
                // An event may also have raised the floor between that look and the insert,
                // when there was no entry to evict yet: look again now that the entry is in.
                // (The invalidator raises the floor before it looks for the entry, so one of
                // the two sees the other.)
                let floor = self.floors.get(key).await.unwrap_or(0);
                if v.version < floor {
                    self.evict_older_than(key, floor).await;
                    return Ok(Some((v, CacheStatus::Bypass)));
                }
                self.last_known.insert(key.to_string(), v.clone()).await;
                Ok(Some((v, CacheStatus::Miss)))
            }
            Err(e) => match Arc::try_unwrap(e).unwrap_or_else(|e| clone_miss(&e)) {
                Miss::NotFound => Ok(None),
                Miss::Stale(v) => Ok(Some((Arc::new(v), CacheStatus::Bypass))),
                Miss::Db(e) => match self.last_known.get(key).await {
                    Some(v) => {
                        tracing::warn!(cache = self.name, key, error = %e, "views unavailable; serving the last known value");
                        Ok(Some((v, CacheStatus::Stale)))
                    }
                    None => Err(e),
                },
            },
        }
    }

    /// An event of `version` happened to `key`'s stream: the cached row is out of date.
    pub async fn invalidate(&self, key: &str, version: i64) {
        let floor = self.floors.get(key).await.unwrap_or(0);
        if version > floor {
            self.floors.insert(key.to_string(), version).await;
        }
        self.evict_older_than(key, version).await;
    }

    /// Drops the cached entry of `key`, whatever its version.
    pub async fn evict(&self, key: &str) {
        self.entries.invalidate(key).await;
    }

    async fn evict_older_than(&self, key: &str, version: i64) {
        if let Some(e) = self.entries.get(key).await {
            if e.version < version {
                self.entries.invalidate(key).await;
            }
        }
    }

    /// Longest a view read may take before the last known value is served instead.
    pub fn with_db_timeout(mut self, timeout: Duration) -> Self {
        self.db_timeout = timeout;
        self
    }
}

/// Concurrent waiters share one error; each gets its own copy of the outcome.
fn clone_miss(m: &Miss) -> Miss {
    match m {
        Miss::NotFound => Miss::NotFound,
        Miss::Stale(v) => Miss::Stale(v.clone()),
        Miss::Db(e) => Miss::Db(sqlx::Error::Protocol(e.to_string())),
    }
}

/// The two fields of an envelope the invalidator needs.
#[derive(Deserialize)]
struct Head {
    stream_id: String,
    version: i64,
}

/// Which projection keeps the views of a topic's events: the invalidator starts reading each
/// topic where that projection's checkpoint is, so every event the views do not reflect yet
/// passes through it (and sets its key's floor) before the cache serves anything.
const PROJECTION_OF_TOPIC: [(StreamType, &str); 2] =
    [(StreamType::Inventory, "catalog"), (StreamType::Order, "orders")];

#[derive(Debug, thiserror::Error)]
pub enum InvalidatorError {
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    #[error("reading projection checkpoints: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the invalidator's setup task failed")]
    Setup,
}

/// Starts the invalidator: evicts cache entries as events arrive, until `cancel`.
///
/// It assigns itself every partition of both topics (no group rebalance to wait for), from the
/// projectors' checkpoints, before it returns: from then on no event can slip past it.
pub async fn spawn_invalidator(
    kafka: &KafkaConfig,
    pool: &PgPool,
    items: ViewCache,
    orders: ViewCache,
    cancel: CancellationToken,
) -> Result<tokio::task::JoinHandle<()>, InvalidatorError> {
    let group = format!("{}surge-query-cache-{}", kafka.topic_prefix, uuid::Uuid::now_v7());
    let consumer: StreamConsumer = surge_runtime::kafka::consumer_config(kafka, &group).create()?;
    let mut starts = Vec::new();
    for (stream_type, projection) in PROJECTION_OF_TOPIC {
        let topic = surge_events::topics::topic_for(&kafka.topic_prefix, stream_type);
        let checkpoints = surge_store::checkpoints::next_offsets(pool, projection, &topic)
            .await
            .map_err(|e| match e {
                surge_store::StoreError::Database(e) => InvalidatorError::from(e),
                _ => InvalidatorError::Setup,
            })?;
        starts.push((
            topic,
            checkpoints.into_iter().collect::<std::collections::HashMap<_, _>>(),
        ));
    }
    // Metadata and assignment are blocking librdkafka calls.
    let consumer = tokio::task::spawn_blocking(move || -> Result<StreamConsumer, rdkafka::error::KafkaError> {
        let mut tpl = TopicPartitionList::new();
        for (topic, checkpoints) in &starts {
            let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
            for t in md.topics() {
                for p in t.partitions() {
                    let offset = checkpoints
                        .get(&p.id())
                        .map_or(Offset::Beginning, |o| Offset::Offset(*o));
                    tpl.add_partition_offset(topic, p.id(), offset)?;
                }
            }
        }
        consumer.assign(&tpl)?;
        Ok(consumer)
    })
    .await
    .map_err(|_| InvalidatorError::Setup)??;
    Ok(tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = cancel.cancelled() => break,
                m = consumer.recv() => m,
            };
            let msg = match msg {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(error = %e, "cache invalidator consumer error");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let Some(head) = msg.payload().and_then(|p| serde_json::from_slice::<Head>(p).ok()) else {
                continue;
            };
            match StreamId(head.stream_id).parse() {
                Some(StreamOf::Inventory(sku)) => {
                    // An item's row reflects every bucket stream and its version is their sum,
                    // which one stream's version cannot be compared with: the floor still holds
                    // (the sum is at least any one bucket's version) and the entry goes.
                    items.invalidate(sku.as_str(), head.version).await;
                    items.evict(sku.as_str()).await;
                }
                Some(StreamOf::Order(id)) => orders.invalidate(&id.to_string(), head.version).await,
                None => {}
            }
        }
        tracing::info!("cache invalidator stopped");
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::Notify;

    fn view(version: i64) -> CachedView {
        CachedView::new(Bytes::from_static(b"{}"), None, version, version, Utc::now())
    }

    #[tokio::test]
    async fn a_miss_loads_once_then_hits() {
        let cache = ViewCache::new("test", 100, Duration::from_secs(60), true);
        let (_, s) = cache
            .get_or_load("a", || async { Ok(Some(view(1))) })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s, CacheStatus::Miss);
        let (v, s) = cache
            .get_or_load("a", || async { Ok(Some(view(9))) })
            .await
            .unwrap()
            .unwrap();
        assert_eq!((s, v.version), (CacheStatus::Hit, 1));
    }

    #[tokio::test]
    async fn rows_older_than_a_seen_event_are_served_but_not_cached() {
        let cache = ViewCache::new("test", 100, Duration::from_secs(60), true);
        cache.get_or_load("a", || async { Ok(Some(view(1))) }).await.unwrap();
        cache.invalidate("a", 2).await;
        let (v, s) = cache
            .get_or_load("a", || async { Ok(Some(view(1))) })
            .await
            .unwrap()
            .unwrap();
        assert_eq!((s, v.version), (CacheStatus::Bypass, 1));
        let (v, s) = cache
            .get_or_load("a", || async { Ok(Some(view(2))) })
            .await
            .unwrap()
            .unwrap();
        assert_eq!((s, v.version), (CacheStatus::Miss, 2));
        // An older event arriving late does not evict a newer entry.
        cache.invalidate("a", 1).await;
        let (_, s) = cache
            .get_or_load("a", || async { Ok(Some(view(2))) })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s, CacheStatus::Hit);
    }

    #[tokio::test]
    async fn a_database_failure_serves_the_last_known_value_flagged_stale() {
        let cache = ViewCache::new("test", 100, Duration::from_secs(60), true);
        cache.get_or_load("a", || async { Ok(Some(view(1))) }).await.unwrap();
        cache.invalidate("a", 2).await;
        let (v, s) = cache
            .get_or_load("a", || async { Err(sqlx::Error::PoolTimedOut) })
            .await
            .unwrap()
            .unwrap();
        assert_eq!((s, v.version), (CacheStatus::Stale, 1));
        assert!(cache
            .get_or_load("b", || async { Err(sqlx::Error::PoolTimedOut) })
            .await
            .is_err());
    }

    #[tokio::test]
    async fn an_event_seen_while_a_load_is_pending_keeps_the_loaded_row_out_of_the_cache() {
        let cache = ViewCache::new("test", 100, Duration::from_secs(60), true);
        let (loading, release) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
        let reader = tokio::spawn({
            let (cache, loading, release) = (cache.clone(), loading.clone(), release.clone());
            async move {
                cache
                    .get_or_load("a", || async move {
                        // The view still says version 1 when it is read...
                        loading.notify_one();
                        release.notified().await;
                        Ok(Some(view(1)))
                    })
                    .await
            }
        });
        // ...and the event of version 2 arrives before the read returns: nothing to evict yet.
        loading.notified().await;
        cache.invalidate("a", 2).await;
        release.notify_one();
        let (v, s) = reader.await.unwrap().unwrap().unwrap();
        assert_eq!((s, v.version), (CacheStatus::Bypass, 1), "served, but not cached");
        let (v, s) = cache
            .get_or_load("a", || async { Ok(Some(view(2))) })
            .await
            .unwrap()
            .unwrap();
        assert_eq!((s, v.version), (CacheStatus::Miss, 2), "the next read goes to the view");
    }

    #[tokio::test]
    async fn peek_finds_cached_entries_only_and_never_loads() {
        let cache = ViewCache::new("test", 100, Duration::from_secs(60), true);
        assert!(cache.peek("a").await.is_none());
        cache.get_or_load("a", || async { Ok(Some(view(3))) }).await.unwrap();
        let v = cache.peek("a").await.unwrap();
        assert_eq!((v.version, v.etag.as_str()), (3, "\"v3\""));
        assert_eq!(v.etag_header, "\"v3\"");
        cache.invalidate("a", 4).await;
        assert!(
            cache.peek("a").await.is_none(),
            "an entry older than a seen event is gone"
        );
        let off = ViewCache::new("test", 100, Duration::from_secs(60), false);
        off.get_or_load("a", || async { Ok(Some(view(1))) }).await.unwrap();
        assert!(off.peek("a").await.is_none(), "a disabled cache holds nothing");
    }

    #[tokio::test]
    async fn not_found_is_not_cached() {
        let cache = ViewCache::new("test", 100, Duration::from_secs(60), true);
        assert!(cache.get_or_load("a", || async { Ok(None) }).await.unwrap().is_none());
        let (_, s) = cache
            .get_or_load("a", || async { Ok(Some(view(1))) })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(s, CacheStatus::Miss);
    }
}
