//! Retention: usage events older than `[events] retention_days` and control events (cloud
//! management calls) older than `[events] control_retention_days` are deleted, so the two
//! largest tables stop growing. Once an hour, in bounded batches (each holds the store's
//! writer briefly), by one replica at a time: the sweep runs under the store lease
//! `retention`, so replicas sharing a PostgreSQL store do not all delete the same rows.
//! Each sweep that deleted something is one audit entry (`events.expire`).

use std::sync::Arc;
use std::time::Duration;

use stormwall_store::{EventsConfig, StoreError};
use time::OffsetDateTime;
use tokio::sync::watch;

use super::ControlPlane;
use crate::metrics::TableLabels;

/// How often a sweep runs.
pub const EVERY: Duration = Duration::from_secs(3600);
/// Rows deleted per statement.
pub const BATCH: usize = 5_000;
/// The store lease the sweeping replica holds.
pub const LEASE: &str = "retention";
/// Shortest usage-event retention: budgets are restored from this month's events at start.
pub const MIN_EVENT_DAYS: u32 = 32;

/// Days each table keeps (0: forever).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retention {
    /// Usage events (`events`).
    pub events_days: u32,
    /// Control events (`control_events`).
    pub control_days: u32,
}

/// Longest retention accepted, in days (a century).
const MAX_DAYS: u32 = 36_500;

impl Retention {
    /// The retention `[events]` asks for; an error names a value that cannot be used.
    pub fn from_config(events: &EventsConfig) -> Result<Self, String> {
        let r = Self {
            events_days: events.retention_days,
            control_days: events.control_retention_days,
        };
        if r.events_days != 0 && r.events_days < MIN_EVENT_DAYS {
            return Err(format!(
                "retention_days must be 0 (keep forever) or at least {MIN_EVENT_DAYS}: monthly budgets are restored from this month's events"
            ));
        }
        // A cutoff that far back would overflow the calendar; 0 already means forever.
        if r.events_days > MAX_DAYS || r.control_days > MAX_DAYS {
            return Err(format!(
                "retention_days and control_retention_days must be at most {MAX_DAYS} (0 keeps forever)"
            ));
        }
        Ok(r)
    }

    /// Whether anything is ever deleted.
    pub fn is_on(self) -> bool {
        self.events_days > 0 || self.control_days > 0
    }
}

/// What one sweep deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Swept {
    /// Usage events.
    pub events: u64,
    /// Control events.
    pub control_events: u64,
}

/// Deletes `table`'s rows a batch at a time until a batch comes back short, counting each in
/// the metric; how many went.
async fn drain<F, Fut>(
    state: &ControlPlane,
    table: &'static str,
    mut delete: F,
) -> Result<u64, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, StoreError>>,
{
    let mut total = 0;
    loop {
        let n = delete().await?;
        total += n;
        state
            .metrics
            .retention_deleted
            .get_or_create(&TableLabels { table })
            .inc_by(n);
        if n < BATCH as u64 {
            return Ok(total);
        }
        // Let the request path's writes in between batches.
        tokio::task::yield_now().await;
    }
}

/// Deletes what is older than its retention as of `now`, batch by batch, and records the
/// sweep (metrics, one audit entry when something went).
pub async fn sweep(
    state: &ControlPlane,
    r: Retention,
    now: OffsetDateTime,
) -> Result<Swept, StoreError> {
    let mut swept = Swept::default();
    // `from_config` bounds the days; a clock near the calendar's start deletes nothing.
    let cutoff = |days: u32| {
        now.checked_sub(time::Duration::days(i64::from(days)))
            .unwrap_or(OffsetDateTime::UNIX_EPOCH)
    };
    if r.events_days > 0 {
        let before = cutoff(r.events_days);
        swept.events = drain(state, "events", move || {
            state.store.delete_events_before(before, BATCH)
        })
        .await?;
    }
    if r.control_days > 0 {
        let before = cutoff(r.control_days);
        swept.control_events = drain(state, "control_events", move || {
            state.store.delete_control_events_before(before, BATCH)
        })
        .await?;
    }
    if swept != Swept::default() {
        tracing::info!(
            events = swept.events,
            control_events = swept.control_events,
            "retention: deleted expired rows"
        );
        super::audit::record(
            state,
            "retention",
            "events.expire",
            None,
            None,
            serde_json::json!({
                "events": swept.events,
                "events_retention_days": r.events_days,
                "control_events": swept.control_events,
                "control_events_retention_days": r.control_days,
            }),
        )
        .await;
    }
    Ok(swept)
}

/// Sweeps a minute after start and then every [`EVERY`], on the replica holding the
/// [`LEASE`]; stops at shutdown.
#[allow(clippy::disallowed_methods)] // background task owned by RunningGateway, not the request path
pub fn spawn(
    state: Arc<ControlPlane>,
    r: Retention,
    mut shutdown: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let replica = super::cloud_logs::replica_name();
        // Held for two rounds: a holder that dies is replaced within two hours.
        let ttl = EVERY * 2;
        let mut next = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = shutdown.changed() => {
                    // Another replica may sweep at once.
                    let _ = state.store.release_lease(LEASE, &replica).await;
                    return;
                }
            }
            next += EVERY;
            match state.store.acquire_lease(LEASE, &replica, ttl).await {
                Ok(lease) if lease.held_by(&replica) => {}
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "retention: cannot take the lease; trying next round");
                    continue;
                }
            }
            if let Err(e) = sweep(&state, r, OffsetDateTime::now_utc()).await {
                tracing::warn!(error = %e, "retention: cannot delete expired rows; trying next round");
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_event_retention_is_refused_and_zero_keeps_forever() {
        let mut c = EventsConfig::default();
        assert_eq!(Retention::from_config(&c), Ok(Retention::default()));
        assert!(!Retention::from_config(&c).unwrap().is_on());
        c.retention_days = 7;
        assert!(
            Retention::from_config(&c)
                .unwrap_err()
                .contains("at least 32")
        );
        c.retention_days = 90;
        c.control_retention_days = 7;
        let r = Retention::from_config(&c).unwrap();
        assert_eq!((r.events_days, r.control_days), (90, 7));
        assert!(r.is_on());
    }

    #[test]
    fn retention_past_a_century_is_refused_not_a_panic_later() {
        let mut c = EventsConfig {
            control_retention_days: u32::MAX,
            ..EventsConfig::default()
        };
        assert!(
            Retention::from_config(&c)
                .unwrap_err()
                .contains("at most 36500")
        );
        c.control_retention_days = 0;
        c.retention_days = 5_000_000;
        assert!(Retention::from_config(&c).is_err());
    }
}
