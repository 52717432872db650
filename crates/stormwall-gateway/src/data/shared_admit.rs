//! Admission across replicas: the decisions of [`crate::data::admit`] — concurrency, budget,
//! requests and tokens per minute, under the admission engine's rules — made in shared
//! counters (Redis, falling back to the same engine in process while Redis is unreachable),
//! so a limit of 100 a minute admits 100 across every replica. Settling happens after the response, from code that cannot await (a relay's
//! end or drop), so settlements go through a bounded queue worked by one background task.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use stormwall_store::{
    BudgetDecision, BudgetReservation, Counters, RateCharge, SlotDecision, SlotLease,
};
use stormwall_types::{KeyId, KeyScope};
use time::OffsetDateTime;
use tokio::sync::mpsc;

use crate::data::admit::{self, Demand, LEASE};
use crate::error::{ProxyError, RateLimitInfo};

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

/// Checks a key's limits in the shared counters and charges them: the steps of
/// [`crate::data::admit`], each one call to the counters, answered the same way.
pub async fn admit(
    counters: &dyn Counters,
    settler: &Settler,
    key: &KeyId,
    scope: &KeyScope,
    demand: Demand,
) -> Result<SharedAdmission, ProxyError> {
    let mut info = RateLimitInfo::default();
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
            SlotDecision::Denied { .. } => return Err(admit::concurrency_refused(info)),
        }
    }

    if let Some(req) = admit::budget_request(scope, &demand) {
        let now = OffsetDateTime::now_utc();
        match counters.reserve_budget(key, req, now).await {
            Ok(BudgetDecision::Granted(r)) => pending.budget = Some(r),
            Ok(BudgetDecision::Denied { .. }) => {
                give_back(pending);
                return Err(admit::budget_refused(info, now));
            }
            Err(e) => {
                give_back(pending);
                return Err(unavailable(&e));
            }
        }
    }

    if let Some(req) = admit::rate_request(scope, &demand) {
        let decision = match counters.check_rate(key, req).await {
            Ok(d) => d,
            Err(e) => {
                give_back(pending);
                return Err(unavailable(&e));
            }
        };
        match admit::rate_outcome(decision, scope, &demand, &mut info) {
            Ok(charge) => pending.charge = Some(charge),
            Err(e) => {
                give_back(pending);
                return Err(e);
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
