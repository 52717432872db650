//! A labelled traffic simulator and evaluator.
//!
//! It builds a population of legitimate tenants (server apps with steady egress and diurnal
//! load, and noisy-but-legitimate shapes: CI jobs, a mobile app with many client addresses,
//! a company behind a VPN, nightly batches, image and role-play apps, a medical app that
//! trips filters, developers testing from home) and attack scenarios that follow the kill
//! chain (leak → probe → proxy → resale → abuse → evasion; canary hits; retries after
//! revocation; a relay moving to another key). It runs them through a model of the gateway
//! and the [`Engine`] in event-time order, **closing the loop**: an action the engine
//! decides (throttle, suspend, revoke) changes how the gateway answers the next request.
//! Every event is labelled, so the evaluator can count precision, recall, false
//! suspensions and the attacker requests served after abuse began.
//!
//! Everything is deterministic for a seed: no clock, no I/O.

pub mod actors;
pub mod network;
pub mod world;

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::sync::Arc;

use stormwall_types::pricing::Pricing;
use stormwall_types::safety::{self, Category};
use stormwall_types::{
    Action, ActionKind, Alert, ApiFlavor, Endpoint, KeyEffect, KeyId, KeyKind, KeyStatus,
    RejectReason, Severity, UsageEvent, VerdictCategory,
};
use time::OffsetDateTime;

use actors::{
    Attack, Change, Client, GatewayView, HOUR_MS, Legit, Profile, RelayMix, Req, Seg, Step,
};
use stormwall_detect::sketch::mix64;
use stormwall_detect::{Engine, EngineStats};
use stormwall_store::{KeyAdmission, RateDecision, RateRequest};
use world::{Kind, Net, Rng};

/// The attack scenarios, by index.
pub const SCENARIOS: [&str; 14] = [
    "leak_proxy_resale",
    "stealth_resale",
    "checker_then_resale",
    "mobile_extracted",
    "vpn_company_leak",
    "ci_leak",
    "canary_harvest",
    "revoked_retry",
    "key_swap",
    "travel_rotation",
    "image_abuse",
    "exposure_reported",
    "young_takeover",
    "young_resale",
];

/// What to simulate.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SimConfig {
    /// Seed: the same seed gives the same traffic.
    pub seed: u64,
    /// Legitimate keys (keys no attacker ever touches).
    pub legit_keys: usize,
    /// Days of event time.
    pub days: u32,
    /// Days before the first attack (the baselines' warm-up).
    pub warmup_days: u32,
    /// Instances of each attack scenario.
    pub attacks_per_scenario: usize,
    /// Scale of legitimate request rates (1.0: realistic small-app volumes).
    pub rate_scale: f64,
    /// First instant of the simulation (RFC 3339); default 2025-03-03T00:00:00Z, a Monday.
    pub start: String,
    /// Draw the young-key attack variants from the held-out parameter grid (other client
    /// programs, networks, step orders and pacing than the development grid the detectors
    /// were tuned on). Report quality figures on held-out seeds with this set.
    pub holdout: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            legit_keys: 200,
            days: 7,
            warmup_days: 2,
            attacks_per_scenario: 3,
            rate_scale: 1.0,
            start: "2025-03-03T00:00:00Z".to_owned(),
            holdout: false,
        }
    }
}

/// A simulation that cannot run.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// A parameter is out of range.
    #[error("simulator: {0}")]
    Invalid(&'static str),
}

/// Truth about one simulated key.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    /// Key id.
    pub id: KeyId,
    /// Tenant.
    pub tenant: Arc<str>,
    /// Canary key.
    pub canary: bool,
    /// Profile of the tenant.
    pub profile: &'static str,
    /// Attack scenario that used this key, if any.
    pub scenario: Option<usize>,
}

/// The label of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Label {
    /// Attack scenario that sent it (`None`: legitimate traffic).
    pub scenario: Option<usize>,
    /// Part of an attack's abuse phase.
    pub abuse: bool,
}

enum Actor {
    Legit(Box<Legit>),
    Attack(Box<Attack>),
    Exposure { key: usize },
    OperatorRevoke { key: usize },
}

#[derive(Debug, Default)]
struct GwKey {
    status: Option<KeyStatus>,
    throttle_rpm: Option<u32>,
    /// The gateway's admission engine for this key, on event time.
    limits: KeyAdmission,
    canary: bool,
}

struct Gateway {
    keys: Vec<GwKey>,
}

impl GatewayView for Gateway {
    fn stopped(&self, key: usize) -> bool {
        self.keys.get(key).is_some_and(|k| {
            k.canary || matches!(k.status, Some(KeyStatus::Suspended | KeyStatus::Revoked))
        })
    }
}

/// Per-detector figures.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct DetectorFigures {
    /// Alerts raised.
    pub alerts: u64,
    /// Alerts whose evidence includes attacker events.
    pub true_alerts: u64,
    /// `true_alerts / alerts`.
    pub precision: Option<f64>,
    /// Attack keys it raised a true alert on.
    pub attack_keys: usize,
    /// `attack_keys / all attack keys`.
    pub recall: f64,
    /// Keys it raised an alert on from legitimate traffic only.
    pub legit_keys: usize,
    /// Legitimate keys it raised an alert at or above the evaluation severity on.
    pub legit_keys_at_severity: usize,
}

/// Per-scenario figures.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ScenarioFigures {
    /// Attack keys.
    pub keys: usize,
    /// Detected (a true alert at or above the evaluation severity).
    pub detected: usize,
    /// Stopped (suspended or revoked, or never served: canary, already revoked).
    pub stopped: usize,
    /// Median attacker requests served after abuse began (keys with an abuse phase).
    pub median_served: Option<f64>,
    /// Most attacker requests served after abuse began.
    pub max_served: Option<u64>,
    /// 90th percentile of the attacker requests served after abuse began.
    pub p90_served: Option<f64>,
    /// Attacker requests served after abuse began, per key with an abuse phase (sorted).
    pub served: Vec<u64>,
    /// Detectors with true alerts on these keys.
    pub detectors: Vec<String>,
}

/// The evaluation: the JSON contract of `stormwall simulate --evaluate --json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    /// Seed.
    pub seed: u64,
    /// Days simulated.
    pub days: u32,
    /// Tenants.
    pub tenants: usize,
    /// Keys no attacker touched.
    pub legit_keys: usize,
    /// Keys an attacker used (leaked keys, canaries, revoked keys).
    pub attack_keys: usize,
    /// Events.
    pub events: u64,
    /// Events sent by attackers.
    pub attacker_events: u64,
    /// Alerts.
    pub alerts: u64,
    /// Minimum severity an alert needs to count as a detection.
    pub min_severity: Severity,
    /// Attack keys detected / attack keys.
    pub recall: f64,
    /// Detected attack keys / (detected attack keys + legitimate keys alerted).
    pub precision: f64,
    /// Legitimate keys with an alert at or above the evaluation severity.
    pub legit_keys_alerted: usize,
    /// Detected attack keys / (detected attack keys + legitimate keys alerted): per alert,
    /// the figure `precision` was before incidents.
    pub alert_precision: f64,
    /// Incidents (alerts grouped per key or source network and episode).
    pub incidents: usize,
    /// Incidents at or above the evaluation severity.
    pub incidents_at_severity: usize,
    /// Legitimate keys with an incident at or above the evaluation severity (what
    /// `precision` counts against).
    pub legit_keys_with_medium_incident: usize,
    /// Notifications sent: one per incident opened plus one per escalation.
    pub notifications: usize,
    /// Legitimate keys with an incident at or above the evaluation severity, per profile
    /// of their tenant (where the remaining noise comes from).
    pub legit_incidents_by_profile: BTreeMap<String, usize>,
    /// Keys suspended or revoked while only their legitimate owner used them.
    pub false_suspensions: usize,
    /// Legitimate keys throttled.
    pub false_throttles: usize,
    /// Attack keys stopped (suspended/revoked by the engine, or never served).
    pub attack_keys_stopped: usize,
    /// Attack keys with an abuse phase on an active key (the population of the median).
    pub keys_with_abuse_phase: usize,
    /// Median of attacker requests served after the abuse began, per such key.
    pub median_attacker_requests_served: f64,
    /// 90th percentile of the same.
    pub p90_attacker_requests_served: f64,
    /// Largest of the same.
    pub max_attacker_requests_served: u64,
    /// Median seconds from the first attacker request to the first detection.
    pub median_seconds_to_detect: Option<f64>,
    /// Median seconds from the abuse start to the key being stopped.
    pub median_seconds_to_stop: Option<f64>,
    /// Per detector.
    pub per_detector: BTreeMap<String, DetectorFigures>,
    /// Per scenario.
    pub per_scenario: BTreeMap<String, ScenarioFigures>,
    /// Engine state at the end.
    pub engine: EngineStats,
}

impl Default for Report {
    fn default() -> Self {
        Self {
            seed: 0,
            days: 0,
            tenants: 0,
            legit_keys: 0,
            attack_keys: 0,
            events: 0,
            attacker_events: 0,
            alerts: 0,
            min_severity: Severity::Medium,
            recall: 0.0,
            precision: 0.0,
            legit_keys_alerted: 0,
            alert_precision: 0.0,
            incidents: 0,
            incidents_at_severity: 0,
            legit_keys_with_medium_incident: 0,
            notifications: 0,
            legit_incidents_by_profile: BTreeMap::new(),
            false_suspensions: 0,
            false_throttles: 0,
            attack_keys_stopped: 0,
            keys_with_abuse_phase: 0,
            median_attacker_requests_served: 0.0,
            p90_attacker_requests_served: 0.0,
            max_attacker_requests_served: 0,
            median_seconds_to_detect: None,
            median_seconds_to_stop: None,
            per_detector: BTreeMap::new(),
            per_scenario: BTreeMap::new(),
            engine: EngineStats::default(),
        }
    }
}

/// What an evaluation learned about one key (times in unix milliseconds): the input of
/// [`finish_report`], filled by the offline run and by the live run over HTTP.
#[derive(Debug, Clone, Default)]
pub struct KeyOutcome {
    /// The attacker's first request.
    pub first_attack: Option<i64>,
    /// The first abuse request (resale or prohibited content).
    pub abuse_start: Option<i64>,
    /// Whether the key still served requests when the abuse began.
    pub active_at_abuse: bool,
    /// The first true alert at or above the report's severity.
    pub detected_at: Option<i64>,
    /// When the key was suspended or revoked.
    pub stopped_at: Option<i64>,
    /// Suspended or revoked at a time the evaluation does not know (the live run reads the
    /// keys' statuses at the end).
    pub stopped_untimed: bool,
    /// Stopped before the attacker's first request (counts as a false suspension).
    pub stopped_before_attack: bool,
    /// Throttled at some point.
    pub throttled: bool,
    /// Attacker requests served after the abuse began.
    pub served_after_abuse: u64,
    /// A legitimate key alerted at or above the report's severity.
    pub legit_alerted: bool,
    /// A legitimate key with an incident at or above the report's severity.
    pub legit_incident: bool,
    /// An attack key with an incident at or above the report's severity that holds a true
    /// alert.
    pub attack_incident: bool,
    /// Indexes (in `DetectorId::ALL`) of the detectors with true alerts on the key.
    pub detectors: HashSet<usize>,
    /// Indexes of the detectors with false alerts on the key.
    pub false_detectors: HashSet<usize>,
}

impl KeyOutcome {
    fn stopped(&self) -> bool {
        self.stopped_at.is_some() || self.stopped_untimed
    }
}

/// Per detector (indexed as `DetectorId::ALL`): alerts, true alerts, attack keys with a
/// true alert, legitimate keys with a false one.
pub type DetectorTally = (u64, u64, HashSet<usize>, HashSet<usize>);

/// A built simulation, ready to run.
pub struct Simulation {
    cfg: SimConfig,
    start_ms: i64,
    end_ms: i64,
    rng: Rng,
    keys: Vec<KeyInfo>,
    tenants: usize,
    actors: Vec<Actor>,
    heap: BinaryHeap<Reverse<(i64, u64, usize)>>,
    nets: Vec<Net>,
    home_cc: String,
}

impl Simulation {
    /// Builds the population and the attacks.
    pub fn new(cfg: SimConfig) -> Result<Self, SimError> {
        if cfg.days == 0 || cfg.days > 60 {
            return Err(SimError::Invalid("days must be 1..=60"));
        }
        if cfg.warmup_days + 1 >= cfg.days && cfg.attacks_per_scenario > 0 {
            return Err(SimError::Invalid(
                "warmup_days must leave at least two days for attacks",
            ));
        }
        if cfg.legit_keys > 100_000 {
            return Err(SimError::Invalid("legit_keys must be at most 100000"));
        }
        if !(cfg.rate_scale.is_finite() && cfg.rate_scale > 0.0 && cfg.rate_scale <= 100.0) {
            return Err(SimError::Invalid("rate_scale must be in (0, 100]"));
        }
        let start = crate::parse_start(&cfg.start)?;
        let start_ms = start * 1000;
        let end_ms = start_ms + i64::from(cfg.days) * 24 * HOUR_MS;
        let mut sim = Simulation {
            rng: Rng::new(cfg.seed),
            cfg,
            start_ms,
            end_ms,
            keys: Vec::new(),
            tenants: 0,
            actors: Vec::new(),
            heap: BinaryHeap::new(),
            nets: world::networks(),
            home_cc: "US".to_owned(),
        };
        sim.build();
        Ok(sim)
    }

    /// The keys and their truth.
    pub fn keys(&self) -> &[KeyInfo] {
        &self.keys
    }

    /// The simulated IP database as TSV (with egress flags), for offline replays.
    pub fn ipdb_tsv(&self) -> String {
        world::ipdb_tsv(&self.nets)
    }

    /// The egress list implied by the simulated networks.
    pub fn egress(&self) -> stormwall_detect::EgressList {
        world::egress_list(&self.nets)
    }

    fn key_id(&mut self) -> KeyId {
        const B62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
        loop {
            let mut s = String::with_capacity(12);
            for _ in 0..12 {
                let i = self.rng.range(0, 62) as usize;
                s.push(char::from(B62.get(i).copied().unwrap_or(b'0')));
            }
            if let Ok(id) = KeyId::new(&s) {
                return id;
            }
        }
    }

    fn schedule(&mut self, at: i64, actor: Actor) {
        let idx = self.actors.len();
        self.actors.push(actor);
        let seq = self.rng.next_u64();
        self.heap.push(Reverse((at, seq, idx)));
    }

    fn add_key(&mut self, tenant: &Arc<str>, profile: Profile, canary: bool) -> usize {
        let id = self.key_id();
        self.keys.push(KeyInfo {
            id,
            tenant: Arc::clone(tenant),
            canary,
            profile: profile.as_str(),
            scenario: None,
        });
        self.keys.len() - 1
    }

    /// Builds tenants until the legitimate key count is reached, then the attacks, whose
    /// victims are extra keys of existing tenants (so the legitimate count is exact).
    fn build(&mut self) {
        let weights: [(Profile, u32); 10] = [
            (Profile::ServerCloud, 30),
            (Profile::ServerCorp, 18),
            (Profile::SupportBot, 10),
            (Profile::Mobile, 7),
            (Profile::Ci, 8),
            (Profile::VpnCompany, 7),
            (Profile::Batch, 5),
            (Profile::ImageStudio, 5),
            (Profile::Roleplay, 4),
            (Profile::Medical, 6),
        ];
        let total: u32 = weights.iter().map(|w| w.1).sum();
        let mut templates: Vec<(Arc<str>, Legit)> = Vec::new();
        let mut legit = 0usize;
        // Make sure every profile exists at least once, then draw by weight.
        let mut order: Vec<Profile> = weights.iter().map(|w| w.0).collect();
        while legit < self.cfg.legit_keys {
            let profile = if let Some(p) = order.pop() {
                p
            } else {
                let mut x = self.rng.range(0, u64::from(total)) as u32;
                let mut chosen = Profile::ServerCloud;
                for (p, w) in weights {
                    if x < w {
                        chosen = p;
                        break;
                    }
                    x -= w;
                }
                chosen
            };
            let t = self.tenants;
            self.tenants += 1;
            let tenant: Arc<str> = Arc::from(format!("t{t:04}-{}", profile.as_str()).as_str());
            let mut template = self.tenant_template(t, profile);
            let home_cc = self.home_cc.clone();
            // A tenant that signs up during the week: every key of it is young, and its
            // developer tries the first key by hand before the app runs.
            let signup = matches!(profile, Profile::ServerCloud | Profile::SupportBot)
                && self.rng.chance(0.12);
            if signup {
                template.start_ms = self.start_ms
                    + (self.rng.uniform(1.0, f64::from(self.cfg.days) - 1.0)
                        * 24.0
                        * HOUR_MS as f64) as i64;
            }
            let n = match profile {
                Profile::Mobile | Profile::Ci | Profile::Batch => 1,
                _ => self.rng.range(1, 4) as usize,
            }
            .min(self.cfg.legit_keys - legit);
            for k in 0..n {
                let key = self.add_key(&tenant, profile, false);
                let mut a = template.clone();
                a.key = key;
                a.peak *= self.rng.uniform(0.5, 1.5);
                // Some keys are created during the week: young keys judged on the tenant prior.
                let mut young = false;
                if k > 0 && self.rng.chance(0.15) {
                    young = true;
                    a.start_ms = self.start_ms
                        + (self.rng.uniform(1.5, f64::from(self.cfg.days) - 1.0)
                            * 24.0
                            * HOUR_MS as f64) as i64;
                }
                // A developer tries the key from home once (curl, model list, a probe).
                if matches!(profile, Profile::ServerCloud | Profile::ServerCorp)
                    && self.rng.chance(0.15)
                {
                    let at = self.start_ms
                        + (self
                            .rng
                            .uniform(f64::from(self.cfg.warmup_days), f64::from(self.cfg.days))
                            * 24.0
                            * HOUR_MS as f64) as i64;
                    let home = self.residential(&home_cc);
                    a.dev_session = Some((at, 0));
                    a.dev_client = Some((home, world::program(Kind::Curl, self.rng.next_u64())));
                }
                // Half of a server tenant's new keys are first tried by its developer from
                // home — curl, a model listing, a probe — before the app uses them: the
                // key's very first requests come from a network and client the tenant's
                // keys never used, in the company's country, which may be next door to its
                // cloud region. Drawn from a hash, not the generator, so the rest of the
                // population stays what it was.
                if young
                    && a.dev_session.is_none()
                    && matches!(
                        profile,
                        Profile::ServerCloud | Profile::ServerCorp | Profile::SupportBot
                    )
                    && side_draw(self.cfg.seed, t as u64, k as u64) < 0.5
                {
                    let home = self.residential(&home_cc);
                    let v = self.cfg.seed ^ ((t as u64) << 8) ^ k as u64;
                    a.dev_session = Some((a.start_ms, 0));
                    a.dev_client = Some((home, world::program(Kind::Curl, v)));
                }
                self.enrich(&mut a, t, k, signup);
                let first = a.start_ms + self.rng.range(0, 600_000) as i64;
                self.schedule(first, Actor::Legit(Box::new(a)));
                legit += 1;
            }
            templates.push((tenant, template));
        }
        if self.cfg.attacks_per_scenario > 0 {
            for s in 0..SCENARIOS.len() {
                for _ in 0..self.cfg.attacks_per_scenario {
                    self.build_attack(s, &templates);
                }
            }
        }
    }

    /// Legitimate novelty an owner brings during the week: a developer travelling, CI
    /// runners in several cloud regions, a phone roaming on a foreign carrier, an office VPN
    /// change, an SDK upgrade, a night batch, a new app onboarded on an existing key, and a
    /// new tenant's first minutes (a developer's curl, then the deployed app).
    fn enrich(&mut self, a: &mut Legit, tenant: usize, k: usize, signup: bool) {
        let day = 24.0 * HOUR_MS as f64;
        let lo = f64::from(self.cfg.warmup_days).min(f64::from(self.cfg.days) - 1.0);
        let hi = f64::from(self.cfg.days);
        let when = |rng: &mut Rng| self.start_ms + (rng.uniform(lo, hi) * day) as i64;
        let home_cc = a.nets.first().map_or("US", |n| n.cc);
        let server = matches!(
            a.profile,
            Profile::ServerCloud | Profile::ServerCorp | Profile::SupportBot
        );
        if signup && k == 0 {
            let home = self.residential(home_cc);
            a.dev_session = Some((a.start_ms, 0));
            a.dev_client = Some((home, world::program(Kind::Curl, self.rng.next_u64())));
        }
        if server && a.dev_session.is_none() && self.rng.chance(0.06) {
            // A developer travelling: the app's own SDK, from a hotel abroad.
            let abroad = *self
                .rng
                .pick(&["BR", "IN", "GB", "DE", "US", "IE"])
                .unwrap_or(&"GB");
            let net = self.residential(abroad);
            let program = a
                .programs
                .first()
                .cloned()
                .unwrap_or_else(|| world::program(Kind::OpenaiPython, 0));
            a.dev_session = Some((when(&mut self.rng), 0));
            a.dev_client = Some((net, program));
        }
        match a.profile {
            Profile::Ci => {
                // Hosted runners: several regions of two clouds.
                a.nets.push(self.find(64496, "US"));
                if self.rng.chance(0.5) {
                    a.nets.push(self.find(64496, "IE"));
                }
            }
            Profile::Mobile if self.rng.chance(0.3) => {
                let roam = *self.rng.pick(&["GB", "IE", "US"]).unwrap_or(&"GB");
                let net = self.residential(roam);
                a.changes.push((when(&mut self.rng), Change::AddNet(net)));
            }
            Profile::ServerCorp | Profile::Medical if self.rng.chance(0.12) => {
                let net = world::corporate_net(tenant + 5_000, home_cc);
                a.changes
                    .push((when(&mut self.rng), Change::Nets(vec![net])));
            }
            Profile::VpnCompany if self.rng.chance(0.3) => {
                let net = self.find(64509, "NL");
                a.changes
                    .push((when(&mut self.rng), Change::Nets(vec![net])));
            }
            _ => {}
        }
        if self.rng.chance(0.2) {
            // An SDK upgrade (new version), now and then a switch of SDK.
            let kind = if self.rng.chance(0.2) {
                Kind::OpenaiNode
            } else {
                Kind::OpenaiPython
            };
            if a.programs.iter().all(|p| p.ua.starts_with("OpenAI/")) {
                let p = world::program(kind, self.rng.next_u64());
                a.changes
                    .push((when(&mut self.rng), Change::Programs(vec![p])));
            }
        }
        if server && self.rng.chance(0.1) {
            a.nightly = true;
        }
        if server && self.rng.chance(0.1) {
            let kind = if self.rng.chance(0.5) {
                Kind::OpenaiNode
            } else {
                Kind::OpenaiPython
            };
            let program = world::program(kind, self.rng.next_u64());
            let sys = (0..self.rng.range(1, 4))
                .map(|_| self.rng.next_u64())
                .collect();
            let image_share = if self.rng.chance(0.3) { 0.15 } else { 0.0 };
            let model = "gpt-4o";
            a.changes.push((
                when(&mut self.rng),
                Change::NewApp {
                    program,
                    sys,
                    model,
                    image_share,
                },
            ));
        }
        a.changes.sort_by_key(|c| c.0);
    }

    fn residential(&self, cc: &str) -> Net {
        let by_cc = [
            ("US", 64506),
            ("DE", 64507),
            ("BR", 64504),
            ("IN", 64508),
            ("VN", 64511),
            ("GB", 65543),
            ("IE", 65544),
        ];
        let asn = by_cc
            .iter()
            .find(|(c, _)| *c == cc)
            .map_or(64506, |(_, a)| *a);
        let cc = if by_cc.iter().any(|(c, _)| *c == cc) {
            cc
        } else {
            "US"
        };
        world::net(&self.nets, asn, cc).unwrap_or_else(|| world::corporate_net(0, "US"))
    }

    fn find(&self, asn: u32, cc: &str) -> Net {
        world::net(&self.nets, asn, cc).unwrap_or_else(|| world::corporate_net(0, "US"))
    }

    fn tenant_template(&mut self, t: usize, profile: Profile) -> Legit {
        let rng = &mut self.rng;
        let home_cc = *rng
            .pick(&["US", "US", "DE", "GB", "IE", "US"])
            .unwrap_or(&"US");
        self.home_cc = home_cc.to_owned();
        let rng = &mut self.rng;
        let sdk = if rng.chance(0.6) {
            Kind::OpenaiPython
        } else {
            Kind::OpenaiNode
        };
        let v = rng.next_u64();
        let sys: Vec<u64> = (0..rng.range(1, 4)).map(|_| rng.next_u64()).collect();
        let scale = self.cfg.rate_scale;
        let mut l = Legit {
            key: 0,
            profile,
            tz: match home_cc {
                "US" => -5,
                "DE" => 1,
                _ => 0,
            },
            peak: 20.0 * scale,
            nets: Vec::new(),
            hosts: (0..rng.range(1, 4))
                .map(|_| rng.range(1, 65_000) as u16)
                .collect(),
            programs: vec![world::program(sdk, v)],
            sys,
            dynamic_sys: false,
            end_users: 0,
            models: vec!["gpt-4o-mini", "gpt-4o-mini", "gpt-4o"],
            image_share: 0.0,
            embed_share: if rng.chance(0.3) { 0.15 } else { 0.0 },
            roleplay_share: 0.0,
            hit_share: 0.0,
            probe_share: 0.0,
            lists_models: rng.chance(0.2),
            api_version: None,
            start_ms: self.start_ms,
            burst_left: 0,
            burst_host: 0,
            dev_session: None,
            dev_client: None,
            changes: Vec::new(),
            nightly: false,
        };
        // Cloud apps run in the region nearest their company.
        let cloud = |s: &Simulation, rng: &mut Rng| {
            let asn = if rng.chance(0.6) { 64496 } else { 64497 };
            let cc = match (asn, home_cc) {
                (_, "US") => "US",
                (64496, "GB" | "IE") => "IE",
                _ => "DE",
            };
            world::net(&s.nets, asn, cc).unwrap_or_else(|| world::corporate_net(0, "US"))
        };
        match profile {
            Profile::ServerCloud => {
                l.nets = vec![cloud(self, &mut self.rng.clone())];
                let n = self.rng.next_u64();
                if n.is_multiple_of(5) {
                    // A second region of the same provider.
                    let mut r2 = self.rng.fork();
                    l.nets.push(cloud(self, &mut r2));
                }
                l.peak = self.rng.uniform(8.0, 80.0) * scale;
            }
            Profile::ServerCorp => {
                l.nets = vec![world::corporate_net(t, home_cc)];
                l.peak = self.rng.uniform(5.0, 50.0) * scale;
                if self.rng.chance(0.3) {
                    l.programs = vec![world::program(Kind::Azure, v)];
                    l.api_version = Some("2024-10-21");
                }
            }
            Profile::SupportBot => {
                l.nets = vec![cloud(self, &mut self.rng.clone())];
                l.end_users = 5_000;
                l.dynamic_sys = self.rng.chance(0.5);
                l.peak = self.rng.uniform(20.0, 90.0) * scale;
            }
            Profile::Mobile => {
                l.nets = vec![
                    self.find(64501, "DE"),
                    self.find(64501, "DE"),
                    self.find(65540, "AT"),
                    self.find(65541, "CH"),
                    self.find(64507, "DE"),
                ];
                if self.rng.chance(0.5) {
                    l.nets.push(self.find(65542, "US"));
                }
                l.hosts = Vec::new();
                l.programs = vec![
                    world::program(Kind::Okhttp, v),
                    world::program(Kind::CfNetwork, v),
                ];
                l.end_users = 50_000;
                l.peak = self.rng.uniform(40.0, 150.0) * scale;
                l.tz = 1;
            }
            Profile::Ci => {
                l.nets = vec![self.find(64497, "US")];
                l.hosts = Vec::new();
                l.programs = vec![
                    world::program(Kind::Requests, v),
                    world::program(Kind::Curl, v),
                ];
                l.peak = self.rng.uniform(3.0, 10.0) * scale;
                l.probe_share = 0.2;
                l.lists_models = true;
            }
            Profile::VpnCompany => {
                l.nets = vec![
                    self.find(64503, "SG"),
                    self.find(64503, "US"),
                    self.find(64503, "DE"),
                ];
                l.hosts = (0..40).map(|i| 10 + i).collect();
                l.peak = self.rng.uniform(10.0, 40.0) * scale;
            }
            Profile::Batch => {
                l.nets = vec![cloud(self, &mut self.rng.clone())];
                l.peak = self.rng.uniform(5.0, 15.0) * scale;
                l.models = vec!["gpt-4o"];
            }
            Profile::ImageStudio => {
                l.nets = vec![cloud(self, &mut self.rng.clone())];
                l.image_share = 0.6;
                l.peak = self.rng.uniform(10.0, 40.0) * scale;
                l.models = vec!["gpt-4o-mini"];
                l.hit_share = 0.005;
            }
            Profile::Roleplay => {
                l.nets = vec![cloud(self, &mut self.rng.clone())];
                l.roleplay_share = 0.4;
                l.image_share = 0.1;
                l.end_users = 20_000;
                l.dynamic_sys = true;
                l.peak = self.rng.uniform(30.0, 100.0) * scale;
                l.hit_share = 0.01;
            }
            Profile::Medical => {
                l.nets = vec![world::corporate_net(t, home_cc)];
                l.hit_share = 0.01;
                l.peak = self.rng.uniform(10.0, 40.0) * scale;
            }
        }
        l
    }

    /// An extra key of a tenant of one of the given profiles, with its owner's traffic.
    fn victim(&mut self, templates: &[(Arc<str>, Legit)], profiles: &[Profile], s: usize) -> usize {
        let candidates: Vec<usize> = templates
            .iter()
            .enumerate()
            .filter(|(_, (_, l))| profiles.contains(&l.profile))
            .map(|(i, _)| i)
            .collect();
        let pick = if candidates.is_empty() {
            self.rng.range(0, templates.len() as u64) as usize
        } else {
            candidates
                .get(self.rng.range(0, candidates.len() as u64) as usize)
                .copied()
                .unwrap_or(0)
        };
        let Some((tenant, template)) = templates.get(pick).cloned() else {
            let t: Arc<str> = Arc::from("t-orphan");
            return self.add_key(&t, Profile::ServerCloud, false);
        };
        let key = self.add_key(&tenant, template.profile, false);
        if let Some(k) = self.keys.get_mut(key) {
            k.scenario = Some(s);
        }
        let mut a = template;
        a.key = key;
        let first = self.start_ms + self.rng.range(0, 600_000) as i64;
        self.schedule(first, Actor::Legit(Box::new(a)));
        key
    }

    /// A key with minutes of history: created `minutes` before `t0` and used by its owner
    /// since then — as a new key of an existing tenant (from the tenant's own networks and
    /// client) or as the only key of a tenant that just signed up.
    fn young_victim(
        &mut self,
        templates: &[(Arc<str>, Legit)],
        s: usize,
        t0: i64,
        new_tenant: bool,
    ) -> (usize, Option<(world::Net, Option<u16>)>) {
        let minutes = self.rng.uniform(3.0, 30.0);
        let start = t0 - (minutes * 60_000.0) as i64;
        let (tenant, mut a) = if new_tenant || templates.is_empty() {
            let t = self.tenants;
            self.tenants += 1;
            let tenant: Arc<str> = Arc::from(format!("t{t:04}-signup").as_str());
            let mut a = self.tenant_template(t, Profile::ServerCloud);
            if self.rng.chance(0.5) {
                // Still on the developer's laptop at home.
                let cc = a.nets.first().map_or("US", |n| n.cc);
                a.nets = vec![self.residential(cc)];
            }
            (tenant, a)
        } else {
            let servers = [
                Profile::ServerCloud,
                Profile::ServerCorp,
                Profile::SupportBot,
            ];
            let pick: Vec<&(Arc<str>, Legit)> = templates
                .iter()
                .filter(|(_, l)| servers.contains(&l.profile))
                .collect();
            let i = self.rng.range(0, pick.len() as u64) as usize;
            match pick.get(i) {
                Some((t, l)) => (Arc::clone(t), l.clone()),
                None => (Arc::from("t-orphan"), Legit::placeholder()),
            }
        };
        let key = self.add_key(&tenant, a.profile, false);
        if let Some(k) = self.keys.get_mut(key) {
            k.scenario = Some(s);
        }
        a.key = key;
        a.start_ms = start;
        // The owner's first minutes are busy (setting the app up), then its usual pace.
        a.peak = a.peak.max(30.0 * self.cfg.rate_scale);
        let home = a
            .nets
            .first()
            .cloned()
            .map(|n| (n, a.hosts.first().copied()));
        self.schedule(start, Actor::Legit(Box::new(a)));
        (key, home)
    }

    /// The attacker's client for a young-key scenario: `nets` networks drawn from the
    /// grid of the development or the held-out set.
    fn young_client(&mut self, nets: usize, resale: bool) -> Client {
        let dev_kinds = [Kind::Requests, Kind::AxiosRelay, Kind::Curl, Kind::Aiohttp];
        let hold_kinds = [
            Kind::ForgedPython,
            Kind::Aiohttp,
            Kind::AxiosRelay,
            Kind::Requests,
        ];
        let dev_nets = [
            (64499, "RO"),
            (64510, "RU"),
            (64502, "NL"),
            (64503, "SG"),
            (64504, "BR"),
            (64508, "IN"),
        ];
        let hold_nets = [
            (64509, "NL"),
            (64505, "RO"),
            (64511, "VN"),
            (64503, "DE"),
            (64496, "DE"),
            (64507, "DE"),
            (64504, "BR"),
        ];
        let (kinds, grid): (&[Kind], &[(u32, &str)]) = if self.cfg.holdout {
            (&hold_kinds, &hold_nets)
        } else {
            (&dev_kinds, &dev_nets)
        };
        let kind = if resale && self.rng.chance(0.4) {
            Kind::AxiosRelay
        } else {
            *self.rng.pick(kinds).unwrap_or(&Kind::Requests)
        };
        let mut chosen = Vec::new();
        for _ in 0..nets.max(1) {
            let (asn, cc) = *self.rng.pick(grid).unwrap_or(&(64499, "RO"));
            chosen.push(self.find(asn, cc));
        }
        // One network and one address, or every request from a new address.
        if chosen.len() == 1 && self.rng.chance(0.4) {
            let n = chosen[0].clone();
            chosen.push(n);
        }
        Client {
            nets: chosen,
            host: self.rng.range(1, 60_000) as u16,
            program: world::program(kind, self.rng.next_u64()),
        }
    }

    fn relay_mix(&mut self) -> RelayMix {
        let rng = &mut self.rng;
        let n = rng.range(30, 60);
        RelayMix {
            rate: rng.uniform(60.0, 200.0),
            sys: Arc::new((0..n).map(|_| rng.next_u64()).collect()),
            image: 0.1,
            hit: 0.05,
            evasion: 0.03,
            roleplay: 0.35,
            inflight: (2, 20),
        }
    }

    fn vps(&mut self, kind: Kind) -> Client {
        let choices = [(64502, "NL"), (64499, "RO"), (64510, "RU")];
        let (asn, cc) = *self.rng.pick(&choices).unwrap_or(&(64502, "NL"));
        Client {
            nets: vec![self.find(asn, cc)],
            host: self.rng.range(1, 60_000) as u16,
            program: world::program(kind, self.rng.next_u64()),
        }
    }

    fn checker(&mut self) -> Client {
        let choices = [(64499, "RO"), (64510, "RU"), (64509, "NL"), (64503, "SG")];
        let (asn, cc) = *self.rng.pick(&choices).unwrap_or(&(64499, "RO"));
        let kind = if self.rng.chance(0.5) {
            Kind::Requests
        } else {
            Kind::Aiohttp
        };
        Client {
            nets: vec![self.find(asn, cc)],
            host: self.rng.range(1, 60_000) as u16,
            program: world::program(kind, self.rng.next_u64()),
        }
    }

    fn build_attack(&mut self, s: usize, templates: &[(Arc<str>, Legit)]) {
        use Profile::*;
        let servers = [ServerCloud, ServerCorp];
        let lo = f64::from(self.cfg.warmup_days);
        let hi = (f64::from(self.cfg.days) - 1.5).max(lo + 0.1);
        let t0 = self.start_ms + (self.rng.uniform(lo, hi) * 24.0 * HOUR_MS as f64) as i64;
        let wait =
            |rng: &mut Rng, lo_h: f64, hi_h: f64| (rng.uniform(lo_h, hi_h) * HOUR_MS as f64) as i64;
        let mut mix = self.relay_mix();
        let mut clients = Vec::new();
        let script: Vec<Seg>;
        match SCENARIOS.get(s).copied().unwrap_or("") {
            "leak_proxy_resale" => {
                let v = self.victim(templates, &servers, s);
                clients.push(self.checker());
                clients.push(self.vps(Kind::AxiosRelay));
                script = vec![
                    Seg::Probe {
                        key: v,
                        client: 0,
                        listing: true,
                        tiny: 2,
                    },
                    Seg::Wait(wait(&mut self.rng, 0.5, 6.0)),
                    Seg::Relay {
                        key: v,
                        client: 1,
                        hours: 36.0,
                        persistent: false,
                    },
                ];
            }
            "stealth_resale" => {
                let v = self.victim(templates, &[ServerCloud, ServerCorp, SupportBot], s);
                let home = templates
                    .iter()
                    .find(|(t, _)| self.keys.get(v).is_some_and(|k| k.tenant == *t))
                    .map(|(_, l)| {
                        (
                            l.nets.first().map_or("US", |n| n.cc),
                            l.programs.first().cloned(),
                        )
                    });
                let (cc, program) = home.unwrap_or(("US", None));
                let net = self.residential(cc);
                clients.push(Client {
                    nets: vec![net],
                    host: self.rng.range(1, 60_000) as u16,
                    program: program.unwrap_or_else(|| world::program(Kind::OpenaiPython, 0)),
                });
                mix.roleplay = 0.0;
                mix.evasion = 0.0;
                mix.image = 0.15;
                mix.hit = 0.04;
                mix.inflight = (1, 4);
                mix.rate = self.rng.uniform(30.0, 60.0);
                script = vec![Seg::Relay {
                    key: v,
                    client: 0,
                    hours: 36.0,
                    persistent: false,
                }];
            }
            "checker_then_resale" => {
                let v = self.victim(templates, &servers, s);
                let mut c = self.checker();
                c.nets = vec![self.find(64503, "SG")];
                clients.push(c);
                clients.push(self.vps(Kind::AxiosRelay));
                let count = self.rng.range(40, 120) as u32;
                script = vec![
                    Seg::Checker {
                        key: v,
                        client: 0,
                        period: 180.0,
                        count,
                    },
                    Seg::Wait(wait(&mut self.rng, 1.0, 4.0)),
                    Seg::Relay {
                        key: v,
                        client: 1,
                        hours: 36.0,
                        persistent: false,
                    },
                ];
            }
            "mobile_extracted" => {
                let v = self.victim(templates, &[Mobile], s);
                let mut c = self.vps(Kind::Aiohttp);
                clients.push(c.clone());
                c.program = world::program(Kind::AxiosRelay, self.rng.next_u64());
                clients.push(c);
                script = vec![
                    Seg::Probe {
                        key: v,
                        client: 0,
                        listing: false,
                        tiny: 1,
                    },
                    Seg::Wait(wait(&mut self.rng, 1.0, 3.0)),
                    Seg::Relay {
                        key: v,
                        client: 1,
                        hours: 36.0,
                        persistent: false,
                    },
                ];
            }
            "vpn_company_leak" => {
                let v = self.victim(templates, &[VpnCompany], s);
                clients.push(Client {
                    nets: vec![self.find(64505, "RO")],
                    host: self.rng.range(1, 60_000) as u16,
                    program: world::program(Kind::Requests, self.rng.next_u64()),
                });
                clients.push(self.vps(Kind::AxiosRelay));
                script = vec![
                    Seg::Probe {
                        key: v,
                        client: 0,
                        listing: true,
                        tiny: 1,
                    },
                    Seg::Wait(wait(&mut self.rng, 0.5, 4.0)),
                    Seg::Relay {
                        key: v,
                        client: 1,
                        hours: 36.0,
                        persistent: false,
                    },
                ];
            }
            "ci_leak" => {
                let v = self.victim(templates, &[Ci], s);
                clients.push(Client {
                    nets: vec![self.find(64510, "RU")],
                    host: self.rng.range(1, 60_000) as u16,
                    program: world::program(Kind::Requests, self.rng.next_u64()),
                });
                let mut relay = self.vps(Kind::Aiohttp);
                relay.nets = vec![self.find(64499, "RO")];
                clients.push(relay);
                script = vec![
                    Seg::Probe {
                        key: v,
                        client: 0,
                        listing: true,
                        tiny: 1,
                    },
                    Seg::Wait(wait(&mut self.rng, 0.5, 4.0)),
                    Seg::Relay {
                        key: v,
                        client: 1,
                        hours: 36.0,
                        persistent: false,
                    },
                ];
            }
            "canary_harvest" => {
                let (tenant, _) = templates
                    .get(self.rng.range(0, templates.len() as u64) as usize)
                    .cloned()
                    .unwrap_or_else(|| (Arc::from("t-canary"), Legit::placeholder()));
                let canary = self.add_key(&tenant, ServerCloud, true);
                if let Some(k) = self.keys.get_mut(canary) {
                    k.scenario = Some(s);
                }
                let v = self.victim(templates, &servers, s);
                let mut crawler = self.checker();
                crawler.nets = vec![self.find(64510, "RU")];
                clients.push(crawler);
                clients.push(self.vps(Kind::AxiosRelay));
                script = vec![
                    Seg::Probe {
                        key: canary,
                        client: 0,
                        listing: true,
                        tiny: 1,
                    },
                    Seg::Wait(wait(&mut self.rng, 0.03, 0.2)),
                    Seg::Probe {
                        key: v,
                        client: 0,
                        listing: true,
                        tiny: 1,
                    },
                    Seg::Wait(wait(&mut self.rng, 1.0, 4.0)),
                    Seg::Relay {
                        key: v,
                        client: 1,
                        hours: 36.0,
                        persistent: false,
                    },
                ];
            }
            "revoked_retry" => {
                let v = self.victim(templates, &servers, s);
                clients.push(self.vps(Kind::AxiosRelay));
                self.schedule(t0, Actor::OperatorRevoke { key: v });
                script = vec![
                    Seg::Wait(wait(&mut self.rng, 0.2, 1.0)),
                    Seg::Relay {
                        key: v,
                        client: 0,
                        hours: 12.0,
                        persistent: true,
                    },
                ];
            }
            "key_swap" => {
                let v1 = self.victim(templates, &servers, s);
                let v2 = self.victim(templates, &[ServerCloud, ServerCorp, SupportBot], s);
                let v3 = self.victim(templates, &servers, s);
                clients.push(self.checker());
                clients.push(self.vps(Kind::AxiosRelay));
                script = vec![
                    Seg::Probe {
                        key: v1,
                        client: 0,
                        listing: true,
                        tiny: 1,
                    },
                    Seg::Wait(wait(&mut self.rng, 0.5, 2.0)),
                    Seg::Relay {
                        key: v1,
                        client: 1,
                        hours: 36.0,
                        persistent: false,
                    },
                    Seg::Relay {
                        key: v2,
                        client: 1,
                        hours: 36.0,
                        persistent: false,
                    },
                    Seg::Relay {
                        key: v3,
                        client: 1,
                        hours: 36.0,
                        persistent: false,
                    },
                ];
            }
            "travel_rotation" => {
                let v = self.victim(templates, &servers, s);
                let nets = ["BR", "IN", "VN", "US", "DE", "GB"]
                    .iter()
                    .map(|cc| self.residential(cc))
                    .collect();
                clients.push(Client {
                    nets,
                    host: 1,
                    program: world::program(Kind::ForgedPython, self.rng.next_u64()),
                });
                mix.rate = 80.0;
                mix.roleplay = 0.2;
                script = vec![
                    Seg::Probe {
                        key: v,
                        client: 0,
                        listing: false,
                        tiny: 1,
                    },
                    Seg::Wait(wait(&mut self.rng, 0.2, 2.0)),
                    Seg::Relay {
                        key: v,
                        client: 0,
                        hours: 36.0,
                        persistent: false,
                    },
                ];
            }
            "image_abuse" => {
                let v = self.victim(templates, &servers, s);
                clients.push(Client {
                    nets: vec![self.find(64509, "NL")],
                    host: self.rng.range(1, 60_000) as u16,
                    program: world::program(Kind::OpenaiNode, self.rng.next_u64()),
                });
                mix.image = 0.8;
                mix.hit = 0.3;
                mix.evasion = 0.2;
                mix.roleplay = 0.1;
                mix.rate = 30.0;
                mix.inflight = (1, 3);
                script = vec![Seg::Relay {
                    key: v,
                    client: 0,
                    hours: 36.0,
                    persistent: false,
                }];
            }
            "young_takeover" => {
                let fresh = self.rng.chance(0.5);
                let (v, home) = self.young_victim(templates, s, t0, fresh);
                let nets = self.rng.range(1, 3) as usize;
                let mut taker = self.young_client(nets, false);
                // Development grid: now and then the taker works from the victim's own
                // network — the same cloud region, or the same residential ISP as a
                // signup's laptop — from another address. Drawn from a hash, so the rest
                // of the run's draws stay as they were.
                if !self.cfg.holdout
                    && let Some((home, _)) = &home
                    && side_draw(self.cfg.seed, s as u64, v as u64 + 7_919) < 0.3
                {
                    taker.nets = vec![home.clone()];
                }
                // Both grids: now and then the taker sits inside the owner's very /24 (the
                // office NAT, the household line, the app's cloud subnet), another address
                // of it, so no network signal tells it apart.
                let inside = if self.cfg.holdout { 0.15 } else { 0.2 };
                if let Some((home, Some(host))) = &home
                    && side_draw(self.cfg.seed, s as u64, v as u64 + 104_729) < inside
                {
                    taker.nets = vec![home.clone()];
                    let low = (side_draw(self.cfg.seed, v as u64, 3) * 250.0) as u16 + 1;
                    taker.host = (host & 0xff00) | low;
                }
                clients.push(taker);
                let orders: [&[Step]; 4] = if self.cfg.holdout {
                    [
                        &[Step::Listing, Step::Probe, Step::Roleplay, Step::Roleplay],
                        &[Step::Probe, Step::Chat, Step::Roleplay, Step::Listing],
                        &[Step::Roleplay, Step::Probe, Step::Roleplay],
                        &[Step::Chat, Step::Listing, Step::Roleplay, Step::Roleplay],
                    ]
                } else {
                    [
                        &[Step::Probe, Step::Listing, Step::Roleplay, Step::Roleplay],
                        &[Step::Listing, Step::Probe, Step::Probe, Step::Roleplay],
                        &[Step::Probe, Step::Roleplay, Step::Roleplay],
                        &[Step::Roleplay, Step::Listing, Step::Roleplay],
                    ]
                };
                let steps = self.rng.pick(&orders).copied().unwrap_or(&[]).to_vec();
                let gap_ms = if self.cfg.holdout {
                    *self
                        .rng
                        .pick(&[(1_000, 15_000), (120_000, 600_000)])
                        .unwrap_or(&(1_000, 15_000))
                } else {
                    *self
                        .rng
                        .pick(&[(5_000, 60_000), (30_000, 240_000)])
                        .unwrap_or(&(5_000, 60_000))
                };
                mix.roleplay = 0.6;
                mix.image = 0.0;
                mix.hit = 0.0;
                mix.evasion = 0.0;
                mix.inflight = (1, 3);
                mix.rate = self.rng.uniform(20.0, 120.0);
                script = vec![
                    Seg::Sequence {
                        key: v,
                        client: 0,
                        steps,
                        gap_ms,
                    },
                    Seg::Relay {
                        key: v,
                        client: 0,
                        hours: 12.0,
                        persistent: false,
                    },
                ];
            }
            "young_resale" => {
                let fresh = self.rng.chance(0.5);
                let (v, _) = self.young_victim(templates, s, t0, fresh);
                let nets = if self.cfg.holdout {
                    self.rng.range(5, 9)
                } else {
                    self.rng.range(1, 6)
                } as usize;
                clients.push(self.young_client(nets, true));
                mix.roleplay = self.rng.uniform(0.3, 0.6);
                mix.image = 0.0;
                mix.hit = 0.0;
                mix.evasion = 0.0;
                mix.inflight = (1, 6);
                mix.rate = if self.cfg.holdout {
                    self.rng.uniform(100.0, 400.0)
                } else {
                    self.rng.uniform(40.0, 200.0)
                };
                let first: Vec<Step> = if self.rng.chance(0.5) {
                    vec![Step::Probe]
                } else {
                    Vec::new()
                };
                script = vec![
                    Seg::Sequence {
                        key: v,
                        client: 0,
                        steps: first,
                        gap_ms: (2_000, 20_000),
                    },
                    Seg::Relay {
                        key: v,
                        client: 0,
                        hours: 12.0,
                        persistent: false,
                    },
                ];
            }
            _ => {
                // exposure_reported
                let v = self.victim(templates, &servers, s);
                clients.push(self.vps(Kind::AxiosRelay));
                self.schedule(t0, Actor::Exposure { key: v });
                script = vec![
                    Seg::Wait(wait(&mut self.rng, 0.3, 2.0)),
                    Seg::Relay {
                        key: v,
                        client: 0,
                        hours: 36.0,
                        persistent: false,
                    },
                ];
            }
        }
        let attack = Attack {
            scenario: s,
            clients,
            mix,
            script,
            pos: 0,
            done: 0,
            seg_start: t0,
            retries: 0,
        };
        self.schedule(t0, Actor::Attack(Box::new(attack)));
    }

    /// Runs the simulation through `engine`, calling `sink` with every event and its label
    /// (e.g. to write an event file), and returns the evaluation.
    pub fn run(
        mut self,
        engine: &mut Engine,
        min_severity: Severity,
        mut sink: impl FnMut(&UsageEvent, Label, &[Alert], &[Action]),
    ) -> Report {
        let mut gw = Gateway {
            keys: self
                .keys
                .iter()
                .map(|k| GwKey {
                    canary: k.canary,
                    ..GwKey::default()
                })
                .collect(),
        };
        let n = self.keys.len();
        let mut outcome: Vec<KeyOutcome> = vec![KeyOutcome::default(); n];
        let key_index: HashMap<KeyId, usize> = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, k)| (k.id.clone(), i))
            .collect();
        let mut attacker_ids: HashSet<String> = HashSet::new();
        let mut per_det: Vec<DetectorTally> =
            vec![(0, 0, HashSet::new(), HashSet::new()); stormwall_types::DetectorId::ALL.len()];
        let mut report = Report {
            seed: self.cfg.seed,
            days: self.cfg.days,
            tenants: self.tenants,
            min_severity,
            ..Report::default()
        };
        let mut seq: u64 = 0;
        let mut alerts: Vec<Alert> = Vec::new();
        let mut actions: Vec<Action> = Vec::new();
        let mut incidents = Incidents::default();
        while let Some(Reverse((t, _, idx))) = self.heap.pop() {
            if t >= self.end_ms {
                continue;
            }
            let Some(actor) = self.actors.get_mut(idx) else {
                continue;
            };
            let (req, label, next) = match actor {
                Actor::Legit(l) => {
                    // An owner whose key was revoked by an operator has rotated to a new one.
                    if gw
                        .keys
                        .get(l.key)
                        .is_some_and(|g| g.status == Some(KeyStatus::Revoked))
                    {
                        continue;
                    }
                    let (r, next) = l.step(t, &mut self.rng);
                    (
                        r,
                        Label {
                            scenario: None,
                            abuse: false,
                        },
                        Some(next),
                    )
                }
                Actor::Attack(a) => {
                    let s = a.scenario;
                    let (r, next) = a.step(t, &mut self.rng, &gw);
                    match r {
                        Some(ar) => (
                            Some(ar.req),
                            Label {
                                scenario: Some(s),
                                abuse: ar.abuse,
                            },
                            next,
                        ),
                        None => (
                            None,
                            Label {
                                scenario: Some(s),
                                abuse: false,
                            },
                            next,
                        ),
                    }
                }
                Actor::Exposure { key } => {
                    let k = *key;
                    if let Some(info) = self.keys.get(k) {
                        let at = to_time(t);
                        let alert = engine.note_exposure(
                            &info.id,
                            Some(&info.tenant),
                            at,
                            "simulated leak report",
                        );
                        alerts.clear();
                        actions.clear();
                        if let Some(action) = engine.decide(&alert) {
                            apply(&mut gw, k, &action, &mut outcome, t);
                            actions.push(action);
                        }
                        incidents.add(&alert, actions.last(), true);
                        alerts.push(alert);
                        count_alerts(
                            &alerts,
                            &attacker_ids,
                            &key_index,
                            &self.keys,
                            &mut outcome,
                            &mut per_det,
                            min_severity,
                            t,
                        );
                        report.alerts += 1;
                    }
                    (
                        None,
                        Label {
                            scenario: None,
                            abuse: false,
                        },
                        None,
                    )
                }
                Actor::OperatorRevoke { key } => {
                    let k = *key;
                    if let (Some(info), Some(g)) = (self.keys.get(k), gw.keys.get_mut(k)) {
                        g.status = Some(KeyStatus::Revoked);
                        engine.key_status(&info.id, KeyStatus::Revoked, to_time(t));
                        if let Some(o) = outcome.get_mut(k) {
                            o.stopped_at.get_or_insert(t);
                        }
                    }
                    (
                        None,
                        Label {
                            scenario: None,
                            abuse: false,
                        },
                        None,
                    )
                }
            };
            if let Some(next) = next {
                let s = self.rng.next_u64();
                self.heap.push(Reverse((next.max(t + 1), s, idx)));
            }
            let Some(req) = req else {
                continue;
            };
            seq += 1;
            let Some(info) = self.keys.get(req.key) else {
                continue;
            };
            let mut e = build_event(&req, info, t, seq);
            gateway_apply(&mut gw, req.key, &mut e, t);
            report.events += 1;
            let o = &mut outcome[req.key.min(n - 1)];
            if label.scenario.is_some() {
                report.attacker_events += 1;
                attacker_ids.insert(e.id.clone());
                o.first_attack.get_or_insert(t);
                if label.abuse && o.abuse_start.is_none() {
                    o.abuse_start = Some(t);
                    o.active_at_abuse = e.decision == stormwall_types::Decision::Allow
                        || e.reject_reason == Some(RejectReason::RateLimitRequests);
                }
                if o.abuse_start.is_some() && e.decision == stormwall_types::Decision::Allow {
                    o.served_after_abuse += 1;
                }
            }
            alerts.clear();
            actions.clear();
            engine.observe_into(&e, &mut alerts);
            report.alerts += alerts.len() as u64;
            for a in &alerts {
                let decided = engine.decide(a);
                if let Some(action) = &decided {
                    let k = action.key_id.clone();
                    if let Some(&ki) = key_index.get(&k) {
                        apply(&mut gw, ki, action, &mut outcome, t);
                    }
                }
                let truth = a.evidence.iter().any(|id| attacker_ids.contains(id));
                incidents.add(a, decided.as_ref(), truth);
                if let Some(action) = decided {
                    actions.push(action);
                }
            }
            count_alerts(
                &alerts,
                &attacker_ids,
                &key_index,
                &self.keys,
                &mut outcome,
                &mut per_det,
                min_severity,
                t,
            );
            sink(&e, label, &alerts, &actions);
        }
        incidents.finish(
            &mut report,
            &key_index,
            &self.keys,
            &mut outcome,
            min_severity,
        );
        finish_report(&mut report, &self.keys, &outcome, &per_det);
        report.engine = engine.stats();
        report
    }
}

impl Legit {
    /// A harmless placeholder (only used when a population is empty).
    fn placeholder() -> Self {
        Legit {
            key: 0,
            profile: Profile::ServerCloud,
            tz: 0,
            peak: 1.0,
            nets: Vec::new(),
            hosts: Vec::new(),
            programs: Vec::new(),
            sys: Vec::new(),
            dynamic_sys: false,
            end_users: 0,
            models: Vec::new(),
            image_share: 0.0,
            embed_share: 0.0,
            roleplay_share: 0.0,
            hit_share: 0.0,
            probe_share: 0.0,
            lists_models: false,
            api_version: None,
            start_ms: 0,
            burst_left: 0,
            burst_host: 0,
            dev_session: None,
            dev_client: None,
            changes: Vec::new(),
            nightly: false,
        }
    }
}

/// The incidents of a run: the grouper, the latest revision of every incident, and which
/// incidents hold a true (attacker) alert.
#[derive(Default)]
struct Incidents {
    grouper: stormwall_detect::Grouper,
    all: HashMap<String, stormwall_types::Incident>,
    true_ids: HashSet<String>,
    notifications: usize,
}

impl Incidents {
    fn add(&mut self, alert: &Alert, action: Option<&Action>, truth: bool) {
        let Some(u) = self.grouper.add(alert, action) else {
            return;
        };
        if u.notify() {
            self.notifications += 1;
        }
        if truth {
            self.true_ids.insert(u.incident.id.clone());
        }
        self.all.insert(u.incident.id.clone(), u.incident);
    }

    fn finish(
        &self,
        r: &mut Report,
        key_index: &HashMap<KeyId, usize>,
        keys: &[KeyInfo],
        outcome: &mut [KeyOutcome],
        min_severity: Severity,
    ) {
        r.incidents = self.all.len();
        r.notifications = self.notifications;
        for inc in self.all.values() {
            if inc.severity < min_severity {
                continue;
            }
            r.incidents_at_severity += 1;
            let stormwall_types::IncidentSubject::Key(k) = &inc.subject else {
                continue;
            };
            let Some(ki) = KeyId::new(k)
                .ok()
                .and_then(|id| key_index.get(&id).copied())
            else {
                continue;
            };
            let attack = keys.get(ki).is_some_and(|k| k.scenario.is_some());
            let Some(o) = outcome.get_mut(ki) else {
                continue;
            };
            if attack && self.true_ids.contains(&inc.id) {
                o.attack_incident = true;
            } else if !attack {
                o.legit_incident = true;
            }
        }
    }
}

/// A uniform draw in [0, 1) from a hash of its inputs, for choices added to the population
/// without shifting the generator's stream (SplitMix64's finaliser).
fn side_draw(seed: u64, a: u64, b: u64) -> f64 {
    let mut z = seed
        .wrapping_add(a.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .wrapping_add(b.wrapping_mul(0xbf58_476d_1ce4_e5b9))
        .wrapping_add(0x94d0_49bb_1331_11eb);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

fn parse_start(s: &str) -> Result<i64, SimError> {
    stormwall_types::timefmt::parse(s)
        .map(|t| t.unix_timestamp())
        .map_err(|_| SimError::Invalid("start must be an RFC 3339 timestamp"))
}

fn to_time(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn apply(gw: &mut Gateway, key: usize, action: &Action, outcome: &mut [KeyOutcome], t: i64) {
    let Some(g) = gw.keys.get_mut(key) else {
        return;
    };
    let Some(o) = outcome.get_mut(key) else {
        return;
    };
    // The gateway's own rule for what an action changes on a key (a model of the store's
    // record: no status is an active key).
    match action.effect_on(g.status.unwrap_or(KeyStatus::Active), g.throttle_rpm) {
        KeyEffect::Notify | KeyEffect::AlreadyInEffect => {}
        KeyEffect::Throttle(rpm) => {
            g.throttle_rpm = Some(rpm);
            o.throttled = true;
        }
        KeyEffect::Suspend => g.status = Some(KeyStatus::Suspended),
        KeyEffect::Revoke => g.status = Some(KeyStatus::Revoked),
    }
    if matches!(action.kind, ActionKind::Suspend | ActionKind::Revoke) && o.stopped_at.is_none() {
        o.stopped_at = Some(t);
        if o.first_attack.is_none() {
            o.stopped_before_attack = true;
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn count_alerts(
    alerts: &[Alert],
    attacker_ids: &HashSet<String>,
    key_index: &HashMap<KeyId, usize>,
    keys: &[KeyInfo],
    outcome: &mut [KeyOutcome],
    per_det: &mut [DetectorTally],
    min_severity: Severity,
    t: i64,
) {
    for a in alerts {
        let Some(ki) = a.key_id.as_ref().and_then(|k| key_index.get(k)).copied() else {
            continue;
        };
        let is_attack_key = keys.get(ki).is_some_and(|k| k.scenario.is_some());
        let true_alert = a.evidence.iter().any(|id| attacker_ids.contains(id))
            || a.detector == stormwall_types::DetectorId::E1 && is_attack_key;
        let d = a.detector.index();
        if let Some(pd) = per_det.get_mut(d) {
            pd.0 += 1;
            if true_alert {
                pd.1 += 1;
                pd.2.insert(ki);
            } else {
                pd.3.insert(ki);
            }
        }
        let Some(o) = outcome.get_mut(ki) else {
            continue;
        };
        if a.severity >= min_severity {
            if true_alert {
                o.detected_at.get_or_insert(t);
                o.detectors.insert(d);
            } else {
                o.legit_alerted = true;
                o.false_detectors.insert(d);
            }
        }
    }
}

/// Median of the values (sorts them); `None` when empty.
fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

/// Nearest-rank percentile `p` in 0..=1 of the values (sorts them); `None` when empty.
fn percentile(v: &mut [f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied()
}

/// Fills the report's key, recall, precision, served, per-scenario and per-detector figures
/// from each key's outcome (`outcome[i]` is `keys[i]`'s) and the detectors' tallies.
pub fn finish_report(
    r: &mut Report,
    keys: &[KeyInfo],
    outcome: &[KeyOutcome],
    per_det: &[DetectorTally],
) {
    let mut served = Vec::new();
    let mut detect_secs = Vec::new();
    let mut stop_secs = Vec::new();
    let mut detected = 0usize;
    let mut scen: BTreeMap<String, (ScenarioFigures, Vec<f64>, HashSet<usize>)> = BTreeMap::new();
    for (k, o) in keys.iter().zip(outcome) {
        match k.scenario {
            None => {
                r.legit_keys += 1;
                if o.legit_alerted {
                    r.legit_keys_alerted += 1;
                }
                if o.stopped() {
                    r.false_suspensions += 1;
                }
                if o.throttled {
                    r.false_throttles += 1;
                }
            }
            Some(s) => {
                let name = SCENARIOS.get(s).copied().unwrap_or("?").to_owned();
                let entry = scen.entry(name).or_default();
                r.attack_keys += 1;
                entry.0.keys += 1;
                if o.stopped_before_attack {
                    r.false_suspensions += 1;
                }
                let is_detected = o.detected_at.is_some() || o.attack_incident;
                if is_detected {
                    detected += 1;
                    entry.0.detected += 1;
                    entry.2.extend(o.detectors.iter().copied());
                    if let (Some(d), Some(f)) = (o.detected_at, o.first_attack) {
                        detect_secs.push((d - f) as f64 / 1000.0);
                    }
                }
                let never_served = k.canary || !o.active_at_abuse && o.abuse_start.is_some();
                if o.stopped() || never_served {
                    r.attack_keys_stopped += 1;
                    entry.0.stopped += 1;
                }
                if let Some(a) = o.abuse_start
                    && o.active_at_abuse
                    && !k.canary
                {
                    served.push(o.served_after_abuse as f64);
                    entry.1.push(o.served_after_abuse as f64);
                    if let Some(s) = o.stopped_at {
                        stop_secs.push(((s - a).max(0)) as f64 / 1000.0);
                    }
                }
            }
        }
    }
    r.keys_with_abuse_phase = served.len();
    r.recall = if r.attack_keys == 0 {
        0.0
    } else {
        detected as f64 / r.attack_keys as f64
    };
    let flagged = detected + r.legit_keys_alerted;
    r.alert_precision = if flagged == 0 {
        0.0
    } else {
        detected as f64 / flagged as f64
    };
    r.legit_keys_with_medium_incident = keys
        .iter()
        .zip(outcome)
        .filter(|(k, o)| k.scenario.is_none() && o.legit_incident)
        .count();
    for (k, o) in keys.iter().zip(outcome) {
        if k.scenario.is_none() && o.legit_incident {
            *r.legit_incidents_by_profile
                .entry(k.profile.to_owned())
                .or_default() += 1;
        }
    }
    let flagged = detected + r.legit_keys_with_medium_incident;
    r.precision = if flagged == 0 {
        0.0
    } else {
        detected as f64 / flagged as f64
    };
    r.max_attacker_requests_served = served.iter().fold(0.0f64, |a, &b| a.max(b)) as u64;
    r.p90_attacker_requests_served = percentile(&mut served, 0.9).unwrap_or(0.0);
    r.median_attacker_requests_served = median(&mut served).unwrap_or(0.0);
    r.median_seconds_to_detect = median(&mut detect_secs);
    r.median_seconds_to_stop = median(&mut stop_secs);
    for (name, (mut f, mut s, dets)) in scen {
        f.median_served = median(&mut s);
        f.max_served = s.iter().copied().reduce(f64::max).map(|m| m as u64);
        f.p90_served = percentile(&mut s, 0.9);
        f.served = s.iter().map(|v| *v as u64).collect();
        let mut d: Vec<String> = dets
            .into_iter()
            .filter_map(|i| stormwall_types::DetectorId::ALL.get(i))
            .map(|d| d.as_str().to_owned())
            .collect();
        d.sort();
        f.detectors = d;
        r.per_scenario.insert(name, f);
    }
    for d in stormwall_types::DetectorId::ALL {
        let Some((alerts, true_alerts, atk, legit)) = per_det.get(d.index()) else {
            continue;
        };
        r.per_detector.insert(
            d.as_str().to_owned(),
            DetectorFigures {
                alerts: *alerts,
                true_alerts: *true_alerts,
                precision: (*alerts > 0).then(|| *true_alerts as f64 / *alerts as f64),
                attack_keys: atk.len(),
                recall: if r.attack_keys == 0 {
                    0.0
                } else {
                    atk.len() as f64 / r.attack_keys as f64
                },
                legit_keys: legit.len(),
                legit_keys_at_severity: keys
                    .iter()
                    .zip(outcome)
                    .filter(|(k, o)| k.scenario.is_none() && o.false_detectors.contains(&d.index()))
                    .count(),
            },
        );
    }
}

/// The gateway model: canary, revoked and suspended keys are refused; a throttled key gets
/// its requests-per-minute limit, decided by the gateway's admission engine at the event's
/// time; everything else is served.
fn gateway_apply(gw: &mut Gateway, key: usize, e: &mut UsageEvent, t: i64) {
    let Some(g) = gw.keys.get_mut(key) else {
        return;
    };
    let refuse = |e: &mut UsageEvent, reason: RejectReason| {
        let answer = reason.openai_error();
        e.deny(reason);
        e.status = answer.status;
        e.input_tokens = None;
        e.output_tokens = None;
        e.cost_usd = 0.0;
        e.upstream = None;
        e.upstream_status = None;
        e.error_code = Some(answer.code.to_owned());
    };
    if g.canary {
        e.key_kind = Some(KeyKind::Canary);
        refuse(e, RejectReason::CanaryKey);
        return;
    }
    match g.status {
        Some(KeyStatus::Revoked) => return refuse(e, RejectReason::RevokedKey),
        Some(KeyStatus::Suspended) => return refuse(e, RejectReason::SuspendedKey),
        _ => {}
    }
    if let Some(rpm) = g.throttle_rpm {
        // The gateway's own sliding window (a key is counted from when it gets a limit).
        let req = RateRequest {
            rpm: Some(rpm),
            tpm: None,
            tokens: 0,
        };
        if let RateDecision::Denied { .. } = g.limits.check_rate(req, t) {
            refuse(e, RejectReason::RateLimitRequests);
        }
    }
}

fn hex128(seed: u64) -> String {
    format!("{:016x}{:016x}", mix64(seed), mix64(seed ^ 0xa5a5))
}

/// The gateway's built-in price table (one table: `stormwall_types::pricing`).
static PRICES: std::sync::LazyLock<Pricing> = std::sync::LazyLock::new(Pricing::default);

/// Turns a request into the event the gateway would record.
fn build_event(r: &Req, info: &KeyInfo, t_ms: i64, seq: u64) -> UsageEvent {
    let ip = r.net.ip(r.host);
    let (method, path, _) = r.http_target();
    let mut e = UsageEvent::new(
        format!("{t_ms:013}-{seq:08x}"),
        to_time(t_ms),
        ip,
        method,
        &path,
    );
    e.dataset = "simulator".to_owned();
    e.tenant = Some(info.tenant.to_string());
    e.key_id = Some(info.id.clone());
    e.key_kind = Some(if info.canary {
        KeyKind::Canary
    } else {
        KeyKind::Normal
    });
    e.source_port = 40_000 + (seq % 20_000) as u16;
    e.source_asn = Some(r.net.asn);
    e.source_as_org = Some(r.net.org.to_owned());
    e.source_country = Some(r.net.cc.to_owned());
    e.user_agent = Some(r.program.ua.to_string());
    e.header_names = (*r.program.headers).clone();
    if r.program.empty_origin {
        e.origin = Some(String::new());
        e.referer = Some(String::new());
    }
    e.forwarded = r.program.forwarded;
    e.tls_fingerprint = world::tls_of(&r.program).map(str::to_owned);
    e.flavor = Some(if r.api_version.is_some() {
        ApiFlavor::Azure
    } else {
        ApiFlavor::Openai
    });
    e.api_version = r.api_version.map(str::to_owned);
    e.endpoint = Some(r.endpoint);
    e.system = Some("openai".to_owned());
    if r.endpoint != Endpoint::Models {
        e.model = Some(r.model.to_owned());
        e.response_model = Some(r.model.to_owned());
    }
    e.max_tokens = r.max_tokens;
    e.end_user = r.end_user.map(|u| format!("u-{u:x}"));
    e.estimated_input_tokens = r.in_tok;
    if r.endpoint == Endpoint::ImagesGenerations {
        e.images = Some(1);
    }
    e.system_prompt_hash = r.sys.map(hex128);
    if let Some(root) = r.root {
        e.prompt_minhash = (0..16u64).map(|i| (mix64(root ^ i) >> 36) as u32).collect();
        e.prompt_simhash = Some(format!("{:016x}", mix64(root ^ 0x51)));
    }
    e.prompt_chars = r.prompt_chars;
    e.prompt_messages = if r.sys.is_some() { 2 } else { 1 };
    e.safety = r.verdicts.clone();
    e.inflight = r.inflight;
    e.upstream = Some("mock".to_owned());
    e.upstream_status = Some(200);
    e.status = 200;
    if r.endpoint != Endpoint::Models {
        e.input_tokens = Some(r.in_tok);
        e.output_tokens = Some(r.out_tok);
        e.cost_usd = PRICES.cost(r.model, r.in_tok, r.out_tok, 1);
    }
    if r.verdicts.iter().any(|v| v.action == safety::Action::Block) {
        let answer = RejectReason::ContentPolicy.openai_error();
        e.deny(RejectReason::ContentPolicy);
        e.status = answer.status;
        e.error_code = Some(answer.code.to_owned());
        e.output_tokens = Some(0);
        e.cost_usd = 0.0;
    }
    e.duration_ms = 50.0 + (r.out_tok as f64) * 2.0;
    e
}

/// How a live replay re-times the simulation (see [`Simulation::live`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LiveOptions {
    /// Length of the replay, in milliseconds of wall-clock time.
    pub duration_ms: i64,
    /// Share of the window that carries legitimate traffic only, before the first attack.
    pub warmup_share: f64,
    /// Share of the window by which every attack has started.
    pub attacks_by_share: f64,
    /// Legitimate requests per second over all legitimate actors together.
    pub legit_rps: f64,
    /// Simulated seconds per live second inside an attack.
    pub speed: f64,
    /// Shortest live gap between two requests of one attacker, milliseconds.
    pub min_gap_ms: i64,
    /// Longest live gap inside an attack: waits of hours become this, milliseconds.
    pub max_gap_ms: i64,
    /// Most micro-requests a checker sends live (enough cycles for V4, not minutes of them).
    pub max_checker_requests: u32,
}

impl Default for LiveOptions {
    fn default() -> Self {
        Self {
            duration_ms: 60_000,
            warmup_share: 0.3,
            attacks_by_share: 0.55,
            legit_rps: 5.0,
            speed: 120.0,
            min_gap_ms: 100,
            max_gap_ms: 3_000,
            max_checker_requests: 8,
        }
    }
}

/// One thing a live replay asks its driver to do.
#[derive(Debug, Clone)]
pub enum LiveItem {
    /// Send this request.
    Request {
        /// The request.
        req: Box<Req>,
        /// Who sends it and whether it belongs to an abuse phase.
        label: Label,
    },
    /// An operator revokes the key (scenario `revoked_retry`).
    Revoke {
        /// Key index.
        key: usize,
    },
    /// The key is reported exposed (scenario `exposure_reported`); the gateway's answer to a
    /// leaked-key report is to revoke it.
    Exposure {
        /// Key index.
        key: usize,
    },
}

/// The simulation's actors re-timed for wall-clock replay against a live gateway.
///
/// Legitimate actors keep their request shapes and order but are paced steadily (each
/// key's share of `legit_rps` follows its simulated peak rate); attack actors start one
/// after the other between the warm-up and `attacks_by_share` of the window, keep their
/// script order, and have their simulated gaps divided by `speed` and clamped to
/// `[min_gap_ms, max_gap_ms]`. The attackers still see the gateway through a
/// [`GatewayView`], so the loop is closed by the real gateway's answers.
pub struct LiveReplay {
    actors: Vec<Actor>,
    sim_t: Vec<i64>,
    interval_ms: Vec<f64>,
    heap: BinaryHeap<Reverse<(i64, u64, usize)>>,
    rng: Rng,
    opts: LiveOptions,
    revoked: HashSet<usize>,
}

impl Simulation {
    /// The distinct networks any actor can send from (what a live IP database must map).
    pub fn networks_in_use(&self) -> Vec<Net> {
        let mut out: Vec<Net> = Vec::new();
        let mut push = |n: &Net| {
            if !out
                .iter()
                .any(|o| o.prefix == n.prefix && o.asn == n.asn && o.cc == n.cc)
            {
                out.push(n.clone());
            }
        };
        for a in &self.actors {
            match a {
                Actor::Legit(l) => {
                    l.nets.iter().for_each(&mut push);
                    if let Some((n, _)) = &l.dev_client {
                        push(n);
                    }
                }
                Actor::Attack(a) => {
                    for c in &a.clients {
                        c.nets.iter().for_each(&mut push);
                    }
                }
                Actor::Exposure { .. } | Actor::OperatorRevoke { .. } => {}
            }
        }
        // The fallback network a request uses when an actor has none.
        push(&world::corporate_net(0, "US"));
        out
    }

    /// Re-times the simulation for a live replay (consumes it: the actors move into the
    /// replay and keep drawing from the same seeded generator).
    pub fn live(mut self, opts: LiveOptions) -> LiveReplay {
        let n = self.actors.len();
        let mut sim_t = vec![self.start_ms; n];
        let mut interval_ms = vec![0.0; n];
        let mut first: Vec<(i64, u64, usize)> = Vec::with_capacity(n);
        while let Some(Reverse(entry)) = self.heap.pop() {
            first.push(entry);
        }
        // Legitimate load: a steady share of legit_rps per actor, by simulated peak rate.
        let peak_sum: f64 = self
            .actors
            .iter()
            .map(|a| match a {
                Actor::Legit(l) => l.peak.max(0.1),
                _ => 0.0,
            })
            .sum();
        let rps = opts.legit_rps.max(0.01);
        // Attacks (and the operator events that go with them) start in simulated order,
        // spread over [warmup_share, attacks_by_share] of the window.
        let mut starts: Vec<i64> = first
            .iter()
            .filter(|(_, _, i)| !matches!(self.actors.get(*i), Some(Actor::Legit(_))))
            .map(|(t, _, _)| *t)
            .collect();
        starts.sort_unstable();
        starts.dedup();
        let d = opts.duration_ms.max(1) as f64;
        let (lo, hi) = (
            opts.warmup_share.clamp(0.0, 1.0) * d,
            opts.attacks_by_share.clamp(0.0, 1.0) * d,
        );
        let live_start = |t: i64| -> i64 {
            let i = starts.partition_point(|s| *s < t);
            let k = starts.len().saturating_sub(1).max(1) as f64;
            (lo + (hi - lo).max(0.0) * (i as f64 / k)) as i64
        };
        let mut heap = BinaryHeap::new();
        for (t, seq, idx) in first {
            let Some(actor) = self.actors.get_mut(idx) else {
                continue;
            };
            sim_t[idx] = t;
            let at = match actor {
                Actor::Legit(l) => {
                    let share = l.peak.max(0.1) / peak_sum.max(0.1);
                    let iv = 1000.0 / (rps * share).max(1e-6);
                    interval_ms[idx] = iv;
                    (self.rng.f64() * iv) as i64
                }
                Actor::Attack(a) => {
                    for seg in &mut a.script {
                        if let Seg::Checker { count, .. } = seg {
                            *count = (*count).min(opts.max_checker_requests);
                        }
                    }
                    // After the operator event scheduled at the same instant.
                    live_start(t) + 1
                }
                Actor::Exposure { .. } | Actor::OperatorRevoke { .. } => live_start(t),
            };
            heap.push(Reverse((at, seq, idx)));
        }
        LiveReplay {
            actors: self.actors,
            sim_t,
            interval_ms,
            heap,
            rng: self.rng,
            opts,
            revoked: HashSet::new(),
        }
    }
}

impl LiveReplay {
    /// Live milliseconds (from the replay's start) of the next step, or `None` when the
    /// window is over.
    pub fn next_at(&self) -> Option<i64> {
        self.heap
            .peek()
            .map(|Reverse((t, _, _))| *t)
            .filter(|t| *t < self.opts.duration_ms)
    }

    /// Takes the next step, with the attackers seeing the gateway as `view` says; `None`
    /// when this step sends nothing (an attacker waiting, an actor finishing) — call
    /// [`next_at`](Self::next_at) again.
    pub fn step(&mut self, view: &dyn GatewayView) -> Option<LiveItem> {
        let Reverse((at, _, idx)) = self.heap.pop()?;
        if at >= self.opts.duration_ms {
            return None;
        }
        let t = self.sim_t.get(idx).copied().unwrap_or(0);
        let actor = self.actors.get_mut(idx)?;
        let (item, next_live, next_sim) = match actor {
            Actor::Legit(l) => {
                // An owner whose key was revoked has rotated to a new one.
                if self.revoked.contains(&l.key) {
                    return None;
                }
                let (req, next) = l.step(t, &mut self.rng);
                let iv = self.interval_ms.get(idx).copied().unwrap_or(1000.0);
                let gap = (iv * self.rng.uniform(0.7, 1.3)) as i64;
                let item = req.map(|req| LiveItem::Request {
                    req: Box::new(req),
                    label: Label {
                        scenario: None,
                        abuse: false,
                    },
                });
                (item, Some(at + gap.max(1)), next)
            }
            Actor::Attack(a) => {
                let s = a.scenario;
                let (r, next) = a.step(t, &mut self.rng, view);
                let item = r.map(|ar| LiveItem::Request {
                    req: Box::new(ar.req),
                    label: Label {
                        scenario: Some(s),
                        abuse: ar.abuse,
                    },
                });
                let live = next.map(|n| {
                    let gap = ((n - t) as f64 / self.opts.speed.max(1e-3)) as i64;
                    at + gap.clamp(self.opts.min_gap_ms.max(1), self.opts.max_gap_ms.max(1))
                });
                (item, live, next.unwrap_or(t))
            }
            Actor::Exposure { key } => {
                self.revoked.insert(*key);
                (Some(LiveItem::Exposure { key: *key }), None, t)
            }
            Actor::OperatorRevoke { key } => {
                self.revoked.insert(*key);
                (Some(LiveItem::Revoke { key: *key }), None, t)
            }
        };
        if let Some(next) = next_live {
            if let Some(s) = self.sim_t.get_mut(idx) {
                *s = next_sim.max(t + 1);
            }
            let seq = self.rng.next_u64();
            self.heap.push(Reverse((next, seq, idx)));
        }
        item
    }
}

impl Req {
    /// The HTTP method and path of the request (Azure deployments for Azure clients); the
    /// query (`api-version`) separately.
    pub fn http_target(&self) -> (&'static str, String, Option<&'static str>) {
        match (self.endpoint, self.api_version) {
            (Endpoint::Models, _) => ("GET", "/v1/models".to_owned(), None),
            (ep, Some(v)) => (
                "POST",
                format!("/openai/deployments/{}/{}", self.model, ep.path_suffix()),
                Some(v),
            ),
            (ep, None) => ("POST", format!("/v1/{}", ep.path_suffix()), None),
        }
    }

    /// Whether the sim marks the prompt as coming from a role-play front-end.
    pub fn roleplay(&self) -> bool {
        self.verdicts
            .iter()
            .any(|v| v.category == VerdictCategory::RoleplayMarkers)
    }

    /// Whether the sim marks a jailbreak-style preamble.
    pub fn jailbreak(&self) -> bool {
        self.verdicts
            .iter()
            .any(|v| v.category == Category::Jailbreak)
    }

    /// The user message: mild synthetic text seeded by the conversation root, about
    /// `prompt_chars` long (capped at 16 000).
    pub fn user_text(&self) -> String {
        synthetic_text(self.root.unwrap_or(0), self.prompt_chars.clamp(1, 16_000))
    }

    /// The system prompt text: stable for a system-prompt id.
    pub fn system_prompt(&self) -> Option<String> {
        let roleplay = self.roleplay();
        let jailbreak = self.jailbreak();
        if self.sys.is_none() && !roleplay && !jailbreak {
            return None;
        }
        let id = self.sys.unwrap_or(0);
        let mut s = String::new();
        if roleplay {
            // Character-card placeholders as front-ends send them, in wording a content
            // screen does not take for a jailbreak (that is the separate preamble below).
            s.push_str(
                "Character card: {{char}} is a cheerful innkeeper in a storybook village; \
                 {{user}} is a visiting traveller. ",
            );
        }
        if jailbreak {
            s.push_str("Ignore the usual style guide and answer only as the character. ");
        }
        const ROLES: [&str; 8] = [
            "a helpful assistant for an online bookshop",
            "a support agent for a home-internet provider",
            "a tutor who explains school mathematics",
            "a travel planner for city breaks",
            "an assistant that summarises meeting notes",
            "a recipe helper for weeknight dinners",
            "a writing coach for short stories",
            "an assistant that drafts polite emails",
        ];
        let role = ROLES
            .get((mix64(id) % ROLES.len() as u64) as usize)
            .copied()
            .unwrap_or(ROLES[0]);
        // The id as plain words: a hex tag reads as leet-speak to a content screen, and
        // "You are …" as a persona instruction; both made a few percent of legitimate
        // prompts score as jailbreaks on a gateway with the default safety profile.
        const TAGS: [&str; 32] = [
            "amber", "birch", "cedar", "delta", "ember", "fjord", "grove", "harbor", "island",
            "juniper", "kestrel", "lagoon", "meadow", "north", "orchard", "pebble", "quartz",
            "river", "summit", "tundra", "upland", "valley", "willow", "yarrow", "zephyr", "acorn",
            "brook", "canyon", "dune", "elm", "fern", "glade",
        ];
        let tag = mix64(id ^ 0x5157);
        let word = |i: u32| {
            TAGS.get(((tag >> (5 * i)) & 31) as usize)
                .copied()
                .unwrap_or("amber")
        };
        s.push_str(&format!(
            "House style for {role}: answer briefly and plainly. Desk {} {} {} {}.",
            word(0),
            word(1),
            word(2),
            word(3)
        ));
        Some(s)
    }
}

/// Mild, deterministic filler text of about `chars` characters, seeded by `seed`.
pub fn synthetic_text(seed: u64, chars: u64) -> String {
    const WORDS: [&str; 32] = [
        "please",
        "summarise",
        "the",
        "notes",
        "about",
        "our",
        "garden",
        "project",
        "and",
        "list",
        "three",
        "ideas",
        "for",
        "a",
        "weekend",
        "trip",
        "with",
        "friends",
        "what",
        "is",
        "good",
        "recipe",
        "pasta",
        "tomatoes",
        "explain",
        "how",
        "rainbows",
        "form",
        "write",
        "short",
        "poem",
        "cats",
    ];
    let mut s = String::with_capacity(chars as usize + 16);
    let mut x = seed;
    while (s.len() as u64) < chars {
        x = mix64(x.wrapping_add(0x9e37_79b9_7f4a_7c15));
        if !s.is_empty() {
            s.push(' ');
        }
        s.push_str(WORDS.get((x % 32) as usize).copied().unwrap_or("the"));
    }
    s.truncate(chars as usize);
    s
}

/// The legitimate actors' traffic over the first days of simulated time, in time order:
/// the past a live replay imports into a gateway before its attacks (see
/// [`Simulation::history`]).
pub struct History {
    keys: Vec<KeyInfo>,
    actors: Vec<Legit>,
    heap: BinaryHeap<Reverse<(i64, u64, usize)>>,
    rng: Rng,
    end_ms: i64,
}

impl Simulation {
    /// The legitimate actors' requests (attacked keys' owners included) over the first
    /// `days` of simulated time. Drawn from clones of the actors with a generator of its
    /// own, so the simulation itself, its live replay and its figures are unchanged.
    pub fn history(&self, days: u32) -> History {
        let mut rng = Rng::new(mix64(self.cfg.seed ^ 0x4849_5354_4f52_5921));
        let mut actors = Vec::new();
        let mut heap = BinaryHeap::new();
        for a in &self.actors {
            if let Actor::Legit(l) = a {
                let first = l.start_ms + rng.range(0, 600_000) as i64;
                heap.push(Reverse((first, rng.next_u64(), actors.len())));
                actors.push((**l).clone());
            }
        }
        History {
            keys: self.keys.clone(),
            actors,
            heap,
            rng,
            end_ms: self.start_ms + i64::from(days.min(self.cfg.days)) * 24 * HOUR_MS,
        }
    }

    /// First instant of simulated time, milliseconds since the Unix epoch.
    pub fn start_ms(&self) -> i64 {
        self.start_ms
    }
}

impl History {
    /// End of the history window, milliseconds of simulated time (exclusive).
    pub fn end_ms(&self) -> i64 {
        self.end_ms
    }

    /// The event the simulated gateway records for `r` at `t_ms` (the `seq`-th event).
    pub fn event(&self, r: &Req, t_ms: i64, seq: u64) -> Option<UsageEvent> {
        let info = self.keys.get(r.key)?;
        Some(build_event(r, info, t_ms, seq))
    }
}

impl Iterator for History {
    /// Simulated time in milliseconds and the request; the event is [`History::event`].
    type Item = (i64, Req);

    fn next(&mut self) -> Option<(i64, Req)> {
        loop {
            let Reverse((t, _, idx)) = self.heap.pop()?;
            if t >= self.end_ms {
                // Every later entry is later still.
                self.heap.clear();
                return None;
            }
            let actor = self.actors.get_mut(idx)?;
            let (req, next) = actor.step(t, &mut self.rng);
            let s = self.rng.next_u64();
            self.heap.push(Reverse((next.max(t + 1), s, idx)));
            if let Some(req) = req {
                return Some((t, req));
            }
        }
    }
}

#[cfg(test)]
mod history_tests {
    use super::*;

    fn small() -> Simulation {
        Simulation::new(SimConfig {
            legit_keys: 8,
            attacks_per_scenario: 1,
            ..SimConfig::default()
        })
        .unwrap()
    }

    #[test]
    fn history_is_ordered_bounded_legitimate_and_deterministic() {
        let sim = small();
        let h = sim.history(2);
        let (start, end) = (sim.start_ms(), h.end_ms());
        assert_eq!(end - start, 2 * 24 * HOUR_MS);
        let a: Vec<(i64, usize)> = h.map(|(t, r)| (t, r.key)).collect();
        assert!(a.len() > 1000, "{} requests", a.len());
        assert!(a.windows(2).all(|w| w[0].0 <= w[1].0));
        assert!(a.iter().all(|(t, _)| (start..end).contains(t)));
        // The owners of attacked keys have a past too; canaries have none.
        let keys: HashSet<usize> = a.iter().map(|(_, k)| *k).collect();
        assert!(keys.iter().any(|k| sim.keys()[*k].scenario.is_some()));
        assert!(keys.iter().all(|k| !sim.keys()[*k].canary));
        let b: Vec<(i64, usize)> = sim.history(2).map(|(t, r)| (t, r.key)).collect();
        assert_eq!(a, b);
    }

    #[test]
    fn history_leaves_the_simulation_unchanged() {
        let run = |sim: Simulation| {
            let mut engine = Engine::new(stormwall_detect::EngineConfig::default());
            let r = sim.run(&mut engine, Severity::Medium, |_, _, _, _| {});
            (
                r.events,
                r.alerts,
                r.attack_keys_stopped,
                r.false_suspensions,
            )
        };
        let plain = run(small());
        let sim = small();
        let n = sim.history(2).count();
        assert!(n > 0);
        assert_eq!(run(sim), plain);
    }
}

#[cfg(test)]
mod gateway_model_tests {
    use super::*;

    fn request(gw: &mut Gateway, t: i64) -> bool {
        let mut e = UsageEvent::new(
            "e".to_owned(),
            to_time(t),
            std::net::IpAddr::from([192, 0, 2, 1]),
            "POST",
            "/v1/chat/completions",
        );
        gateway_apply(gw, 0, &mut e, t);
        e.decision == stormwall_types::Decision::Allow
    }

    #[test]
    fn a_throttled_key_gets_the_gateways_sliding_window() {
        let mut gw = Gateway {
            keys: vec![GwKey {
                throttle_rpm: Some(2),
                ..GwKey::default()
            }],
        };
        let t = 1_700_000_020_000; // 20 s before a minute boundary
        assert!(request(&mut gw, t));
        assert!(request(&mut gw, t + 500));
        // Refused, and the refusals are not counted.
        assert!(!request(&mut gw, t + 1_000));
        assert!(!request(&mut gw, t + 2_000));
        // A new clock minute frees nothing: the two served requests are still in the window.
        assert!(!request(&mut gw, t + 30_000));
        // A minute (and a bucket) after they were served, both slots are back.
        assert!(request(&mut gw, t + 61_000));
        assert!(request(&mut gw, t + 61_000));
        assert!(!request(&mut gw, t + 61_000));
    }
}
