//! The alert sink: every alert (from the detectors or a leaked-key report) is logged once
//! and, when `[alerts] jsonl_path` is set, appended to a JSON-lines file a SIEM or a person
//! can follow. Alerts are rare, so a synchronous append off the proxy path is fine.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use stormwall_types::{Alert, Severity};

/// `[alerts]`: where alerts go besides the log and the store.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// Append every alert as one JSON line to this file (created if missing).
    pub jsonl_path: Option<PathBuf>,
    /// POST every alert and every action to this URL (JSON, HMAC-signed).
    pub webhook_url: Option<String>,
    /// Environment variable holding the webhook's HMAC secret.
    pub webhook_secret_env: Option<String>,
    /// Least severity an alert needs to be sent to the webhook.
    pub webhook_min_severity: Severity,
    /// Timeout of one delivery attempt, in milliseconds.
    pub webhook_timeout_ms: u64,
    /// Attempts per notification before giving up.
    pub webhook_max_attempts: u32,
    /// Wait before the first retry, in milliseconds; doubles each retry (at most 60 s).
    pub webhook_backoff_ms: u64,
}

impl Default for AlertsConfig {
    fn default() -> Self {
        Self {
            jsonl_path: None,
            webhook_url: None,
            webhook_secret_env: None,
            webhook_min_severity: Severity::Low,
            webhook_timeout_ms: 5_000,
            webhook_max_attempts: 6,
            webhook_backoff_ms: 500,
        }
    }
}

/// The alert sink.
#[derive(Debug, Default)]
pub struct AlertSink {
    file: Option<Mutex<std::fs::File>>,
}

impl AlertSink {
    /// Opens the configured file for appending.
    pub fn open(config: &AlertsConfig) -> std::io::Result<Self> {
        let file = match &config.jsonl_path {
            Some(path) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            )),
            None => None,
        };
        Ok(Self { file })
    }

    /// Logs the alert (id, detector, key, explanation; never a secret) and appends it.
    pub fn raise(&self, alert: &Alert) {
        tracing::warn!(
            alert_id = %alert.id,
            detector = %alert.detector.as_str(),
            key_id = alert.key_id.as_ref().map_or("", |k| k.as_str()),
            explanation = %alert.explanation,
            "alert"
        );
        let Some(file) = &self.file else { return };
        let Ok(mut line) = serde_json::to_vec(alert) else {
            return;
        };
        line.push(b'\n');
        let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = f.write_all(&line) {
            tracing::error!(error = %e, "cannot append to the alerts file");
        }
    }
}
