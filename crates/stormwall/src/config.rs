//! `stormwall.toml`: one file, one section per crate, each owned and documented by the crate
//! that reads it. Unknown keys are errors, so a typo never silently disables a control.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Context;
use stormwall_gateway::config::{
    IpDbConfig, LimitsConfig, ModelPrice, ServerConfig, UpstreamConfig,
};
use stormwall_store::{CountersConfig, EventsConfig, StoreConfig};

/// The whole configuration file.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `[server]` (gateway).
    #[serde(default)]
    pub server: ServerConfig,
    /// `[limits]` (gateway).
    #[serde(default)]
    pub limits: LimitsConfig,
    /// `[ipdb]` (gateway).
    #[serde(default)]
    pub ipdb: IpDbConfig,
    /// `[[upstreams]]` (gateway).
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    /// `[pricing]` (gateway).
    #[serde(default)]
    pub pricing: BTreeMap<String, ModelPrice>,
    /// `[leak_reports]` (gateway).
    #[serde(default)]
    pub leak_reports: stormwall_gateway::control::leak_report::LeakReportsConfig,
    /// `[alerts]` (gateway).
    #[serde(default)]
    pub alerts: stormwall_gateway::control::alerts::AlertsConfig,
    /// `[store]` (store).
    #[serde(default)]
    pub store: StoreConfig,
    /// `[events]` (store).
    #[serde(default)]
    pub events: EventsConfig,
    /// `[counters]` (store): shared rate, concurrency and budget counters.
    #[serde(default)]
    pub counters: CountersConfig,
    /// `[safety]` (gateway): content screening of prompts and outputs.
    #[serde(default)]
    pub safety: stormwall_gateway::data::safety::SafetyConfig,
    /// `[detect]` (detection, live in `serve` and offline in `detect`).
    #[serde(default)]
    pub detect: stormwall_detect::DetectConfig,
    /// `[response]` (detection): what alerts make the gateway do to keys.
    #[serde(default)]
    pub response: stormwall_detect::ResponseConfig,
    /// `[journal]` (store): the write-ahead event journal.
    #[serde(default)]
    pub journal: stormwall_store::JournalConfig,
    /// `[console]` (gateway): the web console on the admin listener.
    #[serde(default)]
    pub console: stormwall_gateway::control::console::ConsoleConfig,
    /// `[[logs]]` (gateway): cloud-log folders `serve` follows into the detectors.
    #[serde(default)]
    pub logs: Vec<stormwall_gateway::control::cloud_logs::LogSourceConfig>,
    /// `[cloud_logs]` (gateway): follow-mode settings.
    #[serde(default)]
    pub cloud_logs: stormwall_gateway::control::cloud_logs::CloudLogsConfig,
}

impl FileConfig {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Parses config text.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        Ok(toml::from_str(text)?)
    }

    /// The gateway's part.
    pub fn gateway(&self) -> stormwall_gateway::GatewayConfig {
        stormwall_gateway::GatewayConfig {
            server: self.server.clone(),
            limits: self.limits.clone(),
            ipdb: self.ipdb.clone(),
            upstreams: self.upstreams.clone(),
            pricing: self.pricing.clone(),
            leak_reports: self.leak_reports.clone(),
            alerts: self.alerts.clone(),
            safety: self.safety.clone(),
            detect: self.detect.clone(),
            response: self.response.clone(),
            journal: stormwall_store::JournalConfig {
                dir: Some(self.journal.resolved_dir(&self.store)),
                ..self.journal.clone()
            },
            console: self.console.clone(),
            logs: self.logs.clone(),
            cloud_logs: stormwall_gateway::control::cloud_logs::CloudLogsConfig {
                state_file: Some(self.cloud_logs_state_file()),
                ..self.cloud_logs.clone()
            },
        }
    }

    /// The follow mode's checkpoint file: `[cloud_logs] state_file`, or beside the SQLite
    /// database (`<db>.cloud-logs.json`), or `stormwall-cloud-logs.json` with PostgreSQL.
    pub fn cloud_logs_state_file(&self) -> std::path::PathBuf {
        if let Some(p) = &self.cloud_logs.state_file {
            return p.clone();
        }
        match &self.store {
            StoreConfig::Sqlite { path } => {
                let mut name = path.file_name().unwrap_or_default().to_os_string();
                name.push(".cloud-logs.json");
                path.with_file_name(name)
            }
            StoreConfig::Postgres(_) => std::path::PathBuf::from("stormwall-cloud-logs.json"),
        }
    }
}

/// Reads an environment variable (the one place the binary reads secrets from).
pub fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_examples_parse() {
        for f in ["local.toml", "scaled.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../examples")
                .join(f);
            FileConfig::load(&path).unwrap();
        }
    }

    /// The shipper's byte bound is read from `[journal]`, and defaults to 1 MiB.
    #[test]
    fn journal_memory_bytes_parses_and_defaults() {
        let c = FileConfig::parse("[journal]\nmemory_bytes = 262144\n").unwrap();
        assert_eq!(c.journal.memory_bytes, 262_144);
        let c = FileConfig::parse("[journal]\nmemory_events = 100\n").unwrap();
        assert_eq!(c.journal.memory_bytes, 1 << 20);
    }

    #[test]
    fn unknown_keys_are_errors() {
        let e = FileConfig::parse("[server]\nlisten_addr = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(format!("{e:#}").contains("unknown field"), "{e:#}");
    }
}
