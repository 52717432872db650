//! The alert sink: what a person or a SIEM is told. With `[alerts] notify = "incidents"`
//! (the default) that is one log line and one JSON line per incident — opened, then each
//! escalation (severity up, a new kill-chain stage, a stronger action) — not one per alert;
//! with `notify = "alerts"`, every alert (from the detectors or a leaked-key report) is
//! logged and appended, as before incidents existed. The sink also holds the incident
//! grouper the detection task feeds (see [`crate::control::incidents`]). Alerts are rare, so
//! a synchronous append off the proxy path is fine.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;

use stormwall_detect::incident::{Change, Grouper, IncidentConfig, Update};
use stormwall_store::StoredIncident;
use stormwall_types::{Action, Alert, Severity};

/// What notifications (log line, JSON line, webhook) are sent for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyMode {
    /// One per incident when it opens, and one per escalation.
    #[default]
    Incidents,
    /// One per alert and one per response action.
    Alerts,
}

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
    /// `incidents`: notify once per incident and its escalations; `alerts`: once per alert
    /// and per action. Incidents are stored and served by the admin API either way.
    pub notify: NotifyMode,
    /// Seconds without an alert after which an incident's episode ends; the subject's next
    /// alert opens a new incident.
    pub incident_gap_secs: u32,
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
            notify: NotifyMode::Incidents,
            incident_gap_secs: IncidentConfig::default().episode_gap_secs,
        }
    }
}

/// The alert sink.
#[derive(Debug, Default)]
pub struct AlertSink {
    file: Option<Mutex<std::fs::File>>,
    mode: NotifyMode,
    grouper: Mutex<Grouper>,
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
        let grouper = Grouper::new(IncidentConfig {
            episode_gap_secs: config.incident_gap_secs.max(1),
            ..IncidentConfig::default()
        });
        Ok(Self {
            file,
            mode: config.notify,
            grouper: Mutex::new(grouper),
        })
    }

    /// Whether notifications go out per alert (`notify = "alerts"`).
    pub fn per_alert(&self) -> bool {
        self.mode == NotifyMode::Alerts
    }

    /// Logs the alert (id, detector, key, explanation; never a secret) and, per alert,
    /// appends it; per incident, the alert is only a debug line (its incident is the news).
    pub fn raise(&self, alert: &Alert) {
        let key_id = alert.key_id.as_ref().map_or("", |k| k.as_str());
        if !self.per_alert() {
            tracing::debug!(alert_id = %alert.id, detector = %alert.detector.as_str(), key_id, "alert");
            return;
        }
        tracing::warn!(
            alert_id = %alert.id,
            detector = %alert.detector.as_str(),
            key_id,
            explanation = %alert.explanation,
            "alert"
        );
        if let Ok(line) = serde_json::to_vec(alert) {
            self.append(line);
        }
    }

    /// Adds an alert (and the action taken on it) to its incident. `None` for an alert with
    /// neither a key nor a source address.
    pub fn group(&self, alert: &Alert, action: Option<&Action>) -> Option<Update> {
        self.grouper
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .add(alert, action)
    }

    /// Runs `f` on the incident grouper (held briefly; never across an await).
    pub fn with_grouper<T>(&self, f: impl FnOnce(&mut Grouper) -> T) -> T {
        f(&mut self.grouper.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Logs an opened or escalated incident (id, subject, severity, stages; never a secret)
    /// and appends `{"type":"incident","change":…,"incident":…}`. Per alert, nothing.
    pub fn raise_incident(&self, change: Change, stored: &StoredIncident) {
        if self.per_alert() {
            return;
        }
        let i = &stored.incident;
        let stages: Vec<&str> = i.stages.iter().map(|s| s.as_str()).collect();
        tracing::warn!(
            incident_id = %i.id,
            change = change_name(change),
            subject = %i.subject.label(),
            severity = %i.severity,
            stages = %stages.join(","),
            risk_score = i.risk_score,
            alerts = stored.alert_ids.len(),
            action = i.action.map_or("", |a| a.as_str()),
            "incident"
        );
        let body = serde_json::json!({
            "type": "incident",
            "change": change_name(change),
            "incident": stored,
        });
        if let Ok(line) = serde_json::to_vec(&body) {
            self.append(line);
        }
    }

    fn append(&self, mut line: Vec<u8>) {
        let Some(file) = &self.file else { return };
        line.push(b'\n');
        let mut f = file.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = f.write_all(&line) {
            tracing::error!(error = %e, "cannot append to the alerts file");
        }
    }
}

/// `opened`, `escalated` or `appended`, as notifications name the change.
pub fn change_name(change: Change) -> &'static str {
    match change {
        Change::Opened => "opened",
        Change::Escalated => "escalated",
        Change::Appended => "appended",
    }
}
