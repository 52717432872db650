//! Alerts the gateway raises itself (today: E1, a Stormwall key reported leaked), logged
//! once and, when `[alerts] jsonl_path` is set, appended to a JSON-lines file a SIEM or a
//! person can follow. Alerts are rare, so a synchronous append off the proxy path is fine.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use stormwall_types::Alert;

/// `[alerts]`: where the gateway's own alerts go besides the log.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertsConfig {
    /// Append every alert as one JSON line to this file (created if missing).
    pub jsonl_path: Option<PathBuf>,
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
