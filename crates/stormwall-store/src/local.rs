//! [`LocalCounters`]: the [`Counters`] of one process. The same semantics as the Redis
//! scripts, computed under one mutex: used on a single node, and as the fallback while Redis
//! is unreachable.

use crate::counters::Tally;
use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use stormwall_types::KeyId;
use time::OffsetDateTime;
use tokio::sync::broadcast;

use crate::counters::{
    BudgetDecision, BudgetPeriod, BudgetRequest, BudgetReservation, BudgetUsage, CounterError,
    Counters, CountersHealth, DISTINCT_RETENTION, KeyChange, KeyChanges, Origin, RATE_BUCKET,
    RATE_WINDOW, RateCharge, RateDecision, RateLimited, RateRequest, SlotDecision, SlotLease,
    WindowState, budget_nanos, from_millis, hour_of, hour_span, millis, nanos_to_usd,
    new_handle_id, periods, usd_to_nanos, usd_to_nanos_ceil, validate_set,
};
use crate::hll::Hll;

/// How long a day's budget totals are kept after their last change.
pub(crate) const BUDGET_DAY_TTL: Duration = Duration::from_secs(3 * 24 * 3600);
/// How long a month's budget totals are kept after their last change.
pub(crate) const BUDGET_MONTH_TTL: Duration = Duration::from_secs(40 * 24 * 3600);
/// Key changes a slow subscriber may fall behind before it is told to resync.
pub(crate) const CHANGES_CAPACITY: usize = 1_024;
/// Operations between sweeps of expired state.
const SWEEP_EVERY: u64 = 4_096;

/// Counters held in this process.
#[derive(Debug)]
pub struct LocalCounters {
    state: Mutex<State>,
    origin: Instant,
    window_ms: i64,
    bucket_ms: i64,
    changes: broadcast::Sender<KeyChange>,
}

impl Default for LocalCounters {
    fn default() -> Self {
        Self::new()
    }
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
            state: Mutex::new(State::default()),
            origin: Instant::now(),
            window_ms: millis(window, 1),
            bucket_ms: millis(bucket, 1),
            changes,
        }
    }

    fn now_ms(&self) -> i64 {
        millis(self.origin.elapsed(), 0)
    }

    /// Locks the state, sweeping expired entries every so often. A panic while the lock was
    /// held cannot leave the maps half-updated in a way that matters more than losing the
    /// counters, so a poisoned lock is recovered rather than taking the gateway down.
    fn lock(&self, now: i64) -> MutexGuard<'_, State> {
        let mut s = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        s.ops = s.ops.wrapping_add(1);
        if s.ops.is_multiple_of(SWEEP_EVERY) {
            s.sweep(now, self.window_ms + self.bucket_ms);
        }
        s
    }
}

#[derive(Debug, Default)]
struct State {
    windows: HashMap<String, KeyWindows>,
    slots: HashMap<String, HashMap<String, i64>>,
    periods: HashMap<(String, PeriodId), Totals>,
    reservations: HashMap<String, HashMap<String, Held>>,
    distinct: HashMap<(String, String, i64), (Hll, i64)>,
    tallies: HashMap<(String, String, i64), (i64, i64)>,
    ops: u64,
}

#[derive(Debug, Default)]
struct KeyWindows {
    requests: Window,
    tokens: Window,
}

/// A rate window: (bucket start in ms, units) oldest first.
#[derive(Debug, Default)]
struct Window {
    buckets: VecDeque<(i64, u64)>,
}

impl Window {
    /// Drops buckets that have left the window: a bucket starting at `b` counts while
    /// `now < b + bucket + window`, so no unit leaves before it is a full window old.
    fn prune(&mut self, now: i64, span: i64) {
        while self.buckets.front().is_some_and(|&(b, _)| b <= now - span) {
            self.buckets.pop_front();
        }
    }

    fn used(&self) -> u64 {
        self.buckets
            .iter()
            .fold(0u64, |acc, &(_, n)| acc.saturating_add(n))
    }

    fn reset_after(&self, now: i64, span: i64) -> i64 {
        self.buckets
            .iter()
            .find(|&&(_, n)| n > 0)
            .map_or(0, |&(b, _)| b + span - now)
    }

    /// Milliseconds until `need` more units fit under `limit` as old buckets leave.
    fn wait(&self, used: u64, limit: u64, need: u64, now: i64, span: i64) -> i64 {
        if need > limit {
            return span;
        }
        let mut freed = 0u64;
        for &(b, n) in &self.buckets {
            freed = freed.saturating_add(n);
            if used.saturating_sub(freed).saturating_add(need) <= limit {
                return b + span - now;
            }
        }
        span
    }

    fn charge(&mut self, bucket: i64, n: u64) {
        if n == 0 {
            return;
        }
        match self.buckets.back_mut() {
            Some((b, count)) if *b == bucket => *count = count.saturating_add(n),
            _ => self.buckets.push_back((bucket, n)),
        }
    }

    fn refund(&mut self, bucket: i64, n: u64) {
        if let Some((_, count)) = self.buckets.iter_mut().find(|(b, _)| *b == bucket) {
            *count = count.saturating_sub(n);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum PeriodId {
    Day(u32),
    Month(u32),
}

#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    spent: i64,
    reserved: i64,
    expires: i64,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    nanos: i64,
    day: u32,
    month: u32,
    expires: i64,
}

impl State {
    fn totals(&self, key: &str, p: PeriodId, now: i64) -> Totals {
        self.periods
            .get(&(key.to_owned(), p))
            .filter(|t| t.expires > now)
            .copied()
            .unwrap_or_default()
    }

    fn totals_mut(&mut self, key: &str, p: PeriodId, now: i64) -> &mut Totals {
        let ttl = match p {
            PeriodId::Day(_) => millis(BUDGET_DAY_TTL, 1),
            PeriodId::Month(_) => millis(BUDGET_MONTH_TTL, 1),
        };
        let t = self.periods.entry((key.to_owned(), p)).or_default();
        if t.expires <= now {
            *t = Totals::default();
        }
        t.expires = now + ttl;
        t
    }

    fn release(&mut self, key: &str, held: Held, now: i64) {
        for p in [PeriodId::Day(held.day), PeriodId::Month(held.month)] {
            if let Some(t) = self.periods.get_mut(&(key.to_owned(), p))
                && t.expires > now
            {
                t.reserved = (t.reserved - held.nanos).max(0);
            }
        }
    }

    /// Releases the key's expired reservations.
    fn expire_reservations(&mut self, key: &str, now: i64) {
        let Some(held) = self.reservations.get_mut(key) else {
            return;
        };
        let expired: Vec<Held> = held
            .values()
            .filter(|h| h.expires <= now)
            .copied()
            .collect();
        held.retain(|_, h| h.expires > now);
        for h in expired {
            self.release(key, h, now);
        }
    }

    fn live_slots(&mut self, key: &str, now: i64) -> &mut HashMap<String, i64> {
        let slots = self.slots.entry(key.to_owned()).or_default();
        slots.retain(|_, expires| *expires > now);
        slots
    }

    fn sweep(&mut self, now: i64, span: i64) {
        self.windows.retain(|_, w| {
            w.requests.prune(now, span);
            w.tokens.prune(now, span);
            !(w.requests.buckets.is_empty() && w.tokens.buckets.is_empty())
        });
        self.slots.retain(|_, s| {
            s.retain(|_, e| *e > now);
            !s.is_empty()
        });
        let keys: Vec<String> = self.reservations.keys().cloned().collect();
        for k in keys {
            self.expire_reservations(&k, now);
        }
        self.reservations.retain(|_, h| !h.is_empty());
        self.periods.retain(|_, t| t.expires > now);
        self.distinct.retain(|_, (_, expires)| *expires > now);
        self.tallies.retain(|_, (_, expires)| *expires > now);
    }
}

#[async_trait]
impl Counters for LocalCounters {
    async fn check_rate(
        &self,
        key: &KeyId,
        req: RateRequest,
    ) -> Result<RateDecision, CounterError> {
        let now = self.now_ms();
        let span = self.window_ms + self.bucket_ms;
        let cur = now - now.rem_euclid(self.bucket_ms);
        let mut s = self.lock(now);
        let w = s.windows.entry(key.as_str().to_owned()).or_default();
        w.requests.prune(now, span);
        w.tokens.prune(now, span);
        let r_used = w.requests.used();
        let t_used = w.tokens.used();
        let state = |win: &Window, limit: u64, used: u64| WindowState {
            limit,
            used,
            reset_after: from_millis(win.reset_after(now, span)),
        };
        let rpm = req.rpm.map(u64::from);
        if let Some(limit) = rpm
            && r_used.saturating_add(1) > limit
        {
            return Ok(RateDecision::Denied {
                limit: RateLimited::Requests,
                retry_after: from_millis(w.requests.wait(r_used, limit, 1, now, span)),
                requests: Some(state(&w.requests, limit, r_used)),
                tokens: req.tpm.map(|l| state(&w.tokens, l, t_used)),
            });
        }
        if let Some(limit) = req.tpm
            && t_used.saturating_add(req.tokens) > limit
        {
            return Ok(RateDecision::Denied {
                limit: RateLimited::Tokens,
                retry_after: from_millis(w.tokens.wait(t_used, limit, req.tokens, now, span)),
                requests: rpm.map(|l| state(&w.requests, l, r_used)),
                tokens: Some(state(&w.tokens, limit, t_used)),
            });
        }
        if rpm.is_some() {
            w.requests.charge(cur, 1);
        }
        if req.tpm.is_some() {
            w.tokens.charge(cur, req.tokens);
        }
        Ok(RateDecision::Granted {
            charge: RateCharge {
                origin: Origin::Local,
                bucket_ms: cur,
                tokens: req.tokens,
                tokens_tracked: req.tpm.is_some(),
            },
            requests: rpm.map(|l| state(&w.requests, l, r_used + 1)),
            tokens: req
                .tpm
                .map(|l| state(&w.tokens, l, t_used.saturating_add(req.tokens))),
        })
    }

    async fn reconcile_tokens(
        &self,
        key: &KeyId,
        charge: &RateCharge,
        actual_tokens: u64,
    ) -> Result<(), CounterError> {
        if !charge.tokens_tracked || actual_tokens == charge.tokens {
            return Ok(());
        }
        let now = self.now_ms();
        let span = self.window_ms + self.bucket_ms;
        let cur = now - now.rem_euclid(self.bucket_ms);
        let mut s = self.lock(now);
        let w = s.windows.entry(key.as_str().to_owned()).or_default();
        w.tokens.prune(now, span);
        if actual_tokens > charge.tokens {
            w.tokens.charge(cur, actual_tokens - charge.tokens);
        } else {
            w.tokens
                .refund(charge.bucket_ms, charge.tokens - actual_tokens);
        }
        Ok(())
    }

    async fn acquire_slot(
        &self,
        key: &KeyId,
        max: u32,
        lease: Duration,
    ) -> Result<SlotDecision, CounterError> {
        let now = self.now_ms();
        let mut s = self.lock(now);
        let slots = s.live_slots(key.as_str(), now);
        let inflight = u32::try_from(slots.len()).unwrap_or(u32::MAX);
        if inflight >= max {
            return Ok(SlotDecision::Denied { inflight });
        }
        let id = new_handle_id();
        slots.insert(id.clone(), now + millis(lease, 1));
        Ok(SlotDecision::Granted(SlotLease {
            origin: Origin::Local,
            id,
            inflight: inflight + 1,
        }))
    }

    async fn renew_slot(
        &self,
        key: &KeyId,
        slot: &SlotLease,
        lease: Duration,
    ) -> Result<bool, CounterError> {
        let now = self.now_ms();
        let mut s = self.lock(now);
        let slots = s.live_slots(key.as_str(), now);
        match slots.get_mut(&slot.id) {
            Some(expires) => {
                *expires = now + millis(lease, 1);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    async fn release_slot(&self, key: &KeyId, slot: SlotLease) -> Result<(), CounterError> {
        let now = self.now_ms();
        let mut s = self.lock(now);
        if let Some(slots) = s.slots.get_mut(key.as_str()) {
            slots.remove(&slot.id);
            if slots.is_empty() {
                s.slots.remove(key.as_str());
            }
        }
        Ok(())
    }

    async fn inflight(&self, key: &KeyId) -> Result<u32, CounterError> {
        let now = self.now_ms();
        let mut s = self.lock(now);
        let n = s.live_slots(key.as_str(), now).len();
        Ok(u32::try_from(n).unwrap_or(u32::MAX))
    }

    async fn reserve_budget(
        &self,
        key: &KeyId,
        req: BudgetRequest,
        at: OffsetDateTime,
    ) -> Result<BudgetDecision, CounterError> {
        let now = self.now_ms();
        let (day, month) = periods(at);
        let amount = usd_to_nanos_ceil(req.reserve_usd);
        let k = key.as_str();
        let mut s = self.lock(now);
        s.expire_reservations(k, now);
        let d = s.totals(k, PeriodId::Day(day), now);
        let m = s.totals(k, PeriodId::Month(month), now);
        let usage = BudgetUsage {
            day_spent_usd: nanos_to_usd(d.spent),
            day_reserved_usd: nanos_to_usd(d.reserved),
            month_spent_usd: nanos_to_usd(m.spent),
            month_reserved_usd: nanos_to_usd(m.reserved),
        };
        let over = |t: Totals, budget: Option<i64>| {
            budget.is_some_and(|b| t.spent >= b || t.spent + t.reserved + amount > b)
        };
        if over(d, budget_nanos(req.daily_usd)) {
            return Ok(BudgetDecision::Denied {
                period: BudgetPeriod::Day,
                usage,
            });
        }
        if over(m, budget_nanos(req.monthly_usd)) {
            return Ok(BudgetDecision::Denied {
                period: BudgetPeriod::Month,
                usage,
            });
        }
        let id = new_handle_id();
        if amount > 0 {
            s.totals_mut(k, PeriodId::Day(day), now).reserved += amount;
            s.totals_mut(k, PeriodId::Month(month), now).reserved += amount;
            s.reservations.entry(k.to_owned()).or_default().insert(
                id.clone(),
                Held {
                    nanos: amount,
                    day,
                    month,
                    expires: now + millis(req.lease, 1),
                },
            );
        }
        Ok(BudgetDecision::Granted(BudgetReservation {
            origin: Origin::Local,
            id,
            nanos: amount,
            day,
            month,
        }))
    }

    async fn settle_budget(
        &self,
        key: &KeyId,
        reservation: BudgetReservation,
        cost_usd: f64,
        at: OffsetDateTime,
    ) -> Result<(), CounterError> {
        let now = self.now_ms();
        let k = key.as_str();
        let mut s = self.lock(now);
        let held = s
            .reservations
            .get_mut(k)
            .and_then(|h| h.remove(&reservation.id));
        if let Some(held) = held {
            s.release(k, held, now);
        }
        let cost = usd_to_nanos(cost_usd);
        if cost > 0 {
            let (day, month) = periods(at);
            s.totals_mut(k, PeriodId::Day(day), now).spent += cost;
            s.totals_mut(k, PeriodId::Month(month), now).spent += cost;
        }
        Ok(())
    }

    async fn add_spend(
        &self,
        key: &KeyId,
        cost_usd: f64,
        at: OffsetDateTime,
    ) -> Result<(), CounterError> {
        let cost = usd_to_nanos(cost_usd);
        if cost == 0 {
            return Ok(());
        }
        let now = self.now_ms();
        let (day, month) = periods(at);
        let k = key.as_str();
        let mut s = self.lock(now);
        s.totals_mut(k, PeriodId::Day(day), now).spent += cost;
        s.totals_mut(k, PeriodId::Month(month), now).spent += cost;
        Ok(())
    }

    async fn budget_usage(
        &self,
        key: &KeyId,
        at: OffsetDateTime,
    ) -> Result<BudgetUsage, CounterError> {
        let now = self.now_ms();
        let (day, month) = periods(at);
        let k = key.as_str();
        let mut s = self.lock(now);
        s.expire_reservations(k, now);
        let d = s.totals(k, PeriodId::Day(day), now);
        let m = s.totals(k, PeriodId::Month(month), now);
        Ok(BudgetUsage {
            day_spent_usd: nanos_to_usd(d.spent),
            day_reserved_usd: nanos_to_usd(d.reserved),
            month_spent_usd: nanos_to_usd(m.spent),
            month_reserved_usd: nanos_to_usd(m.reserved),
        })
    }

    async fn reconcile_spend(
        &self,
        key: &KeyId,
        at: OffsetDateTime,
        day_usd: f64,
        month_usd: f64,
    ) -> Result<(), CounterError> {
        let now = self.now_ms();
        let (day, month) = periods(at);
        let k = key.as_str();
        let mut s = self.lock(now);
        let d = s.totals_mut(k, PeriodId::Day(day), now);
        d.spent = d.spent.max(usd_to_nanos(day_usd));
        let m = s.totals_mut(k, PeriodId::Month(month), now);
        m.spent = m.spent.max(usd_to_nanos(month_usd));
        Ok(())
    }

    async fn tally(&self, items: &[Tally<'_>], ttl: Duration) -> Result<Vec<i64>, CounterError> {
        for t in items {
            validate_set(t.set)?;
        }
        let now = self.now_ms();
        let mut s = self.lock(now);
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
        let mut s = self.lock(now);
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
        let s = self.lock(now);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_wait_follows_the_oldest_buckets() {
        let span = 1_100; // 1 s window + 100 ms buckets
        let mut w = Window::default();
        w.charge(0, 3);
        w.charge(500, 2);
        // Limit 5 and all used: one more fits when the first bucket leaves at 1100.
        assert_eq!(w.wait(5, 5, 1, 600, span), 500);
        // Four more need both buckets gone: at 1600.
        assert_eq!(w.wait(5, 5, 4, 600, span), 1_000);
        assert_eq!(w.wait(5, 5, 6, 600, span), span, "never fits");
        w.prune(1_100, span);
        assert_eq!(w.used(), 2);
    }

    #[test]
    fn refund_goes_to_the_charged_bucket() {
        let mut w = Window::default();
        w.charge(0, 10);
        w.charge(100, 10);
        w.refund(0, 15);
        assert_eq!(w.buckets, [(0, 0), (100, 10)]);
        w.refund(999, 5); // gone: nothing to give back
        assert_eq!(w.used(), 10);
    }
}
