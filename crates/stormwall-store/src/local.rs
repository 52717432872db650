//! [`LocalCounters`]: the [`Counters`] of one process — a mutex and a clock around the
//! admission engine ([`crate::admission`]), which has the Redis scripts' semantics. Used as
//! the fallback while Redis is unreachable (and by tests); the gateway calls the same engine
//! directly on a single node.

use crate::counters::Tally;
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use stormwall_types::KeyId;
use time::OffsetDateTime;
use tokio::sync::broadcast;

use crate::admission::{AdmissionEngine, KeyAdmission, RateWindows};
use crate::counters::{
    BudgetDecision, BudgetRequest, BudgetReservation, BudgetUsage, CounterError, Counters,
    CountersHealth, DISTINCT_RETENTION, KeyChange, KeyChanges, RATE_BUCKET, RATE_WINDOW,
    RateCharge, RateDecision, RateRequest, SlotDecision, SlotLease, hour_of, hour_span, millis,
    validate_set,
};
use crate::hll::Hll;

/// Key changes a slow subscriber may fall behind before it is told to resync.
pub(crate) const CHANGES_CAPACITY: usize = 1_024;
/// Operations between sweeps of expired detector state.
const SWEEP_EVERY: u64 = 4_096;

/// Counters held in this process.
#[derive(Debug)]
pub struct LocalCounters {
    admission: Mutex<AdmissionEngine>,
    detect: Mutex<DetectState>,
    origin: Instant,
    changes: broadcast::Sender<KeyChange>,
}

impl Default for LocalCounters {
    fn default() -> Self {
        Self::new()
    }
}

/// A panic while a lock was held cannot leave the maps half-updated in a way that matters
/// more than losing the counters, so a poisoned lock is recovered rather than taking the
/// gateway down.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl LocalCounters {
    /// Empty counters with one-minute rate windows.
    pub fn new() -> Self {
        Self::with_rate_window(RATE_WINDOW, RATE_BUCKET)
    }

    /// Empty counters whose rate windows last `window`, in buckets of `bucket` (tests use
    /// short windows to watch usage slide out). Zero durations count as 1 ms.
    pub fn with_rate_window(window: Duration, bucket: Duration) -> Self {
        let (changes, _) = broadcast::channel(CHANGES_CAPACITY);
        Self {
            admission: Mutex::new(AdmissionEngine::new(RateWindows::new(window, bucket))),
            detect: Mutex::new(DetectState::default()),
            origin: Instant::now(),
            changes,
        }
    }

    fn now_ms(&self) -> i64 {
        millis(self.origin.elapsed(), 0)
    }

    /// Runs `f` on the key's admission state at the current time, under the lock.
    fn with_key<R>(&self, key: &KeyId, f: impl FnOnce(&mut KeyAdmission, i64) -> R) -> R {
        let now = self.now_ms();
        let mut engine = lock(&self.admission);
        f(engine.key(key, now), now)
    }

    /// Locks the detectors' state, sweeping expired entries every so often.
    fn detect(&self, now: i64) -> MutexGuard<'_, DetectState> {
        let mut s = lock(&self.detect);
        s.ops = s.ops.wrapping_add(1);
        if s.ops.is_multiple_of(SWEEP_EVERY) {
            s.distinct.retain(|_, (_, expires)| *expires > now);
            s.tallies.retain(|_, (_, expires)| *expires > now);
        }
        s
    }
}

/// What the detectors share: distinct-count sketches and tallies (not admission).
#[derive(Debug, Default)]
struct DetectState {
    distinct: HashMap<(String, String, i64), (Hll, i64)>,
    tallies: HashMap<(String, String, i64), (i64, i64)>,
    ops: u64,
}

#[async_trait]
impl Counters for LocalCounters {
    async fn check_rate(
        &self,
        key: &KeyId,
        req: RateRequest,
    ) -> Result<RateDecision, CounterError> {
        Ok(self.with_key(key, |k, now| k.check_rate(req, now)))
    }

    async fn reconcile_tokens(
        &self,
        key: &KeyId,
        charge: &RateCharge,
        actual_tokens: u64,
    ) -> Result<(), CounterError> {
        self.with_key(key, |k, now| k.reconcile_tokens(charge, actual_tokens, now));
        Ok(())
    }

    async fn acquire_slot(
        &self,
        key: &KeyId,
        max: u32,
        lease: Duration,
    ) -> Result<SlotDecision, CounterError> {
        Ok(self.with_key(key, |k, now| k.acquire_slot(max, lease, now)))
    }

    async fn renew_slot(
        &self,
        key: &KeyId,
        slot: &SlotLease,
        lease: Duration,
    ) -> Result<bool, CounterError> {
        Ok(self.with_key(key, |k, now| k.renew_slot(slot, lease, now)))
    }

    async fn release_slot(&self, key: &KeyId, slot: SlotLease) -> Result<(), CounterError> {
        self.with_key(key, |k, _| k.release_slot(&slot));
        Ok(())
    }

    async fn inflight(&self, key: &KeyId) -> Result<u32, CounterError> {
        Ok(self.with_key(key, |k, now| k.inflight(now)))
    }

    async fn reserve_budget(
        &self,
        key: &KeyId,
        req: BudgetRequest,
        at: OffsetDateTime,
    ) -> Result<BudgetDecision, CounterError> {
        Ok(self.with_key(key, |k, now| k.reserve_budget(req, at, now)))
    }

    async fn settle_budget(
        &self,
        key: &KeyId,
        reservation: BudgetReservation,
        cost_usd: f64,
        at: OffsetDateTime,
    ) -> Result<(), CounterError> {
        self.with_key(key, |k, now| {
            k.settle_budget(&reservation, cost_usd, at, now);
        });
        Ok(())
    }

    async fn add_spend(
        &self,
        key: &KeyId,
        cost_usd: f64,
        at: OffsetDateTime,
    ) -> Result<(), CounterError> {
        self.with_key(key, |k, now| k.add_spend(cost_usd, at, now));
        Ok(())
    }

    async fn budget_usage(
        &self,
        key: &KeyId,
        at: OffsetDateTime,
    ) -> Result<BudgetUsage, CounterError> {
        Ok(self.with_key(key, |k, now| k.budget_usage(at, now)))
    }

    async fn reconcile_spend(
        &self,
        key: &KeyId,
        at: OffsetDateTime,
        day_usd: f64,
        month_usd: f64,
    ) -> Result<(), CounterError> {
        self.with_key(key, |k, now| {
            k.reconcile_spend(at, day_usd, month_usd, now);
        });
        Ok(())
    }

    async fn tally(&self, items: &[Tally<'_>], ttl: Duration) -> Result<Vec<i64>, CounterError> {
        for t in items {
            validate_set(t.set)?;
        }
        let now = self.now_ms();
        let mut s = self.detect(now);
        let mut out = Vec::with_capacity(items.len());
        for t in items {
            let entry = s
                .tallies
                .entry((t.set.to_owned(), t.key.as_str().to_owned(), t.bucket))
                .or_insert((0, 0));
            if entry.1 <= now {
                entry.0 = 0;
            }
            entry.0 = entry.0.saturating_add(t.amount);
            entry.1 = now + millis(ttl, 1);
            out.push(entry.0);
        }
        Ok(out)
    }

    async fn distinct_add(
        &self,
        set: &str,
        key: &KeyId,
        at: OffsetDateTime,
        items: &[&str],
    ) -> Result<(), CounterError> {
        validate_set(set)?;
        let now = self.now_ms();
        let mut s = self.detect(now);
        let entry = s
            .distinct
            .entry((set.to_owned(), key.as_str().to_owned(), hour_of(at)))
            .or_insert_with(|| (Hll::default(), 0));
        if entry.1 <= now {
            entry.0 = Hll::default();
        }
        for item in items {
            entry.0.add(item);
        }
        entry.1 = now + millis(DISTINCT_RETENTION, 1);
        Ok(())
    }

    async fn distinct_count(
        &self,
        set: &str,
        key: &KeyId,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<u64, CounterError> {
        validate_set(set)?;
        let hours = hour_span(from, to)?;
        let now = self.now_ms();
        let s = self.detect(now);
        let mut union = Hll::default();
        for hour in hours {
            if let Some((h, expires)) =
                s.distinct
                    .get(&(set.to_owned(), key.as_str().to_owned(), hour))
                && *expires > now
            {
                union.merge(h);
            }
        }
        Ok(union.count())
    }

    async fn publish_key_change(&self, key: &KeyId) -> Result<(), CounterError> {
        // No receiver is not an error: nobody subscribed on this node.
        let _ = self.changes.send(KeyChange::Key(key.clone()));
        Ok(())
    }

    async fn subscribe_key_changes(&self) -> Result<KeyChanges, CounterError> {
        Ok(KeyChanges::new(self.changes.subscribe()))
    }

    fn health(&self) -> CountersHealth {
        CountersHealth {
            backend: "local",
            available: true,
            failures: 0,
        }
    }
}
