//! What detection produces: an `Alert` (a detector fired, with its evidence and a plain
//! explanation) and an `Action` (what the response policy wants done to a key because of
//! alerts). Both live here, not in the detect crate, because the store persists them and the
//! gateway applies actions without depending on the detectors.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use time::OffsetDateTime;

use crate::key::KeyId;
use crate::timefmt::rfc3339;

/// The detector that raised an alert; names follow the detection catalogue (DETECTIONS.md).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum DetectorId {
    /// Exposure: a leaked-key report was received for the key.
    E1,
    /// Harvest: a canary key was used.
    H1,
    /// Harvest: first use from a new network after the key was reported exposed.
    H2,
    /// Validation: zero-cost liveness probe.
    V1,
    /// Validation: model listing followed by inference.
    V2,
    /// Validation: periodic micro-requests (a key checker).
    V4,
    /// Validation: a young key taken over (a sequence of takeover signals from a client and
    /// network its owner and tenant have never used).
    V7,
    /// Proxy: source dispersion (IPs, ASNs, countries) per key-hour.
    P1,
    /// Proxy: impossible travel between consecutive requests.
    P2,
    /// Proxy: hosting, VPN, Tor or anonymiser egress new to the key.
    P3,
    /// Proxy: relay artefacts in the header shape.
    P4,
    /// Proxy: user-agent family drift.
    P5,
    /// Proxy: one client network using keys of several tenants.
    P6,
    /// Resale: many end-user styles behind one key.
    R1,
    /// Resale: role-play front-end markers.
    R2,
    /// Resale: concurrency or request-rate spike.
    R3,
    /// Resale: burst in hours the key is normally quiet.
    R4,
    /// Resale: spend or volume anomaly.
    R5,
    /// Resale: model-mix shift (first image generation, premium model, divergence).
    R6,
    /// Abuse: repeated content-safety hits.
    A1,
    /// Abuse: obfuscated prompts.
    A4,
    /// Disruption: retries with a revoked key.
    D1,
    /// Disruption: a burned fingerprint reappears on another key.
    D2,
    /// Exposure: cloud resource keys listed or a credential created by a new actor.
    E3,
    /// Exposure: a long-lived cloud credential used for inference (posture finding).
    E4,
    /// Validation: invocation-logging configuration read by a non-admin principal.
    V3,
    /// Validation: model access enabled through an access key (the LLMjacking preamble).
    V5,
    /// Validation: denied model invocations or listings (probing).
    V6,
    /// Evasion: invocation logging or diagnostic settings removed or changed.
    X1,
    /// Evasion: a guardrail or content-filter policy removed or weakened.
    X2,
    /// Evasion: network or authentication access loosened.
    X3,
    /// Evasion: a bearer API key used for destructive or non-Bedrock calls.
    X4,
    /// Proxy: one cloud identity invoking models in many regions.
    P7,
    /// A Sigma rule matched a cloud-log record (the rule's id and title are in the alert).
    S1,
}

impl DetectorId {
    /// Every detector, in catalogue order.
    pub const ALL: [DetectorId; 34] = [
        DetectorId::E1,
        DetectorId::H1,
        DetectorId::H2,
        DetectorId::V1,
        DetectorId::V2,
        DetectorId::V4,
        DetectorId::V7,
        DetectorId::P1,
        DetectorId::P2,
        DetectorId::P3,
        DetectorId::P4,
        DetectorId::P5,
        DetectorId::P6,
        DetectorId::R1,
        DetectorId::R2,
        DetectorId::R3,
        DetectorId::R4,
        DetectorId::R5,
        DetectorId::R6,
        DetectorId::A1,
        DetectorId::A4,
        DetectorId::D1,
        DetectorId::D2,
        DetectorId::E3,
        DetectorId::E4,
        DetectorId::V3,
        DetectorId::V5,
        DetectorId::V6,
        DetectorId::X1,
        DetectorId::X2,
        DetectorId::X3,
        DetectorId::X4,
        DetectorId::P7,
        DetectorId::S1,
    ];

    /// The catalogue id, e.g. `"P3"`.
    pub fn as_str(self) -> &'static str {
        match self {
            DetectorId::E1 => "E1",
            DetectorId::H1 => "H1",
            DetectorId::H2 => "H2",
            DetectorId::V1 => "V1",
            DetectorId::V2 => "V2",
            DetectorId::V4 => "V4",
            DetectorId::V7 => "V7",
            DetectorId::P1 => "P1",
            DetectorId::P2 => "P2",
            DetectorId::P3 => "P3",
            DetectorId::P4 => "P4",
            DetectorId::P5 => "P5",
            DetectorId::P6 => "P6",
            DetectorId::R1 => "R1",
            DetectorId::R2 => "R2",
            DetectorId::R3 => "R3",
            DetectorId::R4 => "R4",
            DetectorId::R5 => "R5",
            DetectorId::R6 => "R6",
            DetectorId::A1 => "A1",
            DetectorId::A4 => "A4",
            DetectorId::D1 => "D1",
            DetectorId::D2 => "D2",
            DetectorId::E3 => "E3",
            DetectorId::E4 => "E4",
            DetectorId::V3 => "V3",
            DetectorId::V5 => "V5",
            DetectorId::V6 => "V6",
            DetectorId::X1 => "X1",
            DetectorId::X2 => "X2",
            DetectorId::X3 => "X3",
            DetectorId::X4 => "X4",
            DetectorId::P7 => "P7",
            DetectorId::S1 => "S1",
        }
    }

    /// The kill-chain stage the detector watches.
    pub fn stage(self) -> Stage {
        use DetectorId::*;
        match self {
            E1 | E3 | E4 => Stage::Exposure,
            H1 | H2 => Stage::Harvest,
            // A Sigma alert carries the stage its rule's tags name; validation otherwise.
            V1 | V2 | V3 | V4 | V5 | V6 | V7 | S1 => Stage::Validation,
            P1 | P2 | P3 | P4 | P5 | P6 | P7 => Stage::Proxy,
            X1 | X2 | X3 | X4 => Stage::Evasion,
            R1 | R2 | R3 | R4 | R5 | R6 => Stage::Resale,
            A1 | A4 => Stage::Abuse,
            D1 | D2 => Stage::Disruption,
        }
    }

    /// Position in [`DetectorId::ALL`], for arrays indexed by detector.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for DetectorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not a detector id.
#[derive(Debug, thiserror::Error)]
#[error("unknown detector {0:?}; expected an id such as H1, V2, P3, R6, A1 or D2")]
pub struct UnknownDetector(pub String);

impl FromStr for DetectorId {
    type Err = UnknownDetector;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        DetectorId::ALL
            .into_iter()
            .find(|d| d.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownDetector(s.to_owned()))
    }
}

/// Kill-chain stage (THREATS.md), used by the risk score's kill-chain rule.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The key became public.
    Exposure,
    /// Crawlers collected it (canaries, reported keys).
    Harvest,
    /// The key is being tested.
    Validation,
    /// The key sits behind a shared reverse proxy.
    Proxy,
    /// One key serves many unrelated buyers.
    Resale,
    /// Prohibited content is being requested.
    Abuse,
    /// After revocation: retries and reappearance elsewhere.
    Disruption,
    /// Covering tracks: logging, guardrails or access controls weakened.
    Evasion,
}

impl Stage {
    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Exposure => "exposure",
            Stage::Harvest => "harvest",
            Stage::Validation => "validation",
            Stage::Proxy => "proxy",
            Stage::Resale => "resale",
            Stage::Abuse => "abuse",
            Stage::Disruption => "disruption",
            Stage::Evasion => "evasion",
        }
    }
}

/// How urgent an alert is. Ordered: `Info < Low < Medium < High < Critical`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Context only; never acted on alone.
    Info,
    /// Worth a look.
    Low,
    /// Suspicious.
    Medium,
    /// Likely misuse.
    High,
    /// Certain misuse (e.g. a canary key in use).
    Critical,
}

impl Severity {
    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }

    /// Parses [`Severity::as_str`]'s names.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "info" => Some(Severity::Info),
            "low" => Some(Severity::Low),
            "medium" => Some(Severity::Medium),
            "high" => Some(Severity::High),
            "critical" => Some(Severity::Critical),
            _ => None,
        }
    }

    /// Rank from 0 (info) to 4 (critical), as stored for "at least this severity" filters.
    pub fn rank(self) -> i64 {
        self as i64
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One measured feature of an alert: what was observed, and the threshold it crossed.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AlertFeature {
    /// Feature name, e.g. `distinct_asns_hour`.
    pub name: String,
    /// Observed value.
    pub value: f64,
    /// Threshold the value was compared with, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
}

/// A categorical observation behind an alert (e.g. `asn` = `64502`), which false-positive
/// feedback teaches to the key's baseline.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AlertSubject {
    /// What kind of thing: `asn`, `country`, `ua_family`, `header_shape`, `system_hash`, …
    pub kind: String,
    /// Its value as text (never a secret, never prompt text).
    pub value: String,
}

/// A detector fired.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Alert {
    /// Alert id, derived from the triggering event and the detector, so a replay of the
    /// same events yields the same ids.
    pub id: String,
    /// Which detector.
    pub detector: DetectorId,
    /// Kill-chain stage of the detector.
    pub stage: Stage,
    /// How urgent.
    pub severity: Severity,
    /// Event time of the triggering event.
    #[serde(with = "rfc3339")]
    pub at: OffsetDateTime,
    /// The key concerned, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<KeyId>,
    /// The key's tenant, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Client address of the triggering event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_ip: Option<IpAddr>,
    /// Features and the thresholds that fired.
    #[serde(default)]
    pub features: Vec<AlertFeature>,
    /// Categorical observations behind the alert.
    #[serde(default)]
    pub subjects: Vec<AlertSubject>,
    /// Plain-language explanation for a person.
    pub explanation: String,
    /// Ids of the events that are the evidence, oldest first.
    pub evidence: Vec<String>,
    /// Points this alert adds to the key's risk score.
    pub score: f64,
}

/// What the response policy wants done to a key.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Notify (JSON lines, webhook); the key keeps serving.
    Alert,
    /// Lower the key's request rate.
    Throttle,
    /// Suspend the key (reversible).
    Suspend,
    /// Revoke the key (irreversible; it stays as a tripwire).
    Revoke,
}

impl ActionKind {
    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionKind::Alert => "alert",
            ActionKind::Throttle => "throttle",
            ActionKind::Suspend => "suspend",
            ActionKind::Revoke => "revoke",
        }
    }
}

impl fmt::Display for ActionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An action decided by the response policy, as data: whoever holds the store applies it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Action {
    /// What to do.
    pub kind: ActionKind,
    /// The key to act on.
    pub key_id: KeyId,
    /// The key's tenant, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Event time of the alert that caused the action.
    #[serde(with = "rfc3339")]
    pub at: OffsetDateTime,
    /// New requests-per-minute limit (throttle only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub throttle_rpm: Option<u32>,
    /// The alert that caused the action.
    pub alert_id: String,
    /// Every alert in the risk window that contributed, oldest first.
    pub contributing_alerts: Vec<String>,
    /// The key's risk score when the action was decided.
    pub risk_score: f64,
    /// Whether the kill-chain rule (exposure/harvest plus proxy/resale) was met.
    pub kill_chain: bool,
    /// Plain-language reason, suitable for the key's `status_reason`.
    pub reason: String,
}

/// What applying an [`Action`] changes on a key: the one rule the gateway applies to stored
/// keys and the simulator applies to its model of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyEffect {
    /// Nothing to change: notify only (an `alert` action).
    Notify,
    /// The key is already at least this restricted (suspended, revoked, or a limit as
    /// tight); recorded as `already_in_effect`.
    AlreadyInEffect,
    /// Lower the key's requests-per-minute limit to this.
    Throttle(u32),
    /// Suspend the key.
    Suspend,
    /// Revoke the key.
    Revoke,
}

impl Action {
    /// What this action changes on a key that has `status` and requests-per-minute limit
    /// `rpm`. An action never loosens a key: a throttle does not raise a tighter limit, a
    /// suspension does not touch a key that is not active, a revocation is final.
    pub fn effect_on(&self, status: crate::KeyStatus, rpm: Option<u32>) -> KeyEffect {
        use crate::KeyStatus as S;
        match self.kind {
            ActionKind::Alert => KeyEffect::Notify,
            ActionKind::Throttle => {
                let limit = self.throttle_rpm.unwrap_or(1).max(1);
                if status != S::Active || rpm.is_some_and(|r| r <= limit) {
                    KeyEffect::AlreadyInEffect
                } else {
                    KeyEffect::Throttle(limit)
                }
            }
            ActionKind::Suspend if status == S::Active => KeyEffect::Suspend,
            ActionKind::Suspend => KeyEffect::AlreadyInEffect,
            ActionKind::Revoke if status == S::Revoked => KeyEffect::AlreadyInEffect,
            ActionKind::Revoke => KeyEffect::Revoke,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_never_loosen_a_key() {
        use crate::KeyStatus as S;
        let action = |kind, throttle_rpm| Action {
            kind,
            key_id: KeyId::new("AbCdEfGhIjKl").unwrap(),
            tenant: None,
            at: OffsetDateTime::UNIX_EPOCH,
            throttle_rpm,
            alert_id: String::new(),
            contributing_alerts: Vec::new(),
            risk_score: 0.0,
            kill_chain: false,
            reason: String::new(),
        };
        let throttle = action(ActionKind::Throttle, Some(5));
        assert_eq!(throttle.effect_on(S::Active, None), KeyEffect::Throttle(5));
        assert_eq!(
            throttle.effect_on(S::Active, Some(60)),
            KeyEffect::Throttle(5)
        );
        assert_eq!(
            throttle.effect_on(S::Active, Some(2)),
            KeyEffect::AlreadyInEffect
        );
        assert_eq!(
            throttle.effect_on(S::Suspended, None),
            KeyEffect::AlreadyInEffect
        );
        assert_eq!(
            action(ActionKind::Throttle, Some(0)).effect_on(S::Active, None),
            KeyEffect::Throttle(1)
        );
        let suspend = action(ActionKind::Suspend, None);
        assert_eq!(suspend.effect_on(S::Active, Some(2)), KeyEffect::Suspend);
        assert_eq!(
            suspend.effect_on(S::Revoked, None),
            KeyEffect::AlreadyInEffect
        );
        let revoke = action(ActionKind::Revoke, None);
        assert_eq!(revoke.effect_on(S::Suspended, None), KeyEffect::Revoke);
        assert_eq!(
            revoke.effect_on(S::Revoked, None),
            KeyEffect::AlreadyInEffect
        );
        assert_eq!(
            action(ActionKind::Alert, None).effect_on(S::Revoked, None),
            KeyEffect::Notify
        );
    }

    #[test]
    fn detector_ids_round_trip() {
        for d in DetectorId::ALL {
            assert_eq!(d.as_str().parse::<DetectorId>().unwrap(), d);
            let j = serde_json::to_string(&d).unwrap();
            assert_eq!(j, format!("\"{}\"", d.as_str()));
            assert_eq!(DetectorId::ALL[d.index()], d);
        }
        assert!("Z9".parse::<DetectorId>().is_err());
    }

    #[test]
    fn severities_are_ordered() {
        assert!(Severity::Info < Severity::Low && Severity::High < Severity::Critical);
        assert!(
            ActionKind::Alert < ActionKind::Throttle && ActionKind::Suspend < ActionKind::Revoke
        );
    }
}
