//! The control plane: the admin API ([`admin`]), the key lifecycle ([`keys`]), the
//! detection runtime ([`detection`]), incidents ([`incidents`]), cloud-log follow mode
//! ([`cloud_logs`]), alert delivery ([`alerts`], [`webhook`]), leaked-key reports
//! ([`leak_report`]), the audit log ([`audit`]), the web console ([`console`]) and the
//! events' retention ([`retention`]), with
//! [`ControlPlane`], the state they share. It changes what the data plane sees only through
//! the shared key cache and the store.

pub mod admin;
pub mod alerts;
pub mod audit;
pub mod cloud_logs;
pub mod console;
pub mod detection;
pub mod incidents;
pub mod investigation;
pub mod ipintel;
pub mod keys;
pub mod leak_report;
pub mod retention;
pub mod webhook;

use std::sync::Arc;

use stormwall_store::Store;

use crate::config::LimitsConfig;
use crate::data::keycache::KeyCache;
use crate::data::safety::SafetyStage;
use crate::metrics::Metrics;

/// What the control plane's handlers and tasks share; built once at start-up.
pub struct ControlPlane {
    /// The backing store (keys, events, alerts, audit).
    pub store: Arc<dyn Store>,
    /// The data plane's key cache, updated at once on every change made here.
    pub keys: Arc<KeyCache>,
    /// Shared counters, when replicas share limits: key changes are announced through them.
    pub counters: Option<Arc<dyn stormwall_store::Counters>>,
    /// Where the gateway's own alerts go.
    pub alerts: alerts::AlertSink,
    /// The detection engine's inbox (`None`: `[detect] enabled = false`).
    pub detection: Option<detection::Detection>,
    /// The alert and action webhook, when configured.
    pub webhook: Option<webhook::Webhook>,
    /// The content-safety stage, for validating keys' policy profiles.
    pub safety: Option<Arc<SafetyStage>>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Size caps and timeouts (leaked-key reports are read within them).
    pub limits: LimitsConfig,
    /// The leaked-key report endpoint, when enabled: its path and signature verifier.
    pub leak_reports: Option<(String, leak_report::ReportVerifier)>,
    /// The IP intelligence the data plane reads (reloaded through the admin API).
    pub ipintel: Arc<stormwall_ipintel::SharedIpIntel>,
    /// The write-ahead event journal, when on (`/readyz` reports its backlog and bound).
    pub journal: Option<stormwall_store::Journal>,
    /// The cloud-log follower's counters, when `[[logs]]` sources are followed (`/readyz`).
    pub cloud_logs: Option<Arc<cloud_logs::FollowStats>>,
}
