//! The data plane: everything a proxied request meets, as stage modules in the order they
//! run (see [`pipeline`]), and [`DataPlane`], the state those stages share. Nothing here
//! names the control plane: the request path reaches detection only through an
//! [`recorder::EventTap`] and learns key changes only through the shared [`keycache`].

pub mod account;
pub mod admit;
pub mod authenticate;
pub mod body;
pub mod classify;
pub mod client;
pub mod conn;
pub mod digest;
pub mod forward;
pub mod ipdb;
pub mod keycache;
pub mod models;
pub mod pipeline;
pub mod recorder;
pub mod relay;
pub mod request;
pub mod route;
pub mod safety;
pub mod screen;
pub mod shared_admit;

use std::sync::Arc;

use ipnet::IpNet;
use stormwall_store::EventSink;
use stormwall_types::pricing::Pricing;

use crate::config::LimitsConfig;
use crate::metrics::Metrics;
use crate::upstream::{HttpClient, Router};
use admit::Clock;
use digest::PromptDigester;
use ipdb::IpDb;
use keycache::KeyCache;

/// What every stage of the request path shares; built once at start-up.
pub struct DataPlane {
    /// Size caps and timeouts.
    pub limits: LimitsConfig,
    /// Seconds the key cache may go without a full reload before requests are refused.
    pub key_max_stale_secs: u64,
    /// Proxies whose forwarding headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// `api-version` assumed for Azure requests that send none.
    pub azure_default_api_version: Option<String>,
    /// Keys by public id (shared with the control plane, which changes them).
    pub keys: Arc<KeyCache>,
    /// Model → upstream.
    pub router: Router,
    /// Pooled client for the safety stage's external classifiers.
    pub client: HttpClient,
    /// Upstream connections, driven by the requests that use them.
    pub upstreams: Arc<conn::UpstreamPool>,
    /// Client-network enrichment (shared with the control plane, which reloads it).
    pub ipdb: Arc<IpDb>,
    /// Credential matcher run over request and response bodies (detector E2).
    pub secrets: Option<stormwall_scan::Matcher>,
    /// Prompt digests.
    pub digester: PromptDigester,
    /// Prices.
    pub pricing: Pricing,
    /// Where events go when there is no journal (never awaited).
    pub sink: EventSink,
    /// The write-ahead event journal (`None`: off); when on, events go there instead of
    /// `sink`, and each answer's last byte waits until its event is written.
    pub journal: Option<stormwall_store::Journal>,
    /// Closed events offered to detection (`None`: `[detect] enabled = false`).
    pub tap: Option<recorder::EventTap>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Admission clock.
    pub clock: Clock,
    /// Shared counters and their settlement queue, when replicas share limits.
    pub counters: Option<(Arc<dyn stormwall_store::Counters>, shared_admit::Settler)>,
    /// The content-safety stage (`None`: `[safety] enabled = false`).
    pub safety: Option<Arc<safety::SafetyStage>>,
}
