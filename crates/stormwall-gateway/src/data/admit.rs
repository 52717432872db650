//! Admission: per-key requests per minute, tokens per minute, in-flight concurrency and
//! spend budgets, decided in memory in a few hundred nanoseconds. A granted request holds an
//! [`Admission`] that reconciles tokens and spend with what the upstream reports, and frees
//! the concurrency slot, exactly once, however the request ends.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Instant;

use stormwall_types::{KeyScope, RejectReason};
use time::OffsetDateTime;

use crate::error::{ProxyError, RateLimitInfo};

/// Output tokens reserved against a budget when a request sets no `max_tokens`.
pub const DEFAULT_OUTPUT_RESERVE_TOKENS: u64 = 1_024;

/// Length of a rate window.
const WINDOW_SECS: f64 = 60.0;

/// A sliding one-minute window approximated by two fixed buckets, weighted by overlap —
/// the usual trade of exactness for constant memory per key.
#[derive(Debug, Default)]
struct Window {
    minute: u64,
    current: u64,
    previous: u64,
}

impl Window {
    fn roll(&mut self, minute: u64) {
        if minute == self.minute {
            return;
        }
        self.previous = if minute == self.minute + 1 {
            self.current
        } else {
            0
        };
        self.current = 0;
        self.minute = minute;
    }

    /// Weighted use of the sliding window (fractional: the previous minute decays linearly).
    fn used(&self, frac: f64) -> f64 {
        self.previous as f64 * (1.0 - frac) + self.current as f64
    }

    /// Whether `need` more units fit under `limit` now.
    fn fits(&self, limit: u64, need: u64, frac: f64) -> bool {
        self.used(frac) + need as f64 <= limit as f64 + 1e-9
    }

    /// Seconds until `need` more units fit under `limit`, as the previous bucket's weight
    /// decays and, if that is not enough, as the current bucket becomes the previous one.
    fn wait_secs(&self, limit: u64, need: u64, frac: f64) -> f64 {
        if need > limit {
            return WINDOW_SECS;
        }
        if self.fits(limit, need, frac) {
            return 0.0;
        }
        let room = (limit - need) as f64;
        // Within this minute: previous * (1 - f) + current <= room.
        if self.previous > 0 && (self.current as f64) <= room {
            let f = 1.0 - (room - self.current as f64) / self.previous as f64;
            if f < 1.0 {
                return ((f - frac) * WINDOW_SECS).max(0.001);
            }
        }
        // After the roll: current * (1 - g) <= room.
        let g = if self.current == 0 {
            0.0
        } else {
            (1.0 - room / self.current as f64).max(0.0)
        };
        ((1.0 - frac) + g) * WINDOW_SECS
    }
}

/// Spend accrued in the current UTC day and month, plus reservations of in-flight requests.
#[derive(Debug, Default)]
struct Spend {
    day: i32,
    month: (i32, u8),
    day_usd: f64,
    month_usd: f64,
    reserved_usd: f64,
}

impl Spend {
    fn roll(&mut self, now: OffsetDateTime) {
        let day = now.to_julian_day();
        if day != self.day {
            self.day = day;
            self.day_usd = 0.0;
        }
        let month = (now.year(), u8::from(now.month()));
        if month != self.month {
            self.month = month;
            self.month_usd = 0.0;
        }
    }
}

/// Live admission state of one key.
#[derive(Debug, Default)]
pub struct KeyState {
    requests: Mutex<Window>,
    tokens: Mutex<Window>,
    inflight: AtomicU32,
    spend: Mutex<Spend>,
    spend_loaded: AtomicBool,
}

impl KeyState {
    /// Requests in flight on this key.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Seeds spend from the store after a restart (day and month totals at `now`).
    pub fn load_spend(&self, now: OffsetDateTime, day_usd: f64, month_usd: f64) {
        let mut s = lock(&self.spend);
        s.roll(now);
        s.day_usd += day_usd;
        s.month_usd += month_usd;
        self.spend_loaded.store(true, Ordering::Relaxed);
    }

    /// Whether spend was seeded from the store.
    pub fn spend_loaded(&self) -> bool {
        self.spend_loaded.load(Ordering::Relaxed)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Counters stay meaningful after a panic elsewhere; never take the gateway down for it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The clock admission uses: a monotonic minute index and a wall clock for budgets.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
        }
    }
}

impl Clock {
    fn minute_and_frac(&self, now: Instant) -> (u64, f64) {
        let secs = now.duration_since(self.origin).as_secs_f64();
        let minute = (secs / WINDOW_SECS) as u64;
        (minute + 1, (secs % WINDOW_SECS) / WINDOW_SECS)
    }
}

/// What a request asks of its key's limits.
#[derive(Debug, Clone, Copy)]
pub struct Demand {
    /// Estimated input tokens.
    pub tokens: u64,
    /// Worst-case cost, reserved against budgets until the real cost is known.
    pub reserve_usd: f64,
}

/// A granted admission. Dropping it without [`Admission::settle`] releases its slot and
/// reservation without recording tokens beyond the estimate.
#[derive(Debug)]
pub struct Admission {
    state: std::sync::Arc<KeyState>,
    clock: Clock,
    estimated_tokens: u64,
    reserved_usd: f64,
    /// Headers to return to the client.
    pub info: RateLimitInfo,
    /// In-flight count including this request.
    pub inflight: u32,
    settled: bool,
}

impl Admission {
    /// Records the real token count and cost, and releases the slot and reservation.
    pub fn settle(mut self, actual_tokens: Option<u64>, cost_usd: f64) {
        self.finish(actual_tokens, cost_usd);
    }

    fn finish(&mut self, actual_tokens: Option<u64>, cost_usd: f64) {
        if self.settled {
            return;
        }
        self.settled = true;
        self.state.inflight.fetch_sub(1, Ordering::Relaxed);
        if let Some(actual) = actual_tokens {
            let (minute, _) = self.clock.minute_and_frac(Instant::now());
            let mut w = lock(&self.state.tokens);
            w.roll(minute);
            // Reconcile the estimate charged at admission with what was really used.
            if actual >= self.estimated_tokens {
                w.current += actual - self.estimated_tokens;
            } else {
                w.current = w.current.saturating_sub(self.estimated_tokens - actual);
            }
        }
        let mut s = lock(&self.state.spend);
        s.roll(OffsetDateTime::now_utc());
        s.reserved_usd = (s.reserved_usd - self.reserved_usd).max(0.0);
        s.day_usd += cost_usd;
        s.month_usd += cost_usd;
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.finish(None, 0.0);
    }
}

/// Everything a granted request holds: the local admission (always: it counts in-flight
/// requests for events and detectors, and enforces limits on one node) and, with shared
/// counters, the shared one that enforces limits across replicas.
#[derive(Debug)]
pub struct Grant {
    /// The in-process admission.
    pub local: Admission,
    /// The cross-replica admission, when shared counters are configured.
    pub shared: Option<crate::data::shared_admit::SharedAdmission>,
}

impl Grant {
    /// Rate-limit headers for the client.
    pub fn info(&self) -> RateLimitInfo {
        self.shared.as_ref().map_or(self.local.info, |s| s.info)
    }

    /// Requests in flight on the key, this one included.
    pub fn inflight(&self) -> u32 {
        self.shared
            .as_ref()
            .and_then(|s| s.inflight)
            .unwrap_or(self.local.inflight)
    }

    /// Settles every part with the real token count and cost.
    pub fn settle(self, actual_tokens: Option<u64>, cost_usd: f64) {
        if let Some(s) = self.shared {
            s.settle(actual_tokens, cost_usd);
        }
        self.local.settle(actual_tokens, cost_usd);
    }
}

/// Fills the headers of a budget refusal: budgets reset at the next UTC day (or month), so
/// the client should wait at least until midnight and not retry sooner.
pub fn budget_spent(info: &mut RateLimitInfo, now: OffsetDateTime) {
    let next_day = (now.date() + time::Duration::days(1))
        .midnight()
        .assume_utc();
    info.retry_after_secs = Some((next_day - now).whole_seconds().max(1) as u64);
    info.never_fits = true;
}

/// Checks a key's limits for one request and, when it fits, charges it.
pub fn admit(
    state: &std::sync::Arc<KeyState>,
    scope: &KeyScope,
    demand: Demand,
    clock: Clock,
) -> Result<Admission, ProxyError> {
    let now = Instant::now();
    let (minute, frac) = clock.minute_and_frac(now);
    let mut info = RateLimitInfo::default();
    let reject = |reason, info: RateLimitInfo| ProxyError::Rejected {
        reason,
        limits: Some(info),
        detail: None,
    };

    // Concurrency first: it is released on every exit path below.
    let inflight = state.inflight.fetch_add(1, Ordering::Relaxed) + 1;
    let release = || {
        state.inflight.fetch_sub(1, Ordering::Relaxed);
    };
    if let Some(max) = scope.max_concurrency
        && inflight > max
    {
        release();
        info.retry_after_secs = Some(1);
        return Err(reject(RejectReason::ConcurrencyLimit, info));
    }

    // Budgets, with in-flight reservations counted, so concurrent requests cannot overrun.
    if scope.budget_daily_usd.is_some() || scope.budget_monthly_usd.is_some() {
        let mut s = lock(&state.spend);
        s.roll(OffsetDateTime::now_utc());
        let over = |spent: f64, budget: Option<f64>| {
            budget.is_some_and(|b| spent >= b || spent + s.reserved_usd + demand.reserve_usd > b)
        };
        if over(s.day_usd, scope.budget_daily_usd) || over(s.month_usd, scope.budget_monthly_usd) {
            drop(s);
            release();
            budget_spent(&mut info, OffsetDateTime::now_utc());
            return Err(reject(RejectReason::BudgetExhausted, info));
        }
        s.reserved_usd += demand.reserve_usd;
    }
    let reserved_usd = if scope.budget_daily_usd.is_some() || scope.budget_monthly_usd.is_some() {
        demand.reserve_usd
    } else {
        0.0
    };
    let unreserve = || {
        if reserved_usd > 0.0 {
            let mut s = lock(&state.spend);
            s.reserved_usd = (s.reserved_usd - reserved_usd).max(0.0);
        }
    };

    if let Some(rpm) = scope.rpm {
        let mut w = lock(&state.requests);
        w.roll(minute);
        info.limit_requests = Some(rpm);
        if !w.fits(u64::from(rpm), 1, frac) {
            let wait = w.wait_secs(u64::from(rpm), 1, frac);
            let reset = w.wait_secs(u64::from(rpm), u64::from(rpm), frac);
            drop(w);
            release();
            unreserve();
            info.remaining_requests = Some(0);
            info.reset_requests_secs = Some(reset);
            info.retry_after_secs = Some(wait.ceil().max(1.0) as u64);
            return Err(reject(RejectReason::RateLimitRequests, info));
        }
        w.current += 1;
        info.remaining_requests = Some((f64::from(rpm) - w.used(frac)).floor().max(0.0) as u32);
        // Until the window is back to its initial state, as OpenAI's header means.
        info.reset_requests_secs = Some(w.wait_secs(u64::from(rpm), u64::from(rpm), frac));
    }

    if let Some(tpm) = scope.tpm {
        let mut w = lock(&state.tokens);
        w.roll(minute);
        info.limit_tokens = Some(tpm);
        if !w.fits(tpm, demand.tokens, frac) {
            let wait = w.wait_secs(tpm, demand.tokens, frac);
            let used = w.used(frac).ceil() as u64;
            let reset = w.wait_secs(tpm, tpm, frac);
            drop(w);
            // Give the request slot back: this request was never served.
            if scope.rpm.is_some() {
                let mut r = lock(&state.requests);
                r.current = r.current.saturating_sub(1);
            }
            release();
            unreserve();
            info.remaining_tokens = Some(tpm.saturating_sub(used));
            info.reset_tokens_secs = Some(reset);
            info.retry_after_secs = Some(wait.ceil().max(1.0) as u64);
            // A request larger than the whole limit can never fit: tell SDKs not to retry.
            info.never_fits = demand.tokens > tpm;
            return Err(reject(RejectReason::RateLimitTokens, info));
        }
        w.current += demand.tokens;
        info.remaining_tokens = Some((tpm as f64 - w.used(frac)).floor().max(0.0) as u64);
        info.reset_tokens_secs = Some(w.wait_secs(tpm, tpm, frac));
    }

    Ok(Admission {
        state: std::sync::Arc::clone(state),
        clock,
        estimated_tokens: if scope.tpm.is_some() {
            demand.tokens
        } else {
            0
        },
        reserved_usd,
        info,
        inflight,
        settled: false,
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn demand(tokens: u64) -> Demand {
        Demand {
            tokens,
            reserve_usd: 0.0,
        }
    }

    #[test]
    fn rpm_admits_exactly_the_limit() {
        let st = Arc::new(KeyState::default());
        let scope = KeyScope {
            rpm: Some(5),
            ..Default::default()
        };
        let clock = Clock::default();
        let granted: Vec<_> = (0..8)
            .filter_map(|_| admit(&st, &scope, demand(1), clock).ok())
            .collect();
        assert_eq!(granted.len(), 5);
        let err = admit(&st, &scope, demand(1), clock).unwrap_err();
        assert_eq!(err.reject_reason(), Some(RejectReason::RateLimitRequests));
    }

    #[test]
    fn wait_accounts_for_the_sliding_window() {
        // Two used in the previous minute, none now, limit 2: room for one more once the
        // previous minute's weight falls to 1, i.e. half-way through this minute.
        let w = Window {
            minute: 1,
            current: 0,
            previous: 2,
        };
        assert!((w.wait_secs(2, 1, 0.0) - 30.0).abs() < 1e-9);
        assert!((w.wait_secs(2, 1, 0.25) - 15.0).abs() < 1e-9);
        // Full in the current minute: wait for the roll, then for half of the next minute.
        let w = Window {
            minute: 1,
            current: 2,
            previous: 0,
        };
        assert!((w.wait_secs(2, 1, 0.5) - 60.0).abs() < 1e-9);
    }

    #[test]
    fn concurrency_slot_released_on_drop() {
        let st = Arc::new(KeyState::default());
        let scope = KeyScope {
            max_concurrency: Some(1),
            ..Default::default()
        };
        let clock = Clock::default();
        let a = admit(&st, &scope, demand(1), clock).unwrap();
        assert!(admit(&st, &scope, demand(1), clock).is_err());
        drop(a);
        assert!(admit(&st, &scope, demand(1), clock).is_ok());
        assert_eq!(st.inflight(), 0);
    }

    #[test]
    fn tpm_reconciles_with_actual_usage() {
        let st = Arc::new(KeyState::default());
        let scope = KeyScope {
            tpm: Some(100),
            ..Default::default()
        };
        let clock = Clock::default();
        admit(&st, &scope, demand(10), clock)
            .unwrap()
            .settle(Some(95), 0.0);
        let e = admit(&st, &scope, demand(10), clock).unwrap_err();
        assert_eq!(e.reject_reason(), Some(RejectReason::RateLimitTokens));
    }

    #[test]
    fn budget_counts_reservations() {
        let st = Arc::new(KeyState::default());
        let scope = KeyScope {
            budget_daily_usd: Some(1.0),
            ..Default::default()
        };
        let clock = Clock::default();
        let d = Demand {
            tokens: 1,
            reserve_usd: 0.6,
        };
        let first = admit(&st, &scope, d, clock).unwrap();
        assert!(
            admit(&st, &scope, d, clock).is_err(),
            "second reservation would overrun"
        );
        first.settle(None, 0.9);
        assert!(
            admit(&st, &scope, d, clock).is_err(),
            "0.9 spent + 0.6 > 1.0"
        );
    }
}
