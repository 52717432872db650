//! [`FallbackCounters`]: shared counters that keep working when the shared backend does not.
//!
//! Every decision goes to the primary (Redis); when it is unavailable — or answers with an
//! error — the same decision is made by a [`LocalCounters`] of this process, so the gateway
//! keeps serving with per-replica limits instead of failing. Settlements follow their
//! grant: a handle issued by the local counters is settled locally, one issued by Redis in
//! Redis. While Redis is down the limits are per replica (N replicas admit up to N times a
//! limit); when it answers again decisions go back to it at once, and the caller restores
//! spend with [`Counters::reconcile_spend`] (it reaches both sides).

use crate::counters::Tally;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use stormwall_types::KeyId;
use time::OffsetDateTime;

use crate::LocalCounters;
use crate::counters::{
    BudgetDecision, BudgetRequest, BudgetReservation, BudgetUsage, CounterError, Counters,
    CountersHealth, KeyChanges, Origin, RateCharge, RateDecision, RateRequest, SlotDecision,
    SlotLease,
};

/// A primary [`Counters`] backed by [`LocalCounters`] while it fails.
pub struct FallbackCounters {
    primary: Arc<dyn Counters>,
    local: Arc<LocalCounters>,
}

impl std::fmt::Debug for FallbackCounters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackCounters")
            .field("primary", &self.primary.health())
            .finish_non_exhaustive()
    }
}

impl FallbackCounters {
    /// Wraps `primary`, falling back to fresh local counters.
    pub fn new(primary: Arc<dyn Counters>) -> Self {
        Self::with_local(primary, Arc::new(LocalCounters::new()))
    }

    /// Wraps `primary`, falling back to `local`.
    pub fn with_local(primary: Arc<dyn Counters>, local: Arc<LocalCounters>) -> Self {
        Self { primary, local }
    }

    /// The local side (inspected by tests and metrics).
    pub fn local(&self) -> &Arc<LocalCounters> {
        &self.local
    }
}

/// Whether a primary failure should be answered locally: anything but a bad request.
fn falls_back(e: &CounterError) -> bool {
    !matches!(e, CounterError::Invalid(_))
}

/// Tries the primary, then the local counters.
macro_rules! either {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match $self.primary.$method($($arg),*).await {
            Err(e) if falls_back(&e) => {
                tracing::debug!(error = %e, "counters: answered locally");
                $self.local.$method($($arg),*).await
            }
            other => other,
        }
    };
}

#[async_trait]
impl Counters for FallbackCounters {
    async fn check_rate(
        &self,
        key: &KeyId,
        req: RateRequest,
    ) -> Result<RateDecision, CounterError> {
        either!(self.check_rate(key, req))
    }

    async fn reconcile_tokens(
        &self,
        key: &KeyId,
        charge: &RateCharge,
        actual_tokens: u64,
    ) -> Result<(), CounterError> {
        match charge.origin {
            Origin::Local => {
                self.local
                    .reconcile_tokens(key, charge, actual_tokens)
                    .await
            }
            Origin::Redis => {
                self.primary
                    .reconcile_tokens(key, charge, actual_tokens)
                    .await
            }
        }
    }

    async fn acquire_slot(
        &self,
        key: &KeyId,
        max: u32,
        lease: Duration,
    ) -> Result<SlotDecision, CounterError> {
        either!(self.acquire_slot(key, max, lease))
    }

    async fn renew_slot(
        &self,
        key: &KeyId,
        slot: &SlotLease,
        lease: Duration,
    ) -> Result<bool, CounterError> {
        match slot.id.origin() {
            Origin::Local => self.local.renew_slot(key, slot, lease).await,
            Origin::Redis => self.primary.renew_slot(key, slot, lease).await,
        }
    }

    async fn release_slot(&self, key: &KeyId, slot: SlotLease) -> Result<(), CounterError> {
        match slot.id.origin() {
            Origin::Local => self.local.release_slot(key, slot).await,
            // If this fails the slot's lease frees it.
            Origin::Redis => self.primary.release_slot(key, slot).await,
        }
    }

    async fn inflight(&self, key: &KeyId) -> Result<u32, CounterError> {
        either!(self.inflight(key))
    }

    async fn reserve_budget(
        &self,
        key: &KeyId,
        req: BudgetRequest,
        at: OffsetDateTime,
    ) -> Result<BudgetDecision, CounterError> {
        either!(self.reserve_budget(key, req, at))
    }

    async fn settle_budget(
        &self,
        key: &KeyId,
        reservation: BudgetReservation,
        cost_usd: f64,
        at: OffsetDateTime,
    ) -> Result<(), CounterError> {
        match reservation.id.origin() {
            Origin::Local => {
                self.local
                    .settle_budget(key, reservation, cost_usd, at)
                    .await
            }
            Origin::Redis => {
                let result = self
                    .primary
                    .settle_budget(key, reservation, cost_usd, at)
                    .await;
                if result.is_err() {
                    // The reservation expires with its lease; the cost must still count
                    // for the decisions this replica makes locally meanwhile.
                    self.local.add_spend(key, cost_usd, at).await?;
                }
                result
            }
        }
    }

    async fn add_spend(
        &self,
        key: &KeyId,
        cost_usd: f64,
        at: OffsetDateTime,
    ) -> Result<(), CounterError> {
        either!(self.add_spend(key, cost_usd, at))
    }

    async fn budget_usage(
        &self,
        key: &KeyId,
        at: OffsetDateTime,
    ) -> Result<BudgetUsage, CounterError> {
        either!(self.budget_usage(key, at))
    }

    async fn reconcile_spend(
        &self,
        key: &KeyId,
        at: OffsetDateTime,
        day_usd: f64,
        month_usd: f64,
    ) -> Result<(), CounterError> {
        self.local
            .reconcile_spend(key, at, day_usd, month_usd)
            .await?;
        self.primary
            .reconcile_spend(key, at, day_usd, month_usd)
            .await
    }

    async fn distinct_add(
        &self,
        set: &str,
        key: &KeyId,
        at: OffsetDateTime,
        items: &[&str],
    ) -> Result<(), CounterError> {
        either!(self.distinct_add(set, key, at, items))
    }

    async fn distinct_count(
        &self,
        set: &str,
        key: &KeyId,
        from: OffsetDateTime,
        to: OffsetDateTime,
    ) -> Result<u64, CounterError> {
        either!(self.distinct_count(set, key, from, to))
    }

    async fn tally(&self, items: &[Tally<'_>], ttl: Duration) -> Result<Vec<i64>, CounterError> {
        either!(self.tally(items, ttl))
    }

    async fn publish_key_change(&self, key: &KeyId) -> Result<(), CounterError> {
        // No local fallback: other replicas cannot hear it anyway, and they pick the change
        // up at their next key refresh (or from the Resync sent when Redis returns).
        self.primary.publish_key_change(key).await
    }

    async fn subscribe_key_changes(&self) -> Result<KeyChanges, CounterError> {
        either!(self.subscribe_key_changes())
    }

    fn health(&self) -> CountersHealth {
        let primary = self.primary.health();
        CountersHealth {
            backend: "redis+local",
            ..primary
        }
    }
}
