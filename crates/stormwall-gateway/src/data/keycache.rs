//! The in-memory key cache `authenticate` reads on every request. On one node it holds every
//! key (loaded at start, refreshed periodically, updated at once by the admin API), so an
//! unknown key id costs no store round trip — a flood of made-up keys cannot reach the
//! database. Each entry carries the key's admission state, which survives record updates,
//! and its stop signal, which every update that suspends or revokes the key fires — whether
//! it came from this replica's admin API, another replica's announcement or the periodic
//! refresh — so the key's open streams end at once instead of running to completion.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll, Waker};

use stormwall_types::{KeyRecord, KeyStatus};
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;

use crate::data::admit::KeyState;

/// A key record with its live admission state.
#[derive(Debug)]
pub struct CachedKey {
    /// The record as last read or written.
    pub record: KeyRecord,
    /// Counters and limits in force for the key.
    pub state: Arc<KeyState>,
    /// The key's stop signal, shared by every version of its record.
    stop: Arc<KeyStop>,
    /// The signal's epoch when this version was cached: a later one means the key stopped.
    epoch: u64,
}

impl CachedKey {
    /// Watches for the key being suspended or revoked after this version of its record was
    /// authenticated against. One small allocation; meant for streams, not every request.
    pub fn stop_watch(&self) -> StopWatch {
        StopWatch {
            // Registered from creation on: a stop fired after this line is never missed.
            woken: Box::pin(Arc::clone(&self.stop.notify).notified_owned()),
            stop: Arc::clone(&self.stop),
            epoch: self.epoch,
            waker: None,
        }
    }
}

/// Fired when a key becomes unusable (suspended or revoked).
#[derive(Debug, Default)]
struct KeyStop {
    /// Bumped at every stop; entries cached before a bump are stale.
    epoch: AtomicU64,
    /// The status the key last stopped with (see [`status_code`]).
    cause: AtomicU8,
    notify: Arc<Notify>,
}

impl KeyStop {
    /// Notes a stop; returns the new epoch. The caller wakes the watchers ([`KeyStop::wake`])
    /// once it no longer holds the cache lock.
    fn stop(&self, status: KeyStatus) -> u64 {
        self.cause.store(status_code(status), Ordering::Relaxed);
        // Release: a watcher that sees the new epoch sees the cause too.
        self.epoch.fetch_add(1, Ordering::Release) + 1
    }

    fn wake(&self) {
        self.notify.notify_waiters();
    }
}

fn status_code(status: KeyStatus) -> u8 {
    match status {
        KeyStatus::Active => 0,
        KeyStatus::Suspended => 1,
        KeyStatus::Revoked => 2,
    }
}

/// Whether replacing `before` with `after` stops a key that was serving.
fn stops(before: KeyStatus, after: KeyStatus) -> bool {
    before == KeyStatus::Active && after != KeyStatus::Active
}

/// A stream's view of its key's stop signal (see [`CachedKey::stop_watch`]).
pub struct StopWatch {
    stop: Arc<KeyStop>,
    epoch: u64,
    woken: Pin<Box<OwnedNotified>>,
    /// The waker registered with the signal, so an unchanged one is not registered again
    /// (each registration takes the signal's lock, shared by all of the key's streams).
    waker: Option<Waker>,
}

impl std::fmt::Debug for StopWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StopWatch")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

impl StopWatch {
    /// Ready with the status the key stopped with (suspended or revoked) once it stopped;
    /// otherwise pending, and the task is woken when it stops.
    pub fn poll_stopped(&mut self, cx: &mut Context<'_>) -> Poll<KeyStatus> {
        if let Some(status) = self.stopped() {
            return Poll::Ready(status);
        }
        if self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        if self.woken.as_mut().poll(cx).is_ready() {
            // Woken: the epoch moved before the wake-up, so this reads it.
            if let Some(status) = self.stopped() {
                return Poll::Ready(status);
            }
            // Not ours to act on (cannot happen today): listen again.
            self.woken = Box::pin(Arc::clone(&self.stop.notify).notified_owned());
            let _ = self.woken.as_mut().poll(cx);
        }
        self.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The status the key stopped with since the watch began, if it did.
    pub fn stopped(&self) -> Option<KeyStatus> {
        if self.stop.epoch.load(Ordering::Acquire) == self.epoch {
            return None;
        }
        Some(match self.stop.cause.load(Ordering::Relaxed) {
            1 => KeyStatus::Suspended,
            _ => KeyStatus::Revoked,
        })
    }
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
        let (entry, stopped) = Self::next_entry(map.get(record.id.as_str()), record);
        let id = entry.record.id.as_str().to_owned();
        let before = map.insert(id, entry);
        self.version.fetch_add(1, Ordering::Relaxed);
        self.len.store(map.len() as u64, Ordering::Relaxed);
        drop(map);
        if let Some(stop) = stopped {
            stop.wake();
        }
        before.map(|c| c.record.status)
    }

    /// The entry replacing `prev` (if any) with `record`: admission state and stop signal
    /// carried over, the signal advanced when the change stops a serving key — returned
    /// then, to be woken outside the lock.
    fn next_entry(
        prev: Option<&Arc<CachedKey>>,
        record: KeyRecord,
    ) -> (Arc<CachedKey>, Option<Arc<KeyStop>>) {
        let Some(prev) = prev else {
            let entry = CachedKey {
                record,
                state: Arc::new(KeyState::default()),
                stop: Arc::new(KeyStop::default()),
                epoch: 0,
            };
            return (Arc::new(entry), None);
        };
        let stopped = stops(prev.record.status, record.status);
        let epoch = if stopped {
            prev.stop.stop(record.status)
        } else {
            prev.epoch
        };
        let entry = CachedKey {
            record,
            state: Arc::clone(&prev.state),
            stop: Arc::clone(&prev.stop),
            epoch,
        };
        (Arc::new(entry), stopped.then(|| Arc::clone(&prev.stop)))
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
        let stopped = Self::fill(&mut map, records);
        self.len.store(map.len() as u64, Ordering::Relaxed);
        drop(map);
        self.mark_synced();
        stopped.iter().for_each(|s| s.wake());
        true
    }

    /// Replaces the whole cache with the store's view, keeping admission state of keys that remain.
    pub fn replace_all(&self, records: Vec<KeyRecord>) {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        let stopped = Self::fill(&mut map, records);
        self.len.store(map.len() as u64, Ordering::Relaxed);
        drop(map);
        self.mark_synced();
        stopped.iter().for_each(|s| s.wake());
    }

    /// Rebuilds the map from `records`; returns the stop signals of keys this stopped, to
    /// wake once the lock is released (a change made on another replica lands here).
    fn fill(
        map: &mut HashMap<String, Arc<CachedKey>>,
        records: Vec<KeyRecord>,
    ) -> Vec<Arc<KeyStop>> {
        let mut next = HashMap::with_capacity(records.len());
        let mut stopped = Vec::new();
        for record in records {
            let (entry, stop) = Self::next_entry(map.get(record.id.as_str()), record);
            stopped.extend(stop);
            next.insert(entry.record.id.as_str().to_owned(), entry);
        }
        *map = next;
        stopped
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use stormwall_types::{ApiKey, KeyKind, KeyScope};

    use super::*;

    fn record(key: &ApiKey, status: KeyStatus) -> KeyRecord {
        let now = time::OffsetDateTime::now_utc();
        KeyRecord {
            id: key.id(),
            tenant: "t".into(),
            kind: KeyKind::Normal,
            status,
            hash: key.hash(),
            last4: key.last4().to_owned(),
            label: None,
            scope: KeyScope::default(),
            created_at: now,
            updated_at: now,
            status_reason: None,
            rotated_from: None,
            rotated_to: None,
        }
    }

    /// Waits (bounded) for a watch to report its key stopped. Only a wake-up re-polls the
    /// watch: at the deadline it is not looked at again, so a missing wake-up fails.
    async fn stopped_within(mut w: StopWatch, secs: u64) -> Option<KeyStatus> {
        let wait = std::future::poll_fn(move |cx| w.poll_stopped(cx));
        tokio::select! {
            biased;
            () = tokio::time::sleep(Duration::from_secs(secs)) => None,
            status = wait => Some(status),
        }
    }

    #[tokio::test]
    #[allow(clippy::disallowed_methods)] // joined below
    async fn suspending_through_upsert_wakes_the_keys_streams() {
        let cache = KeyCache::default();
        let key = ApiKey::generate();
        let other = ApiKey::generate();
        cache.upsert(record(&key, KeyStatus::Active));
        cache.upsert(record(&other, KeyStatus::Active));
        let watch = cache.get(key.id_str()).unwrap().stop_watch();
        let bystander = cache.get(other.id_str()).unwrap().stop_watch();
        // The watch is pending (waker registered) before the change: the change must wake it.
        let waiting = tokio::spawn(stopped_within(watch, 5));
        tokio::task::yield_now().await;
        // A label or scope edit does not stop the key.
        let mut edited = record(&key, KeyStatus::Active);
        edited.label = Some("renamed".into());
        cache.upsert(edited);
        cache.upsert(record(&key, KeyStatus::Suspended));
        assert_eq!(waiting.await.unwrap(), Some(KeyStatus::Suspended));
        assert_eq!(bystander.stopped(), None, "only the changed key stops");
        // Resumed: a stream opened now is not stopped by the earlier suspension.
        cache.upsert(record(&key, KeyStatus::Active));
        let fresh = cache.get(key.id_str()).unwrap().stop_watch();
        assert_eq!(fresh.stopped(), None);
        cache.upsert(record(&key, KeyStatus::Revoked));
        assert_eq!(fresh.stopped(), Some(KeyStatus::Revoked));
    }

    #[tokio::test]
    #[allow(clippy::disallowed_methods)] // joined below
    async fn a_revocation_seen_by_a_full_reload_wakes_the_keys_streams() {
        let cache = KeyCache::default();
        let key = ApiKey::generate();
        let other = ApiKey::generate();
        cache.replace_all(vec![
            record(&key, KeyStatus::Active),
            record(&other, KeyStatus::Active),
        ]);
        let watch = cache.get(key.id_str()).unwrap().stop_watch();
        let waiting = tokio::spawn(stopped_within(watch, 5));
        tokio::task::yield_now().await;
        let seen = cache.version();
        assert!(cache.replace_all_if_unchanged(
            vec![
                record(&key, KeyStatus::Revoked),
                record(&other, KeyStatus::Active),
            ],
            seen,
        ));
        assert_eq!(waiting.await.unwrap(), Some(KeyStatus::Revoked));
        let still = cache.get(other.id_str()).unwrap().stop_watch();
        cache.replace_all(vec![
            record(&key, KeyStatus::Revoked),
            record(&other, KeyStatus::Active),
        ]);
        assert_eq!(still.stopped(), None, "an unchanged reload stops nothing");
    }
}
