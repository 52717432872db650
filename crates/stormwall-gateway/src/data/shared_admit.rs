//! Admission across replicas: the same decisions as [`crate::data::admit`] — concurrency, budget,
//! requests and tokens per minute — made in shared counters (Redis, falling back to local
//! counters while Redis is unreachable), so a limit of 100 a minute admits 100 across every
//! replica. Settling happens after the response, from code that cannot await (a relay's
//! end or drop), so settlements go through a bounded queue worked by one background task.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use stormwall_store::{
    BudgetDecision, BudgetRequest, BudgetReservation, Counters, RateCharge, RateDecision,
    RateLimited, RateRequest, SlotDecision, SlotLease,
};
use stormwall_types::{KeyId, KeyScope, RejectReason};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::data::admit::Demand;
use crate::error::{ProxyError, RateLimitInfo};

/// How long a concurrency slot or budget reservation holds if its replica dies mid-request.
pub const LEASE: Duration = Duration::from_secs(15 * 60);
/// Settlements waiting for the background task; past this they are counted and dropped
/// (leases then free slots and reservations on their own).
pub const SETTLE_QUEUE: usize = 65_536;

/// Work left when a request ends.
#[derive(Debug)]
struct Settlement {
    key: KeyId,
    slot: Option<SlotLease>,
    budget: Option<BudgetReservation>,
    charge: Option<RateCharge>,
    actual_tokens: Option<u64>,
    cost_usd: f64,
}

/// The sending side of the settlement queue.
#[derive(Debug, Clone)]
pub struct Settler {
    tx: mpsc::Sender<Settlement>,
    /// Settlements dropped because the queue was full.
    pub dropped: Arc<AtomicU64>,
}

impl Settler {
    /// Starts the background task that applies settlements to `counters`.
    #[allow(clippy::disallowed_methods)] // one long-lived task owned by the gateway, not per request
    pub fn spawn(counters: Arc<dyn Counters>) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<Settlement>(SETTLE_QUEUE);
        let task = tokio::spawn(async move {
            while let Some(s) = rx.recv().await {
                apply(counters.as_ref(), s).await;
            }
        });
        (
            Self {
                tx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            task,
        )
    }

    fn send(&self, s: Settlement) {
        if self.tx.try_send(s).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn apply(counters: &dyn Counters, s: Settlement) {
    let now = OffsetDateTime::now_utc();
    if let (Some(charge), Some(actual)) = (&s.charge, s.actual_tokens)
        && let Err(e) = counters.reconcile_tokens(&s.key, charge, actual).await
    {
        tracing::debug!(key_id = %s.key, error = %e, "token reconciliation failed");
    }
    let spend = match s.budget {
        Some(r) => counters.settle_budget(&s.key, r, s.cost_usd, now).await,
        None if s.cost_usd > 0.0 => counters.add_spend(&s.key, s.cost_usd, now).await,
        None => Ok(()),
    };
    if let Err(e) = spend {
        tracing::debug!(key_id = %s.key, error = %e, "spend settlement failed");
    }
    if let Some(slot) = s.slot
        && let Err(e) = counters.release_slot(&s.key, slot).await
    {
        tracing::debug!(key_id = %s.key, error = %e, "slot release failed (its lease will expire)");
    }
}

/// A granted shared admission; settles exactly once (on [`SharedAdmission::settle`] or drop).
#[derive(Debug)]
pub struct SharedAdmission {
    settler: Settler,
    pending: Option<Settlement>,
    /// Headers to return to the client.
    pub info: RateLimitInfo,
    /// In-flight count across replicas including this request, when concurrency is limited.
    pub inflight: Option<u32>,
}

impl SharedAdmission {
    /// Records real tokens and cost, and frees the slot and reservation.
    pub fn settle(mut self, actual_tokens: Option<u64>, cost_usd: f64) {
        if let Some(mut s) = self.pending.take() {
            s.actual_tokens = actual_tokens;
            s.cost_usd = cost_usd;
            self.settler.send(s);
        }
    }
}

impl Drop for SharedAdmission {
    fn drop(&mut self) {
        if let Some(s) = self.pending.take() {
            self.settler.send(s);
        }
    }
}

fn unavailable(e: &stormwall_store::CounterError) -> ProxyError {
    // FallbackCounters answers locally when Redis is down, so this is a local failure too;
    // refuse rather than admit without limits.
    tracing::error!(error = %e, "shared counters failed");
    ProxyError::UpstreamUnavailable
}

/// Checks a key's limits in the shared counters and charges them.
pub async fn admit(
    counters: &dyn Counters,
    settler: &Settler,
    key: &KeyId,
    scope: &KeyScope,
    demand: Demand,
) -> Result<SharedAdmission, ProxyError> {
    let mut info = RateLimitInfo::default();
    let reject = |reason, info| ProxyError::Rejected {
        reason,
        limits: Some(info),
        detail: None,
    };
    let mut pending = Settlement {
        key: key.clone(),
        slot: None,
        budget: None,
        charge: None,
        actual_tokens: None,
        cost_usd: 0.0,
    };
    let mut inflight = None;
    // Whatever is already held is given back if a later check refuses.
    let give_back = |pending: Settlement| settler.send(pending);

    if let Some(max) = scope.max_concurrency {
        match counters
            .acquire_slot(key, max, LEASE)
            .await
            .map_err(|e| unavailable(&e))?
        {
            SlotDecision::Granted(lease) => {
                inflight = Some(lease.inflight);
                pending.slot = Some(lease);
            }
            SlotDecision::Denied { .. } => {
                info.retry_after_secs = Some(1);
                return Err(reject(RejectReason::ConcurrencyLimit, info));
            }
        }
    }

    if scope.budget_daily_usd.is_some() || scope.budget_monthly_usd.is_some() {
        let req = BudgetRequest {
            daily_usd: scope.budget_daily_usd,
            monthly_usd: scope.budget_monthly_usd,
            reserve_usd: demand.reserve_usd,
            lease: LEASE,
        };
        let now = OffsetDateTime::now_utc();
        match counters.reserve_budget(key, req, now).await {
            Ok(BudgetDecision::Granted(r)) => pending.budget = Some(r),
            Ok(BudgetDecision::Denied { .. }) => {
                give_back(pending);
                crate::data::admit::budget_spent(&mut info, now);
                return Err(reject(RejectReason::BudgetExhausted, info));
            }
            Err(e) => {
                give_back(pending);
                return Err(unavailable(&e));
            }
        }
    }

    if scope.rpm.is_some() || scope.tpm.is_some() {
        let req = RateRequest {
            rpm: scope.rpm,
            tpm: scope.tpm,
            tokens: demand.tokens,
        };
        let decision = match counters.check_rate(key, req).await {
            Ok(d) => d,
            Err(e) => {
                give_back(pending);
                return Err(unavailable(&e));
            }
        };
        let fill = |info: &mut RateLimitInfo,
                    requests: Option<stormwall_store::WindowState>,
                    tokens: Option<stormwall_store::WindowState>| {
            if let Some(w) = requests {
                info.limit_requests = Some(w.limit as u32);
                info.remaining_requests = Some(w.remaining() as u32);
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
                fill(&mut info, requests, tokens);
                pending.charge = Some(charge);
            }
            RateDecision::Denied {
                limit,
                retry_after,
                requests,
                tokens,
            } => {
                fill(&mut info, requests, tokens);
                give_back(pending);
                info.retry_after_secs = Some(retry_after.as_secs_f64().ceil().max(1.0) as u64);
                let reason = match limit {
                    RateLimited::Requests => RejectReason::RateLimitRequests,
                    RateLimited::Tokens => {
                        info.never_fits = scope.tpm.is_some_and(|t| demand.tokens > t);
                        RejectReason::RateLimitTokens
                    }
                };
                return Err(reject(reason, info));
            }
        }
    }

    Ok(SharedAdmission {
        settler: settler.clone(),
        pending: Some(pending),
        info,
        inflight,
    })
}
