//! Admission: per-key requests and tokens per minute, in-flight concurrency and spend
//! budgets. On one node the decisions are made by the store's admission engine
//! ([`stormwall_store::KeyAdmission`], the Redis scripts' semantics) kept in each key-cache
//! entry — one lock and no await on the request path; with shared counters
//! ([`crate::data::shared_admit`]) the same engine's decisions come from Redis (or the local
//! fallback), and this module only counts the key's requests in flight. Both paths turn
//! decisions into headers and refusals here. A granted request holds an [`Admission`] that
//! reconciles tokens and spend with what the upstream reports, and frees its slot and
//! reservation, exactly once, however the request ends.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use stormwall_store::{
    BudgetDecision, BudgetRequest, BudgetReservation, KeyAdmission, RateCharge, RateDecision,
    RateLimited, RateRequest, SlotDecision, SlotLease, WindowState,
};
use stormwall_types::{KeyScope, RejectReason};
use time::OffsetDateTime;

use crate::data::keycache::KeyStop;
use crate::error::{ProxyError, RateLimitInfo};

/// Output tokens reserved against a budget when a request sets no `max_tokens`.
pub const DEFAULT_OUTPUT_RESERVE_TOKENS: u64 = 1_024;
/// How long a concurrency slot or budget reservation holds if it is never settled: a
/// replica died mid-request (shared counters), or a request outlived it.
pub const LEASE: Duration = Duration::from_secs(15 * 60);

/// Live state of one key, shared by every version of its cached record: requests in flight,
/// the admission engine's state and the stop signal. Small and fixed-size for the common key:
/// the engine's state is allocated only once the key has a limit to check or a cost to
/// record, so a million idle keys cost no admission state.
#[derive(Debug, Default)]
pub struct KeyState {
    /// Requests in flight, counted on every path (events and detectors read it).
    inflight: AtomicU32,
    spend_loaded: AtomicBool,
    /// The engine's state of this key, used when limits are enforced on this node.
    limits: Limits,
    /// Fired when the key is suspended or revoked (see [`crate::data::keycache`]).
    pub(crate) stop: KeyStop,
}

/// A key's admission engine state, allocated on first use.
#[derive(Debug, Default)]
struct Limits(OnceLock<Box<Mutex<KeyAdmission>>>);

impl KeyState {
    /// Requests in flight on this key.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Seeds spend from the store after a restart (day and month totals at `now`); spend
    /// already counted is never lowered.
    pub fn load_spend(&self, now: OffsetDateTime, day_usd: f64, month_usd: f64) {
        let now_ms = Clock::default().now_ms();
        lock(&self.limits).reconcile_spend(now, day_usd, month_usd, now_ms);
        self.spend_loaded.store(true, Ordering::Relaxed);
    }

    /// Whether spend was seeded from the store.
    pub fn spend_loaded(&self) -> bool {
        self.spend_loaded.load(Ordering::Relaxed)
    }

    /// Whether the key holds admission state (it had a limit checked or a cost recorded).
    pub fn has_limits_state(&self) -> bool {
        self.limits.0.get().is_some()
    }
}

/// The key's engine state, created empty on first use.
fn lock(limits: &Limits) -> MutexGuard<'_, KeyAdmission> {
    // Counters stay meaningful after a panic elsewhere; never take the gateway down for it.
    limits
        .0
        .get_or_init(Box::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// The clock admission uses: monotonic milliseconds from one origin per process, so every
/// key's windows and leases are on the same time line. Budget periods follow the UTC wall
/// clock.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    origin: Instant,
}

impl Default for Clock {
    fn default() -> Self {
        static ORIGIN: OnceLock<Instant> = OnceLock::new();
        Self {
            origin: *ORIGIN.get_or_init(Instant::now),
        }
    }
}

impl Clock {
    /// Milliseconds since the origin.
    pub fn now_ms(&self) -> i64 {
        i64::try_from(self.origin.elapsed().as_millis()).unwrap_or(i64::MAX)
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

/// What a granted request holds in its key's engine.
#[derive(Debug, Default)]
struct Held {
    slot: Option<SlotLease>,
    budget: Option<BudgetReservation>,
    charge: Option<RateCharge>,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.slot.is_none() && self.budget.is_none() && self.charge.is_none()
    }

    /// Reconciles tokens, settles spend and frees the slot — the order the shared path
    /// settles in. A refusal gives back what was taken with no tokens and no cost.
    fn settle(
        self,
        k: &mut KeyAdmission,
        actual_tokens: Option<u64>,
        cost_usd: f64,
        at: OffsetDateTime,
        now: i64,
    ) {
        if let (Some(charge), Some(actual)) = (&self.charge, actual_tokens) {
            k.reconcile_tokens(charge, actual, now);
        }
        match &self.budget {
            Some(r) => k.settle_budget(r, cost_usd, at, now),
            // Spend of a key without budgets still counts, should it get one later.
            None => k.add_spend(cost_usd, at, now),
        }
        if let Some(slot) = &self.slot {
            k.release_slot(slot);
        }
    }
}

/// A granted admission. Dropping it without [`Admission::settle`] releases its slot and
/// reservation without recording tokens beyond the estimate.
#[derive(Debug)]
pub struct Admission {
    state: Arc<KeyState>,
    clock: Clock,
    held: Held,
    /// Whether spend is kept in this node's engine (not with shared counters).
    keeps_spend: bool,
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
        let held = std::mem::take(&mut self.held);
        if held.is_empty() && !(self.keeps_spend && cost_usd > 0.0) {
            return;
        }
        let now = self.clock.now_ms();
        let at = OffsetDateTime::now_utc();
        held.settle(
            &mut lock(&self.state.limits),
            actual_tokens,
            cost_usd,
            at,
            now,
        );
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

fn refused(reason: RejectReason, info: RateLimitInfo) -> ProxyError {
    ProxyError::Rejected {
        reason,
        limits: Some(info),
        detail: None,
    }
}

/// The refusal of a request over the key's concurrency limit.
pub(crate) fn concurrency_refused(mut info: RateLimitInfo) -> ProxyError {
    info.retry_after_secs = Some(1);
    refused(RejectReason::ConcurrencyLimit, info)
}

/// The refusal of a request whose cost does not fit the key's budgets at `at`.
pub(crate) fn budget_refused(mut info: RateLimitInfo, at: OffsetDateTime) -> ProxyError {
    budget_spent(&mut info, at);
    refused(RejectReason::BudgetExhausted, info)
}

/// What the request asks of the key's budgets, if it has any.
pub(crate) fn budget_request(scope: &KeyScope, demand: &Demand) -> Option<BudgetRequest> {
    (scope.budget_daily_usd.is_some() || scope.budget_monthly_usd.is_some()).then_some(
        BudgetRequest {
            daily_usd: scope.budget_daily_usd,
            monthly_usd: scope.budget_monthly_usd,
            reserve_usd: demand.reserve_usd,
            lease: LEASE,
        },
    )
}

/// What the request asks of the key's rate windows, if it has any.
pub(crate) fn rate_request(scope: &KeyScope, demand: &Demand) -> Option<RateRequest> {
    (scope.rpm.is_some() || scope.tpm.is_some()).then_some(RateRequest {
        rpm: scope.rpm,
        tpm: scope.tpm,
        tokens: demand.tokens,
    })
}

/// Turns a rate decision into the client's `x-ratelimit-*` headers and, for a refusal, the
/// error: `Retry-After` when the request would fit, and `x-should-retry: false` for a
/// request larger than the whole tokens limit.
pub(crate) fn rate_outcome(
    decision: RateDecision,
    scope: &KeyScope,
    demand: &Demand,
    info: &mut RateLimitInfo,
) -> Result<RateCharge, ProxyError> {
    let fill =
        |info: &mut RateLimitInfo, requests: Option<WindowState>, tokens: Option<WindowState>| {
            if let Some(w) = requests {
                info.limit_requests = Some(u32::try_from(w.limit).unwrap_or(u32::MAX));
                info.remaining_requests = Some(u32::try_from(w.remaining()).unwrap_or(u32::MAX));
                info.reset_requests_secs = Some(w.reset_after.as_secs_f64());
            }
            if let Some(w) = tokens {
                info.limit_tokens = Some(w.limit);
                info.remaining_tokens = Some(w.remaining());
                info.reset_tokens_secs = Some(w.reset_after.as_secs_f64());
            }
        };
    match decision {
        RateDecision::Granted {
            charge,
            requests,
            tokens,
        } => {
            fill(info, requests, tokens);
            Ok(charge)
        }
        RateDecision::Denied {
            limit,
            retry_after,
            requests,
            tokens,
        } => {
            fill(info, requests, tokens);
            info.retry_after_secs = Some(retry_after.as_secs_f64().ceil().max(1.0) as u64);
            let reason = match limit {
                RateLimited::Requests => RejectReason::RateLimitRequests,
                RateLimited::Tokens => {
                    info.never_fits = scope.tpm.is_some_and(|t| demand.tokens > t);
                    RejectReason::RateLimitTokens
                }
            };
            Err(refused(reason, *info))
        }
    }
}

/// Checks a key's limits on this node for one request and, when it fits, charges it.
pub fn admit(
    state: &Arc<KeyState>,
    scope: &KeyScope,
    demand: Demand,
    clock: Clock,
) -> Result<Admission, ProxyError> {
    admit_at(state, scope, demand, clock, clock.now_ms())
}

/// [`admit`] at `now` on the clock's time line.
fn admit_at(
    state: &Arc<KeyState>,
    scope: &KeyScope,
    demand: Demand,
    clock: Clock,
    now: i64,
) -> Result<Admission, ProxyError> {
    let mut info = RateLimitInfo::default();
    let limited = scope.max_concurrency.is_some()
        || scope.budget_daily_usd.is_some()
        || scope.budget_monthly_usd.is_some()
        || scope.rpm.is_some()
        || scope.tpm.is_some();
    let held = if limited {
        check(&mut lock(&state.limits), scope, &demand, now, &mut info)?
    } else {
        Held::default()
    };
    Ok(Admission {
        inflight: state.inflight.fetch_add(1, Ordering::Relaxed) + 1,
        state: Arc::clone(state),
        clock,
        held,
        keeps_spend: true,
        info,
        settled: false,
    })
}

/// Concurrency, then budget, then the rate windows — the shared path's order — under the
/// key's one lock; a refusal gives back whatever the earlier steps took.
fn check(
    k: &mut KeyAdmission,
    scope: &KeyScope,
    demand: &Demand,
    now: i64,
    info: &mut RateLimitInfo,
) -> Result<Held, ProxyError> {
    let at = OffsetDateTime::now_utc();
    let mut held = Held::default();
    if let Some(max) = scope.max_concurrency {
        match k.acquire_slot(max, LEASE, now) {
            SlotDecision::Granted(lease) => held.slot = Some(lease),
            SlotDecision::Denied { .. } => return Err(concurrency_refused(*info)),
        }
    }
    if let Some(req) = budget_request(scope, demand) {
        match k.reserve_budget(req, at, now) {
            BudgetDecision::Granted(r) => held.budget = Some(r),
            BudgetDecision::Denied { .. } => {
                held.settle(k, None, 0.0, at, now);
                return Err(budget_refused(*info, at));
            }
        }
    }
    if let Some(req) = rate_request(scope, demand) {
        match rate_outcome(k.check_rate(req, now), scope, demand, info) {
            Ok(charge) => held.charge = Some(charge),
            Err(e) => {
                held.settle(k, None, 0.0, at, now);
                return Err(e);
            }
        }
    }
    Ok(held)
}

/// An admission that only counts the request in flight: the shared counters decide and
/// keep spend.
pub fn count(state: &Arc<KeyState>, clock: Clock) -> Admission {
    Admission {
        inflight: state.inflight.fetch_add(1, Ordering::Relaxed) + 1,
        state: Arc::clone(state),
        clock,
        held: Held::default(),
        keeps_spend: false,
        info: RateLimitInfo::default(),
        settled: false,
    }
}

#[cfg(test)]
mod tests {
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
    fn refusal_headers_follow_the_sliding_window() {
        // Two requests in the 1-second bucket starting at T: they count for a minute plus a
        // bucket, so 30 s later the next one fits in 31 s, and the window is empty then.
        const T: i64 = 1_000_000;
        let st = Arc::new(KeyState::default());
        let scope = KeyScope {
            rpm: Some(2),
            ..Default::default()
        };
        let clock = Clock::default();
        let a = admit_at(&st, &scope, demand(1), clock, T).unwrap();
        assert_eq!(a.info.remaining_requests, Some(1));
        admit_at(&st, &scope, demand(1), clock, T + 500).unwrap();
        let e = admit_at(&st, &scope, demand(1), clock, T + 30_000).unwrap_err();
        let ProxyError::Rejected {
            reason,
            limits: Some(info),
            ..
        } = e
        else {
            panic!("a rate refusal carries its limits");
        };
        assert_eq!(reason, RejectReason::RateLimitRequests);
        assert_eq!(info.limit_requests, Some(2));
        assert_eq!(info.remaining_requests, Some(0));
        assert_eq!(info.retry_after_secs, Some(31));
        assert_eq!(info.reset_requests_secs, Some(31.0));
        assert!(!info.never_fits);
        assert!(admit_at(&st, &scope, demand(1), clock, T + 61_000).is_ok());
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
        assert_eq!(a.inflight, 1);
        let e = admit(&st, &scope, demand(1), clock).unwrap_err();
        assert_eq!(e.reject_reason(), Some(RejectReason::ConcurrencyLimit));
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

    #[test]
    fn a_refusal_gives_back_what_earlier_checks_took() {
        let st = Arc::new(KeyState::default());
        let scope = KeyScope {
            max_concurrency: Some(1),
            budget_daily_usd: Some(1.0),
            tpm: Some(10),
            ..Default::default()
        };
        let clock = Clock::default();
        let big = Demand {
            tokens: 11,
            reserve_usd: 0.9,
        };
        let e = admit(&st, &scope, big, clock).unwrap_err();
        let ProxyError::Rejected {
            reason,
            limits: Some(info),
            ..
        } = e
        else {
            panic!("a rate refusal carries its limits");
        };
        assert_eq!(reason, RejectReason::RateLimitTokens);
        assert!(info.never_fits, "11 tokens never fit a limit of 10");
        // The slot and the 0.9 reservation were given back: a request that fits is admitted.
        let fits = Demand {
            tokens: 10,
            reserve_usd: 0.9,
        };
        assert!(admit(&st, &scope, fits, clock).is_ok());
        assert_eq!(st.inflight(), 0);
    }

    #[test]
    fn settlement_happens_once() {
        let st = Arc::new(KeyState::default());
        let scope = KeyScope {
            budget_daily_usd: Some(1.0),
            ..Default::default()
        };
        let clock = Clock::default();
        let d = Demand {
            tokens: 1,
            reserve_usd: 0.1,
        };
        let mut a = admit(&st, &scope, d, clock).unwrap();
        a.finish(None, 0.5);
        drop(a); // the drop after a settlement records nothing more
        assert_eq!(st.inflight(), 0);
        // 0.5 spent once: 0.5 + 0.1 fits; had it counted twice, 1.0 would be spent.
        assert!(admit(&st, &scope, d, clock).is_ok());
    }

    #[test]
    fn spend_seeded_after_a_restart_counts_against_budgets() {
        let st = Arc::new(KeyState::default());
        st.load_spend(OffsetDateTime::now_utc(), 0.95, 0.95);
        assert!(st.spend_loaded());
        let scope = KeyScope {
            budget_daily_usd: Some(1.0),
            ..Default::default()
        };
        let d = Demand {
            tokens: 1,
            reserve_usd: 0.1,
        };
        let e = admit(&st, &scope, d, Clock::default()).unwrap_err();
        assert_eq!(e.reject_reason(), Some(RejectReason::BudgetExhausted));
    }

    #[test]
    fn counting_only_holds_nothing() {
        let st = Arc::new(KeyState::default());
        let a = count(&st, Clock::default());
        assert_eq!((a.inflight, st.inflight()), (1, 1));
        a.settle(Some(10), 5.0);
        assert_eq!(st.inflight(), 0);
        let usage = lock(&st.limits).budget_usage(OffsetDateTime::now_utc(), 0);
        assert_eq!(usage.day_spent_usd, 0.0, "the shared counters keep spend");
    }
}
