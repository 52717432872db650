//! The detection engine: one mutable object that sees every event once, in event time, and
//! returns alerts; and the response policy that turns alerts into actions (as data).

use std::collections::HashMap;
use std::sync::Arc;

use stormwall_types::{
    Action, ActionKind, Alert, DetectorId, KeyId, KeyStatus, RejectReason, Severity, Stage,
    UsageEvent,
};
use time::OffsetDateTime;

use crate::config::{EngineConfig, PolicyRule};
use crate::detectors::{Ctx, Obs, abuse, proxy, resale, tripwire, validation};
use crate::features::{UaFamily, ua_family};
use crate::sketch::{CappedSet, hash_str, mix64};
use crate::state::{
    Burned, DETECTORS, Fingerprint, KeyState, LedgerEntry, NetState, Reference, TenantState,
    per_request_prompts,
};

/// Sizes of the engine's state, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct EngineStats {
    /// Events observed.
    pub events: u64,
    /// Events that carried no key (nothing to judge).
    pub keyless_events: u64,
    /// Keys with state.
    pub keys: usize,
    /// Tenants with state.
    pub tenants: usize,
    /// Client addresses with state.
    pub networks: usize,
    /// Burned fingerprints remembered.
    pub burned_fingerprints: usize,
    /// Events of keys not tracked because `max_keys` was reached.
    pub untracked_events: u64,
    /// Alerts raised.
    pub alerts: u64,
}

/// Counts for the key of the event being observed, as every replica together saw them this
/// hour (from the shared counters). `None`: unknown (one replica, or the counters are down).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GlobalView {
    /// Distinct client ASNs using the key this hour.
    pub asns_hour: Option<u64>,
    /// Distinct client countries this hour.
    pub countries_hour: Option<u64>,
    /// Distinct client /24 (or /48) networks this hour.
    pub nets_hour: Option<u64>,
    /// The key's spend this hour, in US dollars.
    pub usd_hour: Option<f64>,
    /// The key's requests this minute.
    pub requests_minute: Option<u32>,
}

/// The detection engine. Not thread-safe by design: feed it from one task (or behind a
/// mutex); each call is short and does no I/O.
#[derive(Debug)]
pub struct Engine {
    cfg: EngineConfig,
    disabled: [bool; DETECTORS],
    /// Boxed: a key's state is large next to a map slot, and the map grows by copying slots.
    keys: FastMap<KeyId, Box<KeyState>>,
    tenants: FastMap<Arc<str>, TenantState>,
    nets: FastMap<u64, NetState>,
    burned: FastMap<u64, Burned>,
    stats: EngineStats,
    /// User-agent families of recent agents (most logs repeat a few agents).
    ua_memo: UaMemo,
}

/// The engine's maps are looked up several times per event by keys no client chooses
/// freely enough to matter (key ids, tenants, network ids): a fast, randomly seeded hash
/// instead of SipHash.
pub(crate) type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// Slots in [`UaMemo`].
const UA_MEMO_SLOTS: usize = 64;

/// Longest user agent [`UaMemo`] keeps.
const UA_MEMO_MAX: usize = 256;

/// A small direct-mapped memo of user agent → family, keyed by the agent's hash and
/// checked against the agent itself (so the answer is always [`ua_family`]'s). Classifying
/// an agent searches it for two dozen needles; a log repeats a handful of agents.
#[derive(Debug, Default)]
struct UaMemo {
    slots: Vec<Option<(Box<str>, UaFamily)>>,
}

impl UaMemo {
    fn family(&mut self, ua: Option<&str>, ua_h: u64) -> UaFamily {
        let Some(u) = ua.filter(|u| u.len() <= UA_MEMO_MAX) else {
            return ua_family(ua);
        };
        if self.slots.is_empty() {
            self.slots.resize(UA_MEMO_SLOTS, None);
        }
        let i = (ua_h % UA_MEMO_SLOTS as u64) as usize;
        let Some(slot) = self.slots.get_mut(i) else {
            return ua_family(ua);
        };
        match slot {
            Some((known, family)) if **known == *u => *family,
            _ => {
                let family = ua_family(ua);
                *slot = Some((u.into(), family));
                family
            }
        }
    }
}

impl Engine {
    /// An engine with a validated configuration.
    pub fn new(cfg: EngineConfig) -> Self {
        let mut disabled = [false; DETECTORS];
        for d in &cfg.detect.disabled {
            disabled[d.index()] = true;
        }
        Self {
            cfg,
            disabled,
            keys: FastMap::default(),
            tenants: FastMap::default(),
            nets: FastMap::default(),
            burned: FastMap::default(),
            stats: EngineStats::default(),
            ua_memo: UaMemo::default(),
        }
    }

    /// The configuration in force.
    pub fn config(&self) -> &EngineConfig {
        &self.cfg
    }

    /// Sizes of the state, for metrics.
    pub fn stats(&self) -> EngineStats {
        EngineStats {
            keys: self.keys.len(),
            tenants: self.tenants.len(),
            networks: self.nets.len(),
            burned_fingerprints: self.burned.len(),
            ..self.stats
        }
    }

    fn window(&self) -> i64 {
        i64::from(self.cfg.detect.risk_window_hours) * 3600
    }

    /// Observes one event and returns the alerts it raised (usually none; no allocation
    /// then). Events should arrive roughly in time order; late ones are judged against the
    /// newest state.
    pub fn observe(&mut self, e: &UsageEvent) -> Vec<Alert> {
        let mut out = Vec::new();
        self.observe_into(e, &mut out);
        out
    }

    /// Like [`Engine::observe`], appending to a caller-owned vector.
    pub fn observe_into(&mut self, e: &UsageEvent, out: &mut Vec<Alert>) {
        self.observe_with(e, &GlobalView::default(), out);
    }

    /// Like [`Engine::observe_into`], with counts from every replica (the shared counters):
    /// a detector judges the larger of its own and the global figure, so an attack spread
    /// over several gateways is seen whole.
    pub fn observe_with(&mut self, e: &UsageEvent, global: &GlobalView, out: &mut Vec<Alert>) {
        if !self.cfg.detect.enabled {
            return;
        }
        self.stats.events += 1;
        let Some(key) = e.key_id.as_ref() else {
            self.stats.keyless_events += 1;
            return;
        };
        let window = self.window();
        let before = out.len();
        let Engine {
            cfg,
            disabled,
            keys,
            tenants,
            nets,
            burned,
            stats,
            ua_memo,
        } = self;
        let detect = &cfg.detect;
        let ua_h = e.user_agent.as_deref().map_or(0, hash_str);
        let family = ua_memo.family(e.user_agent.as_deref(), ua_h);
        let o = Obs::with_family(e, &detect.thresholds, &cfg.egress, family, ua_h);
        if !keys.contains_key(key) {
            if keys.len() >= detect.max_keys {
                stats.untracked_events += 1;
                return;
            }
            let tenant = e.tenant.as_deref().map(Arc::<str>::from);
            keys.insert(
                key.clone(),
                Box::new(KeyState::new(key.clone(), tenant, o.t)),
            );
        }
        let Some(ks) = keys.get_mut(key) else {
            return;
        };
        if ks.tenant.is_none()
            && let Some(t) = e.tenant.as_deref()
        {
            ks.tenant = Some(Arc::from(t));
        }
        if e.key_kind == Some(stormwall_types::KeyKind::Canary)
            || e.reject_reason == Some(RejectReason::CanaryKey)
        {
            ks.canary = true;
        }
        if e.reject_reason == Some(RejectReason::RevokedKey) {
            ks.revoked = true;
        }
        let mut tenant_state = match ks.tenant.clone() {
            Some(t) => {
                if !tenants.contains_key(&*t) && tenants.len() < detect.max_keys {
                    tenants.insert(Arc::clone(&t), TenantState::new(o.t));
                }
                tenants.get_mut(&*t)
            }
            None => None,
        };
        if let Some(ts) = tenant_state.as_deref_mut()
            && o.t > ts.last_seen
        {
            ts.last_seen = o.t;
        }
        let risk_now = ks.risk(o.t, window);
        ks.advance(o.t, risk_now, tenant_state.as_deref_mut());
        ks.events += 1;
        if ks.home == [0, 0]
            && let Some(cc) = o.cc
        {
            ks.home = cc;
        }
        let tenant = tenant_state.map(|t| &*t);
        let reference = if ks.mature(detect.baseline_min_hours, detect.baseline_min_events) {
            Reference::Key
        } else if tenant
            .is_some_and(|t| t.mature(detect.baseline_min_hours, detect.baseline_min_events))
        {
            Reference::Tenant
        } else {
            Reference::Learning
        };
        let ctx = Ctx {
            global,
            cfg: detect,
            points: &cfg.response.severity_points,
            disabled,
            e,
            o: &o,
            reference,
            tenant,
        };

        // Tripwires: the key is never served; record intelligence and stop.
        if ks.canary {
            tripwire::h1_canary(&ctx, ks, out);
            proxy::p6_cross_tenant(&ctx, ks, nets, detect.max_networks, out);
            burn(
                burned,
                detect.max_burned_fingerprints,
                &ks.key,
                o.t,
                o.fingerprint(),
            );
            finish(ks, out, before, window, stats);
            return;
        }
        if e.reject_reason == Some(RejectReason::RevokedKey) {
            tripwire::d1_revoked(&ctx, ks, out);
            proxy::p6_cross_tenant(&ctx, ks, nets, detect.max_networks, out);
            burn(
                burned,
                detect.max_burned_fingerprints,
                &ks.key,
                o.t,
                o.fingerprint(),
            );
            finish(ks, out, before, window, stats);
            return;
        }
        // A relay retrying a suspended key still shows which keys it pools.
        if e.reject_reason == Some(RejectReason::SuspendedKey) {
            proxy::p6_cross_tenant(&ctx, ks, nets, detect.max_networks, out);
            finish(ks, out, before, window, stats);
            return;
        }
        // Refusals that are not usage (an expired or invalid key) teach nothing.
        if matches!(
            e.reject_reason,
            Some(
                RejectReason::SuspendedKey
                    | RejectReason::ExpiredKey
                    | RejectReason::NotYetValidKey
                    | RejectReason::UnknownKey
                    | RejectReason::MalformedKey
                    | RejectReason::MissingKey
            )
        ) {
            return;
        }

        let u = update_windows(&ctx, ks);

        tripwire::h2_after_exposure(&ctx, ks, out);
        tripwire::d2_reappearance(&ctx, ks, burned, out);
        validation::v1_probe(&ctx, ks, out);
        validation::v2_enumerate(&ctx, ks, out);
        validation::v4_periodic(&ctx, ks, out);
        validation::v7_takeover(&ctx, ks, out);
        if u.spread {
            proxy::p1_dispersion(&ctx, ks, out);
        }
        proxy::p2_travel(&ctx, ks, out);
        proxy::p3_egress(&ctx, ks, out);
        proxy::p4_artefacts(&ctx, ks, out);
        proxy::p5_ua_drift(&ctx, ks, out);
        proxy::p6_cross_tenant(&ctx, ks, nets, detect.max_networks, out);
        resale::r1_styles(&ctx, ks, u.new_sys, u.new_cluster, out);
        resale::r1_missing_users(&ctx, ks, out);
        resale::r2_roleplay(&ctx, ks, out);
        resale::r3_concurrency(&ctx, ks, out);
        resale::r4_off_hours(&ctx, ks, out);
        resale::r5_volume(&ctx, ks, u.model_calls, out);
        resale::r6_mix(&ctx, ks, out);
        abuse::a1_safety(&ctx, ks, out);
        abuse::a4_obfuscation(&ctx, ks, out);
        finish(ks, out, before, window, stats);
    }

    /// Records an exposure report (a leaked-key report, a scanner finding) for a key:
    /// returns the E1 alert, and arms H2 for the following hours.
    pub fn note_exposure(
        &mut self,
        key: &KeyId,
        tenant: Option<&str>,
        at: OffsetDateTime,
        source: &str,
    ) -> Alert {
        let t = at.unix_timestamp();
        let window = self.window();
        let ks = self
            .keys
            .entry(key.clone())
            .or_insert_with(|| Box::new(KeyState::new(key.clone(), tenant.map(Arc::from), t)));
        ks.notable.exposed_at = Some(t);
        let points = self.cfg.response.severity_points[Severity::High as usize];
        let alert = Alert {
            id: format!("exposure-{}-{t}-E1", key.as_str()),
            detector: DetectorId::E1,
            stage: Stage::Exposure,
            severity: Severity::High,
            at,
            key_id: Some(key.clone()),
            tenant: ks.tenant.as_deref().map(str::to_owned),
            source_ip: None,
            features: Vec::new(),
            subjects: vec![crate::detectors::subj("report_source", source)],
            explanation: format!(
                "Key {key} was reported exposed ({source}). Any use from a new network in the \
                 next hours is treated as the leak being exploited."
            ),
            evidence: Vec::new(),
            score: points,
        };
        ks.record(entry_of(&alert), window);
        self.stats.alerts += 1;
        alert
    }

    /// Tells the engine a key's status changed outside it (an operator, another replica):
    /// a revoked key's suspect fingerprints are burned; a resumed key starts over with a
    /// clean risk score.
    pub fn key_status(&mut self, key: &KeyId, status: KeyStatus, at: OffsetDateTime) {
        let cap = self.cfg.detect.max_burned_fingerprints;
        let Some(ks) = self.keys.get_mut(key) else {
            return;
        };
        match status {
            KeyStatus::Revoked => {
                ks.revoked = true;
                for fp in ks.notable.suspects.clone() {
                    burn(&mut self.burned, cap, key, at.unix_timestamp(), fp);
                }
            }
            KeyStatus::Suspended => {
                for fp in ks.notable.suspects.clone() {
                    burn(&mut self.burned, cap, key, at.unix_timestamp(), fp);
                }
            }
            KeyStatus::Active => {
                ks.revoked = false;
                ks.notable.level = None;
                ks.notable.ledger.clear();
            }
        }
    }

    /// The key's current risk score (0 for an unknown key).
    pub fn risk(&self, key: &KeyId) -> f64 {
        self.keys
            .get(key)
            .map_or(0.0, |ks| ks.risk(ks.last_seen, self.window()))
    }

    /// Operator feedback: the alert was a false positive. Its points leave the risk score,
    /// what it observed (network, country, client family, header shape, system prompt,
    /// model) joins the key's baseline, and the detector's thresholds double for this key
    /// (up to 16×). Returns `false` if the engine has no state for the key.
    pub fn false_positive(&mut self, alert: &Alert) -> bool {
        let Some(key) = alert.key_id.as_ref() else {
            return false;
        };
        let Some(ks) = self.keys.get_mut(key) else {
            return false;
        };
        ks.notable.ledger.retain(|e| e.alert_id != alert.id);
        let s = &mut ks.alerts.sensitivity[alert.detector.index()];
        *s = (*s + 1).min(4);
        let b = &mut ks.base;
        for subject in &alert.subjects {
            let v = subject.value.as_str();
            match subject.kind.as_str() {
                "asn" => {
                    if let Ok(a) = v.parse::<u64>() {
                        b.asns.insert(mix64(a | 1 << 33));
                    }
                }
                "country" => {
                    let c = v.as_bytes();
                    if c.len() == 2 {
                        let code = u16::from_be_bytes([
                            c[0].to_ascii_uppercase(),
                            c[1].to_ascii_uppercase(),
                        ]);
                        b.countries.insert(mix64(u64::from(code) | 1 << 34));
                    }
                }
                "ua_family" => {
                    if let Some(f) = crate::features::UaFamily::from_name(v) {
                        b.families.insert(f.id());
                        if f.is_generic_http() {
                            b.generic += 1;
                        }
                    }
                }
                "egress_flag" => {
                    if let Some(f) = crate::egress::EgressFlag::parse(v) {
                        b.flags |= f.bit();
                    }
                }
                "header_shape" => {
                    if let Ok(h) = u64::from_str_radix(v, 16) {
                        b.shapes.insert(h);
                    }
                }
                "system_hash" => {
                    b.sys.insert(hash_str(v));
                }
                "model" => b.add_model(hash_str(v), 1.0),
                "endpoint" if v == "images_generations" => b.images += 1,
                _ => {}
            }
        }
        if matches!(alert.detector, DetectorId::R2) {
            b.roleplay += 1;
        }
        if matches!(alert.detector, DetectorId::V1) {
            b.probes += b.inference / 50 + 1;
        }
        if matches!(alert.detector, DetectorId::V2) {
            b.listings += b.requests / 50 + 1;
        }
        let now = ks.last_seen;
        let window = i64::from(self.cfg.detect.risk_window_hours) * 3600;
        if ks.risk(now, window) < crate::state::LEARN_MAX_RISK {
            ks.notable.level = None;
        }
        true
    }

    /// The response policy: records the alert in the key's risk window, evaluates the
    /// rules, and returns the action to apply — `Alert` (notify) for each alert a rule
    /// covers, and `Throttle`/`Suspend`/`Revoke` when the key's level escalates (or the
    /// cooldown has passed). Canary and revoked keys are never served, so they only ever
    /// get `Alert`. Suspending or revoking a key burns its suspect fingerprints (D2).
    pub fn decide(&mut self, alert: &Alert) -> Option<Action> {
        let key = alert.key_id.as_ref()?;
        let window = self.window();
        let cap = self.cfg.detect.max_burned_fingerprints;
        let response = &self.cfg.response;
        let ks = self.keys.get_mut(key)?;
        let t = alert.at.unix_timestamp();
        ks.record(entry_of(alert), window);
        let now = t.max(ks.last_seen);
        let score = ks.risk(now, window);
        let stages = ks.stages(now, window);
        let kill_chain = kill_chain(ks, now, window);
        let detectors: Vec<DetectorId> = ks
            .notable
            .ledger
            .iter()
            .filter(|e| e.at > now - window && e.severity >= Severity::Medium)
            .map(|e| e.detector)
            .collect();
        let mut distinct = detectors.clone();
        distinct.sort();
        distinct.dedup();
        let mut best: Option<&PolicyRule> = None;
        for r in &response.rules {
            if rule_matches(r, alert, score, &stages, &distinct, kill_chain)
                && best.is_none_or(|b| r.action > b.action)
            {
                best = Some(r);
            }
        }
        let mut kind = best?.action;
        if ks.canary || ks.revoked {
            kind = kind.min(ActionKind::Alert);
        }
        if kind > ActionKind::Alert {
            let cooldown = i64::from(response.action_cooldown_secs);
            if let Some((level, at)) = ks.notable.level
                && kind <= level
                && t - at < cooldown
            {
                kind = ActionKind::Alert;
            }
        }
        if kind > ActionKind::Alert {
            ks.notable.level = Some((kind, t));
        }
        if kind >= ActionKind::Suspend {
            for fp in ks.notable.suspects.clone() {
                burn(&mut self.burned, cap, key, t, fp);
            }
        }
        let contributing: Vec<String> = ks
            .notable
            .ledger
            .iter()
            .filter(|e| e.at > now - window)
            .map(|e| e.alert_id.clone())
            .collect();
        let stage_names: Vec<&str> = stages.iter().map(|s| s.as_str()).collect();
        let reason = match kind {
            ActionKind::Alert => format!(
                "{} {}: {}",
                alert.detector,
                alert.severity,
                short(&alert.explanation)
            ),
            _ => format!(
                "stormwall detect: {} after {} (risk {score:.0}, stages {}{})",
                kind,
                alert.detector,
                stage_names.join("+"),
                if kill_chain { ", kill chain" } else { "" }
            ),
        };
        Some(Action {
            kind,
            key_id: key.clone(),
            tenant: ks.tenant.as_deref().map(str::to_owned),
            at: alert.at,
            throttle_rpm: (kind == ActionKind::Throttle).then_some(response.throttle_rpm),
            alert_id: alert.id.clone(),
            contributing_alerts: contributing,
            risk_score: score,
            kill_chain,
            reason,
        })
    }
}

/// First sentence of an explanation, for a one-line reason.
fn short(s: &str) -> &str {
    let end = s.find(". ").map_or(s.len(), |i| i + 1);
    s.get(..end.min(200)).unwrap_or(s)
}

fn entry_of(a: &Alert) -> LedgerEntry {
    LedgerEntry {
        at: a.at.unix_timestamp(),
        detector: a.detector,
        stage: a.stage,
        severity: a.severity,
        points: a.score,
        alert_id: a.id.clone(),
    }
}

/// Records the new alerts in the key's risk ledger and counts them.
fn finish(ks: &mut KeyState, out: &[Alert], before: usize, window: i64, stats: &mut EngineStats) {
    for a in out.iter().skip(before) {
        ks.record(entry_of(a), window);
        stats.alerts += 1;
    }
}

/// The kill-chain rule: an exposure or harvest signal (E1, H1, H2, or D2 — a harvester's
/// or stopped relay's fingerprint) plus a medium-or-worse proxy or resale signal.
fn kill_chain(ks: &KeyState, now: i64, window: i64) -> bool {
    let live = |e: &&LedgerEntry| e.at > now - window;
    let harvest = ks.notable.ledger.iter().filter(live).any(|e| {
        matches!(e.stage, Stage::Exposure | Stage::Harvest) || e.detector == DetectorId::D2
    });
    let relay =
        ks.notable.ledger.iter().filter(live).any(|e| {
            matches!(e.stage, Stage::Proxy | Stage::Resale) && e.severity >= Severity::Medium
        });
    harvest && relay
}

fn rule_matches(
    r: &PolicyRule,
    alert: &Alert,
    score: f64,
    stages: &[Stage],
    detectors: &[DetectorId],
    kill_chain: bool,
) -> bool {
    if r.min_severity.is_some_and(|s| alert.severity < s) {
        return false;
    }
    if r.min_score.is_some_and(|s| score < s) {
        return false;
    }
    if let Some(n) = r.min_stages
        && (stages.len() as u32) < n
    {
        return false;
    }
    if let Some(n) = r.min_detectors
        && (detectors.len() as u32) < n
    {
        return false;
    }
    if !r.require_stages.is_empty() && !stages.iter().any(|s| r.require_stages.contains(s)) {
        return false;
    }
    if !r.detectors.is_empty() && !r.detectors.contains(&alert.detector) {
        return false;
    }
    if !r.window_detectors.is_empty() && !detectors.iter().any(|d| r.window_detectors.contains(d)) {
        return false;
    }
    if r.kill_chain && !kill_chain {
        return false;
    }
    true
}

/// Remembers a fingerprint as burned (D2). Past the cap, the oldest entry is forgotten.
fn burn(burned: &mut FastMap<u64, Burned>, cap: usize, origin: &KeyId, at: i64, fp: Fingerprint) {
    if cap == 0 {
        return;
    }
    let k = fp.ua ^ fp.shape;
    if !burned.contains_key(&k)
        && burned.len() >= cap
        && let Some(oldest) = burned.iter().min_by_key(|(_, b)| b.at).map(|(k, _)| *k)
    {
        burned.remove(&oldest);
    }
    let b = burned.entry(k).or_insert_with(|| Burned {
        origin: origin.clone(),
        at,
        nets: CappedSet::new(16),
        sys: CappedSet::new(64),
        ua: fp.ua,
        shape: fp.shape,
    });
    b.nets.insert(fp.net);
    if let Some(s) = fp.sys {
        b.sys.insert(s);
    }
}

/// What updating the windows found out about the event.
struct Update {
    /// The event added a new ASN or country to the hour.
    spread: bool,
    /// A system prompt the key (or its tenant, for a young key) does not know.
    new_sys: bool,
    /// A conversation-root cluster new to the key.
    new_cluster: bool,
    /// Calls to this model in the hour.
    model_calls: u32,
}

fn update_windows(ctx: &Ctx<'_>, ks: &mut KeyState) -> Update {
    let (e, o) = (ctx.e, ctx.o);
    // Known-ness of the system prompt is judged before this event joins the hour.
    // A key (or, for a young key, a tenant) whose prompts are templated per end user has
    // learned one prompt per request: a new one is its habit, not a new application.
    let sys_known = o.sys_h.is_none_or(|s| {
        ks.base.sys.contains(s)
            || ks.base.sys.saturated()
            || per_request_prompts(ks.base.sys.count(), ks.base.requests)
            || matches!(ctx.reference, Reference::Tenant)
                && ctx.tenant.is_some_and(|t| {
                    t.sys.contains(s)
                        || t.sys.saturated()
                        || per_request_prompts(t.sys.count(), t.requests)
                })
    });
    let cluster_new = o
        .cluster
        .is_some_and(|c| ks.base.clusters.estimate(c) == 0 && !ks.hour.clusters.contains(c));
    let h = &mut ks.hour;
    h.req += 1;
    h.tok = h.tok.saturating_add(o.tokens);
    if e.cost_usd.is_finite() && e.cost_usd > 0.0 && e.cost_usd < 1e9 {
        h.cost += e.cost_usd;
    }
    // Without an ASN the /16 prefix stands in (Obs::asn_h), so spread is still counted.
    let asn_new = h.asns.insert(o.asn_h);
    let cc_new = o.country_h.is_some_and(|c| h.countries.insert(c));
    h.nets.insert(o.net);
    h.families.insert(o.family.id());
    h.shapes.insert(o.shape);
    if let Some(v) = o.api_version_h {
        h.api_versions.insert(v);
    }
    if let Some(f) = o.flag {
        h.flags |= f.bit();
    }
    if let Some(i) = o.endpoint
        && let Some(slot) = h.endpoints.get_mut(i)
    {
        *slot += 1;
    }
    let model_calls = if o.inference {
        o.model_h.map_or(0, |m| h.add_model(m))
    } else {
        0
    };
    h.peak_inflight = h
        .peak_inflight
        .max(u16::try_from(e.inflight).unwrap_or(u16::MAX));
    ks.minute_req += 1;
    h.peak_rpm = h
        .peak_rpm
        .max(u16::try_from(ks.minute_req).unwrap_or(u16::MAX));
    h.inference += u32::from(o.inference);
    h.images += u32::from(o.image);
    h.listings += u32::from(o.listing);
    h.forwarded += u32::from(e.forwarded);
    h.roleplay += u32::from(o.roleplay);
    h.hits += u32::from(o.hit);
    h.evasions += u32::from(o.evasion);
    h.micro += u32::from(o.micro);
    h.sdk += u32::from(o.family.is_sdk());
    h.generic += u32::from(o.family.is_generic_http());
    h.sdk_bare += u32::from(o.family.is_stainless_sdk() && !o.stainless);
    if o.inference && !o.probe && o.end_user_h.is_none() {
        h.no_user = h.no_user.saturating_add(1);
    }
    if o.probe {
        h.probes += 1;
        ks.minute_probes += 1;
    }
    if (asn_new || cc_new) && h.spread_evidence.len() < 8 {
        h.spread_evidence.push(e.id.as_str().into());
    }
    let mut new_sys = false;
    if let Some(s) = o.sys_h {
        h.sys.insert(s);
        if !sys_known {
            new_sys = ks.day.new_sys.insert(s);
        }
    }
    if let Some(c) = o.cluster {
        h.clusters.insert(c);
        if cluster_new {
            ks.day.new_clusters += 1;
        }
    }
    ks.day.tok = ks.day.tok.saturating_add(o.tokens);
    ks.day.families.insert(o.family.id());
    if let Some(u) = o.end_user_h {
        ks.day.end_users.add(u);
    }
    Update {
        spread: asn_new || cc_new,
        new_sys,
        new_cluster: cluster_new,
        model_calls,
    }
}

impl crate::features::UaFamily {
    /// Parses a family name (as [`Self::as_str`] writes it).
    pub fn from_name(s: &str) -> Option<Self> {
        use crate::features::UaFamily as F;
        [
            F::None,
            F::OpenaiPython,
            F::OpenaiNode,
            F::AzureSdk,
            F::Framework,
            F::Okhttp,
            F::CfNetwork,
            F::Browser,
            F::Curl,
            F::PythonHttp,
            F::Aiohttp,
            F::Axios,
            F::NodeHttp,
            F::GoHttp,
            F::JavaHttp,
            F::Other,
        ]
        .into_iter()
        .find(|f| f.as_str() == s)
    }
}

#[cfg(test)]
mod tests {
    use super::{UA_MEMO_SLOTS, UaMemo};
    use crate::features::ua_family;
    use crate::sketch::hash_str;

    #[test]
    fn the_user_agent_memo_answers_as_the_classifier_does() {
        let mut memo = UaMemo::default();
        let mut agents: Vec<String> = [
            "OpenAI/Python 1.51.0",
            "axios/1.6.8",
            "curl/8.5.0",
            "Boto3/1.34.0 md/Botocore#1.34.0 ua/2.0 os/linux lang/python#3.11",
            "",
            "   ",
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect();
        // More agents than slots, so slots are shared and replaced.
        agents.extend((0..3 * UA_MEMO_SLOTS).map(|i| match i % 3 {
            0 => format!("python-requests/2.{i}"),
            1 => format!("MyApp/{i}"),
            _ => format!("okhttp/4.{i}"),
        }));
        agents.push("x".repeat(1000));
        for round in 0..3 {
            for a in &agents {
                let got = memo.family(Some(a), hash_str(a));
                assert_eq!(got, ua_family(Some(a)), "{a:?} (round {round})");
            }
        }
        assert_eq!(memo.family(None, 0), ua_family(None));
    }
}
