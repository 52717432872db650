//! Reloading the IP intelligence without a restart: a background task checks the `[ipdb]`
//! files every `reload_secs` and reloads on SIGHUP; `POST /admin/ipintel/reload` reloads at
//! once. A reload reads and parses on the blocking pool and swaps the new data in
//! atomically; requests keep reading the data in force meanwhile and never wait. A reload
//! that fails keeps the data in force and says why in the log.

use std::sync::Arc;

use stormwall_ipintel::{IpIntelError, Reloaded, SharedIpIntel};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Why a reload asked for through the admin API did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// A file could not be read or parsed; the data in force was kept.
    #[error(transparent)]
    Invalid(#[from] IpIntelError),
    /// The blocking pool is gone (shutting down).
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

/// Reloads every file now (on the blocking pool).
#[allow(clippy::disallowed_methods)] // spawn_blocking awaited here; one reload at a time (SharedIpIntel's lock)
pub async fn reload_now(intel: &Arc<SharedIpIntel>) -> Result<Reloaded, ReloadError> {
    let intel = Arc::clone(intel);
    let out = tokio::task::spawn_blocking(move || intel.reload())
        .await
        .map_err(|_| ReloadError::ShuttingDown)?;
    log_outcome(out.as_ref().map(Some), "admin");
    Ok(out?)
}

#[allow(clippy::disallowed_methods)] // spawn_blocking awaited here; one reload at a time (SharedIpIntel's lock)
async fn reload_if_changed(intel: &Arc<SharedIpIntel>) {
    let i = Arc::clone(intel);
    if let Ok(out) = tokio::task::spawn_blocking(move || i.reload_if_changed()).await {
        log_outcome(out.as_ref().map(Option::as_ref), "file change");
    }
}

#[allow(clippy::disallowed_methods)] // spawn_blocking awaited here; one reload at a time (SharedIpIntel's lock)
async fn reload_on_signal(intel: &Arc<SharedIpIntel>) {
    let i = Arc::clone(intel);
    if let Ok(out) = tokio::task::spawn_blocking(move || i.reload()).await {
        log_outcome(out.as_ref().map(Some), "SIGHUP");
    }
}

fn log_outcome(out: Result<Option<&Reloaded>, &IpIntelError>, why: &'static str) {
    match out {
        Ok(Some(r)) => {
            let s = &r.status;
            tracing::info!(
                trigger = why,
                databases = s.databases.len(),
                asn_lists = s.asn_lists.len(),
                address_lists = s.address_lists.len(),
                "IP intelligence reloaded"
            );
            for m in &s.missing {
                tracing::info!(missing = %m, "IP intelligence");
            }
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(trigger = why, error = %e, "IP intelligence reload failed; keeping the data in force");
        }
    }
}

/// The reload task: polls the files every `[ipdb] reload_secs` (0: never) and reloads on
/// SIGHUP, until shutdown. Owned by `RunningGateway`, which joins it.
#[allow(clippy::disallowed_methods)] // background task owned by RunningGateway, not the request path
pub fn spawn_reloader(
    intel: Arc<SharedIpIntel>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    let every = intel.config().reload_secs;
    tokio::spawn(async move {
        let mut triggers = crate::reload::Triggers::new(every);
        while let Some(t) = triggers.next(&mut stop).await {
            match t {
                crate::reload::Trigger::Timer => reload_if_changed(&intel).await,
                crate::reload::Trigger::Hangup => reload_on_signal(&intel).await,
            }
        }
    })
}
