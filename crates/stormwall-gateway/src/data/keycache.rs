//! The in-memory key cache `authenticate` reads on every request. On one node it holds every
//! key (loaded at start, refreshed periodically, updated at once by the admin API), so an
//! unknown key id costs no store round trip — a flood of made-up keys cannot reach the
//! database. Each entry carries the key's admission state, which survives record updates.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use stormwall_types::{KeyRecord, KeyStatus};

use crate::data::admit::KeyState;

/// A key record with its live admission state.
#[derive(Debug)]
pub struct CachedKey {
    /// The record as last read or written.
    pub record: KeyRecord,
    /// Counters and limits in force for the key.
    pub state: Arc<KeyState>,
}

/// Id → key.
#[derive(Debug, Default)]
pub struct KeyCache {
    map: RwLock<HashMap<String, Arc<CachedKey>>>,
    len: Arc<AtomicU64>,
    version: AtomicU64,
    /// Unix seconds of the last full load from the store (0: never).
    synced_at: AtomicI64,
}

impl KeyCache {
    /// Looks a key up by public id.
    pub fn get(&self, id: &str) -> Option<Arc<CachedKey>> {
        // A poisoned lock only means a writer panicked mid-insert of a whole Arc; the map
        // itself is still consistent, so keep serving.
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(id).cloned()
    }

    /// Inserts or replaces a record, keeping the key's admission state. Returns the status
    /// the cache held before (`None` for a key it did not hold), so callers can tell a
    /// status change from any other edit.
    pub fn upsert(&self, record: KeyRecord) -> Option<KeyStatus> {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let state = map
            .get(record.id.as_str())
            .map(|c| Arc::clone(&c.state))
            .unwrap_or_else(|| Arc::new(KeyState::default()));
        let id = record.id.as_str().to_owned();
        let before = map.insert(id, Arc::new(CachedKey { record, state }));
        self.version.fetch_add(1, Ordering::Relaxed);
        self.len.store(map.len() as u64, Ordering::Relaxed);
        before.map(|c| c.record.status)
    }

    /// Counter bumped by every single-key update.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    /// Replaces the whole cache unless a single-key update happened since `seen` was read
    /// from [`KeyCache::version`]; returns whether it replaced.
    pub fn replace_all_if_unchanged(&self, records: Vec<KeyRecord>, seen: u64) -> bool {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if self.version.load(Ordering::Relaxed) != seen {
            return false;
        }
        Self::fill(&mut map, records);
        self.len.store(map.len() as u64, Ordering::Relaxed);
        self.mark_synced();
        true
    }

    /// Replaces the whole cache with the store's view, keeping admission state of keys that remain.
    pub fn replace_all(&self, records: Vec<KeyRecord>) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        Self::fill(&mut map, records);
        self.len.store(map.len() as u64, Ordering::Relaxed);
        self.mark_synced();
    }

    fn fill(map: &mut HashMap<String, Arc<CachedKey>>, records: Vec<KeyRecord>) {
        let mut next = HashMap::with_capacity(records.len());
        for record in records {
            let id = record.id.as_str().to_owned();
            let state = match map.get(&id) {
                Some(c) => Arc::clone(&c.state),
                None => Arc::new(KeyState::default()),
            };
            next.insert(id, Arc::new(CachedKey { record, state }));
        }
        *map = next;
    }

    /// Records that the store just answered a full load.
    pub fn mark_synced(&self) {
        self.synced_at.store(
            time::OffsetDateTime::now_utc().unix_timestamp(),
            Ordering::Relaxed,
        );
    }

    /// Whether the last full load from the store is more than `max_secs` old (never, for 0).
    pub fn is_stale(&self, max_secs: u64) -> bool {
        if max_secs == 0 {
            return false;
        }
        let synced = self.synced_at.load(Ordering::Relaxed);
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        now.saturating_sub(synced) > i64::try_from(max_secs).unwrap_or(i64::MAX)
    }

    /// Number of keys cached.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed) as usize
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A shared counter of cached keys, for metrics.
    pub fn len_counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.len)
    }
}
