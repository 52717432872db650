//! The in-memory key cache `authenticate` reads on every request. On one node it holds every
//! key (loaded at start, refreshed periodically, updated at once by the admin API), so an
//! unknown key id costs no store round trip — a flood of made-up keys cannot reach the
//! database. Each entry carries the key's live state (in-flight count, admission state, stop
//! signal), which survives record updates; the stop signal fires on every update that
//! suspends or revokes the key — whether it came from this replica's admin API, another
//! replica's announcement or the periodic refresh — so the key's open streams end at once
//! instead of running to completion.
//!
//! An operator may have a million keys, so an entry is compact: a fixed-size record holding
//! only what the request path reads (id, hash, interned tenant, kind, status), the scope on
//! the heap only when the key has one, and admission state and the stop signal's `Notify`
//! allocated only once a key needs them. A full load reads the store page by page and
//! replaces only the entries that changed, so a refresh neither holds every record twice nor
//! re-allocates the entries it leaves alone.

use std::collections::{HashMap, HashSet};
use std::ops::Deref;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU32, AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::task::{Context, Poll, Waker};

use stormwall_types::key::ID_LEN;
use stormwall_types::record::{KeyRefusal, usable_at};
use stormwall_types::{KeyHash, KeyId, KeyKind, KeyRecord, KeyScope, KeyStatus};
use time::OffsetDateTime;
use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;

use crate::data::admit::KeyState;

/// The scope of a key without restrictions: what an entry without a scope of its own reads.
static UNRESTRICTED: KeyScope = KeyScope {
    models: Vec::new(),
    endpoints: Vec::new(),
    cidrs: Vec::new(),
    not_before: None,
    expires_at: None,
    rpm: None,
    tpm: None,
    max_concurrency: None,
    budget_daily_usd: None,
    budget_monthly_usd: None,
    policy_profile: None,
};

/// A key's scope as cached: nothing on the heap for a key without restrictions (the common
/// case), one allocation for a key with any. Reads as a [`KeyScope`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CachedScope(Option<Box<KeyScope>>);

impl CachedScope {
    /// The cached form of a scope.
    pub fn new(scope: KeyScope) -> Self {
        if scope == UNRESTRICTED {
            Self(None)
        } else {
            Self(Some(Box::new(scope)))
        }
    }

    /// Whether the key has any restriction at all.
    pub fn is_restricted(&self) -> bool {
        self.0.is_some()
    }
}

impl Deref for CachedScope {
    type Target = KeyScope;

    fn deref(&self) -> &KeyScope {
        self.0.as_deref().unwrap_or(&UNRESTRICTED)
    }
}

/// What the request path reads of a key record: fixed-size, with the tenant's name shared
/// by all of its keys. Labels, dates, reasons and rotation links stay in the store.
#[derive(Debug, Clone, PartialEq)]
pub struct CachedRecord {
    /// Public id.
    pub id: KeyId,
    /// SHA-256 of the whole key.
    pub hash: KeyHash,
    /// Owning tenant (interned).
    pub tenant: Arc<str>,
    /// Normal or canary.
    pub kind: KeyKind,
    /// Lifecycle status.
    pub status: KeyStatus,
    /// What the key may do.
    pub scope: CachedScope,
}

impl CachedRecord {
    /// Checks kind, status and validity window at `now` (see [`KeyRecord::usable_at`]).
    pub fn usable_at(&self, now: OffsetDateTime) -> Result<(), KeyRefusal> {
        usable_at(self.kind, self.status, &self.scope, now)
    }

    /// Whether `record` would be cached as this.
    fn same_as(&self, record: &KeyRecord) -> bool {
        self.id == record.id
            && self.hash == record.hash
            && self.kind == record.kind
            && self.status == record.status
            && *self.tenant == *record.tenant
            && *self.scope == record.scope
    }
}

/// A key as cached: its record and its live state.
#[derive(Debug)]
pub struct CachedKey {
    /// The parts of the record the request path reads, as last read or written.
    pub record: CachedRecord,
    /// In-flight count, admission state and stop signal, shared by every version of the
    /// record.
    pub state: Arc<KeyState>,
    /// The stop signal's epoch when this version was cached: a later one means the key
    /// stopped.
    epoch: u32,
    /// The last full load that found the key in the store (see [`KeySync`]).
    synced: AtomicU32,
}

impl CachedKey {
    /// Watches for the key being suspended or revoked after this version of its record was
    /// authenticated against. One small allocation; meant for streams, not every request.
    pub fn stop_watch(&self) -> StopWatch {
        // Registered from creation on: a stop fired after this line is never missed.
        let woken = Box::pin(Arc::clone(self.state.stop.notify()).notified_owned());
        // Pairs with the fence in `KeyStop::wake`: either that wake-up sees the `Notify`
        // created just now, or every later look at the epoch here sees the stop.
        fence(Ordering::SeqCst);
        StopWatch {
            woken,
            state: Arc::clone(&self.state),
            epoch: self.epoch,
            waker: None,
        }
    }
}

/// Fired when a key becomes unusable (suspended or revoked). Part of the key's
/// [`KeyState`]; the `Notify` streams wait on is created by the first stream.
#[derive(Debug, Default)]
pub(crate) struct KeyStop {
    /// Bumped at every stop; entries cached before a bump are stale.
    epoch: AtomicU32,
    /// The status the key last stopped with (see [`status_code`]).
    cause: AtomicU8,
    notify: OnceLock<Arc<Notify>>,
}

impl KeyStop {
    /// Notes a stop; returns the new epoch. The caller wakes the watchers ([`KeyStop::wake`])
    /// once it no longer holds the cache lock.
    fn stop(&self, status: KeyStatus) -> u32 {
        self.cause.store(status_code(status), Ordering::Relaxed);
        // Release: a watcher that sees the new epoch sees the cause too.
        self.epoch.fetch_add(1, Ordering::Release).wrapping_add(1)
    }

    fn notify(&self) -> &Arc<Notify> {
        self.notify.get_or_init(Arc::default)
    }

    fn wake(&self) {
        // Pairs with the fence in `CachedKey::stop_watch` (see there): without both, a
        // stream could create the `Notify` after this looked and miss the new epoch.
        fence(Ordering::SeqCst);
        if let Some(notify) = self.notify.get() {
            notify.notify_waiters();
        }
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
    state: Arc<KeyState>,
    epoch: u32,
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
            self.woken = Box::pin(Arc::clone(self.state.stop.notify()).notified_owned());
            let _ = self.woken.as_mut().poll(cx);
        }
        self.waker = Some(cx.waker().clone());
        Poll::Pending
    }

    /// The status the key stopped with since the watch began, if it did.
    pub fn stopped(&self) -> Option<KeyStatus> {
        let stop = &self.state.stop;
        if stop.epoch.load(Ordering::Acquire) == self.epoch {
            return None;
        }
        Some(match stop.cause.load(Ordering::Relaxed) {
            1 => KeyStatus::Suspended,
            _ => KeyStatus::Revoked,
        })
    }
}

/// The map key of a key id: its fixed-size bytes.
type IdBytes = [u8; ID_LEN];

/// Tenant names, each kept once however many keys share it.
#[derive(Debug, Default)]
struct Tenants(Mutex<HashSet<Arc<str>>>);

impl Tenants {
    fn intern(&self, name: &str) -> Arc<str> {
        let mut set = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = set.get(name) {
            return Arc::clone(t);
        }
        let t = Arc::<str>::from(name);
        set.insert(Arc::clone(&t));
        t
    }

    /// Forgets names no cached key uses any more.
    fn prune(&self) {
        let mut set = self.0.lock().unwrap_or_else(|e| e.into_inner());
        set.retain(|t| Arc::strong_count(t) > 1);
    }
}

/// A full load of the store's keys in progress: begun by [`KeyCache::sync_begin`], fed page
/// by page with [`KeyCache::sync_page`], ended by [`KeyCache::sync_finish`].
#[derive(Debug)]
pub struct KeySync {
    /// The cache version the load must not have missed an update since (`None`: apply
    /// regardless).
    seen: Option<u64>,
    /// This load's number: entries it found are stamped with it, the rest are gone from
    /// the store.
    pass: u32,
    /// Keys the store listed so far.
    listed: usize,
}

/// Id → key.
#[derive(Debug, Default)]
pub struct KeyCache {
    map: RwLock<HashMap<IdBytes, Arc<CachedKey>>>,
    tenants: Tenants,
    len: Arc<AtomicU64>,
    version: AtomicU64,
    /// Number of the latest full load begun.
    pass: AtomicU32,
    /// Held for a whole full load, so two loads never interleave their pages.
    syncing: tokio::sync::Mutex<()>,
    /// Unix seconds of the last full load from the store (0: never).
    synced_at: AtomicI64,
}

impl KeyCache {
    /// Looks a key up by public id.
    pub fn get(&self, id: &str) -> Option<Arc<CachedKey>> {
        let id: &IdBytes = id.as_bytes().try_into().ok()?;
        // A poisoned lock only means a writer panicked mid-insert of a whole Arc; the map
        // itself is still consistent, so keep serving.
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(id).cloned()
    }

    /// The cached form of a record.
    fn cached(&self, record: KeyRecord) -> CachedRecord {
        CachedRecord {
            tenant: self.tenants.intern(&record.tenant),
            id: record.id,
            hash: record.hash,
            kind: record.kind,
            status: record.status,
            scope: CachedScope::new(record.scope),
        }
    }

    /// Inserts or replaces a record, keeping the key's live state. Returns the status the
    /// cache held before (`None` for a key it did not hold), so callers can tell a status
    /// change from any other edit.
    pub fn upsert(&self, record: KeyRecord) -> Option<KeyStatus> {
        let record = self.cached(record);
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        // A key new to the cache counts as found by the latest load, which may not have
        // listed it yet.
        let pass = self.pass.load(Ordering::Relaxed);
        let id = *record.id.as_bytes();
        let (entry, stopped) = Self::next_entry(map.get(&id), record, pass);
        let before = map.insert(id, entry);
        self.version.fetch_add(1, Ordering::Relaxed);
        self.len.store(map.len() as u64, Ordering::Relaxed);
        drop(map);
        if let Some(state) = stopped {
            state.stop.wake();
        }
        before.map(|c| c.record.status)
    }

    /// The entry replacing `prev` (if any) with `record`: live state carried over, the stop
    /// signal advanced when the change stops a serving key — returned then, to be woken
    /// outside the lock.
    fn next_entry(
        prev: Option<&Arc<CachedKey>>,
        record: CachedRecord,
        pass: u32,
    ) -> (Arc<CachedKey>, Option<Arc<KeyState>>) {
        let Some(prev) = prev else {
            let entry = CachedKey {
                record,
                state: Arc::new(KeyState::default()),
                epoch: 0,
                synced: AtomicU32::new(pass),
            };
            return (Arc::new(entry), None);
        };
        let stopped = stops(prev.record.status, record.status);
        let epoch = if stopped {
            prev.state.stop.stop(record.status)
        } else {
            prev.epoch
        };
        let entry = CachedKey {
            record,
            state: Arc::clone(&prev.state),
            epoch,
            synced: AtomicU32::new(prev.synced.load(Ordering::Relaxed).max(pass)),
        };
        (Arc::new(entry), stopped.then(|| Arc::clone(&prev.state)))
    }

    /// Counter bumped by every single-key update.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    /// Replaces the whole cache unless a single-key update happened since `seen` was read
    /// from [`KeyCache::version`]; returns whether it replaced.
    pub fn replace_all_if_unchanged(&self, records: Vec<KeyRecord>, seen: u64) -> bool {
        let mut sync = self.sync_begin(Some(seen));
        self.sync_page(&mut sync, records) && self.sync_finish(sync)
    }

    /// Replaces the whole cache with the store's view, keeping live state of keys that remain.
    pub fn replace_all(&self, records: Vec<KeyRecord>) {
        let mut sync = self.sync_begin(None);
        self.sync_page(&mut sync, records);
        self.sync_finish(sync);
    }

    /// The lock a caller holds across a whole paged load, so loads do not interleave.
    pub fn sync_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.syncing
    }

    /// Begins a full load from the store. With `seen` (from [`KeyCache::version`]) the load
    /// gives up as soon as a single-key update happened since: the store's list may predate
    /// that change, and a stale revoked key must never come back.
    pub fn sync_begin(&self, seen: Option<u64>) -> KeySync {
        KeySync {
            seen,
            pass: self.pass.fetch_add(1, Ordering::Relaxed).wrapping_add(1),
            listed: 0,
        }
    }

    /// Applies one page of the store's keys (each key in one page only): entries whose
    /// record is unchanged stay as they are; new and changed ones are replaced, keeping
    /// their live state. Returns `false`, having changed nothing, when the load must give
    /// up (see [`KeyCache::sync_begin`]).
    pub fn sync_page(&self, sync: &mut KeySync, records: Vec<KeyRecord>) -> bool {
        sync.listed += records.len();
        // Compared under the read lock, so requests are not held up by a reload that
        // changes nothing; only changed records are converted and written.
        let changed: Vec<KeyRecord> = {
            let map = self.map.read().unwrap_or_else(|e| e.into_inner());
            records
                .into_iter()
                .filter(|r| match map.get(r.id.as_bytes()) {
                    Some(entry) if entry.record.same_as(r) => {
                        entry.synced.fetch_max(sync.pass, Ordering::Relaxed);
                        false
                    }
                    _ => true,
                })
                .collect()
        };
        if changed.is_empty() {
            return sync.seen.is_none_or(|seen| self.version() == seen);
        }
        let changed: Vec<CachedRecord> = changed.into_iter().map(|r| self.cached(r)).collect();
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if sync.seen.is_some_and(|seen| self.version() != seen) {
            return false;
        }
        let mut stopped = Vec::new();
        for record in changed {
            let id = *record.id.as_bytes();
            let (entry, stop) = Self::next_entry(map.get(&id), record, sync.pass);
            stopped.extend(stop);
            map.insert(id, entry);
        }
        self.len.store(map.len() as u64, Ordering::Relaxed);
        drop(map);
        // A change made on another replica lands here: its streams end now.
        stopped.iter().for_each(|s| s.stop.wake());
        true
    }

    /// Ends a full load: keys the store no longer lists leave the cache. Returns `false`,
    /// having removed nothing, when the load gave up (see [`KeyCache::sync_begin`]).
    pub fn sync_finish(&self, sync: KeySync) -> bool {
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if sync.seen.is_some_and(|seen| self.version() != seen) {
            return false;
        }
        if map.len() != sync.listed {
            map.retain(|_, e| e.synced.load(Ordering::Relaxed) >= sync.pass);
        }
        self.len.store(map.len() as u64, Ordering::Relaxed);
        drop(map);
        self.tenants.prune();
        self.mark_synced();
        true
    }

    /// Keys with a daily or monthly budget.
    pub fn budgeted(&self) -> Vec<Arc<CachedKey>> {
        let map = self.map.read().unwrap_or_else(|e| e.into_inner());
        map.values()
            .filter(|k| {
                let scope = &k.record.scope;
                scope.budget_daily_usd.is_some() || scope.budget_monthly_usd.is_some()
            })
            .cloned()
            .collect()
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

    /// The fixed part of an entry: id, hash, tenant pointer, kind, status, scope pointer,
    /// live-state pointer, epoch and load stamp. A million keys cost this plus the live
    /// state and a map slot each; growing it is a decision, not an accident.
    #[test]
    fn a_cache_entry_is_compact() {
        assert!(
            std::mem::size_of::<CachedKey>() <= 88,
            "CachedKey is {} bytes",
            std::mem::size_of::<CachedKey>()
        );
        assert!(
            std::mem::size_of::<KeyState>() <= 48,
            "KeyState is {} bytes",
            std::mem::size_of::<KeyState>()
        );
    }

    #[test]
    fn an_unrestricted_key_keeps_nothing_on_the_heap_but_its_entry() {
        let cache = KeyCache::default();
        let (a, b) = (ApiKey::generate(), ApiKey::generate());
        cache.upsert(record(&a, KeyStatus::Active));
        cache.upsert(record(&b, KeyStatus::Active));
        let (ea, eb) = (
            cache.get(a.id_str()).unwrap(),
            cache.get(b.id_str()).unwrap(),
        );
        assert!(!ea.record.scope.is_restricted());
        assert_eq!(*ea.record.scope, KeyScope::default());
        assert!(
            Arc::ptr_eq(&ea.record.tenant, &eb.record.tenant),
            "tenant interned"
        );
        assert!(
            !ea.state.has_limits_state(),
            "no admission state before use"
        );
        let mut limited = record(&a, KeyStatus::Active);
        limited.scope.rpm = Some(5);
        cache.upsert(limited);
        let ea = cache.get(a.id_str()).unwrap();
        assert!(ea.record.scope.is_restricted());
        assert_eq!(ea.record.scope.rpm, Some(5));
        assert!(cache.get("short").is_none());
    }

    #[test]
    fn a_reload_keeps_unchanged_entries_and_drops_keys_the_store_lost() {
        let cache = KeyCache::default();
        let (a, b, c) = (ApiKey::generate(), ApiKey::generate(), ApiKey::generate());
        cache.replace_all(vec![
            record(&a, KeyStatus::Active),
            record(&b, KeyStatus::Active),
            record(&c, KeyStatus::Active),
        ]);
        let before = cache.get(a.id_str()).unwrap();
        // Page by page: a unchanged, b changed, c gone from the store.
        let mut sync = cache.sync_begin(Some(cache.version()));
        assert!(cache.sync_page(&mut sync, vec![record(&a, KeyStatus::Active)]));
        let mut edited = record(&b, KeyStatus::Active);
        edited.scope.models = vec!["m".into()];
        assert!(cache.sync_page(&mut sync, vec![edited]));
        assert!(cache.sync_finish(sync));
        assert!(Arc::ptr_eq(&before, &cache.get(a.id_str()).unwrap()));
        assert_eq!(cache.get(b.id_str()).unwrap().record.scope.models, ["m"]);
        assert!(cache.get(c.id_str()).is_none());
        assert_eq!(cache.len(), 2);
    }

    #[test]
    fn a_reload_gives_up_when_a_key_changed_meanwhile() {
        let cache = KeyCache::default();
        let (a, b) = (ApiKey::generate(), ApiKey::generate());
        cache.replace_all(vec![record(&a, KeyStatus::Active)]);
        let mut sync = cache.sync_begin(Some(cache.version()));
        assert!(cache.sync_page(&mut sync, vec![record(&a, KeyStatus::Active)]));
        // Revoked through the admin API while the store was being read.
        cache.upsert(record(&a, KeyStatus::Revoked));
        assert!(!cache.sync_page(&mut sync, vec![record(&b, KeyStatus::Active)]));
        assert!(!cache.sync_finish(sync));
        assert_eq!(
            cache.get(a.id_str()).unwrap().record.status,
            KeyStatus::Revoked
        );
        assert!(
            cache.get(b.id_str()).is_none(),
            "nothing of the stale page applied"
        );
    }
}
