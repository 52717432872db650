//! Bounded state per key, per tenant and per client address, and the baselines that learn
//! from it.
//!
//! A key's baseline learns at the end of each hour of event time, and only from hours in
//! which the key's risk stayed low: an attacker's traffic must not become the "normal" it
//! is judged against. A key too young to have a baseline is judged against its tenant's
//! (the tenant-wide prior); a tenant too young for that is in its learning period, during
//! which novelty signals stay silent.

use std::collections::VecDeque;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, OnceLock};

use stormwall_types::{ActionKind, DetectorId, KeyId, Severity, Stage};

use crate::egress::EgressFlag;
use crate::features::{UaFamily, hour_of_day, hour_of_week};
use crate::profile::{Measure, WeekProfile};
use crate::sketch::{CappedSet, CountMin, Few, Hll};

/// Number of detectors (size of per-detector arrays).
pub const DETECTORS: usize = DetectorId::ALL.len();
/// Decay applied to running peaks at every hour roll-over (a slow "p99").
const PEAK_DECAY: f32 = 0.995;
/// Weight of the newest day in per-day running averages.
const DAY_EWMA: f32 = 0.3;
/// Most alerts kept in a key's risk ledger.
const MAX_LEDGER: usize = 64;
/// Most suspect fingerprints kept per key.
const MAX_SUSPECTS: usize = 8;
/// Most safety-hit timestamps kept per key.
const MAX_HITS: usize = 16;
/// Most micro-request timestamps kept per key.
const MAX_MICRO: usize = 16;

/// Quiet-hour gate: a key's hour is learned only while its risk stays below this.
pub const LEARN_MAX_RISK: f64 = 50.0;

/// A part of a key's state most keys never need, allocated on first write: until then it
/// reads as the part's empty value. With hundreds of thousands of keys, most seen in one hour
/// only, this keeps a key's state to its current hour and day.
#[derive(Debug, Clone, Default)]
pub struct Lazy<T: Empty>(Option<Box<T>>);

/// A type with a shared empty value, for [`Lazy`] to read before anything was written.
pub trait Empty: Default + Sync + 'static {
    /// The empty value.
    fn empty() -> &'static Self;
}

impl<T: Empty> Lazy<T> {
    /// The part, if it was ever written.
    pub fn get_mut(&mut self) -> Option<&mut T> {
        self.0.as_deref_mut()
    }

    /// Whether the part was ever written (it then holds memory).
    pub fn is_allocated(&self) -> bool {
        self.0.is_some()
    }
}

impl<T: Empty> Deref for Lazy<T> {
    type Target = T;

    fn deref(&self) -> &T {
        match self.0.as_deref() {
            Some(t) => t,
            None => T::empty(),
        }
    }
}

impl<T: Empty> DerefMut for Lazy<T> {
    fn deref_mut(&mut self) -> &mut T {
        self.0.get_or_insert_with(Box::default)
    }
}

impl Empty for Baseline {
    fn empty() -> &'static Self {
        static EMPTY: OnceLock<Baseline> = OnceLock::new();
        EMPTY.get_or_init(Baseline::default)
    }
}

/// Per detector: when it last alerted on the key, how strongly, and the operators'
/// false-positive feedback.
#[derive(Debug, Clone)]
pub struct AlertMemory {
    /// Last alert time per detector.
    pub last_alert: [i64; DETECTORS],
    /// Last alert severity per detector.
    pub last_sev: [Option<Severity>; DETECTORS],
    /// False-positive feedback per detector (each step doubles the thresholds).
    pub sensitivity: [u8; DETECTORS],
}

impl Default for AlertMemory {
    fn default() -> Self {
        Self {
            last_alert: [i64::MIN; DETECTORS],
            last_sev: [None; DETECTORS],
            sensitivity: [0; DETECTORS],
        }
    }
}

impl Empty for AlertMemory {
    fn empty() -> &'static Self {
        static EMPTY: OnceLock<AlertMemory> = OnceLock::new();
        EMPTY.get_or_init(AlertMemory::default)
    }
}

/// What most keys never see: model listings, safety hits, obfuscated prompts, alerts,
/// actions and exposure reports.
#[derive(Debug, Clone, Default)]
pub struct Notable {
    /// Latest model listing: (time, event id, from a new source).
    pub last_listing: Option<(i64, String, bool)>,
    /// Recent safety hits (time, event id).
    pub hits: VecDeque<(i64, String)>,
    /// Recent obfuscated prompts this hour (event ids).
    pub evasions: Vec<String>,
    /// Alerts in the risk window.
    pub ledger: Vec<LedgerEntry>,
    /// Strongest action proposed, and when.
    pub level: Option<(ActionKind, i64)>,
    /// Fingerprints of events that raised alerts (burned when the key is stopped).
    pub suspects: Vec<Fingerprint>,
    /// When the key was reported exposed.
    pub exposed_at: Option<i64>,
}

impl Empty for Notable {
    fn empty() -> &'static Self {
        static EMPTY: OnceLock<Notable> = OnceLock::new();
        EMPTY.get_or_init(Notable::default)
    }
}

/// Micro-request arrivals from the tracked address: (address id, times, event ids).
pub type MicroArrivals = (u64, VecDeque<i64>, VecDeque<String>);

/// What a key normally looks like, learned from its quiet hours.
#[derive(Debug, Clone)]
pub struct Baseline {
    /// Requests, tokens and dollars per hour-of-week, summed over the weeks seen.
    pub week: WeekProfile,
    /// Running peak of distinct ASNs in an hour.
    pub peak_asns_h: f32,
    /// Running peak of distinct /24s in an hour.
    pub peak_nets_h: f32,
    /// Running peak of distinct countries in an hour.
    pub peak_countries_h: f32,
    /// Running peak of in-flight requests.
    pub peak_inflight: f32,
    /// Running peak of requests in a minute.
    pub peak_rpm: f32,
    /// Running peak of calls to one model in an hour.
    pub peak_model_calls_h: f32,
    /// Running peak of user-agent families in a day.
    pub peak_families_day: f32,
    /// Average new system prompts per day.
    pub new_sys_day: f32,
    /// Average new conversation-root clusters per day.
    pub new_clusters_day: f32,
    /// Days folded into the per-day averages.
    pub days_folded: u32,
    /// Known ASNs.
    pub asns: CappedSet,
    /// Known countries.
    pub countries: CappedSet,
    /// Known user-agent families.
    pub families: CappedSet,
    /// Known header shapes.
    pub shapes: CappedSet,
    /// Known Azure `api-version`s.
    pub api_versions: CappedSet,
    /// Known system-prompt hashes.
    pub sys: CappedSet,
    /// Frequency of conversation-root clusters.
    pub clusters: CountMin,
    /// Egress flags seen (bits of [`EgressFlag::bit`]).
    pub flags: u8,
    /// Calls per endpoint (index: `Endpoint::ALL` position).
    pub endpoints: [f32; 6],
    /// Calls per model hash (a few models at most; the rest pooled in the last slot).
    pub models: Vec<(u64, f32)>,
    /// Inference calls learned.
    pub inference: u64,
    /// Requests learned.
    pub requests: u64,
    /// Probe-shaped calls learned.
    pub probes: u64,
    /// Model listings learned.
    pub listings: u64,
    /// Image generations learned.
    pub images: u64,
    /// Requests with forwarding headers learned.
    pub forwarded: u64,
    /// Requests with role-play markers or jailbreak verdicts learned.
    pub roleplay: u64,
    /// Micro-requests learned.
    pub micro: u64,
    /// Requests with content-safety hits learned.
    pub hits: u64,
    /// Requests from SDK clients learned.
    pub sdk: u64,
    /// Requests from generic HTTP libraries learned.
    pub generic: u64,
    /// Requests with an OpenAI SDK user agent but none of the SDK's `x-stainless-*`
    /// headers learned: the owner's client sends them so (an old SDK, a proxy that strips
    /// them), so their absence is no relay artefact on this key.
    pub sdk_bare: u64,
    /// Inference calls without an end-user id (`user`) learned: a key whose calls always
    /// carry one (an app passing its users' ids) does not lose it to a new network.
    pub no_user: u64,
    /// Networks (ASN ids) the key learned after its first hour, with the start of the hour
    /// that taught each (the four latest): R1's end-user side still judges a network for
    /// [`NEW_NETWORK_PROBATION_SECS`] after learning it, so a reseller whose first minutes
    /// before an hour boundary taught the key its network is not its owner from then on.
    pub new_asns: [(u64, i64); 4],
    /// Hours learned.
    pub hours: u32,
}

/// Seconds after a key learns a network during which R1's end-user side still counts the
/// network's calls as a new network's (a day: an owner's new network carries its app's
/// ids from the first call; a reseller's keeps dropping them).
pub const NEW_NETWORK_PROBATION_SECS: i64 = 24 * 3600;

impl Baseline {
    /// Whether the key learned network `asn_h` less than [`NEW_NETWORK_PROBATION_SECS`]
    /// before `t` (after its first learned hour).
    pub fn on_probation(&self, asn_h: u64, t: i64) -> bool {
        self.new_asns
            .iter()
            .any(|&(a, at)| a == asn_h && a != 0 && t - at < NEW_NETWORK_PROBATION_SECS)
    }
}

impl Default for Baseline {
    fn default() -> Self {
        Self {
            week: WeekProfile::default(),
            peak_asns_h: 0.0,
            peak_nets_h: 0.0,
            peak_countries_h: 0.0,
            peak_inflight: 0.0,
            peak_rpm: 0.0,
            peak_model_calls_h: 0.0,
            peak_families_day: 0.0,
            new_sys_day: 0.0,
            new_clusters_day: 0.0,
            days_folded: 0,
            asns: CappedSet::new(64),
            countries: CappedSet::new(32),
            families: CappedSet::new(16),
            shapes: CappedSet::new(32),
            api_versions: CappedSet::new(8),
            sys: CappedSet::new(256),
            clusters: CountMin::default(),
            flags: 0,
            endpoints: [0.0; 6],
            models: Vec::new(),
            inference: 0,
            requests: 0,
            probes: 0,
            listings: 0,
            images: 0,
            forwarded: 0,
            roleplay: 0,
            micro: 0,
            hits: 0,
            sdk: 0,
            generic: 0,
            sdk_bare: 0,
            no_user: 0,
            new_asns: [(0, 0); 4],
            hours: 0,
        }
    }
}

/// Most models tracked per key before pooling.
const MAX_MODELS: usize = 8;

impl Baseline {
    /// Usual requests in the hour containing `secs`, given `days` of history: the
    /// hour-of-week profile once there are `how_min_days` of it, else hour-of-day.
    pub fn expected(&self, measure: Measure, secs: i64, days: f32, how_min_days: f32) -> f32 {
        if days < 1.0 {
            return 0.0;
        }
        if days >= how_min_days {
            let weeks = (days / 7.0).max(1.0);
            return self.week.get(hour_of_week(secs), measure) / weeks;
        }
        let hod = hour_of_day(secs);
        let sum: f32 = (0..7).map(|d| self.week.get(d * 24 + hod, measure)).sum();
        sum / days
    }

    /// Usual daily total of a measure.
    pub fn daily(&self, measure: Measure, days: f32) -> f32 {
        if days < 1.0 {
            return 0.0;
        }
        self.week.total(measure) / days
    }

    /// Adds model calls to the mix.
    pub fn add_model(&mut self, model: u64, n: f32) {
        if let Some(m) = self.models.iter_mut().find(|m| m.0 == model) {
            m.1 += n;
        } else if self.models.len() < MAX_MODELS {
            self.models.push((model, n));
        } else if let Some(last) = self.models.last_mut() {
            last.1 += n;
        }
    }

    /// Whether a model has been used before.
    pub fn knows_model(&self, model: u64) -> bool {
        self.models.iter().any(|m| m.0 == model)
    }
}

/// Counters of the current hour of one key.
#[derive(Debug, Clone)]
pub struct HourWindow {
    /// Hour number (unix seconds / 3600).
    pub hour: i64,
    /// Requests.
    pub req: u32,
    /// Tokens.
    pub tok: u64,
    /// US dollars.
    pub cost: f64,
    /// Distinct ASNs.
    pub asns: CappedSet,
    /// Distinct /24s.
    pub nets: CappedSet,
    /// Distinct countries.
    pub countries: CappedSet,
    /// User-agent families.
    pub families: CappedSet,
    /// Header shapes.
    pub shapes: CappedSet,
    /// Azure api-versions.
    pub api_versions: CappedSet,
    /// System-prompt hashes.
    pub sys: CappedSet,
    /// Conversation-root clusters.
    pub clusters: CappedSet,
    /// Egress flags.
    pub flags: u8,
    /// Calls per endpoint.
    pub endpoints: [u32; 6],
    /// Calls per model (hash, count).
    pub models: Few<(u64, u32)>,
    /// Peak in-flight (saturating).
    pub peak_inflight: u16,
    /// Peak requests in a minute (saturating).
    pub peak_rpm: u16,
    /// Inference calls.
    pub inference: u32,
    /// Images.
    pub images: u32,
    /// Probes.
    pub probes: u32,
    /// Listings.
    pub listings: u32,
    /// Requests with forwarding headers.
    pub forwarded: u32,
    /// Role-play or jailbreak markers.
    pub roleplay: u32,
    /// Requests with safety hits.
    pub hits: u32,
    /// Obfuscated prompts.
    pub evasions: u32,
    /// Micro-requests.
    pub micro: u32,
    /// Requests from SDK clients.
    pub sdk: u32,
    /// Requests from generic HTTP libraries.
    pub generic: u32,
    /// Requests with an OpenAI SDK user agent but no `x-stainless-*` headers.
    pub sdk_bare: u32,
    /// Event ids that introduced a new ASN or country this hour (evidence for P1).
    pub spread_evidence: Few<Box<str>>,
    /// Whether R4 already fired this hour.
    pub r4_fired: bool,
    /// System prompts new to the key this hour that came from a network new to it (R1).
    pub new_sys_foreign: u8,
    /// Inference calls without an end-user id (saturating).
    pub no_user: u16,
    /// Of them, calls from a network new to a key that always passes one (R1; saturating).
    pub no_user_foreign: u8,
    /// The previous hour's `no_user_foreign` when that hour was not learned for it (R1
    /// counts across one hour boundary).
    pub no_user_foreign_before: u8,
    /// Calls with an end-user id from a network new to such a key (R1; saturating): the
    /// other side of the missing-id fraction.
    pub user_foreign: u8,
}

impl HourWindow {
    fn new(hour: i64) -> Self {
        Self {
            hour,
            req: 0,
            tok: 0,
            cost: 0.0,
            asns: CappedSet::new(32),
            nets: CappedSet::new(64),
            countries: CappedSet::new(16),
            families: CappedSet::new(8),
            shapes: CappedSet::new(8),
            api_versions: CappedSet::new(4),
            sys: CappedSet::new(64),
            clusters: CappedSet::new(128),
            flags: 0,
            endpoints: [0; 6],
            models: Few::None,
            peak_inflight: 0,
            peak_rpm: 0,
            inference: 0,
            images: 0,
            probes: 0,
            listings: 0,
            forwarded: 0,
            roleplay: 0,
            hits: 0,
            evasions: 0,
            micro: 0,
            sdk: 0,
            generic: 0,
            sdk_bare: 0,
            spread_evidence: Few::None,
            r4_fired: false,
            new_sys_foreign: 0,
            no_user: 0,
            no_user_foreign: 0,
            no_user_foreign_before: 0,
            user_foreign: 0,
        }
    }

    /// Counts a model call; returns the hour's count for it.
    pub fn add_model(&mut self, model: u64) -> u32 {
        if let Some(m) = self.models.as_mut_slice().iter_mut().find(|m| m.0 == model) {
            m.1 += 1;
            return m.1;
        }
        if self.models.len() < MAX_MODELS {
            self.models.push((model, 1));
        }
        1
    }
}

/// Counters of the current day of one key.
#[derive(Debug, Clone)]
pub struct DayWindow {
    /// Day number (unix seconds / 86400).
    pub day: i64,
    /// New system prompts seen today.
    pub new_sys: CappedSet,
    /// New conversation-root clusters today.
    pub new_clusters: u32,
    /// Distinct end users today.
    pub end_users: Hll,
    /// User-agent families today.
    pub families: CappedSet,
    /// Tokens today.
    pub tok: u64,
}

impl DayWindow {
    fn new(day: i64) -> Self {
        Self {
            day,
            new_sys: CappedSet::new(128),
            new_clusters: 0,
            end_users: Hll::default(),
            families: CappedSet::new(16),
            tok: 0,
        }
    }
}

/// A client fingerprint: enough to recognise the same relay on another key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    /// Hash of the exact user agent.
    pub ua: u64,
    /// Header shape.
    pub shape: u64,
    /// Client /24.
    pub net: u64,
    /// System-prompt hash, when there was one.
    pub sys: Option<u64>,
}

/// One alert counted in a key's risk score.
#[derive(Debug, Clone)]
pub struct LedgerEntry {
    /// Event time.
    pub at: i64,
    /// Detector.
    pub detector: DetectorId,
    /// Stage.
    pub stage: Stage,
    /// Severity.
    pub severity: Severity,
    /// Points.
    pub points: f64,
    /// Alert id.
    pub alert_id: String,
}

/// Everything the engine keeps about one key.
#[derive(Debug, Clone)]
pub struct KeyState {
    /// The key.
    pub key: KeyId,
    /// Its tenant.
    pub tenant: Option<Arc<str>>,
    /// Canary key.
    pub canary: bool,
    /// Known to be revoked.
    pub revoked: bool,
    /// First event time.
    pub first_seen: i64,
    /// Latest event time.
    pub last_seen: i64,
    /// Events observed.
    pub events: u64,
    /// The learned baseline (allocated when the key first learns).
    pub base: Lazy<Baseline>,
    /// The current hour.
    pub hour: HourWindow,
    /// The current day.
    pub day: DayWindow,
    /// Current minute number.
    pub minute: i64,
    /// Requests this minute.
    pub minute_req: u32,
    /// Probes this minute.
    pub minute_probes: u32,
    /// Previous event's place: (time, country hash, asn, country code).
    pub last_place: Option<(i64, u64, Option<u32>, [u8; 2])>,
    /// Country of the key's first request with a known country (`[0, 0]`: none yet): where
    /// "nearby" is measured from.
    pub home: [u8; 2],
    /// Micro-request arrivals from the tracked address.
    pub micro: Option<Box<MicroArrivals>>,
    /// Alert times, severities and feedback per detector (allocated at the first alert or
    /// feedback).
    pub alerts: Lazy<AlertMemory>,
    /// Listings, safety hits, obfuscations, alerts, actions and exposure (allocated at
    /// the first).
    pub notable: Lazy<Notable>,
    /// While the key is young: who its owner is, from its first requests (detector V7).
    pub owner: Owner,
    /// Takeover signals from a client the owner and tenant never used (allocated at the
    /// first such request of a young key).
    pub takeover: Option<Box<Takeover>>,
}

/// A young key's owner, from its first requests: a few networks, countries, header shapes,
/// client families and egress kinds (0: empty slot). Fixed, compact arrays: every key
/// carries one, so it costs no allocation.
#[derive(Debug, Clone, Default)]
pub struct Owner {
    /// ASNs.
    pub asns: [u32; 4],
    /// Client /24s (or /48s), 16 bits of their id, never 0: on one ASN, a household's line
    /// or an app's few hosts (a clash only hides a neighbour, never invents one).
    pub nets: [u16; 4],
    /// Country codes (`u16::from_be_bytes`).
    pub countries: [u16; 2],
    /// Header shapes (low 32 bits, never 0).
    pub shapes: [u32; 4],
    /// System prompts (16 bits of their hash, never 0): a developer trying the key sends
    /// its app's prompts (a clash only hides a reseller's prompt, never invents one).
    pub prompts: [u16; 4],
    /// Client family bits (`1 << family id`).
    pub families: u32,
    /// Egress flag bits.
    pub flags: u8,
    /// Habits seen in the owner's own requests ([`OWNER_PROBES`], [`OWNER_LISTS`]).
    pub habits: u8,
    /// Requests the owner was learned from.
    pub requests: u16,
}

/// [`Owner::habits`] bit: the owner itself sends zero-cost probes (CI smoke tests).
pub const OWNER_PROBES: u8 = 1;
/// [`Owner::habits`] bit: the owner itself lists the models (an SDK's start-up).
pub const OWNER_LISTS: u8 = 2;

/// Whether learned system prompts are one per request (a prompt templated per end user)
/// rather than an application's handful: then a new prompt is no news.
pub fn per_request_prompts(distinct: usize, requests: u64) -> bool {
    distinct >= 16 && distinct as u64 * 2 >= requests
}

/// Whether `v` is in a slot array (0 is an empty slot, never a value).
pub fn slot_has<T: PartialEq + Default + Copy>(slots: &[T], v: T) -> bool {
    v != T::default() && slots.contains(&v)
}

/// Puts `v` in the first free slot (no-op when full or present).
pub fn slot_put<T: PartialEq + Default + Copy>(slots: &mut [T], v: T) {
    if v == T::default() || slots.contains(&v) {
        return;
    }
    if let Some(s) = slots.iter_mut().find(|s| **s == T::default()) {
        *s = v;
    }
}

/// Takeover signals seen on a young key from clients its owner and tenant never used.
#[derive(Debug, Clone, Default)]
pub struct Takeover {
    /// When the first foreign request came (signals older than an hour are forgotten).
    pub since: i64,
    /// Signal kinds seen (bits of the V7 signal table).
    pub kinds: u32,
    /// Distinct foreign /24s (up to 8).
    pub nets: Vec<u64>,
    /// Distinct foreign ASNs (up to 8).
    pub asns: Vec<u32>,
    /// Foreign requests this minute: (minute, count).
    pub minute: (i64, u32),
    /// Evidence event ids (up to 8).
    pub evidence: Vec<String>,
    /// Header shapes (as V7 keys them) of the foreign clients that tested the key (a probe,
    /// a listing, role-play, a relay artefact) in this window, up to 4: such a client's
    /// ordinary chat next is the taker's, not the owner's new tool to learn.
    pub testers: Vec<u32>,
    /// Header shapes of new clients learned on the owner's network by ordinary work alone:
    /// (shape, when, whether it probed or listed since), up to 4, kept across windows for an
    /// hour. One that fronts role-play next is foreign after all.
    pub bridged: Vec<(u32, i64, bool)>,
    /// Distinct system prompts (hashes, up to 3) the owner never sent that new clients
    /// brought from networks new to the owner and tenant in this window: several on a
    /// spread is a reseller's customers.
    pub prompts: Vec<u64>,
}

impl KeyState {
    /// Fresh state for a key first seen at `t`.
    pub fn new(key: KeyId, tenant: Option<Arc<str>>, t: i64) -> Self {
        Self {
            key,
            tenant,
            canary: false,
            revoked: false,
            first_seen: t,
            last_seen: t,
            events: 0,
            base: Lazy::default(),
            hour: HourWindow::new(t.div_euclid(3600)),
            day: DayWindow::new(t.div_euclid(86_400)),
            minute: t.div_euclid(60),
            minute_req: 0,
            minute_probes: 0,
            last_place: None,
            home: [0, 0],
            micro: None,
            alerts: Lazy::default(),
            notable: Lazy::default(),
            owner: Owner::default(),
            takeover: None,
        }
    }

    /// Days of history, in event time.
    pub fn days(&self) -> f32 {
        ((self.last_seen - self.first_seen) as f32 / 86_400.0).max(0.0)
    }

    /// Whether the key has enough history to be judged against itself.
    pub fn mature(&self, min_hours: u32, min_events: u32) -> bool {
        self.last_seen - self.first_seen >= i64::from(min_hours) * 3600
            && self.base.requests >= u64::from(min_events)
    }

    /// Threshold multiplier after false-positive feedback on a detector.
    pub fn factor(&self, d: DetectorId) -> f64 {
        f64::from(1u32 << self.alerts.sensitivity[d.index()].min(4))
    }

    /// Whether an alert of `d` may be raised now (cooldown), and records it if so.
    pub fn may_alert(&mut self, d: DetectorId, t: i64, sev: Severity, cooldown: i64) -> bool {
        let i = d.index();
        let m = &*self.alerts;
        let escalates = m.last_sev[i].is_none_or(|s| sev > s);
        let cooled = m.last_alert[i] == i64::MIN || t - m.last_alert[i] >= cooldown;
        if escalates || cooled {
            let m = &mut *self.alerts;
            m.last_alert[i] = t;
            m.last_sev[i] = Some(if cooled {
                sev
            } else {
                sev.max(m.last_sev[i].unwrap_or(sev))
            });
            true
        } else {
            false
        }
    }

    /// Risk score over the window ending at `now`: per detector, its strongest alert plus
    /// a quarter of the others, capped at twice the strongest — so one chatty detector
    /// cannot reach an action on its own by repetition.
    pub fn risk(&self, now: i64, window: i64) -> f64 {
        let mut best = [0.0f64; DETECTORS];
        let mut rest = [0.0f64; DETECTORS];
        for e in self.notable.ledger.iter().filter(|e| e.at > now - window) {
            let i = e.detector.index();
            if e.points > best[i] {
                rest[i] += best[i];
                best[i] = e.points;
            } else {
                rest[i] += e.points;
            }
        }
        best.iter()
            .zip(rest.iter())
            .map(|(b, r)| (b + r * 0.25).min(b * 2.0))
            .sum()
    }

    /// Stages with a medium-or-worse alert in the window.
    pub fn stages(&self, now: i64, window: i64) -> Vec<Stage> {
        let mut s: Vec<Stage> = self
            .notable
            .ledger
            .iter()
            .filter(|e| e.at > now - window && e.severity >= Severity::Medium)
            .map(|e| e.stage)
            .collect();
        s.sort();
        s.dedup();
        s
    }

    /// Adds an alert to the ledger (idempotent by alert id), dropping expired entries.
    pub fn record(&mut self, entry: LedgerEntry, window: i64) {
        if self
            .notable
            .ledger
            .iter()
            .any(|e| e.alert_id == entry.alert_id)
        {
            return;
        }
        let now = entry.at.max(self.last_seen);
        self.notable.ledger.retain(|e| e.at > now - window);
        if self.notable.ledger.len() >= MAX_LEDGER {
            // Drop the weakest, oldest entry: the strongest evidence must survive.
            if let Some(pos) = self
                .notable
                .ledger
                .iter()
                .enumerate()
                .min_by(|a, b| a.1.points.total_cmp(&b.1.points))
                .map(|(i, _)| i)
            {
                self.notable.ledger.remove(pos);
            }
        }
        self.notable.ledger.push(entry);
    }

    /// Remembers a fingerprint that raised an alert.
    pub fn suspect(&mut self, fp: Fingerprint) {
        if !self.notable.suspects.contains(&fp) {
            if self.notable.suspects.len() >= MAX_SUSPECTS {
                self.notable.suspects.remove(0);
            }
            self.notable.suspects.push(fp);
        }
    }

    /// Notes a safety hit.
    pub fn push_hit(&mut self, t: i64, id: &str) {
        if self.notable.hits.len() >= MAX_HITS {
            self.notable.hits.pop_front();
        }
        self.notable.hits.push_back((t, id.to_owned()));
    }

    /// Notes a micro-request from an address; returns the arrival times tracked.
    pub fn push_micro(
        &mut self,
        addr: u64,
        t: i64,
        id: &str,
    ) -> (&VecDeque<i64>, &VecDeque<String>) {
        let reset = self.micro.as_ref().is_none_or(|m| m.0 != addr);
        if reset {
            self.micro = Some(Box::new((addr, VecDeque::new(), VecDeque::new())));
        }
        let m = self
            .micro
            .get_or_insert_with(|| Box::new((addr, VecDeque::new(), VecDeque::new())));
        if m.1.len() >= MAX_MICRO {
            m.1.pop_front();
            m.2.pop_front();
        }
        m.1.push_back(t);
        m.2.push_back(id.to_owned());
        (&m.1, &m.2)
    }

    /// Moves the clock to `t`: closes the minute, hour and day when they end, folding a
    /// quiet hour into the baseline (and the tenant prior).
    pub fn advance(&mut self, t: i64, risk_now: f64, tenant: Option<&mut TenantState>) {
        let minute = t.div_euclid(60);
        if minute > self.minute {
            self.minute = minute;
            self.minute_req = 0;
            self.minute_probes = 0;
        }
        let hour = t.div_euclid(3600);
        if hour > self.hour.hour {
            let old = std::mem::replace(&mut self.hour, HourWindow::new(hour));
            // A young key's hour that held a takeover under way (three points or more, not
            // yet enough to alert) is not learned either: a slow takeover spread over an
            // hour boundary would otherwise teach the tenant prior its own network and
            // client, and the owner record would take it for the owner.
            let takeover = self.takeover.as_ref().is_some_and(|tk| {
                tk.since < (old.hour + 1) * 3600
                    && tk.since + crate::detectors::validation::V7_WINDOW >= old.hour * 3600
                    && crate::detectors::validation::v7_points(tk.kinds) >= 3
            });
            // Nor is an hour in which a key that always passes its users' ids got calls
            // without one from a network new to it (R1): a reseller's first minutes before
            // an hour boundary would otherwise make its network the key's own. The count
            // carries into the next hour, so the boundary does not reset it.
            // (A single such call is learned — a developer's one curl from home — but its
            // network stays on probation for R1, and the count still carries.)
            let missing_users = old.no_user_foreign >= 2;
            if old.no_user_foreign > 0 && hour == old.hour + 1 {
                self.hour.no_user_foreign_before = old.no_user_foreign;
            }
            if risk_now < LEARN_MAX_RISK && !takeover && !missing_users {
                self.fold_hour(&old, tenant);
            }
            if let Some(n) = self.notable.get_mut() {
                n.evasions.clear();
            }
            let decay = PEAK_DECAY.powi((hour - old.hour).clamp(1, 24 * 30) as i32);
            // Nothing to decay in a baseline that learned nothing yet.
            if let Some(b) = self.base.get_mut() {
                b.peak_asns_h *= decay;
                b.peak_nets_h *= decay;
                b.peak_countries_h *= decay;
                b.peak_inflight *= decay;
                b.peak_rpm *= decay;
                b.peak_model_calls_h *= decay;
            }
        }
        let day = t.div_euclid(86_400);
        if day > self.day.day {
            let old = std::mem::replace(&mut self.day, DayWindow::new(day));
            if risk_now < LEARN_MAX_RISK {
                let b = &mut self.base;
                let w = if b.days_folded == 0 { 1.0 } else { DAY_EWMA };
                b.new_sys_day = (1.0 - w) * b.new_sys_day + w * old.new_sys.count() as f32;
                b.new_clusters_day = (1.0 - w) * b.new_clusters_day + w * old.new_clusters as f32;
                b.peak_families_day = b.peak_families_day.max(old.families.count() as f32);
                b.days_folded += 1;
            }
        }
        if t > self.last_seen {
            self.last_seen = t;
        }
    }

    fn fold_hour(&mut self, h: &HourWindow, tenant: Option<&mut TenantState>) {
        if h.req == 0 {
            return;
        }
        let b = &mut self.base;
        let secs = h.hour * 3600;
        let i = hour_of_week(secs);
        b.week.add(i, [h.req as f32, h.tok as f32, h.cost as f32]);
        b.peak_asns_h = b.peak_asns_h.max(h.asns.count() as f32);
        b.peak_nets_h = b.peak_nets_h.max(h.nets.count() as f32);
        b.peak_countries_h = b.peak_countries_h.max(h.countries.count() as f32);
        b.peak_inflight = b.peak_inflight.max(f32::from(h.peak_inflight));
        b.peak_rpm = b.peak_rpm.max(f32::from(h.peak_rpm));
        for v in h.asns.iter() {
            // A network new to a key that already has a learned hour goes on probation
            // (the oldest entry makes room).
            if b.hours > 0 && !b.asns.contains(v) && !b.asns.saturated() {
                b.new_asns.rotate_right(1);
                b.new_asns[0] = (v, secs);
            }
            b.asns.insert(v);
        }
        for v in h.countries.iter() {
            b.countries.insert(v);
        }
        for v in h.families.iter() {
            b.families.insert(v);
        }
        for v in h.shapes.iter() {
            b.shapes.insert(v);
        }
        for v in h.api_versions.iter() {
            b.api_versions.insert(v);
        }
        for v in h.sys.iter() {
            b.sys.insert(v);
        }
        for v in h.clusters.iter() {
            b.clusters.add(v, 1);
        }
        b.flags |= h.flags;
        for (slot, n) in b.endpoints.iter_mut().zip(h.endpoints) {
            *slot += n as f32;
        }
        for &(m, n) in h.models.iter() {
            b.add_model(m, n as f32);
            b.peak_model_calls_h = b.peak_model_calls_h.max(n as f32);
        }
        b.requests += u64::from(h.req);
        b.inference += u64::from(h.inference);
        b.images += u64::from(h.images);
        b.probes += u64::from(h.probes);
        b.listings += u64::from(h.listings);
        b.forwarded += u64::from(h.forwarded);
        b.roleplay += u64::from(h.roleplay);
        b.micro += u64::from(h.micro);
        b.hits += u64::from(h.hits);
        b.sdk += u64::from(h.sdk);
        b.generic += u64::from(h.generic);
        b.sdk_bare += u64::from(h.sdk_bare);
        b.no_user += u64::from(h.no_user);
        b.hours += 1;
        if let Some(t) = tenant {
            if t.home == [0, 0] {
                t.home = self.home;
            }
            t.fold(h, secs);
        }
    }
}

/// The tenant-wide prior: what any key of the tenant normally looks like.
#[derive(Debug, Clone)]
pub struct TenantState {
    /// First event time.
    pub first_seen: i64,
    /// Latest event time.
    pub last_seen: i64,
    /// Requests learned.
    pub requests: u64,
    /// Known ASNs.
    pub asns: CappedSet,
    /// Known countries.
    pub countries: CappedSet,
    /// Known user-agent families.
    pub families: CappedSet,
    /// Known header shapes.
    pub shapes: CappedSet,
    /// Known system-prompt hashes.
    pub sys: CappedSet,
    /// Egress flags seen.
    pub flags: u8,
    /// Peak distinct ASNs per key-hour.
    pub peak_asns_h: f32,
    /// Peak distinct countries per key-hour.
    pub peak_countries_h: f32,
    /// Requests (and tokens and dollars) per hour-of-week over all keys, summed.
    pub week: WeekProfile,
    /// Key-hours learned (to turn sums into a per-key prior).
    pub key_hours: u32,
    /// Image generations learned.
    pub images: u64,
    /// Role-play markers learned.
    pub roleplay: u64,
    /// Probes learned.
    pub probes: u64,
    /// Listings learned.
    pub listings: u64,
    /// Country of the first key's first request (`[0, 0]`: unknown): where the tenant is.
    pub home: [u8; 2],
}

impl TenantState {
    /// Fresh tenant state.
    pub fn new(t: i64) -> Self {
        Self {
            first_seen: t,
            last_seen: t,
            requests: 0,
            asns: CappedSet::new(128),
            countries: CappedSet::new(64),
            families: CappedSet::new(32),
            shapes: CappedSet::new(64),
            sys: CappedSet::new(256),
            flags: 0,
            peak_asns_h: 0.0,
            peak_countries_h: 0.0,
            week: WeekProfile::default(),
            key_hours: 0,
            images: 0,
            roleplay: 0,
            probes: 0,
            listings: 0,
            home: [0, 0],
        }
    }

    /// Whether the tenant has enough history to serve as a prior.
    pub fn mature(&self, min_hours: u32, min_events: u32) -> bool {
        self.last_seen - self.first_seen >= i64::from(min_hours) * 3600
            && self.requests >= u64::from(min_events)
    }

    fn fold(&mut self, h: &HourWindow, secs: i64) {
        self.requests += u64::from(h.req);
        for v in h.asns.iter() {
            self.asns.insert(v);
        }
        for v in h.countries.iter() {
            self.countries.insert(v);
        }
        for v in h.families.iter() {
            self.families.insert(v);
        }
        for v in h.shapes.iter() {
            self.shapes.insert(v);
        }
        for v in h.sys.iter() {
            self.sys.insert(v);
        }
        self.flags |= h.flags;
        self.peak_asns_h = self.peak_asns_h.max(h.asns.count() as f32);
        self.peak_countries_h = self.peak_countries_h.max(h.countries.count() as f32);
        self.week.add(
            hour_of_week(secs),
            [h.req as f32, h.tok as f32, h.cost as f32],
        );
        self.key_hours += 1;
        self.images += u64::from(h.images);
        self.roleplay += u64::from(h.roleplay);
        self.probes += u64::from(h.probes);
        self.listings += u64::from(h.listings);
    }
}

/// What one client address has done across keys in the current day (detector P6).
#[derive(Debug, Clone)]
pub struct NetState {
    /// Day number.
    pub day: i64,
    /// Tenants seen.
    pub tenants: CappedSet,
}

impl NetState {
    /// Fresh state.
    pub fn new(day: i64) -> Self {
        Self {
            day,
            tenants: CappedSet::new(16),
        }
    }
}

/// A fingerprint burned by a stopped key (detector D2).
#[derive(Debug, Clone)]
pub struct Burned {
    /// The key it was burned on.
    pub origin: KeyId,
    /// When.
    pub at: i64,
    /// Client /24s seen with it.
    pub nets: CappedSet,
    /// System prompts seen with it.
    pub sys: CappedSet,
    /// The exact user agent hash.
    pub ua: u64,
    /// The header shape.
    pub shape: u64,
}

/// The reference sets a key is judged against: its own once mature, else its tenant's.
#[derive(Debug, Clone, Copy)]
pub enum Reference {
    /// Neither the key nor the tenant has history: novelty is not judged.
    Learning,
    /// The key's own baseline.
    Key,
    /// The tenant prior (the key is young).
    Tenant,
}

impl UaFamily {
    /// Whether the family is a client a person types into (used for P4's "generic library
    /// on an SDK key" artefact).
    pub fn is_sdk(self) -> bool {
        matches!(
            self,
            UaFamily::OpenaiPython
                | UaFamily::OpenaiNode
                | UaFamily::AzureSdk
                | UaFamily::Framework
                | UaFamily::Okhttp
                | UaFamily::CfNetwork
        )
    }
}

/// Tests a flag bit set.
pub fn has_flag(bits: u8, f: EgressFlag) -> bool {
    bits & f.bit() != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> KeyState {
        KeyState::new(KeyId::new("k00000000001").unwrap(), None, 1_700_000_000)
    }

    /// Up to `max_keys` keys are tracked; most are seen in one hour only, so a key's state
    /// before it learns anything is what bounds detection's memory.
    #[test]
    fn a_young_key_holds_no_baseline_or_alert_memory() {
        assert!(
            // 704 with 32-byte capped sets; 544 since a set keeps its cap and first value
            // in 16 bytes (sketch::CappedSet); 8 more for the owner's /24s (V7's neighbour
            // rule); 8 more for the owner's system prompts (V7's resold prompts).
            std::mem::size_of::<KeyState>() <= 560,
            "KeyState is {} bytes",
            std::mem::size_of::<KeyState>()
        );
        let mut ks = fresh();
        let t = ks.first_seen;
        ks.hour.req += 1;
        ks.advance(t + 60, 0.0, None);
        assert!(!ks.base.is_allocated());
        assert!(!ks.alerts.is_allocated());
        assert!(!ks.notable.is_allocated());
        assert_eq!(ks.base.requests, 0);
        assert_eq!(ks.risk(t + 60, 3600), 0.0);
        assert_eq!(ks.factor(DetectorId::V1), 1.0);
        // An alert remembers its time; a closed hour with traffic teaches the baseline.
        assert!(ks.may_alert(DetectorId::V1, t + 60, Severity::Low, 600));
        assert!(ks.alerts.is_allocated());
        assert!(!ks.may_alert(DetectorId::V1, t + 61, Severity::Low, 600));
        ks.advance(t + 3600, 0.0, None);
        assert!(
            !ks.notable.is_allocated(),
            "an hour rolling over allocates nothing"
        );
        assert!(ks.base.is_allocated());
        assert_eq!(ks.base.requests, 1);
    }

    #[test]
    fn empty_sketches_read_as_empty() {
        let mut h = Hll::default();
        assert_eq!(h.estimate(), 0.0);
        h.add(1);
        assert!(h.estimate() > 0.0);
        h.clear();
        assert_eq!(h.estimate(), 0.0);
        let mut c = CountMin::default();
        assert_eq!(c.estimate(7), 0);
        c.add(7, 2);
        assert_eq!(c.estimate(7), 2);
    }
}
