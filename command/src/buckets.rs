//! An item's stock buckets as the write side reads and writes them: which stream each bucket
//! is, every bucket of some items locked and loaded at once (a definitive look), and the
//! appends of events decided for several buckets.
//!
//! Bucket 0 is `inventory-<sku>` (the catalog entry and the item's settings), bucket k is
//! `inventory-<sku>#<k>`. A writer that needs every bucket of an item (the slow path of
//! placing, restock, changing the buckets) locks all of them in the store's one lock order
//! ([`EventStore::lock_streams`]): the item's bucket count is read first without a lock, and
//! checked again once bucket 0 is locked (only a writer holding bucket 0's lock changes it); if
//! it grew meanwhile the attempt answers a version conflict and is decided again.

use crate::domain::{Inventory, ItemStock};
use crate::store::{EventStore, NewEvent, StateCache, StoreError, StreamAppend};
use sqlx::PgConnection;
use std::collections::BTreeMap;
use std::sync::Arc;
use surge_events::{EventMetadata, InventoryEvent, Sku, StreamId, StreamType};

/// Items loaded with every bucket under their locks: their states and each stream's version.
pub struct LockedItems {
    pub items: BTreeMap<Sku, ItemStock>,
    pub versions: BTreeMap<StreamId, i64>,
}

/// Locks and loads every bucket stream of `skus` (at least `min_streams[sku]` of them when
/// given: buckets about to be added), inside the caller's transaction.
pub async fn lock_items(
    conn: &mut PgConnection,
    cache: &StateCache<Inventory>,
    skus: &[Sku],
    min_streams: &BTreeMap<Sku, u32>,
) -> Result<LockedItems, StoreError> {
    let firsts: Vec<StreamId> = skus.iter().map(Sku::stream_id).collect();
    let unlocked = EventStore::load_many_in(conn, cache, &firsts).await?;
    let counts: Vec<u32> = skus
        .iter()
        .zip(&unlocked)
        .map(|(sku, (_, first))| {
            let have = ItemStock::new(vec![first.clone()]).streams();
            have.max(min_streams.get(sku).copied().unwrap_or(1))
        })
        .collect();
    let mut streams = Vec::new();
    for (sku, n) in skus.iter().zip(&counts) {
        streams.extend((0..*n).map(|k| sku.bucket_stream_id(k)));
    }
    EventStore::lock_streams(conn, &streams).await?;
    let loaded = EventStore::load_many_in(conn, cache, &streams).await?;
    let mut loaded = loaded.into_iter();
    let mut items = BTreeMap::new();
    let mut versions = BTreeMap::new();
    for ((sku, n), first_stream) in skus.iter().zip(&counts).zip(&firsts) {
        let mut states = Vec::with_capacity(*n as usize);
        for k in 0..*n {
            let (version, state) = loaded.next().unwrap_or_default();
            versions.insert(sku.bucket_stream_id(k), version);
            states.push(state);
        }
        let item = ItemStock::new(states);
        if item.streams() > *n {
            // The item gained buckets between the unlocked read and the lock: decide again.
            return Err(StoreError::Conflict {
                stream_id: first_stream.0.clone(),
                expected: versions.get(first_stream).copied().unwrap_or(0),
            });
        }
        items.insert(sku.clone(), item);
    }
    Ok(LockedItems { items, versions })
}

/// Events decided for item buckets, gathered per stream in the order they were decided, each
/// stream continuing from the version it was loaded at.
#[derive(Default)]
pub struct BucketAppends {
    streams: Vec<(StreamId, i64, Vec<NewEvent>)>,
}

impl BucketAppends {
    /// Adds `event` for bucket `bucket` of `sku`, whose stream was loaded at `versions[stream]`.
    pub fn push(
        &mut self,
        versions: &BTreeMap<StreamId, i64>,
        sku: &Sku,
        bucket: u32,
        event: &InventoryEvent,
        meta: &EventMetadata,
    ) {
        let stream = sku.bucket_stream_id(bucket);
        let new = NewEvent::new(event, meta);
        match self.streams.iter_mut().find(|(s, _, _)| *s == stream) {
            Some((_, _, events)) => events.push(new),
            None => {
                let version = versions.get(&stream).copied().unwrap_or(0);
                self.streams.push((stream, version, vec![new]));
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.streams.is_empty()
    }

    /// Events gathered.
    pub fn len(&self) -> usize {
        self.streams.iter().map(|(_, _, e)| e.len()).sum()
    }

    pub fn into_appends(self) -> Vec<StreamAppend> {
        self.streams
            .into_iter()
            .map(|(stream_id, expected_version, events)| StreamAppend {
                stream_id,
                stream_type: StreamType::Inventory,
                expected_version,
                events,
            })
            .collect()
    }

    /// Each stream's version once the gathered events are appended.
    pub fn versions_after(&self) -> Vec<(StreamId, i64)> {
        self.streams
            .iter()
            .map(|(s, v, e)| (s.clone(), v + e.len() as i64))
            .collect()
    }
}

/// Caches the states of an item's buckets as of `versions` (after a commit), so the next
/// reader of them reads only what was appended since.
pub async fn cache_items(
    cache: &StateCache<Inventory>,
    items: &BTreeMap<Sku, ItemStock>,
    versions: &[(StreamId, i64)],
) {
    for (stream, version) in versions {
        let Some((sku, k)) = stream.inventory_bucket() else {
            continue;
        };
        if let Some(state) = items.get(&sku).and_then(|i| i.buckets.get(k as usize)) {
            cache.insert(stream.clone(), Arc::new((*version, state.clone()))).await;
        }
    }
}
