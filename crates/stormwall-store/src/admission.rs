//! The admission engine: the semantics of the Redis scripts (`redis.rs`) computed in
//! process, synchronously, on a clock the caller passes in.
//!
//! [`KeyAdmission`] is one key's state — requests and tokens windows checked and charged
//! in one step, leased concurrency slots, budget reservations settled with the real cost.
//! It is the only in-process implementation of those rules: [`LocalCounters`] (one node
//! behind the [`Counters`] trait, and the fallback while Redis is unreachable) keeps one per
//! key in an [`AdmissionEngine`]; the gateway keeps one in each key-cache entry and calls it
//! on the request path without awaiting; the simulator drives one per key on event time. So
//! a single node, a replica that fell back to local counting, Redis and the simulator all
//! admit the same requests.
//!
//! Every method takes `now_ms`, milliseconds on any monotonic clock (the caller's origin;
//! negative values are fine), which times rate windows and leases. Budget periods are named
//! by a wall-clock `at`, the way events are timestamped. Handles issued here are numbers,
//! so a grant allocates nothing once a key's maps have grown to its traffic.
//!
//! [`LocalCounters`]: crate::LocalCounters
//! [`Counters`]: crate::Counters

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use stormwall_types::KeyId;
use stormwall_types::key::ID_LEN;
use time::OffsetDateTime;

use crate::counters::{
    BudgetDecision, BudgetPeriod, BudgetRequest, BudgetReservation, BudgetUsage, Handle, Origin,
    RATE_BUCKET, RATE_WINDOW, RateCharge, RateDecision, RateLimited, RateRequest, SlotDecision,
    SlotLease, WindowState, budget_nanos, from_millis, millis, nanos_to_usd, periods, usd_to_nanos,
    usd_to_nanos_ceil,
};

/// How long a day's budget totals are kept after their last change.
pub(crate) const BUDGET_DAY_TTL: Duration = Duration::from_secs(3 * 24 * 3600);
/// How long a month's budget totals are kept after their last change.
pub(crate) const BUDGET_MONTH_TTL: Duration = Duration::from_secs(40 * 24 * 3600);
/// Operations of an [`AdmissionEngine`] between sweeps of idle keys.
const SWEEP_EVERY: u64 = 4_096;

/// A handle number unique in this process: handles outlive the key state that issued them
/// (an idle key is swept and re-created), so a per-key counter could name two grants alike.
fn next_handle() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The shape of the rate windows: their length, and the buckets usage leaves them in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateWindows {
    window_ms: i64,
    bucket_ms: i64,
}

impl Default for RateWindows {
    fn default() -> Self {
        Self::new(RATE_WINDOW, RATE_BUCKET)
    }
}

impl RateWindows {
    /// Windows lasting `window`, in buckets of `bucket`. Zero durations count as 1 ms.
    pub fn new(window: Duration, bucket: Duration) -> Self {
        Self {
            window_ms: millis(window, 1),
            bucket_ms: millis(bucket, 1),
        }
    }

    /// How long a bucket counts: a bucket starting at `b` counts while `now < b + span`,
    /// so no unit leaves the window before it is a full window old.
    fn span(self) -> i64 {
        self.window_ms.saturating_add(self.bucket_ms)
    }

    /// Start of the bucket `now` falls in.
    fn bucket_of(self, now: i64) -> i64 {
        now - now.rem_euclid(self.bucket_ms)
    }
}

/// A rate window: (bucket start in ms, units) oldest first, and their sum.
#[derive(Debug, Default)]
struct Window {
    buckets: VecDeque<(i64, u64)>,
    total: u64,
}

impl Window {
    /// Drops buckets that have left the window.
    fn prune(&mut self, now: i64, span: i64) {
        while let Some(&(b, n)) = self.buckets.front() {
            if b > now.saturating_sub(span) {
                break;
            }
            self.total = self.total.saturating_sub(n);
            self.buckets.pop_front();
        }
    }

    fn used(&self) -> u64 {
        self.total
    }

    fn reset_after(&self, now: i64, span: i64) -> i64 {
        self.buckets
            .iter()
            .find(|&&(_, n)| n > 0)
            .map_or(0, |&(b, _)| b + span - now)
    }

    /// Milliseconds until `need` more units fit under `limit` as old buckets leave.
    fn wait(&self, limit: u64, need: u64, now: i64, span: i64) -> i64 {
        if need > limit {
            return span;
        }
        let used = self.total;
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
            Some((b, count)) if *b == bucket => {
                let before = *count;
                *count = count.saturating_add(n);
                self.total = self.total.saturating_add(*count - before);
            }
            _ => {
                self.buckets.push_back((bucket, n));
                self.total = self.total.saturating_add(n);
            }
        }
    }

    fn refund(&mut self, bucket: i64, n: u64) {
        if let Some((_, count)) = self.buckets.iter_mut().find(|(b, _)| *b == bucket) {
            let before = *count;
            *count = count.saturating_sub(n);
            self.total = self.total.saturating_sub(before - *count);
        }
    }

    fn state(&self, limit: u64, used: u64, now: i64, span: i64) -> WindowState {
        WindowState {
            limit,
            used,
            reset_after: from_millis(self.reset_after(now, span)),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeriodId {
    Day(u32),
    Month(u32),
}

impl PeriodId {
    fn ttl_ms(self) -> i64 {
        match self {
            PeriodId::Day(_) => millis(BUDGET_DAY_TTL, 1),
            PeriodId::Month(_) => millis(BUDGET_MONTH_TTL, 1),
        }
    }
}

/// Spend and reservations of one period, in nano-USD.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    spent: i64,
    reserved: i64,
    expires: i64,
}

/// A reservation still held.
#[derive(Debug, Clone, Copy)]
struct Held {
    nanos: i64,
    day: u32,
    month: u32,
    expires: i64,
}

/// The budget periods of one key: a handful (days and months kept for their TTL), so a
/// short list beats a map.
#[derive(Debug, Default)]
struct Periods(Vec<(PeriodId, Totals)>);

impl Periods {
    fn get(&self, p: PeriodId, now: i64) -> Totals {
        self.0
            .iter()
            .find(|(id, t)| *id == p && t.expires > now)
            .map_or_else(Totals::default, |&(_, t)| t)
    }

    /// The period's totals for a change: restarted if expired, kept for its TTL from now.
    fn get_mut(&mut self, p: PeriodId, now: i64) -> &mut Totals {
        self.0.retain(|(_, t)| t.expires > now);
        let i = match self.0.iter().position(|(id, _)| *id == p) {
            Some(i) => i,
            None => {
                // A day and its month: most keys never hold more.
                if self.0.capacity() == 0 {
                    self.0.reserve_exact(2);
                }
                self.0.push((p, Totals::default()));
                self.0.len() - 1
            }
        };
        let t = &mut self.0[i].1;
        t.expires = now.saturating_add(p.ttl_ms());
        t
    }

    /// Gives a reservation back to the periods it was taken from, if they are still kept.
    fn release(&mut self, held: Held, now: i64) {
        for (id, t) in &mut self.0 {
            if (*id == PeriodId::Day(held.day) || *id == PeriodId::Month(held.month))
                && t.expires > now
            {
                t.reserved = (t.reserved - held.nanos).max(0);
            }
        }
    }

    fn add_spent(&mut self, at: OffsetDateTime, nanos: i64, now: i64) {
        let (day, month) = periods(at);
        for p in [PeriodId::Day(day), PeriodId::Month(month)] {
            let t = self.get_mut(p, now);
            t.spent = t.spent.saturating_add(nanos);
        }
    }
}

/// The admission state of one key, and the rules that decide on it. See the module
/// documentation.
///
/// Small for a key that only records spend (the gateway keeps one per used key, a million
/// keys or more): the rate windows, slots and reservations of a key with limits live in one
/// allocation made on the first limit checked.
#[derive(Debug, Default)]
pub struct KeyAdmission {
    windows: RateWindows,
    limits: Option<Box<Limits>>,
    periods: Periods,
}

/// What only a key with limits holds.
#[derive(Debug, Default)]
struct Limits {
    requests: Window,
    tokens: Window,
    /// Slot handle → lease end.
    slots: HashMap<u64, i64>,
    /// Reservation handle → what it holds.
    reservations: HashMap<u64, Held>,
}

impl Limits {
    fn is_empty(&self) -> bool {
        self.requests.buckets.is_empty()
            && self.tokens.buckets.is_empty()
            && self.slots.is_empty()
            && self.reservations.is_empty()
    }
}

impl KeyAdmission {
    /// Empty state whose rate windows have the shape `windows`.
    pub fn new(windows: RateWindows) -> Self {
        Self {
            windows,
            ..Self::default()
        }
    }

    /// The state of a key with limits, created empty on first use.
    fn limits(&mut self) -> &mut Limits {
        self.limits.get_or_insert_with(Box::default)
    }

    /// Checks the requests and tokens windows and, if both have room, charges one request
    /// and `req.tokens` tokens (see [`Counters::check_rate`](crate::Counters::check_rate)).
    pub fn check_rate(&mut self, req: RateRequest, now_ms: i64) -> RateDecision {
        let now = now_ms;
        let span = self.windows.span();
        let cur = self.windows.bucket_of(now);
        let limits = self.limits();
        limits.requests.prune(now, span);
        limits.tokens.prune(now, span);
        let (requests, tokens) = (&mut limits.requests, &mut limits.tokens);
        let r_used = requests.used();
        let t_used = tokens.used();
        let rpm = req.rpm.map(u64::from);
        if let Some(limit) = rpm
            && r_used.saturating_add(1) > limit
        {
            return RateDecision::Denied {
                limit: RateLimited::Requests,
                retry_after: from_millis(requests.wait(limit, 1, now, span)),
                requests: Some(requests.state(limit, r_used, now, span)),
                tokens: req.tpm.map(|l| tokens.state(l, t_used, now, span)),
            };
        }
        if let Some(limit) = req.tpm
            && t_used.saturating_add(req.tokens) > limit
        {
            return RateDecision::Denied {
                limit: RateLimited::Tokens,
                retry_after: from_millis(tokens.wait(limit, req.tokens, now, span)),
                requests: rpm.map(|l| requests.state(l, r_used, now, span)),
                tokens: Some(tokens.state(limit, t_used, now, span)),
            };
        }
        if rpm.is_some() {
            requests.charge(cur, 1);
        }
        if req.tpm.is_some() {
            tokens.charge(cur, req.tokens);
        }
        RateDecision::Granted {
            charge: RateCharge {
                origin: Origin::Local,
                bucket_ms: cur,
                tokens: req.tokens,
                tokens_tracked: req.tpm.is_some(),
            },
            requests: rpm.map(|l| requests.state(l, r_used.saturating_add(1), now, span)),
            tokens: req
                .tpm
                .map(|l| tokens.state(l, t_used.saturating_add(req.tokens), now, span)),
        }
    }

    /// Replaces a charge's token estimate with the real count: the excess is charged now,
    /// an overestimate given back to the bucket charged (if still in the window).
    pub fn reconcile_tokens(&mut self, charge: &RateCharge, actual_tokens: u64, now_ms: i64) {
        if !charge.tokens_tracked || actual_tokens == charge.tokens {
            return;
        }
        let span = self.windows.span();
        let bucket = self.windows.bucket_of(now_ms);
        let tokens = &mut self.limits().tokens;
        tokens.prune(now_ms, span);
        if actual_tokens > charge.tokens {
            tokens.charge(bucket, actual_tokens - charge.tokens);
        } else {
            tokens.refund(charge.bucket_ms, charge.tokens - actual_tokens);
        }
    }

    fn live_slots(&mut self, now: i64) -> &mut HashMap<u64, i64> {
        let slots = &mut self.limits().slots;
        slots.retain(|_, expires| *expires > now);
        slots
    }

    /// Takes one of `max` concurrency slots, held for `lease`.
    pub fn acquire_slot(&mut self, max: u32, lease: Duration, now_ms: i64) -> SlotDecision {
        let slots = self.live_slots(now_ms);
        let inflight = u32::try_from(slots.len()).unwrap_or(u32::MAX);
        if inflight >= max {
            return SlotDecision::Denied { inflight };
        }
        let id = next_handle();
        slots.insert(id, now_ms.saturating_add(millis(lease, 1)));
        SlotDecision::Granted(SlotLease {
            id: Handle::Local(id),
            inflight: inflight + 1,
        })
    }

    /// Extends a slot's lease to `lease` from now; false if it had already expired (or was
    /// not issued here).
    pub fn renew_slot(&mut self, slot: &SlotLease, lease: Duration, now_ms: i64) -> bool {
        let Handle::Local(id) = slot.id else {
            return false;
        };
        match self.live_slots(now_ms).get_mut(&id) {
            Some(expires) => {
                *expires = now_ms.saturating_add(millis(lease, 1));
                true
            }
            None => false,
        }
    }

    /// Frees a slot (a no-op if its lease already ran out).
    pub fn release_slot(&mut self, slot: &SlotLease) {
        if let Handle::Local(id) = slot.id
            && let Some(limits) = self.limits.as_deref_mut()
        {
            limits.slots.remove(&id);
        }
    }

    /// Slots held now.
    pub fn inflight(&mut self, now_ms: i64) -> u32 {
        let Some(limits) = self.limits.as_deref_mut() else {
            return 0;
        };
        limits.slots.retain(|_, expires| *expires > now_ms);
        u32::try_from(limits.slots.len()).unwrap_or(u32::MAX)
    }

    /// Releases expired reservations.
    fn expire_reservations(&mut self, now: i64) {
        let Some(limits) = self.limits.as_deref_mut() else {
            return;
        };
        let periods = &mut self.periods;
        limits.reservations.retain(|_, h| {
            if h.expires > now {
                return true;
            }
            periods.release(*h, now);
            false
        });
    }

    fn usage(&self, day: u32, month: u32, now: i64) -> BudgetUsage {
        let d = self.periods.get(PeriodId::Day(day), now);
        let m = self.periods.get(PeriodId::Month(month), now);
        BudgetUsage {
            day_spent_usd: nanos_to_usd(d.spent),
            day_reserved_usd: nanos_to_usd(d.reserved),
            month_spent_usd: nanos_to_usd(m.spent),
            month_reserved_usd: nanos_to_usd(m.reserved),
        }
    }

    /// Reserves `req.reserve_usd` against the day and month budgets of `at`, if spend plus
    /// every reservation plus this one fits each budget that is set.
    pub fn reserve_budget(
        &mut self,
        req: BudgetRequest,
        at: OffsetDateTime,
        now_ms: i64,
    ) -> BudgetDecision {
        let now = now_ms;
        let (day, month) = periods(at);
        let amount = usd_to_nanos_ceil(req.reserve_usd);
        self.expire_reservations(now);
        let d = self.periods.get(PeriodId::Day(day), now);
        let m = self.periods.get(PeriodId::Month(month), now);
        let over = |t: Totals, budget: Option<i64>| {
            budget.is_some_and(|b| t.spent >= b || t.spent + t.reserved + amount > b)
        };
        let refused = if over(d, budget_nanos(req.daily_usd)) {
            Some(BudgetPeriod::Day)
        } else if over(m, budget_nanos(req.monthly_usd)) {
            Some(BudgetPeriod::Month)
        } else {
            None
        };
        if let Some(period) = refused {
            return BudgetDecision::Denied {
                period,
                usage: self.usage(day, month, now),
            };
        }
        let id = next_handle();
        if amount > 0 {
            for p in [PeriodId::Day(day), PeriodId::Month(month)] {
                let t = self.periods.get_mut(p, now);
                t.reserved = t.reserved.saturating_add(amount);
            }
            self.limits().reservations.insert(
                id,
                Held {
                    nanos: amount,
                    day,
                    month,
                    expires: now.saturating_add(millis(req.lease, 1)),
                },
            );
        }
        BudgetDecision::Granted(BudgetReservation {
            id: Handle::Local(id),
            nanos: amount,
            day,
            month,
        })
    }

    /// Releases a reservation (if still held) and records the real cost in the day and
    /// month of `at`.
    pub fn settle_budget(
        &mut self,
        reservation: &BudgetReservation,
        cost_usd: f64,
        at: OffsetDateTime,
        now_ms: i64,
    ) {
        if let Handle::Local(id) = reservation.id
            && let Some(limits) = self.limits.as_deref_mut()
            && let Some(held) = limits.reservations.remove(&id)
        {
            self.periods.release(held, now_ms);
        }
        self.add_spend(cost_usd, at, now_ms);
    }

    /// Records a cost without a reservation (a key without budgets, tracked all the same).
    pub fn add_spend(&mut self, cost_usd: f64, at: OffsetDateTime, now_ms: i64) {
        let cost = usd_to_nanos(cost_usd);
        if cost > 0 {
            self.periods.add_spent(at, cost, now_ms);
        }
    }

    /// Spend and reservations of the day and month of `at`.
    pub fn budget_usage(&mut self, at: OffsetDateTime, now_ms: i64) -> BudgetUsage {
        let (day, month) = periods(at);
        self.expire_reservations(now_ms);
        self.usage(day, month, now_ms)
    }

    /// Raises the recorded spend of the day and month of `at` to at least the given totals
    /// (from the event store), never lowers it.
    pub fn reconcile_spend(
        &mut self,
        at: OffsetDateTime,
        day_usd: f64,
        month_usd: f64,
        now_ms: i64,
    ) {
        let (day, month) = periods(at);
        for (p, usd) in [
            (PeriodId::Day(day), day_usd),
            (PeriodId::Month(month), month_usd),
        ] {
            let t = self.periods.get_mut(p, now_ms);
            t.spent = t.spent.max(usd_to_nanos(usd));
        }
    }

    /// Drops whatever has expired; true when nothing is left, so the state can go.
    fn sweep(&mut self, now: i64) -> bool {
        let span = self.windows.span();
        self.expire_reservations(now);
        if let Some(limits) = self.limits.as_deref_mut() {
            limits.requests.prune(now, span);
            limits.tokens.prune(now, span);
            limits.slots.retain(|_, e| *e > now);
            if limits.is_empty() {
                self.limits = None;
            }
        }
        self.periods.0.retain(|(_, t)| t.expires > now);
        self.limits.is_none() && self.periods.0.is_empty()
    }
}

/// The map key of a key id: its fixed-size bytes, so a look-up allocates nothing.
type KeyTag = [u8; ID_LEN];

fn tag(key: &KeyId) -> KeyTag {
    *key.as_bytes()
}

/// A [`KeyAdmission`] per key, created on first use and dropped once idle.
#[derive(Debug, Default)]
pub struct AdmissionEngine {
    windows: RateWindows,
    keys: HashMap<KeyTag, KeyAdmission>,
    ops: u64,
}

impl AdmissionEngine {
    /// An empty engine whose rate windows have the shape `windows`.
    pub fn new(windows: RateWindows) -> Self {
        Self {
            windows,
            ..Self::default()
        }
    }

    /// The key's state (empty if it had none), sweeping idle keys every so often.
    pub fn key(&mut self, key: &KeyId, now_ms: i64) -> &mut KeyAdmission {
        self.ops = self.ops.wrapping_add(1);
        if self.ops.is_multiple_of(SWEEP_EVERY) {
            self.keys.retain(|_, k| !k.sweep(now_ms));
        }
        let windows = self.windows;
        self.keys
            .entry(tag(key))
            .or_insert_with(|| KeyAdmission::new(windows))
    }

    /// Keys holding state.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key holds state.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000;

    fn rate(rpm: Option<u32>, tpm: Option<u64>, tokens: u64) -> RateRequest {
        RateRequest { rpm, tpm, tokens }
    }

    fn at() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap()
    }

    fn budget(daily: f64, reserve: f64) -> BudgetRequest {
        BudgetRequest {
            daily_usd: Some(daily),
            monthly_usd: None,
            reserve_usd: reserve,
            lease: Duration::from_secs(60),
        }
    }

    #[test]
    fn window_wait_follows_the_oldest_buckets() {
        let span = 1_100; // 1 s window + 100 ms buckets
        let mut w = Window::default();
        w.charge(0, 3);
        w.charge(500, 2);
        // Limit 5 and all used: one more fits when the first bucket leaves at 1100.
        assert_eq!(w.wait(5, 1, 600, span), 500);
        // Four more need both buckets gone: at 1600.
        assert_eq!(w.wait(5, 4, 600, span), 1_000);
        assert_eq!(w.wait(5, 6, 600, span), span, "never fits");
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

    #[test]
    fn rpm_admits_exactly_the_limit_until_the_window_slides() {
        let mut k = KeyAdmission::default();
        let granted = (0..8)
            .filter(|_| {
                matches!(
                    k.check_rate(rate(Some(5), None, 0), T0),
                    RateDecision::Granted { .. }
                )
            })
            .count();
        assert_eq!(granted, 5);
        // The charges sit in the bucket of T0, which counts for a window plus a bucket.
        let RateDecision::Denied {
            limit, retry_after, ..
        } = k.check_rate(rate(Some(5), None, 0), T0 + 30_000)
        else {
            panic!("the window is full");
        };
        assert_eq!(limit, RateLimited::Requests);
        assert_eq!(retry_after, Duration::from_millis(31_000));
        assert!(matches!(
            k.check_rate(rate(Some(5), None, 0), T0 + 61_000),
            RateDecision::Granted { .. }
        ));
    }

    #[test]
    fn granted_windows_count_the_request_and_refusals_charge_nothing() {
        let mut k = KeyAdmission::default();
        let RateDecision::Granted {
            requests, tokens, ..
        } = k.check_rate(rate(Some(3), Some(100), 40), T0)
        else {
            panic!("empty windows admit");
        };
        assert_eq!(requests.map(|w| w.remaining()), Some(2));
        assert_eq!(tokens.map(|w| w.remaining()), Some(60));
        let RateDecision::Denied { limit, tokens, .. } =
            k.check_rate(rate(Some(3), Some(100), 61), T0)
        else {
            panic!("61 more tokens do not fit");
        };
        assert_eq!(limit, RateLimited::Tokens);
        assert_eq!(tokens.map(|w| w.used), Some(40));
        // The refused request was not counted: two more fit.
        for _ in 0..2 {
            assert!(matches!(
                k.check_rate(rate(Some(3), Some(100), 0), T0),
                RateDecision::Granted { .. }
            ));
        }
    }

    #[test]
    fn tokens_reconcile_with_actual_usage() {
        let mut k = KeyAdmission::default();
        let RateDecision::Granted { charge, .. } = k.check_rate(rate(None, Some(100), 10), T0)
        else {
            panic!("empty window admits");
        };
        k.reconcile_tokens(&charge, 95, T0 + 10);
        assert!(matches!(
            k.check_rate(rate(None, Some(100), 10), T0 + 20),
            RateDecision::Denied {
                limit: RateLimited::Tokens,
                ..
            }
        ));
        // An overestimate is given back to the bucket charged.
        let mut k = KeyAdmission::default();
        let RateDecision::Granted { charge, .. } = k.check_rate(rate(None, Some(100), 90), T0)
        else {
            panic!("empty window admits");
        };
        k.reconcile_tokens(&charge, 5, T0 + 5_000);
        assert!(matches!(
            k.check_rate(rate(None, Some(100), 90), T0 + 5_000),
            RateDecision::Granted { .. }
        ));
    }

    #[test]
    fn slots_limit_release_and_expire() {
        let mut k = KeyAdmission::default();
        let lease = Duration::from_secs(10);
        let SlotDecision::Granted(a) = k.acquire_slot(1, lease, T0) else {
            panic!("a free slot");
        };
        assert_eq!(a.inflight, 1);
        assert_eq!(
            k.acquire_slot(1, lease, T0),
            SlotDecision::Denied { inflight: 1 }
        );
        k.release_slot(&a);
        let SlotDecision::Granted(b) = k.acquire_slot(1, lease, T0) else {
            panic!("released");
        };
        assert!(k.renew_slot(&b, lease, T0 + 9_000));
        assert_eq!(k.inflight(T0 + 18_000), 1, "renewed until T0 + 19 s");
        assert_eq!(k.inflight(T0 + 19_000), 0, "the lease ran out");
        assert!(!k.renew_slot(&b, lease, T0 + 19_000));
    }

    #[test]
    fn budget_counts_reservations_and_settles_with_the_real_cost() {
        let mut k = KeyAdmission::default();
        let BudgetDecision::Granted(first) = k.reserve_budget(budget(1.0, 0.6), at(), T0) else {
            panic!("fits");
        };
        assert!(
            matches!(
                k.reserve_budget(budget(1.0, 0.6), at(), T0),
                BudgetDecision::Denied {
                    period: BudgetPeriod::Day,
                    ..
                }
            ),
            "second reservation would overrun"
        );
        k.settle_budget(&first, 0.9, at(), T0);
        let usage = k.budget_usage(at(), T0);
        assert!((usage.day_spent_usd - 0.9).abs() < 1e-9);
        assert_eq!(usage.day_reserved_usd, 0.0);
        assert!(
            matches!(
                k.reserve_budget(budget(1.0, 0.6), at(), T0),
                BudgetDecision::Denied { .. }
            ),
            "0.9 spent + 0.6 > 1.0"
        );
        // Settling twice releases nothing more.
        k.settle_budget(&first, 0.0, at(), T0);
        assert!((k.budget_usage(at(), T0).day_spent_usd - 0.9).abs() < 1e-9);
    }

    #[test]
    fn reservations_expire_with_their_lease() {
        let mut k = KeyAdmission::default();
        let BudgetDecision::Granted(_) = k.reserve_budget(budget(1.0, 0.8), at(), T0) else {
            panic!("fits");
        };
        assert!(matches!(
            k.reserve_budget(budget(1.0, 0.8), at(), T0 + 59_999),
            BudgetDecision::Denied { .. }
        ));
        assert!(matches!(
            k.reserve_budget(budget(1.0, 0.8), at(), T0 + 60_000),
            BudgetDecision::Granted(_)
        ));
    }

    #[test]
    fn spend_reconciles_upwards_only() {
        let mut k = KeyAdmission::default();
        k.reconcile_spend(at(), 0.5, 2.0, T0);
        k.reconcile_spend(at(), 0.25, 1.0, T0);
        let u = k.budget_usage(at(), T0);
        assert!((u.day_spent_usd - 0.5).abs() < 1e-9);
        assert!((u.month_spent_usd - 2.0).abs() < 1e-9);
        // The next day starts at zero; the month carries on.
        let next = at() + time::Duration::days(1);
        let u = k.budget_usage(next, T0);
        assert_eq!(u.day_spent_usd, 0.0);
        assert!((u.month_spent_usd - 2.0).abs() < 1e-9);
    }

    #[test]
    fn the_engine_sweeps_idle_keys() {
        let mut e = AdmissionEngine::new(RateWindows::new(
            Duration::from_millis(1_000),
            Duration::from_millis(100),
        ));
        let a = KeyId::new("AAAAAAAAAAAA").unwrap();
        let b = KeyId::new("BBBBBBBBBBBB").unwrap();
        let _ = e.key(&a, 0).check_rate(rate(Some(1), None, 0), 0);
        assert_eq!(e.len(), 1);
        for i in 1..SWEEP_EVERY {
            e.key(&b, 10_000 + i64::try_from(i).unwrap());
        }
        // The sweep dropped both idle keys; then b was asked for again.
        assert_eq!(e.len(), 1);
    }

    /// The gateway keeps one per used key; a key without limits only records spend, so
    /// that is all it may cost.
    #[test]
    fn a_key_that_only_records_spend_holds_no_limits_state() {
        assert!(
            std::mem::size_of::<KeyAdmission>() <= 48,
            "KeyAdmission is {} bytes",
            std::mem::size_of::<KeyAdmission>()
        );
        let mut k = KeyAdmission::default();
        k.add_spend(0.5, at(), T0);
        assert!(k.limits.is_none());
        assert_eq!(k.inflight(T0), 0);
        assert_eq!(k.budget_usage(at(), T0).day_spent_usd, 0.5);
        assert!(k.limits.is_none(), "reading usage allocates nothing");
        // Limits come with the first one checked and go once nothing is left in them; the
        // spend stays for its period.
        assert!(matches!(
            k.check_rate(rate(Some(1), None, 1), T0),
            RateDecision::Granted { .. }
        ));
        assert!(k.limits.is_some());
        assert!(!k.sweep(T0 + 2 * 60_000));
        assert!(k.limits.is_none());
        assert_eq!(k.budget_usage(at(), T0 + 2 * 60_000).day_spent_usd, 0.5);
    }
}
