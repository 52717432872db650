//! Incidents: the alerts about one key (or one source network) within an episode, as one
//! thing a person reads — its timeline, the kill-chain stages it covers, its evidence, a
//! risk score and the reasons for it. The grouping logic is `stormwall_detect::incident`;
//! this is the vocabulary the store, the admin API and the notifications share.

use time::OffsetDateTime;

use crate::alert::{ActionKind, DetectorId, Severity, Stage};
use crate::timefmt::rfc3339;

/// What an incident is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum IncidentSubject {
    /// One key (its public id).
    Key(String),
    /// One source network (a /24 or /48 in CIDR notation), for alerts without a key.
    Network(String),
}

impl IncidentSubject {
    /// `key:<id>` or `network:<cidr>`, for ids and log lines.
    pub fn label(&self) -> String {
        match self {
            IncidentSubject::Key(k) => format!("key:{k}"),
            IncidentSubject::Network(n) => format!("network:{n}"),
        }
    }
}

/// Where an incident stands with the people handling it.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum IncidentStatus {
    /// New or updated, nobody has looked yet.
    Open,
    /// Someone is on it.
    Acknowledged,
    /// Marked a false positive (its alerts too).
    FalsePositive,
    /// An operator resolved it (the key was dealt with).
    Resolved,
    /// The episode ended (no alert for the episode gap).
    Closed,
}

impl IncidentStatus {
    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentStatus::Open => "open",
            IncidentStatus::Acknowledged => "acknowledged",
            IncidentStatus::FalsePositive => "false_positive",
            IncidentStatus::Resolved => "resolved",
            IncidentStatus::Closed => "closed",
        }
    }

    /// Parses [`IncidentStatus::as_str`]'s names.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "open" => Some(IncidentStatus::Open),
            "acknowledged" => Some(IncidentStatus::Acknowledged),
            "false_positive" => Some(IncidentStatus::FalsePositive),
            "resolved" => Some(IncidentStatus::Resolved),
            "closed" => Some(IncidentStatus::Closed),
            _ => None,
        }
    }
}

/// One alert on an incident's timeline.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TimelineEntry {
    /// Event time of the alert.
    #[serde(with = "rfc3339")]
    pub at: OffsetDateTime,
    /// The alert's id.
    pub alert_id: String,
    /// Its detector.
    pub detector: DetectorId,
    /// Its stage.
    pub stage: Stage,
    /// Its severity.
    pub severity: Severity,
    /// First sentence of its explanation.
    pub summary: String,
    /// The action the response policy took on it, if any beyond notifying.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<ActionKind>,
}

/// The alerts about one subject within one episode.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Incident {
    /// Stable id: the subject and the first alert's time.
    pub id: String,
    /// What it is about.
    pub subject: IncidentSubject,
    /// The key's tenant, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// First alert.
    #[serde(with = "rfc3339")]
    pub opened_at: OffsetDateTime,
    /// Latest alert.
    #[serde(with = "rfc3339")]
    pub updated_at: OffsetDateTime,
    /// How urgent, after combining its signals (see `docs/detection.md`, "Severity").
    pub severity: Severity,
    /// Kill-chain stages covered, in kill-chain order.
    pub stages: Vec<Stage>,
    /// Risk score: per detector its strongest alert plus a quarter of the others, plus a
    /// bonus per extra stage.
    pub risk_score: f64,
    /// Why the severity and score are what they are, for a person.
    pub reasons: Vec<String>,
    /// Alerts, oldest first.
    pub timeline: Vec<TimelineEntry>,
    /// Evidence event ids (capped), oldest first.
    pub evidence: Vec<String>,
    /// Strongest action taken on the subject during the incident.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<ActionKind>,
    /// Handling status.
    pub status: IncidentStatus,
    /// Revision, +1 for every change a notification reports.
    pub revision: u32,
}
