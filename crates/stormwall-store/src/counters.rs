//! Shared admission state: what several gateway replicas must agree on for every guarantee of
//! one replica to hold across all of them.
//!
//! [`Counters`] covers, per key:
//! - **rate windows**: requests and tokens per minute, checked and charged in one atomic step
//!   ([`Counters::check_rate`]), tokens reconciled with the real usage afterwards;
//! - **concurrency**: in-flight slots held under a lease, so a crashed replica's slots expire;
//! - **budgets**: worst-case cost reserved before the call and settled with the real cost
//!   after, against the UTC day and month;
//! - **distinct counts**: HyperLogLog sketches per key and hour (distinct networks, …) for
//!   detectors that need the global view;
//! - **key changes**: a broadcast of key ids whose record changed (revoked, suspended, …), so
//!   every replica's key cache drops a revoked key at once.
//!
//! Two implementations share one test suite: [`LocalCounters`](crate::LocalCounters) (this
//! process only: the fallback while Redis is unreachable, and tests), a thin async wrapper
//! over the in-process admission engine ([`crate::admission`], which the gateway also calls
//! directly on a single node), and [`RedisCounters`](crate::RedisCounters) (atomic Lua
//! scripts on a shared Redis, with the same semantics).
//!
//! Handles returned by a grant ([`RateCharge`], [`SlotLease`], [`BudgetReservation`]) remember
//! which implementation issued them, so [`FallbackCounters`](crate::FallbackCounters) can send
//! each settlement back where its grant came from.
//!
//! Rate windows and leases are timed by the implementation's clock (Redis's `TIME` for
//! Redis, so replicas with skewed clocks still share one window); budget periods are named
//! by the caller's `at` instant, the way events are timestamped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use stormwall_types::KeyId;
use time::OffsetDateTime;
use tokio::sync::broadcast;

use crate::config::CountersConfig;

/// Length of the requests- and tokens-per-minute windows.
pub const RATE_WINDOW: Duration = Duration::from_secs(60);
/// Granularity of the rate windows: usage leaves the window one bucket at a time.
pub const RATE_BUCKET: Duration = Duration::from_secs(1);
/// How long a distinct-count sketch of one key-hour is kept.
pub const DISTINCT_RETENTION: Duration = Duration::from_secs(48 * 3600);
/// Most hours one [`Counters::distinct_count`] may span.
pub const DISTINCT_MAX_HOURS: i64 = 7 * 24;
/// Longest name of a distinct-count set.
const MAX_SET_NAME: usize = 32;
/// Nano-dollars per dollar: budgets are kept in integer nano-USD so that reservations and
/// releases cancel exactly.
const NANOS_PER_USD: f64 = 1e9;
/// Largest amount kept exactly (Redis's Lua numbers are doubles): about 9 million USD.
const MAX_NANOS: i64 = 1 << 53;

/// A failure of the counters backend. Messages never contain URLs, secrets or key material.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CounterError {
    /// The backend cannot be reached or did not answer in time: fall back to local limits.
    #[error("counters backend unavailable: {0}")]
    Unavailable(String),
    /// The backend answered with an error or an unexpected reply.
    #[error("counters backend error: {0}")]
    Backend(String),
    /// An argument was out of range (a bad set name, too long a time span).
    #[error("invalid counters request: {0}")]
    Invalid(String),
    /// The `[counters]` section cannot be used.
    #[error("invalid [counters] config: {0}")]
    Config(String),
}

impl CounterError {
    /// Whether this is the backend being unreachable (as opposed to a bad request).
    pub fn is_unavailable(&self) -> bool {
        matches!(self, CounterError::Unavailable(_))
    }
}

/// Which implementation issued a handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    Local,
    Redis,
}

/// The name of a slot or reservation in the implementation that issued it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Handle {
    /// Issued in this process ([`crate::admission`]): a number, so granting allocates nothing.
    Local(u64),
    /// A member of a Redis set, unique across replicas.
    Redis(String),
}

impl Handle {
    /// Which implementation issued the handle.
    pub(crate) fn origin(&self) -> Origin {
        match self {
            Handle::Local(_) => Origin::Local,
            Handle::Redis(_) => Origin::Redis,
        }
    }

    /// The Redis member it names; empty (names nothing) for a handle issued locally.
    pub(crate) fn redis_member(&self) -> &str {
        match self {
            Handle::Local(_) => "",
            Handle::Redis(m) => m,
        }
    }
}

/// What one request asks of its key's rate windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateRequest {
    /// Requests allowed per window (`None`: not limited, and not counted).
    pub rpm: Option<u32>,
    /// Tokens allowed per window (`None`: not limited, and not counted).
    pub tpm: Option<u64>,
    /// Tokens to charge now: the estimate, reconciled by [`Counters::reconcile_tokens`].
    pub tokens: u64,
}

/// One rate window as a check saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowState {
    /// The limit.
    pub limit: u64,
    /// Units in the window: including this request's charge when granted, excluding it
    /// when refused.
    pub used: u64,
    /// Until the oldest counted units leave the window (zero when the window is empty).
    pub reset_after: Duration,
}

impl WindowState {
    /// Units still available.
    pub fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.used)
    }
}

/// Which rate limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateLimited {
    /// Requests per minute.
    Requests,
    /// Tokens per minute.
    Tokens,
}

/// The answer of [`Counters::check_rate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateDecision {
    /// Both windows had room; the request and its tokens were charged.
    Granted {
        /// What was charged, for [`Counters::reconcile_tokens`].
        charge: RateCharge,
        /// The requests window, if limited.
        requests: Option<WindowState>,
        /// The tokens window, if limited.
        tokens: Option<WindowState>,
    },
    /// A window was full; nothing was charged.
    Denied {
        /// The window that refused.
        limit: RateLimited,
        /// When the refused request would fit (assuming no other traffic).
        retry_after: Duration,
        /// The requests window, if limited.
        requests: Option<WindowState>,
        /// The tokens window, if limited.
        tokens: Option<WindowState>,
    },
}

/// What a granted rate check charged: the tokens and the bucket they went to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateCharge {
    pub(crate) origin: Origin,
    pub(crate) bucket_ms: i64,
    pub(crate) tokens: u64,
    pub(crate) tokens_tracked: bool,
}

impl RateCharge {
    /// Tokens charged to the tokens window (0 when it is not limited).
    pub fn tokens(&self) -> u64 {
        if self.tokens_tracked { self.tokens } else { 0 }
    }
}

/// The answer of [`Counters::acquire_slot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotDecision {
    /// A slot was taken; release it with [`Counters::release_slot`].
    Granted(SlotLease),
    /// Every slot was taken.
    Denied {
        /// Requests in flight on the key.
        inflight: u32,
    },
}

/// A concurrency slot held under a lease: it is freed by [`Counters::release_slot`], or
/// when the lease runs out (a replica that died cannot hold slots for ever). A request that
/// outlives its lease (a long stream) renews it with [`Counters::renew_slot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotLease {
    pub(crate) id: Handle,
    /// Requests in flight on the key when the slot was taken, this one included.
    pub inflight: u32,
}

/// Which budget period refused a reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetPeriod {
    /// The UTC day.
    Day,
    /// The UTC month.
    Month,
}

/// What one request asks of its key's budgets.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetRequest {
    /// Daily budget in USD (`None`: none).
    pub daily_usd: Option<f64>,
    /// Monthly budget in USD (`None`: none).
    pub monthly_usd: Option<f64>,
    /// Worst-case cost of the request, held until it is settled.
    pub reserve_usd: f64,
    /// How long the reservation holds if never settled (a replica died mid-request).
    pub lease: Duration,
}

/// Spend and reservations of a key in the current day and month.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BudgetUsage {
    /// Spent today (UTC), in USD.
    pub day_spent_usd: f64,
    /// Held today by unsettled reservations, in USD.
    pub day_reserved_usd: f64,
    /// Spent this month (UTC), in USD.
    pub month_spent_usd: f64,
    /// Held this month by unsettled reservations, in USD.
    pub month_reserved_usd: f64,
}

/// The answer of [`Counters::reserve_budget`].
#[derive(Debug, Clone, PartialEq)]
pub enum BudgetDecision {
    /// The cost fits; it is held until [`Counters::settle_budget`].
    Granted(BudgetReservation),
    /// The cost does not fit (or the budget is spent); nothing was held.
    Denied {
        /// The period that refused.
        period: BudgetPeriod,
        /// Spend and reservations at the time of the check.
        usage: BudgetUsage,
    },
}

/// A reserved cost, released (and replaced by the real cost) by [`Counters::settle_budget`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetReservation {
    pub(crate) id: Handle,
    pub(crate) nanos: i64,
    pub(crate) day: u32,
    pub(crate) month: u32,
}

impl BudgetReservation {
    /// The amount held, in USD.
    pub fn reserved_usd(&self) -> f64 {
        nanos_to_usd(self.nanos)
    }
}

/// A change announced by [`Counters::publish_key_change`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyChange {
    /// This key's record changed: re-read it from the store.
    Key(KeyId),
    /// Changes may have been missed (the subscription was re-established, or this receiver
    /// fell behind): re-read every key.
    Resync,
}

/// A subscription to key changes.
#[derive(Debug)]
pub struct KeyChanges {
    rx: broadcast::Receiver<KeyChange>,
}

impl KeyChanges {
    pub(crate) fn new(rx: broadcast::Receiver<KeyChange>) -> Self {
        Self { rx }
    }

    /// The next change; `None` once the counters are dropped. A receiver that fell behind
    /// gets [`KeyChange::Resync`] instead of the changes it missed.
    pub async fn recv(&mut self) -> Option<KeyChange> {
        match self.rx.recv().await {
            Ok(change) => Some(change),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(KeyChange::Resync),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

/// Whether the counters backend is usable, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountersHealth {
    /// `local`, `redis`, or `redis+local` for the fallback pair.
    pub backend: &'static str,
    /// Whether the backend answered its last call (always true for `local`).
    pub available: bool,
    /// Calls that failed because the backend was unavailable, since start.
    pub failures: u64,
}

/// Admission state shared by every replica. See the module documentation.
#[async_trait]
pub trait Counters: Send + Sync {
    /// Checks the key's request and token windows and, if both have room, charges one
    /// request and `req.tokens` tokens — atomically, so a limit of N admits exactly N across
    /// all replicas.
    async fn check_rate(&self, key: &KeyId, req: RateRequest)
    -> Result<RateDecision, CounterError>;

    /// Replaces a charge's token estimate with the real count: the excess is charged now,
    /// an overestimate is given back to the bucket it was charged to (if still in the window).
    async fn reconcile_tokens(
        &self,
        key: &KeyId,
        charge: &RateCharge,
        actual_tokens: u64,
    ) -> Result<(), CounterError>;

    /// Takes one of `max` concurrency slots of the key, held for `lease`.
    async fn acquire_slot(
        &self,
        key: &KeyId,
        max: u32,
        lease: Duration,
    ) -> Result<SlotDecision, CounterError>;

    /// Extends a slot's lease to `lease` from now; false if the slot had already expired.
    async fn renew_slot(
        &self,
        key: &KeyId,
        slot: &SlotLease,
        lease: Duration,
    ) -> Result<bool, CounterError>;

    /// Frees a slot (a no-op if its lease already ran out).
    async fn release_slot(&self, key: &KeyId, slot: SlotLease) -> Result<(), CounterError>;

    /// Requests in flight on the key, across every replica sharing the backend.
    async fn inflight(&self, key: &KeyId) -> Result<u32, CounterError>;

    /// Reserves `req.reserve_usd` against the key's day and month budgets as of `at`, if
    /// spend plus every reservation plus this one fits each budget that is set.
    async fn reserve_budget(
        &self,
        key: &KeyId,
        req: BudgetRequest,
        at: OffsetDateTime,
    ) -> Result<BudgetDecision, CounterError>;

    /// Releases a reservation and records the real cost in the day and month of `at`.
    async fn settle_budget(
        &self,
        key: &KeyId,
        reservation: BudgetReservation,
        cost_usd: f64,
        at: OffsetDateTime,
    ) -> Result<(), CounterError>;

    /// Records a cost without a reservation (a key without budgets, tracked for detectors).
    async fn add_spend(
        &self,
        key: &KeyId,
        cost_usd: f64,
        at: OffsetDateTime,
    ) -> Result<(), CounterError>;

    /// Spend and reservations of the day and month of `at`.
    async fn budget_usage(
        &self,
        key: &KeyId,
        at: OffsetDateTime,
    ) -> Result<BudgetUsage, CounterError>;

    /// Raises the recorded spend of the day and month of `at` to at least the given totals
    /// (from the event store), never lowers it. Used at start-up and when the backend comes
    /// back, so spend survives a restart of the counters backend.
    async fn reconcile_spend(
        &self,
        key: &KeyId,
        at: OffsetDateTime,
        day_usd: f64,
        month_usd: f64,
    ) -> Result<(), CounterError>;

    /// Adds items (e.g. client networks) to the key's distinct-count sketch `set` for the
    /// hour of `at`. `set` is 1-32 characters of `a-z 0-9 _`.
    async fn distinct_add(
        &self,
        set: &str,
        key: &KeyId,
        at: OffsetDateTime,
        items: &[&str],
    ) -> Result<(), CounterError>;

    /// Approximate number of distinct items added to `set` for the key in the hours from
    /// `from` to `to`, both included (at most [`DISTINCT_MAX_HOURS`]; sketches are kept for
    /// [`DISTINCT_RETENTION`]). Small counts are exact.
    async fn distinct_count(
        &self,
        set: &str,
        key: &KeyId,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<u64, CounterError>;

    /// Adds amounts to per-key counters in caller-chosen time buckets (a key's spend this
    /// hour, its requests this minute) and returns each counter's new total over every
    /// replica, in order. A counter expires `ttl` after its last change. `set` is 1-32
    /// characters of `a-z 0-9 _`.
    async fn tally(&self, items: &[Tally<'_>], ttl: Duration) -> Result<Vec<i64>, CounterError>;

    /// Tells every subscriber (every replica) that the key's record changed.
    async fn publish_key_change(&self, key: &KeyId) -> Result<(), CounterError>;

    /// Subscribes to key changes. Subscribe before loading the keys: a change made after
    /// this returns is delivered (or covered by a [`KeyChange::Resync`]).
    async fn subscribe_key_changes(&self) -> Result<KeyChanges, CounterError>;

    /// Whether the backend is usable right now. Never blocks.
    fn health(&self) -> CountersHealth;
}

/// One amount for [`Counters::tally`].
#[derive(Debug, Clone, Copy)]
pub struct Tally<'a> {
    /// Counter family, e.g. `usd_hour`.
    pub set: &'a str,
    /// The key counted.
    pub key: &'a KeyId,
    /// Time bucket (e.g. the hour or minute index since the epoch).
    pub bucket: i64,
    /// Amount to add (may be 0 to read).
    pub amount: i64,
}

/// Opens the counters `config` names, reading URL variables from the process environment.
/// `redis` gives [`crate::FallbackCounters`] over [`crate::RedisCounters`]: decisions are
/// made in Redis, and locally while it is unreachable (at start-up too: a Redis server that
/// cannot be reached yet is not an error).
pub async fn open_counters(config: &CountersConfig) -> Result<Arc<dyn Counters>, CounterError> {
    open_counters_with_env(config, &|name| std::env::var(name).ok()).await
}

/// [`open_counters`] with the environment passed in.
pub async fn open_counters_with_env(
    config: &CountersConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Arc<dyn Counters>, CounterError> {
    match config {
        CountersConfig::Local => Ok(Arc::new(crate::LocalCounters::new())),
        CountersConfig::Redis(redis) => {
            let counters = crate::RedisCounters::new(redis, env)?;
            if let Err(e) = counters.ping().await {
                tracing::warn!(error = %e, "Redis is not reachable yet; counters will retry");
            }
            Ok(Arc::new(crate::FallbackCounters::new(Arc::new(counters))))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Helpers shared by the implementations
// ---------------------------------------------------------------------------------------

/// USD to nano-USD, rounded to nearest; negative and non-finite amounts count as zero.
pub(crate) fn usd_to_nanos(usd: f64) -> i64 {
    if !usd.is_finite() || usd <= 0.0 {
        return 0;
    }
    // In range after the clamp, so the cast cannot saturate.
    (usd * NANOS_PER_USD).round().min(MAX_NANOS as f64) as i64
}

/// USD to nano-USD rounded up, for reservations (never hold less than asked).
pub(crate) fn usd_to_nanos_ceil(usd: f64) -> i64 {
    if !usd.is_finite() || usd <= 0.0 {
        return 0;
    }
    (usd * NANOS_PER_USD).ceil().min(MAX_NANOS as f64) as i64
}

pub(crate) fn nanos_to_usd(nanos: i64) -> f64 {
    nanos as f64 / NANOS_PER_USD
}

/// A budget limit in nano-USD; a non-finite or negative budget admits nothing.
pub(crate) fn budget_nanos(usd: Option<f64>) -> Option<i64> {
    usd.map(usd_to_nanos)
}

/// The UTC day (`YYYYMMDD`) and month (`YYYYMM`) of an instant.
pub(crate) fn periods(at: OffsetDateTime) -> (u32, u32) {
    let utc = at.to_offset(time::UtcOffset::UTC);
    // Years outside 0..=9999 are clamped: period names only need to be distinct and stable.
    let year = u32::try_from(utc.year().clamp(0, 9999)).unwrap_or(0);
    let month = u32::from(u8::from(utc.month()));
    let day = u32::from(utc.day());
    (year * 10_000 + month * 100 + day, year * 100 + month)
}

/// The hour index (hours since the Unix epoch) of an instant.
pub(crate) fn hour_of(at: OffsetDateTime) -> i64 {
    at.unix_timestamp().div_euclid(3600)
}

/// The hours `from..=to` spans, checked against [`DISTINCT_MAX_HOURS`].
pub(crate) fn hour_span(
    from: OffsetDateTime,
    to: OffsetDateTime,
) -> Result<std::ops::RangeInclusive<i64>, CounterError> {
    let (a, b) = (hour_of(from), hour_of(to));
    if b.saturating_sub(a) >= DISTINCT_MAX_HOURS {
        return Err(CounterError::Invalid(format!(
            "a distinct count spans at most {DISTINCT_MAX_HOURS} hours"
        )));
    }
    Ok(a..=b)
}

pub(crate) fn validate_set(set: &str) -> Result<(), CounterError> {
    let ok = !set.is_empty()
        && set.len() <= MAX_SET_NAME
        && set
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(CounterError::Invalid(format!(
            "set names are 1-{MAX_SET_NAME} characters of a-z 0-9 _"
        )))
    }
}

/// Milliseconds of a duration, saturating, at least `min`.
pub(crate) fn millis(d: Duration, min: i64) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(min)
}

/// A duration from milliseconds that may be negative (clock edge cases): zero then.
pub(crate) fn from_millis(ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// A handle id unique across every replica: 96 random bits drawn once per process, then a
/// counter. Handles name slots and reservations in structures all replicas share.
pub(crate) fn new_handle_id() -> String {
    static PROCESS: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let process = PROCESS.get_or_init(|| {
        let mut bytes = [0u8; 12];
        if getrandom::fill(&mut bytes).is_err() {
            // No OS randomness: the process id and start time still separate replicas.
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            let seed = (u128::from(std::process::id()) << 96) ^ nanos;
            bytes.copy_from_slice(&seed.to_le_bytes()[..12]);
        }
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    });
    format!("{process}{:x}", NEXT.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_conversions() {
        assert_eq!(usd_to_nanos(1.0), 1_000_000_000);
        assert_eq!(usd_to_nanos(-1.0), 0);
        assert_eq!(usd_to_nanos(f64::NAN), 0);
        assert_eq!(usd_to_nanos(f64::INFINITY), 0);
        assert_eq!(usd_to_nanos(1e30), MAX_NANOS);
        assert_eq!(usd_to_nanos_ceil(1e-10), 1);
        assert_eq!(usd_to_nanos(1e-10), 0);
        assert!((nanos_to_usd(usd_to_nanos(0.125)) - 0.125).abs() < 1e-12);
    }

    #[test]
    fn period_names() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap(); // 2023-11-14T22:13:20Z
        assert_eq!(periods(t), (20231114, 202311));
        let east = t.to_offset(time::UtcOffset::from_hms(5, 0, 0).unwrap());
        assert_eq!(periods(east), (20231114, 202311), "periods are UTC");
    }

    #[test]
    fn hour_spans_are_bounded() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        assert_eq!(hour_span(t, t).unwrap().count(), 1);
        let long = t + time::Duration::hours(DISTINCT_MAX_HOURS);
        assert!(hour_span(t, long).is_err());
        assert_eq!(hour_span(long, t).unwrap().count(), 0);
    }

    #[test]
    fn set_names() {
        assert!(validate_set("networks").is_ok());
        assert!(validate_set("").is_err());
        assert!(validate_set("a:b").is_err());
        assert!(validate_set(&"a".repeat(33)).is_err());
    }
}
