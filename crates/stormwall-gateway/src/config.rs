//! The gateway's sections of `stormwall.toml`: `[server]`, `[limits]`, `[ipdb]`,
//! `[[upstreams]]` and `[pricing]`. Parsed into raw structs (`deny_unknown_fields`), then
//! validated into runtime types by [`crate::upstream::Router::from_config`] and friends.
//! Secrets are never in the file: the file names the environment variable that holds them.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use ipnet::IpNet;

/// `[server]`: listeners and who may talk to them.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Proxy listener for OpenAI and Azure OpenAI clients.
    pub listen: SocketAddr,
    /// Admin listener (keys, events, metrics, health); keep it on loopback or a private network.
    pub admin_listen: SocketAddr,
    /// Environment variable that holds the admin bearer token.
    pub admin_token_env: String,
    /// Proxies whose `X-Forwarded-For` is believed; any other peer is the client itself.
    pub trusted_proxies: Vec<IpNet>,
    /// Seconds SIGTERM waits for in-flight requests and streams before closing them.
    pub shutdown_grace_secs: u64,
    /// Seconds between full reloads of the key cache from the store (picks up other writers).
    pub key_refresh_secs: u64,
    /// Seconds the key cache may serve without a successful reload from the store; past
    /// that, requests get 503 until the store answers again, because revocations made
    /// meanwhile cannot be seen. 0: serve from the cache however long the store is down.
    pub key_cache_max_stale_secs: u64,
    /// Threads serving requests; 0: one per CPU core. On a machine shared with other busy
    /// processes, fewer threads than cores spend less CPU per request.
    pub worker_threads: usize,
    /// `api-version` assumed for an Azure request that sends none (`None`: such requests
    /// get 400, as a dated version is required on Azure's dated routes).
    pub azure_default_api_version: Option<String>,
    /// PEM certificate chain: with `tls_key_file`, the proxy listener terminates TLS itself
    /// (rustls) and records each connection's ClientHello fingerprint on its events.
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `tls_cert_file`.
    pub tls_key_file: Option<std::path::PathBuf>,
    /// Seconds between checks of `tls_cert_file` and `tls_key_file` for a change (a
    /// changed pair is reloaded without a restart); 0: only on SIGHUP.
    pub tls_reload_secs: u64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            admin_token_env: "STORMWALL_ADMIN_TOKEN".to_owned(),
            trusted_proxies: Vec::new(),
            shutdown_grace_secs: 30,
            key_refresh_secs: 30,
            key_cache_max_stale_secs: 900,
            worker_threads: 0,
            azure_default_api_version: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_reload_secs: 60,
        }
    }
}

/// `[limits]`: size caps and timeouts protecting the gateway itself.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest request body accepted, in bytes.
    pub max_request_body_bytes: usize,
    /// Largest non-streamed upstream response relayed, in bytes.
    pub max_response_body_bytes: usize,
    /// Largest request head (request line and headers), in bytes.
    pub max_header_bytes: usize,
    /// Most request headers accepted.
    pub max_headers: usize,
    /// Seconds a client may take to send its request head.
    pub header_read_timeout_secs: u64,
    /// Seconds a client may take to send its request body.
    pub body_read_timeout_secs: u64,
    /// Milliseconds to establish an upstream connection.
    pub upstream_connect_timeout_ms: u64,
    /// Milliseconds from sending a request upstream to its response headers.
    pub upstream_first_byte_timeout_ms: u64,
    /// Milliseconds an upstream body may stay silent between chunks.
    pub upstream_idle_timeout_ms: u64,
    /// Idle upstream connections kept per host.
    pub upstream_pool_max_idle_per_host: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_request_body_bytes: 16 * 1024 * 1024,
            max_response_body_bytes: 64 * 1024 * 1024,
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            header_read_timeout_secs: 30,
            body_read_timeout_secs: 60,
            upstream_connect_timeout_ms: 5_000,
            upstream_first_byte_timeout_ms: 120_000,
            upstream_idle_timeout_ms: 60_000,
            upstream_pool_max_idle_per_host: 256,
        }
    }
}

/// `[ipdb]`: where client addresses get their network, country and egress flags (the
/// section belongs to `stormwall-ipintel`; the name is kept for the gateway's callers).
pub use stormwall_ipintel::IpIntelConfig as IpDbConfig;

/// One `[[upstreams]]` entry.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum UpstreamConfig {
    /// Any OpenAI-compatible API (OpenAI itself, or a compatible server).
    Openai {
        /// Name used in routing, events and metrics.
        name: String,
        /// Base URL including the version segment, e.g. `https://api.openai.com/v1`.
        base_url: String,
        /// Environment variable with the provider key.
        api_key_env: String,
        /// Models routed here.
        models: Vec<String>,
        /// Optional `OpenAI-Organization` header value.
        #[serde(default)]
        organization: Option<String>,
    },
    /// An Azure OpenAI (AI Foundry) resource.
    Azure {
        /// Name used in routing, events and metrics.
        name: String,
        /// Resource endpoint, e.g. `https://contoso.openai.azure.com`.
        endpoint: String,
        /// `api-version` sent upstream.
        api_version: String,
        /// Environment variable with the resource key.
        api_key_env: String,
        /// Model name clients use → Azure deployment name.
        deployments: BTreeMap<String, String>,
    },
    /// Built-in mock (no network): realistic bodies and streams, for demos and load tests.
    Mock {
        /// Name used in routing, events and metrics.
        name: String,
        /// Models it serves.
        models: Vec<String>,
    },
}

impl UpstreamConfig {
    /// The upstream's name.
    pub fn name(&self) -> &str {
        match self {
            UpstreamConfig::Openai { name, .. }
            | UpstreamConfig::Azure { name, .. }
            | UpstreamConfig::Mock { name, .. } => name,
        }
    }
}

pub use stormwall_types::pricing::ModelPrice;

/// Everything the gateway reads from `stormwall.toml` (the binary assembles it).
#[derive(Debug, Clone, Default)]
pub struct GatewayConfig {
    /// `[server]`.
    pub server: ServerConfig,
    /// `[limits]`.
    pub limits: LimitsConfig,
    /// `[ipdb]`.
    pub ipdb: IpDbConfig,
    /// `[[upstreams]]`.
    pub upstreams: Vec<UpstreamConfig>,
    /// `[pricing]`: model name → price; merged over built-in defaults.
    pub pricing: BTreeMap<String, ModelPrice>,
    /// `[leak_reports]`: the leaked-key report endpoint.
    pub leak_reports: crate::control::leak_report::LeakReportsConfig,
    /// `[alerts]`: where alerts go (JSON lines, webhook).
    pub alerts: crate::control::alerts::AlertsConfig,
    /// `[safety]`: content screening of prompts and outputs.
    pub safety: crate::data::safety::SafetyConfig,
    /// `[detect]`: the detectors (the same section `stormwall detect -c` reads).
    pub detect: stormwall_detect::DetectConfig,
    /// `[response]`: what alerts make the gateway do to keys.
    pub response: stormwall_detect::ResponseConfig,
    /// `[journal]`: the write-ahead event journal. Used when `enabled` and `dir` is set
    /// (the binary always sets `dir`, defaulting it from `[store]`); otherwise events go
    /// to the store from memory only.
    pub journal: stormwall_store::JournalConfig,
    /// `[console]`: the web console on the admin listener.
    pub console: crate::control::console::ConsoleConfig,
    /// `[[logs]]`: cloud-log folders followed into the detectors.
    pub logs: Vec<crate::control::cloud_logs::LogSourceConfig>,
    /// `[cloud_logs]`: follow-mode settings (checkpoint file, poll interval, Sigma rules).
    pub cloud_logs: crate::control::cloud_logs::CloudLogsConfig,
}
