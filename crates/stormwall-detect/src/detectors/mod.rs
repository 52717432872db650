//! The detectors, grouped by kill-chain stage. Each is a function over one event, the key's
//! state and a [`Ctx`]; each pushes at most one alert per call, through [`Ctx::emit`], which
//! applies the switch-off list and the per-key cooldown.

pub mod abuse;
pub mod cloud;
pub mod proxy;
pub mod resale;
pub mod tripwire;
pub mod validation;

use stormwall_types::safety::{Action, Category};
use stormwall_types::{
    Alert, AlertFeature, AlertSubject, DetectorId, Endpoint, Severity, UsageEvent, VerdictCategory,
};

use crate::config::{DetectConfig, Thresholds};
use crate::egress::EgressFlag;
use crate::features::{self, UaFamily};
use crate::sketch::{hash_str, mix64};
use crate::state::{DETECTORS, Fingerprint, KeyState, Reference, TenantState, has_flag};

/// Distance between country centroids within which a new country reached over an ordinary
/// network counts as nearby: a neighbouring country or two (London–Frankfurt is about
/// 1,000 km), not another continent.
pub const NEAR_KM: f64 = 1_500.0;

/// Whether two countries' centroids are within [`NEAR_KM`] (false when either is unknown).
pub fn near_countries(a: [u8; 2], b: [u8; 2]) -> bool {
    let name = |c: &[u8; 2]| std::str::from_utf8(c).unwrap_or("").to_owned();
    match (
        features::country_centroid(&name(&a)),
        features::country_centroid(&name(&b)),
    ) {
        (Some(a), Some(b)) => features::haversine_km(a, b) <= NEAR_KM,
        _ => false,
    }
}

/// Everything computed once from an event, shared by the detectors.
#[derive(Debug, Clone)]
pub struct Obs {
    /// Event time, unix seconds.
    pub t: i64,
    /// Client address id.
    pub ip: u64,
    /// Client /24 (or /48).
    pub net: u64,
    /// ASN.
    pub asn: Option<u32>,
    /// Network id: hash of the ASN, or of the /16 (IPv6 /32) prefix when no IP database
    /// gave one ([`features::fallback_network`]).
    pub asn_h: u64,
    /// Hash of the country.
    pub country_h: Option<u64>,
    /// Country code, upper case.
    pub cc: Option<[u8; 2]>,
    /// User-agent family.
    pub family: UaFamily,
    /// Hash of the exact user agent.
    pub ua_h: u64,
    /// Header shape.
    pub shape: u64,
    /// `x-stainless-*` headers present.
    pub stainless: bool,
    /// Egress flag of the address.
    pub flag: Option<EgressFlag>,
    /// System-prompt hash (hashed again into 64 bits).
    pub sys_h: Option<u64>,
    /// Conversation-root cluster (two MinHash rows).
    pub cluster: Option<u64>,
    /// Model hash.
    pub model_h: Option<u64>,
    /// Endpoint index in `Endpoint::ALL`.
    pub endpoint: Option<usize>,
    /// Azure api-version hash.
    pub api_version_h: Option<u64>,
    /// End-user id hash.
    pub end_user_h: Option<u64>,
    /// Tokens.
    pub tokens: u64,
    /// Inference call.
    pub inference: bool,
    /// Probe-shaped.
    pub probe: bool,
    /// Micro-request.
    pub micro: bool,
    /// Model listing.
    pub listing: bool,
    /// Image generation.
    pub image: bool,
    /// A content-safety hit (blocked or flagged), or a provider content filter.
    pub hit: bool,
    /// An obfuscated prompt.
    pub evasion: bool,
    /// Role-play markers or a jailbreak preamble.
    pub roleplay: bool,
}

impl Obs {
    /// Computes the features of an event.
    pub fn of(e: &UsageEvent, th: &Thresholds, egress: &crate::egress::EgressList) -> Self {
        let ua_h = e.user_agent.as_deref().map_or(0, hash_str);
        let family = features::ua_family(e.user_agent.as_deref());
        Self::with_family(e, th, egress, family, ua_h)
    }

    /// Like [`Obs::of`], with the user agent's family and hash already worked out (the
    /// engine remembers the families of recent agents).
    pub fn with_family(
        e: &UsageEvent,
        th: &Thresholds,
        egress: &crate::egress::EgressList,
        family: features::UaFamily,
        ua_h: u64,
    ) -> Self {
        let cc = e.source_country.as_deref().and_then(|c| {
            let b = c.as_bytes();
            (b.len() == 2).then(|| [b[0].to_ascii_uppercase(), b[1].to_ascii_uppercase()])
        });
        let mut hit = e.error_code.as_deref() == Some("content_filter")
            || e.reject_reason == Some(stormwall_types::RejectReason::ContentPolicy);
        let mut evasion = false;
        let mut roleplay = false;
        for v in &e.safety {
            let acted = v.action >= Action::Flag;
            match v.category {
                VerdictCategory::RoleplayMarkers => roleplay = true,
                // Only what the policy acted on: a verdict that was only logged (obfuscation
                // with nothing harmful under it, or an everyday text near a threshold) is
                // a record, not evidence — two greetings once made an A4 alert.
                VerdictCategory::Content(Category::FilterEvasion) => evasion |= acted,
                // A jailbreak score the policy only logged is too weak to call a front-end:
                // ordinary assistant preambles score there.
                VerdictCategory::Content(Category::Jailbreak) => {
                    roleplay |= acted;
                    hit |= acted;
                }
                _ => hit |= acted,
            }
        }
        let endpoint = e
            .endpoint
            .and_then(|ep| Endpoint::ALL.iter().position(|x| *x == ep));
        Obs {
            t: features::unix(e.timestamp),
            ip: features::ip_id(e.source_ip),
            net: features::net_prefix(e.source_ip),
            asn: e.source_asn,
            asn_h: e.source_asn.map_or_else(
                || features::fallback_network(e.source_ip),
                |a| mix64(u64::from(a) | 1 << 33),
            ),
            country_h: cc.map(|c| mix64(u64::from(u16::from_be_bytes(c)) | 1 << 34)),
            cc,
            family,
            ua_h,
            shape: features::header_shape(&e.header_names),
            stainless: features::has_stainless_headers(&e.header_names),
            flag: egress.lookup(e.source_ip, e.source_asn),
            sys_h: e.system_prompt_hash.as_deref().map(hash_str),
            cluster: (e.prompt_minhash.len() >= 2).then(|| {
                mix64(u64::from(e.prompt_minhash[0]) << 32 | u64::from(e.prompt_minhash[1]))
            }),
            model_h: e.model.as_deref().map(hash_str),
            endpoint,
            api_version_h: e.api_version.as_deref().map(hash_str),
            end_user_h: e.end_user.as_deref().map(hash_str),
            tokens: features::tokens(e),
            inference: features::is_inference(e),
            probe: features::is_probe(e, th.v1_max_tokens),
            micro: features::is_micro(e),
            listing: e.endpoint == Some(Endpoint::Models),
            image: e.endpoint == Some(Endpoint::ImagesGenerations),
            hit,
            evasion,
            roleplay,
        }
    }

    /// The fingerprint of the event's client.
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint {
            ua: self.ua_h,
            shape: self.shape,
            net: self.net,
            sys: self.sys_h,
        }
    }

    /// Country code as text.
    pub fn country(&self) -> &str {
        self.cc
            .as_ref()
            .and_then(|c| std::str::from_utf8(c).ok())
            .unwrap_or("??")
    }
}

/// What a detector needs besides the key's state.
pub struct Ctx<'a> {
    /// Counts from every replica, when the gateway shares counters.
    pub global: &'a crate::engine::GlobalView,
    /// `[detect]`.
    pub cfg: &'a DetectConfig,
    /// Points per severity.
    pub points: &'a [f64; 5],
    /// Switched-off detectors.
    pub disabled: &'a [bool; DETECTORS],
    /// The event.
    pub e: &'a UsageEvent,
    /// Its features.
    pub o: &'a Obs,
    /// What the key is judged against.
    pub reference: Reference,
    /// The tenant prior.
    pub tenant: Option<&'a TenantState>,
}

/// The parts of an alert a detector supplies.
pub struct Finding {
    /// Plain-language explanation.
    pub explanation: String,
    /// Features and thresholds.
    pub features: Vec<AlertFeature>,
    /// Categorical observations.
    pub subjects: Vec<AlertSubject>,
    /// Evidence event ids (the triggering event is added if missing).
    pub evidence: Vec<String>,
}

/// A feature with its threshold.
pub fn feat(name: &str, value: f64, threshold: Option<f64>) -> AlertFeature {
    AlertFeature {
        name: name.to_owned(),
        value,
        threshold,
    }
}

/// A categorical subject.
pub fn subj(kind: &str, value: impl Into<String>) -> AlertSubject {
    AlertSubject {
        kind: kind.to_owned(),
        value: value.into(),
    }
}

impl Ctx<'_> {
    /// Thresholds.
    pub fn th(&self) -> &Thresholds {
        &self.cfg.thresholds
    }

    /// Raises an alert unless the detector is off or cooling down on this key. The
    /// finding is only built when the alert will be raised.
    pub fn emit(
        &self,
        ks: &mut KeyState,
        out: &mut Vec<Alert>,
        d: DetectorId,
        sev: Severity,
        build: impl FnOnce(&KeyState) -> Finding,
    ) {
        if self.disabled[d.index()] {
            return;
        }
        if !ks.may_alert(d, self.o.t, sev, i64::from(self.cfg.alert_cooldown_secs)) {
            return;
        }
        let mut f = build(ks);
        if !f.evidence.iter().any(|id| id == &self.e.id) {
            f.evidence.push(self.e.id.clone());
        }
        // Only a client the key (and its tenant) does not know can be a relay; the owner's own
        // client must never be burned when the key is stopped.
        if !self.own_client(ks) {
            ks.suspect(self.o.fingerprint());
        }
        out.push(Alert {
            id: format!("{}-{}", self.e.id, d.as_str()),
            detector: d,
            stage: d.stage(),
            severity: sev,
            at: self.e.timestamp,
            key_id: Some(ks.key.clone()),
            tenant: ks.tenant.as_deref().map(str::to_owned),
            source_ip: Some(self.e.source_ip),
            features: f.features,
            subjects: f.subjects,
            explanation: f.explanation,
            evidence: f.evidence,
            score: self.points[sev as usize],
        });
    }

    /// Whether the event comes from the key's or its tenant's own client: a header shape and
    /// network both already known.
    pub fn own_client(&self, ks: &KeyState) -> bool {
        let (shape, asn) = (self.o.shape, self.o.asn_h);
        ks.base.shapes.contains(shape) && ks.base.asns.contains(asn)
            || ks.hour.shapes.contains(shape) && ks.base.asns.is_empty()
            || self
                .tenant
                .is_some_and(|t| t.shapes.contains(shape) && t.asns.contains(asn))
    }

    /// Whether the reference knows the event's network — its ASN, or its /16 prefix when
    /// the ASN is unknown (always true while learning).
    pub fn known_asn(&self, ks: &KeyState) -> bool {
        let h = self.o.asn_h;
        match self.reference {
            Reference::Learning => true,
            Reference::Key => ks.base.asns.contains(h) || ks.base.asns.saturated(),
            Reference::Tenant => {
                ks.base.asns.contains(h) || self.tenant.is_some_and(|t| t.asns.contains(h))
            }
        }
    }

    /// Whether the reference knows the event's country (always true while learning).
    pub fn known_country(&self, ks: &KeyState) -> bool {
        let Some(h) = self.o.country_h else {
            return true;
        };
        match self.reference {
            Reference::Learning => true,
            Reference::Key => ks.base.countries.contains(h) || ks.base.countries.saturated(),
            Reference::Tenant => {
                ks.base.countries.contains(h)
                    || self.tenant.is_some_and(|t| t.countries.contains(h))
            }
        }
    }

    /// Egress flags the reference has seen.
    pub fn known_flags(&self, ks: &KeyState) -> u8 {
        match self.reference {
            Reference::Learning => 0xff,
            Reference::Key => ks.base.flags,
            Reference::Tenant => ks.base.flags | self.tenant.map_or(0, |t| t.flags),
        }
    }

    /// Whether the client (header shape or family) is the key's or its tenant's own, on any
    /// network: the owner moving, not someone else arriving.
    pub fn own_client_anywhere(&self, ks: &KeyState) -> bool {
        let (shape, fam) = (self.o.shape, self.o.family.id());
        ks.base.shapes.contains(shape)
            || ks.base.families.contains(fam) && !self.o.family.is_generic_http()
            || self.tenant.is_some_and(|t| {
                t.shapes.contains(shape)
                    || t.families.contains(fam) && !self.o.family.is_generic_http()
            })
    }

    /// Whether the reference knows a user-agent family.
    pub fn known_family(&self, ks: &KeyState) -> bool {
        let id = self.o.family.id();
        match self.reference {
            Reference::Learning => true,
            Reference::Key => ks.base.families.contains(id),
            Reference::Tenant => {
                ks.base.families.contains(id)
                    || self.tenant.is_some_and(|t| t.families.contains(id))
            }
        }
    }

    /// Whether the reference knows the header shape; `None` when it knows too many to judge.
    pub fn known_shape(&self, ks: &KeyState) -> Option<bool> {
        let s = self.o.shape;
        match self.reference {
            Reference::Learning => Some(true),
            Reference::Key => (ks.base.shapes.len() <= 8).then(|| ks.base.shapes.contains(s)),
            Reference::Tenant => {
                let t = self.tenant?;
                (t.shapes.len() <= 16).then(|| ks.base.shapes.contains(s) || t.shapes.contains(s))
            }
        }
    }

    /// Whether the reference knows a system prompt.
    pub fn known_sys(&self, ks: &KeyState, h: u64) -> bool {
        match self.reference {
            Reference::Learning => true,
            Reference::Key => ks.base.sys.contains(h) || ks.base.sys.saturated(),
            Reference::Tenant => {
                ks.base.sys.contains(h)
                    || self
                        .tenant
                        .is_some_and(|t| t.sys.contains(h) || t.sys.saturated())
            }
        }
    }

    /// Whether the request comes from far away, as the key knows it: an egress kind it has
    /// not used, or a country it has not used — unless that country is a short flight from
    /// the key's home and the network an ordinary one (no hosting, VPN, Tor or proxy flag).
    /// Near: a new network in a known country (a developer at home, a new office line), or
    /// a residential, office or mobile line next door (a developer at home across the border
    /// from the company's cloud region, a phone roaming).
    pub fn far(&self, ks: &KeyState) -> bool {
        if matches!(self.reference, Reference::Learning) {
            return false;
        }
        if self.new_flag(ks) {
            return true;
        }
        if self.known_country(ks) {
            return false;
        }
        self.o.flag.is_some() || !self.near_home(ks)
    }

    /// Whether the event's egress kind (hosting, VPN, Tor, proxy) is one the reference has
    /// never used.
    pub fn new_flag(&self, ks: &KeyState) -> bool {
        self.o
            .flag
            .is_some_and(|f| !has_flag(self.known_flags(ks), f))
    }

    /// Whether the event's country is within [`NEAR_KM`] of the key's home country.
    pub fn near_home(&self, ks: &KeyState) -> bool {
        let (Some(cc), true) = (self.o.cc, ks.home != [0, 0]) else {
            return false;
        };
        near_countries(ks.home, cc)
    }

    /// Short description of the source for explanations.
    pub fn source(&self) -> String {
        let asn = self
            .o
            .asn
            .map_or("unknown AS".to_owned(), |a| format!("AS{a}"));
        let flag = self
            .o
            .flag
            .map_or(String::new(), |f| format!(", {}", f.as_str()));
        format!(
            "{} ({asn}, {}{flag}, {})",
            self.e.source_ip,
            self.o.country(),
            self.o.family.as_str()
        )
    }

    /// Subjects describing the source.
    pub fn source_subjects(&self) -> Vec<AlertSubject> {
        let mut v = vec![subj("ip", self.e.source_ip.to_string())];
        if let Some(a) = self.o.asn {
            v.push(subj("asn", a.to_string()));
        }
        if self.o.cc.is_some() {
            v.push(subj("country", self.o.country()));
        }
        v.push(subj("ua_family", self.o.family.as_str()));
        if let Some(f) = self.o.flag {
            v.push(subj("egress_flag", f.as_str()));
        }
        v
    }
}
