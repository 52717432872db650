//! What every request handler shares: validated config, the key cache, the router and
//! upstream client, enrichment, pricing, the event sink and metrics.

use std::sync::Arc;

use ipnet::IpNet;
use stormwall_store::{EventSink, Store};

use crate::admit::Clock;
use crate::config::LimitsConfig;
use crate::digest::PromptDigester;
use crate::ipdb::IpDb;
use crate::keycache::KeyCache;
use crate::metrics::Metrics;
use crate::pricing::Pricing;
use crate::upstream::{HttpClient, Router};

/// Shared gateway state.
pub struct AppState {
    /// Size caps and timeouts.
    pub limits: LimitsConfig,
    /// Seconds the key cache may go without a full reload before requests are refused.
    pub key_max_stale_secs: u64,
    /// Proxies whose forwarding headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// `api-version` assumed for Azure requests that send none.
    pub azure_default_api_version: Option<String>,
    /// Keys by public id.
    pub keys: KeyCache,
    /// Model → upstream.
    pub router: Router,
    /// Pooled upstream client.
    pub client: HttpClient,
    /// Client-network enrichment.
    pub ipdb: IpDb,
    /// Credential matcher run over request and response bodies (detector E2).
    pub secrets: Option<stormwall_scan::Matcher>,
    /// Prompt digests.
    pub digester: PromptDigester,
    /// Prices.
    pub pricing: Pricing,
    /// Where events go (never awaited).
    pub sink: EventSink,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Admission clock.
    pub clock: Clock,
    /// The backing store (admin API, key refresh and leaked-key reports; never on the proxy path).
    pub store: Arc<dyn Store>,
    /// Shared counters and their settlement queue, when replicas share limits.
    pub counters: Option<(
        Arc<dyn stormwall_store::Counters>,
        crate::shared_admit::Settler,
    )>,
    /// Where the gateway's own alerts go.
    pub alerts: crate::alerts::AlertSink,
    /// The detection engine's inbox (`None`: `[detect] enabled = false`).
    pub detection: Option<crate::detection::Detection>,
    /// The alert and action webhook, when configured.
    pub webhook: Option<crate::webhook::Webhook>,
    /// The content-safety stage (`None`: `[safety] enabled = false`).
    pub safety: Option<Arc<crate::safety::SafetyStage>>,
    /// The leaked-key report endpoint, when enabled: its path and signature verifier.
    pub leak_reports: Option<(String, crate::leak_report::ReportVerifier)>,
}
