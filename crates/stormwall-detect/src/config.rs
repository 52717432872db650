//! The `[detect]` and `[response]` sections of `stormwall.toml`. Raw structs reject unknown
//! keys (a typo must never silently switch a control off) and are validated into an
//! [`EngineConfig`] before an engine is built.
//!
//! ```toml
//! [detect]
//! baseline_min_hours = 24
//! disabled = ["R4"]
//! [detect.thresholds]
//! p1_asns_per_hour = 3
//! [detect.egress]
//! hosting_asns = [16509, 14061]
//!
//! [response]
//! [[response.rules]]
//! min_severity = "low"
//! action = "alert"
//! [[response.rules]]
//! kill_chain = true
//! action = "suspend"
//! ```

use ipnet::IpNet;
use stormwall_types::{ActionKind, DetectorId, Severity};

use crate::egress::{EgressFlag, EgressList};

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A value is out of range.
    #[error("[{section}] {field}: {why}")]
    Invalid {
        /// Section name.
        section: &'static str,
        /// Field name.
        field: &'static str,
        /// What is wrong.
        why: &'static str,
    },
    /// An egress list could not be read.
    #[error(transparent)]
    Egress(#[from] crate::egress::EgressParseError),
}

/// `[detect]`: detector switches, learning, memory bounds and thresholds.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DetectConfig {
    /// Run the detectors at all.
    pub enabled: bool,
    /// Detector ids to switch off (e.g. `["R4", "P6"]`).
    pub disabled: Vec<DetectorId>,
    /// A key (or tenant) must have this many hours of history, in event time, before
    /// novelty signals (new network, new user agent, new header shape) count against it.
    pub baseline_min_hours: u32,
    /// …and at least this many events.
    pub baseline_min_events: u32,
    /// Days of history after which the hour-of-week profile replaces the hour-of-day one.
    pub hour_of_week_min_days: u32,
    /// Most keys with state; keys past this are not tracked (and counted).
    pub max_keys: usize,
    /// Most client networks with state (detector P6); past this, new networks are ignored.
    pub max_networks: usize,
    /// Most burned fingerprints remembered for detector D2.
    pub max_burned_fingerprints: usize,
    /// Seconds an alert of one detector on one key is not repeated (unless it escalates).
    pub alert_cooldown_secs: u32,
    /// Window of the risk score, in hours of event time.
    pub risk_window_hours: u32,
    /// Detector thresholds.
    pub thresholds: Thresholds,
    /// Anonymising egress networks for detector P3.
    pub egress: EgressConfig,
    /// Hours of stored events the gateway replays into the detectors when it starts, so a
    /// restart or a new replica keeps the keys' baselines (0: start from nothing).
    pub warm_start_hours: u32,
    /// Most events replayed at start-up; past this the replay stops (and the log says so).
    pub warm_start_max_events: u64,
    /// `[detect.cloud]`: thresholds of the control-plane detectors over cloud logs (E3, H2
    /// after an exposure, E4, V3, V5, V6, P7; `stormwall detect --logs` and `[[logs]]`).
    pub cloud: crate::detectors::cloud::CloudThresholds,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            disabled: Vec::new(),
            baseline_min_hours: 24,
            baseline_min_events: 20,
            hour_of_week_min_days: 14,
            max_keys: 200_000,
            max_networks: 500_000,
            max_burned_fingerprints: 4_096,
            alert_cooldown_secs: 600,
            risk_window_hours: 24,
            thresholds: Thresholds::default(),
            egress: EgressConfig::default(),
            warm_start_hours: 7 * 24,
            warm_start_max_events: 2_000_000,
            cloud: crate::detectors::cloud::CloudThresholds::default(),
        }
    }
}

/// `[detect.thresholds]`: one field per tunable of each detector (see DETECTIONS.md).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Thresholds {
    /// V1: a generation asking for at most this many tokens is a probe.
    pub v1_max_tokens: u64,
    /// V1: probes per minute on one key that fire even from a known network.
    pub v1_probes_per_min: u32,
    /// V2: seconds between a model listing and inference that count as enumerate-then-invoke.
    pub v2_window_secs: u32,
    /// V4: inter-arrival cycles of micro-requests from one address before judging.
    pub v4_min_cycles: u32,
    /// V4: largest coefficient of variation of those intervals (lower = more periodic).
    pub v4_max_cv: f64,
    /// V4: shortest mean interval, seconds (faster is traffic, not a checker).
    pub v4_min_period_secs: f64,
    /// V7: takeover points (each signal kind once an hour) on a young key that fire.
    pub v7_min_points: u32,
    /// P1: distinct ASNs per key-hour that fire (or twice the key's usual peak, if higher).
    pub p1_asns_per_hour: u32,
    /// P1: distinct countries per key-hour that fire (or twice the usual peak, if higher).
    pub p1_countries_per_hour: u32,
    /// P1: multiple of the key's usual hourly peak that fires.
    pub p1_baseline_factor: f64,
    /// P2: fastest plausible travel, km/h.
    pub p2_max_kmh: f64,
    /// P4: relay artefacts on one request that fire.
    pub p4_min_artefacts: u32,
    /// P5: distinct user-agent families on a key in one day that fire.
    pub p5_families_per_day: u32,
    /// P6: distinct tenants using one client address in 24 h that fire.
    pub p6_min_tenants: u32,
    /// R1: new system prompts per day above the key's usual number that fire.
    pub r1_new_system_prompts: u32,
    /// R1: new conversation-root clusters per day above three times the usual that fire.
    pub r1_new_clusters: u32,
    /// R3: in-flight requests that fire (or this multiple of the usual peak, if higher).
    pub r3_min_inflight: u32,
    /// R3: multiple of the usual in-flight peak that fires.
    pub r3_inflight_factor: f64,
    /// R3: multiple of the same-hour requests per minute that fires.
    pub r3_rate_factor: f64,
    /// R3: requests per minute below which rate never fires.
    pub r3_min_rpm: u32,
    /// R4: an hour whose usual share of the day's tokens is below this is off-hours.
    pub r4_quiet_share: f64,
    /// R4: tokens in an off-hours hour, as a share of a usual day, that fire.
    pub r4_burst_share: f64,
    /// R5: multiple of the same-hour cost that fires.
    pub r5_cost_factor: f64,
    /// R5: hourly cost in US dollars below which spend never fires.
    pub r5_min_usd_hour: f64,
    /// R5: calls per model per hour that fire.
    pub r5_calls_per_model_hour: u32,
    /// R6: prior events without images before a first image generation is notable.
    pub r6_min_history: u32,
    /// R6: Jensen–Shannon divergence of the hour's model mix from the usual that fires.
    pub r6_js_divergence: f64,
    /// A1: safety hits per key within `a1_window_secs` that fire.
    pub a1_hits: u32,
    /// A1: window of `a1_hits`, seconds.
    pub a1_window_secs: u32,
    /// A1: share of an hour's requests with safety hits that fires (at 20+ requests).
    pub a1_share: f64,
    /// A4: obfuscated prompts per key per hour that fire.
    pub a4_hits: u32,
    /// D2: fingerprint match score (0..1) that fires.
    pub d2_min_match: f64,
    /// H2: hours after an exposure report during which a new network fires.
    pub h2_window_hours: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            v1_max_tokens: 1,
            v1_probes_per_min: 3,
            v2_window_secs: 900,
            v4_min_cycles: 6,
            v4_max_cv: 0.1,
            v4_min_period_secs: 60.0,
            v7_min_points: 5,
            p1_asns_per_hour: 3,
            p1_countries_per_hour: 2,
            p1_baseline_factor: 2.0,
            p2_max_kmh: 900.0,
            p4_min_artefacts: 2,
            p5_families_per_day: 3,
            p6_min_tenants: 3,
            r1_new_system_prompts: 5,
            r1_new_clusters: 10,
            r3_min_inflight: 10,
            r3_inflight_factor: 3.0,
            r3_rate_factor: 5.0,
            r3_min_rpm: 30,
            r4_quiet_share: 0.01,
            r4_burst_share: 0.2,
            r5_cost_factor: 3.0,
            r5_min_usd_hour: 1.0,
            r5_calls_per_model_hour: 500,
            r6_min_history: 50,
            r6_js_divergence: 0.3,
            a1_hits: 3,
            a1_window_secs: 600,
            a1_share: 0.05,
            a4_hits: 2,
            d2_min_match: 0.8,
            h2_window_hours: 72,
        }
    }
}

/// `[detect.egress]`: anonymising egress for P3, in addition to any IP-database flags the
/// caller loads with [`EgressList::add_tsv`].
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EgressConfig {
    /// ASNs of hosting and cloud providers.
    pub hosting_asns: Vec<u32>,
    /// ASNs of commercial VPNs.
    pub vpn_asns: Vec<u32>,
    /// ASNs of Tor exits and other anonymisers.
    pub tor_asns: Vec<u32>,
    /// Individual networks with a flag.
    pub networks: Vec<EgressNetwork>,
}

/// One flagged network.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressNetwork {
    /// The network.
    pub cidr: IpNet,
    /// What it is.
    pub flag: EgressFlag,
}

/// `[response]`: what to do when alerts arrive. Every rule that matches proposes its
/// action; the strongest wins (`alert < throttle < suspend < revoke`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResponseConfig {
    /// Rules, in any order.
    pub rules: Vec<PolicyRule>,
    /// Requests per minute a throttled key gets.
    pub throttle_rpm: u32,
    /// Seconds before the same action is proposed again for the same key.
    pub action_cooldown_secs: u32,
    /// Risk points per alert severity: `[info, low, medium, high, critical]`.
    pub severity_points: [f64; 5],
}

impl Default for ResponseConfig {
    fn default() -> Self {
        Self {
            rules: vec![
                PolicyRule {
                    min_severity: Some(Severity::Low),
                    ..PolicyRule::new(ActionKind::Alert)
                },
                PolicyRule {
                    min_score: Some(60.0),
                    ..PolicyRule::new(ActionKind::Throttle)
                },
                // Buyers' traffic confirmed: two independent detectors, one of them about
                // resale or abuse (one chatty detector alone never stops a key).
                PolicyRule {
                    min_score: Some(60.0),
                    min_detectors: Some(2),
                    require_stages: vec![
                        stormwall_types::Stage::Resale,
                        stormwall_types::Stage::Abuse,
                    ],
                    ..PolicyRule::new(ActionKind::Suspend)
                },
                // Testing or relaying from anonymising egress the key never uses: a developer
                // trying a key from home gets throttled at most, a checker on a rented
                // server is stopped before the key is sold.
                PolicyRule {
                    min_score: Some(60.0),
                    min_stages: Some(2),
                    window_detectors: vec![DetectorId::P3],
                    ..PolicyRule::new(ActionKind::Suspend)
                },
                PolicyRule {
                    kill_chain: true,
                    ..PolicyRule::new(ActionKind::Suspend)
                },
                // Many buyers' system prompts from a network the key never used.
                PolicyRule {
                    min_severity: Some(Severity::High),
                    detectors: vec![DetectorId::R1],
                    ..PolicyRule::new(ActionKind::Suspend)
                },
                // A young key taken over: someone else is validating or reselling it.
                PolicyRule {
                    min_severity: Some(Severity::High),
                    detectors: vec![DetectorId::V7],
                    ..PolicyRule::new(ActionKind::Suspend)
                },
            ],
            throttle_rpm: 6,
            action_cooldown_secs: 3_600,
            severity_points: [0.0, 5.0, 15.0, 30.0, 100.0],
        }
    }
}

/// One response rule. All conditions given must hold; a rule with none matches every alert.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRule {
    /// The alert's severity is at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_severity: Option<Severity>,
    /// The key's risk score (after this alert) is at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_score: Option<f64>,
    /// The risk window holds medium-or-worse alerts of at least this many kill-chain stages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_stages: Option<u32>,
    /// The risk window holds medium-or-worse alerts of at least this many distinct detectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_detectors: Option<u32>,
    /// The risk window holds a medium-or-worse alert of one of these stages (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub require_stages: Vec<stormwall_types::Stage>,
    /// Only alerts of these detectors (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub detectors: Vec<DetectorId>,
    /// The risk window holds a medium-or-worse alert of one of these detectors (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub window_detectors: Vec<DetectorId>,
    /// The kill-chain rule holds: an exposure or harvest signal plus a proxy or resale one.
    #[serde(default)]
    pub kill_chain: bool,
    /// What to do.
    pub action: ActionKind,
}

impl PolicyRule {
    /// A rule with no conditions.
    pub fn new(action: ActionKind) -> Self {
        Self {
            min_severity: None,
            min_score: None,
            min_stages: None,
            min_detectors: None,
            require_stages: Vec::new(),
            detectors: Vec::new(),
            window_detectors: Vec::new(),
            kill_chain: false,
            action,
        }
    }
}

/// A validated configuration, ready for [`crate::Engine::new`].
#[derive(Debug, Clone, Default)]
pub struct EngineConfig {
    /// `[detect]`.
    pub detect: DetectConfig,
    /// `[response]`.
    pub response: ResponseConfig,
    /// Egress networks (from `[detect.egress]` plus any IP-database flags).
    pub egress: EgressList,
}

impl EngineConfig {
    /// Validates the two sections and builds the egress list from `[detect.egress]`.
    pub fn new(detect: DetectConfig, response: ResponseConfig) -> Result<Self, ConfigError> {
        let bad = |section, field, why| ConfigError::Invalid {
            section,
            field,
            why,
        };
        let t = &detect.thresholds;
        if detect.max_keys == 0 {
            return Err(bad("detect", "max_keys", "must be at least 1"));
        }
        if detect.risk_window_hours == 0 {
            return Err(bad("detect", "risk_window_hours", "must be at least 1"));
        }
        let factors = [
            ("p1_baseline_factor", t.p1_baseline_factor),
            ("r3_inflight_factor", t.r3_inflight_factor),
            ("r3_rate_factor", t.r3_rate_factor),
            ("r5_cost_factor", t.r5_cost_factor),
            ("p2_max_kmh", t.p2_max_kmh),
            ("v4_min_period_secs", t.v4_min_period_secs),
        ];
        for (name, v) in factors {
            if !v.is_finite() || v <= 0.0 {
                return Err(bad("detect.thresholds", name, "must be a positive number"));
            }
        }
        let shares = [
            ("v4_max_cv", t.v4_max_cv),
            ("r4_quiet_share", t.r4_quiet_share),
            ("r4_burst_share", t.r4_burst_share),
            ("r6_js_divergence", t.r6_js_divergence),
            ("a1_share", t.a1_share),
            ("d2_min_match", t.d2_min_match),
        ];
        for (name, v) in shares {
            if !v.is_finite() || !(0.0..=1.0).contains(&v) {
                return Err(bad("detect.thresholds", name, "must be between 0 and 1"));
            }
        }
        if t.v4_min_cycles < 2 {
            return Err(bad(
                "detect.thresholds",
                "v4_min_cycles",
                "must be at least 2",
            ));
        }
        let c = &detect.cloud;
        if !c.v5_action_share.is_finite() || !(0.0..=1.0).contains(&c.v5_action_share) {
            return Err(bad(
                "detect.cloud",
                "v5_action_share",
                "must be between 0 and 1",
            ));
        }
        for (name, v) in [
            ("e3_bulk_list_keys", c.e3_bulk_list_keys),
            ("h2_window_hours", c.h2_window_hours),
            ("v3_checker_reads", c.v3_checker_reads),
            ("v5_window_hours", c.v5_window_hours),
            ("v6_denied_invokes", c.v6_denied_invokes),
            ("v6_denied_listings", c.v6_denied_listings),
        ] {
            if v == 0 {
                return Err(bad("detect.cloud", name, "must be at least 1"));
            }
        }
        if c.p7_regions < 2 {
            return Err(bad("detect.cloud", "p7_regions", "must be at least 2"));
        }
        if response.throttle_rpm == 0 {
            return Err(bad("response", "throttle_rpm", "must be at least 1"));
        }
        if response
            .severity_points
            .iter()
            .any(|p| !p.is_finite() || *p < 0.0)
        {
            return Err(bad(
                "response",
                "severity_points",
                "must be non-negative numbers",
            ));
        }
        if response
            .rules
            .iter()
            .any(|r| r.min_score.is_some_and(|s| !s.is_finite()))
        {
            return Err(bad("response", "rules.min_score", "must be a number"));
        }
        let mut egress = EgressList::default();
        let e = &detect.egress;
        for (asns, flag) in [
            (&e.hosting_asns, EgressFlag::Hosting),
            (&e.vpn_asns, EgressFlag::Vpn),
            (&e.tor_asns, EgressFlag::Tor),
        ] {
            for &a in asns {
                egress.add_asn(a, flag);
            }
        }
        for n in &e.networks {
            egress.add_net(n.cidr, n.flag);
        }
        Ok(Self {
            detect,
            response,
            egress,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        EngineConfig::new(DetectConfig::default(), ResponseConfig::default()).unwrap();
    }

    #[test]
    fn rejects_out_of_range() {
        let mut d = DetectConfig::default();
        d.thresholds.v4_max_cv = 2.0;
        assert!(EngineConfig::new(d, ResponseConfig::default()).is_err());
        let r = ResponseConfig {
            throttle_rpm: 0,
            ..ResponseConfig::default()
        };
        assert!(EngineConfig::new(DetectConfig::default(), r).is_err());
        let mut d = DetectConfig::default();
        d.cloud.p7_regions = 1;
        let e = EngineConfig::new(d, ResponseConfig::default()).unwrap_err();
        assert_eq!(
            e.to_string(),
            "[detect.cloud] p7_regions: must be at least 2"
        );
    }

    #[test]
    fn cloud_thresholds_are_read_from_detect_cloud() {
        let d: DetectConfig = serde_json::from_value(serde_json::json!({
            "cloud": {"p7_regions": 5, "learn_days": 2}
        }))
        .unwrap();
        assert_eq!(d.cloud.p7_regions, 5);
        assert_eq!(d.cloud.learn_days, 2);
        assert_eq!(
            d.cloud.v3_checker_reads, 3,
            "unset keys keep their defaults"
        );
        let typo = serde_json::from_value::<DetectConfig>(serde_json::json!({
            "cloud": {"p7_region": 5}
        }));
        assert!(typo.is_err(), "unknown keys are errors");
    }
}
