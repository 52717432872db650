//! Detection in the gateway: every closed event is offered to one task that owns the
//! detection [`Engine`] (the same code `stormwall detect` runs offline), stores the alerts it
//! raises, and applies the response policy's actions to keys through the store and the key
//! cache — so the attacker's next request is refused.
//!
//! Each newly stored alert then joins its incident ([`crate::control::incidents`]), which is
//! what notifications report by default.
//!
//! The request path only clones the event into a bounded channel (`try_send`); a full
//! channel drops the event for detection (counted), never delays a request. Alerts carry an
//! incident name (detector, subject, cooldown window) the store de-duplicates on, so
//! replicas that each see part of an attack raise it once; actions check the key's current
//! status first, so a key another replica already suspended is not suspended again.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use stormwall_detect::{
    ConfigError, DetectConfig, EgressFlag, Engine, EngineConfig, ExternalEgress, GlobalView,
    ResponseConfig,
};
use stormwall_store::{ActionOutcome, ActionRecord, AlertStatus, StoredAlert};
use stormwall_types::{Action, ActionKind, Alert, KeyEffect, KeyId, KeyStatus, UsageEvent};
use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};

use super::ControlPlane;
use crate::data::recorder::EventTap;
use crate::metrics::{ActionLabels, AlertLabels};

/// Events waiting for the detection task; past this, events skip detection (counted).
const EVENT_QUEUE: usize = 65_536;
/// Operator and lifecycle notices waiting for the detection task.
const CONTROL_QUEUE: usize = 1_024;

/// Why the detection engine's configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum EngineConfigError {
    /// `[detect]` or `[response]` is invalid.
    #[error(transparent)]
    Invalid(#[from] ConfigError),
}

/// Detector P3's view of the IP intelligence: the strongest flag of an address (Tor, then
/// proxy, VPN, hosting), read from the data in force at each event, so a reload reaches
/// the detectors without rebuilding the engine.
pub fn egress_from(ipintel: Arc<stormwall_ipintel::SharedIpIntel>) -> ExternalEgress {
    ExternalEgress::new(move |ip, asn| {
        ipintel
            .flags(ip, asn)
            .strongest()
            .and_then(EgressFlag::parse)
    })
}

/// Builds the engine's configuration from `[detect]`, `[response]` and the IP
/// intelligence's egress flags (detector P3: the shipped hosting ASN list, Tor exit and VPN
/// lists, flagged database rows). The one builder: `stormwall serve` and `stormwall detect`
/// both call it, so the engine is configured the same live and offline.
pub fn engine_config(
    detect: &DetectConfig,
    response: &ResponseConfig,
    ipintel: Option<Arc<stormwall_ipintel::SharedIpIntel>>,
) -> Result<EngineConfig, EngineConfigError> {
    let mut cfg = EngineConfig::new(detect.clone(), response.clone())?;
    if let Some(intel) = ipintel {
        cfg.egress.set_external(egress_from(intel));
    }
    Ok(cfg)
}

enum Control {
    Exposure(Box<Alert>),
    KeyStatus {
        key: KeyId,
        status: KeyStatus,
        at: OffsetDateTime,
    },
    FalsePositive {
        alert: Box<Alert>,
        done: oneshot::Sender<bool>,
    },
    History(Vec<UsageEvent>),
    /// Another replica (or this one) may have stored new false-positive verdicts: about
    /// one key, or about any key after a resync.
    Verdicts(Option<KeyId>),
    /// An alert raised outside the engine (cloud-log follow mode).
    External(Box<Alert>),
}

/// The request path's handle on detection.
#[derive(Debug)]
pub struct Detection {
    events: mpsc::Sender<UsageEvent>,
    control: mpsc::Sender<Control>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Control")
    }
}

/// The detection task's side of the channels, handed to [`spawn`].
pub struct DetectionInbox {
    engine: Engine,
    events: mpsc::Receiver<UsageEvent>,
    control: mpsc::Receiver<Control>,
}

impl Detection {
    /// Creates the handle and the inbox its task will read.
    pub fn new(cfg: EngineConfig) -> (Self, DetectionInbox) {
        let (etx, erx) = mpsc::channel(EVENT_QUEUE);
        let (ctx, crx) = mpsc::channel(CONTROL_QUEUE);
        (
            Self {
                events: etx,
                control: ctx,
                dropped: Arc::new(AtomicU64::new(0)),
            },
            DetectionInbox {
                engine: Engine::new(cfg),
                events: erx,
                control: crx,
            },
        )
    }

    /// The data plane's tap into the event queue (see [`EventTap`]).
    pub fn tap(&self) -> EventTap {
        EventTap::new(self.events.clone(), Arc::clone(&self.dropped))
    }

    /// Events that skipped detection because its queue was full.
    pub fn dropped(&self) -> &Arc<AtomicU64> {
        &self.dropped
    }

    /// Tells the engine a key's status changed outside it (operator, leak report). Never
    /// waits: the detection task itself changes keys, and must not wait on its own inbox.
    pub fn key_status(&self, key: &KeyId, status: KeyStatus) {
        let notice = Control::KeyStatus {
            key: key.clone(),
            status,
            at: OffsetDateTime::now_utc(),
        };
        if self.control.try_send(notice).is_err() {
            tracing::warn!(key_id = %key, "detection inbox full; key status change not noted");
        }
    }

    /// Records an exposure (E1 alert about a key, e.g. from a leaked-key report): the
    /// engine arms H2 and counts it in the key's risk, and the alert is stored and sent.
    pub async fn exposure(&self, alert: Alert) {
        let _ = self.control.send(Control::Exposure(Box::new(alert))).await;
    }

    /// Tells the engine that false-positive verdicts about `key` (any key with `None`) may
    /// have been stored by another replica; it reads and learns those it has not applied.
    /// Never waits.
    pub fn verdicts_changed(&self, key: Option<&KeyId>) {
        if self
            .control
            .try_send(Control::Verdicts(key.cloned()))
            .is_err()
        {
            tracing::warn!(
                "detection inbox full; false-positive verdicts will be read at the next change"
            );
        }
    }

    /// Stores, announces and audits an alert raised outside the engine (the cloud-log
    /// follower's): the same path as the engine's own alerts.
    pub async fn external(&self, alert: Alert) {
        let _ = self.control.send(Control::External(Box::new(alert))).await;
    }

    /// Replays imported events into the detectors as history (in time order): baselines
    /// and risk learn from them; their alerts are not stored or acted on.
    pub async fn history(&self, events: Vec<UsageEvent>) {
        let _ = self.control.send(Control::History(events)).await;
    }

    /// Operator feedback: the alert was wrong; the key's baseline learns from it. Returns
    /// whether the engine held state for the key.
    pub async fn false_positive(&self, alert: Alert) -> bool {
        let (done, rx) = oneshot::channel();
        if self
            .control
            .send(Control::FalsePositive {
                alert: Box::new(alert),
                done,
            })
            .await
            .is_err()
        {
            return false;
        }
        rx.await.unwrap_or(false)
    }
}

/// The incident an alert belongs to: one per detector, subject and cooldown window, so
/// replicas that each see part of one attack store one alert. The store adds the severity:
/// an escalation within the window is stored, added to its incident and notified, while the
/// same or a lower severity (a replica that saw less) is a copy.
pub fn incident(alert: &Alert, window_secs: u32) -> String {
    let subject = match (&alert.key_id, alert.source_ip) {
        (Some(k), _) => k.as_str().to_owned(),
        (None, Some(ip)) => ip.to_string(),
        (None, None) => alert.id.clone(),
    };
    let bucket = alert.at.unix_timestamp() / i64::from(window_secs.max(1));
    format!("{}:{subject}:{bucket}", alert.detector.as_str())
}

/// Runs the detection task until the handle is dropped.
#[allow(clippy::disallowed_methods)] // background task owned by RunningGateway, not the request path
pub fn spawn(state: Arc<ControlPlane>, inbox: DetectionInbox) -> tokio::task::JoinHandle<()> {
    tokio::spawn(run(state, inbox))
}

async fn run(state: Arc<ControlPlane>, inbox: DetectionInbox) {
    let DetectionInbox {
        mut engine,
        mut events,
        mut control,
    } = inbox;
    let window = engine.config().detect.alert_cooldown_secs;
    let mut verdicts = Verdicts::default();
    warm_start(&state, &mut engine, &mut verdicts).await;
    let mut alerts = Vec::new();
    let mut shared = SharedView::default();
    let mut flush = tokio::time::interval(FLUSH_EVERY);
    flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let gap = state.alerts.with_grouper(|g| g.episode_gap_secs());
    let mut close = tokio::time::interval(crate::control::incidents::close_every(gap));
    close.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            _ = flush.tick() => shared.flush(&state).await,
            // Incidents live on event time, which is the wall clock here.
            _ = close.tick() => {
                crate::control::incidents::close_quiet(&state, OffsetDateTime::now_utc()).await;
            }
            c = control.recv() => match c {
                Some(c) => on_control(&state, &mut engine, &mut verdicts, window, c).await,
                None => return,
            },
            e = events.recv() => match e {
                Some(e) => {
                    alerts.clear();
                    let global = shared.view(&state, &e).await;
                    engine.observe_with(&e, &global, &mut alerts);
                    for alert in alerts.drain(..) {
                        handle_alert(&state, &mut engine, window, alert).await;
                    }
                }
                None => return,
            },
        }
    }
}

/// Most (key, hour, network) entries remembered before the memory is cleared early.
const MAX_SEEN: usize = 1_000_000;

/// Per-key counts across replicas, from the shared counters' distinct-count sketches. Each
/// replica adds a key's client network to the shared sketch the first time it sees it in
/// an hour, and only then re-reads the counts — so the steady state costs no round trip,
/// and whichever replica sees the network that completes a spread reads the whole of it.
///
/// Volumes (spend per hour, requests per minute) change with every request, so they are
/// batched: each replica adds what it saw since the last flush (every [`FLUSH_EVERY`]) in one
/// pipelined call and gets the totals back; a detector judges the last totals plus what this
/// replica saw since.
#[derive(Default)]
struct SharedView {
    hour: i64,
    seen: std::collections::HashSet<(KeyId, u8, String)>,
    views: std::collections::HashMap<KeyId, GlobalView>,
    volume: std::collections::HashMap<KeyId, Volume>,
}

/// One key's volume: totals over every replica at the last flush, and this replica's
/// amounts since.
#[derive(Default, Clone, Copy)]
struct Volume {
    hour: i64,
    minute: i64,
    usd_nanos_total: i64,
    requests_total: i64,
    usd_nanos_pending: i64,
    requests_pending: i64,
}

/// How often this replica's volume counts are added to the shared ones.
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_millis(250);
/// How long shared volume counters live after their last change.
const VOLUME_TTL: std::time::Duration = std::time::Duration::from_secs(2 * 3600);

/// Sketch names in the shared counters, one per kind of network.
const SETS: [&str; 3] = ["p1_asn", "p1_country", "p1_net"];

impl SharedView {
    async fn view(&mut self, state: &ControlPlane, e: &UsageEvent) -> GlobalView {
        let (Some(counters), Some(key)) = (&state.counters, &e.key_id) else {
            return GlobalView::default();
        };
        if !counters.health().available {
            return GlobalView::default();
        }
        let mut view = self.networks(counters.as_ref(), key, e).await;
        let v = self.volume.entry(key.clone()).or_default();
        let t = e.timestamp.unix_timestamp();
        let (hour, minute) = (t.div_euclid(3600), t.div_euclid(60));
        if v.hour != hour {
            (v.hour, v.usd_nanos_total, v.usd_nanos_pending) = (hour, 0, 0);
        }
        if v.minute != minute {
            (v.minute, v.requests_total, v.requests_pending) = (minute, 0, 0);
        }
        // Whole nano-dollars: totals add up exactly across replicas.
        v.usd_nanos_pending += (e.cost_usd.max(0.0) * 1e9) as i64;
        v.requests_pending += 1;
        view.usd_hour = Some((v.usd_nanos_total + v.usd_nanos_pending) as f64 / 1e9);
        view.requests_minute =
            Some(u32::try_from(v.requests_total + v.requests_pending).unwrap_or(u32::MAX));
        view
    }

    /// Adds this replica's volume since the last flush to the shared counters and takes the
    /// totals back.
    async fn flush(&mut self, state: &ControlPlane) {
        let Some(counters) = &state.counters else {
            return;
        };
        let keys: Vec<KeyId> = self
            .volume
            .iter()
            .filter(|(_, v)| v.usd_nanos_pending != 0 || v.requests_pending != 0)
            .map(|(k, _)| k.clone())
            .collect();
        if keys.is_empty() {
            return;
        }
        let mut items = Vec::with_capacity(keys.len() * 2);
        for k in &keys {
            let v = &self.volume[k];
            items.push(stormwall_store::Tally {
                set: "usd_hour",
                key: k,
                bucket: v.hour,
                amount: v.usd_nanos_pending,
            });
            items.push(stormwall_store::Tally {
                set: "req_minute",
                key: k,
                bucket: v.minute,
                amount: v.requests_pending,
            });
        }
        match counters.tally(&items, VOLUME_TTL).await {
            Ok(totals) => {
                for (k, pair) in keys.iter().zip(totals.chunks(2)) {
                    if let (Some(v), [usd, req]) = (self.volume.get_mut(k), pair) {
                        (v.usd_nanos_total, v.usd_nanos_pending) = (*usd, 0);
                        (v.requests_total, v.requests_pending) = (*req, 0);
                    }
                }
            }
            // Kept pending: added at the next flush once the counters answer.
            Err(e) => tracing::debug!(error = %e, "cannot add volumes to the shared counters"),
        }
        // Keys idle past their buckets are forgotten.
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        self.volume.retain(|_, v| {
            v.usd_nanos_pending != 0
                || v.requests_pending != 0
                || v.hour >= now.div_euclid(3600) - 1
        });
    }

    async fn networks(
        &mut self,
        counters: &dyn stormwall_store::Counters,
        key: &KeyId,
        e: &UsageEvent,
    ) -> GlobalView {
        let hour = e.timestamp.unix_timestamp().div_euclid(3600);
        if hour != self.hour || self.seen.len() > MAX_SEEN {
            self.hour = hour;
            self.seen.clear();
            self.views.clear();
        }
        let net = match e.source_ip {
            std::net::IpAddr::V4(v4) => {
                let o = v4.octets();
                format!("{}.{}.{}.0/24", o[0], o[1], o[2])
            }
            std::net::IpAddr::V6(v6) => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
            }
        };
        let items = [
            e.source_asn.map(|a| a.to_string()),
            e.source_country.clone(),
            Some(net),
        ];
        let mut added = false;
        for (i, item) in items.into_iter().enumerate() {
            let Some(item) = item else { continue };
            if !self.seen.insert((key.clone(), i as u8, item.clone())) {
                continue;
            }
            added = true;
            if let Err(e) = counters
                .distinct_add(SETS[i], key, e.timestamp, &[item.as_str()])
                .await
            {
                tracing::debug!(error = %e, "cannot add to a shared distinct count");
                return GlobalView::default();
            }
        }
        if !added {
            return self.views.get(key).copied().unwrap_or_default();
        }
        let mut counts = [None; 3];
        for (i, set) in SETS.iter().enumerate() {
            counts[i] = counters
                .distinct_count(set, key, e.timestamp, e.timestamp)
                .await
                .ok();
        }
        let view = GlobalView {
            asns_hour: counts[0],
            countries_hour: counts[1],
            nets_hour: counts[2],
            ..GlobalView::default()
        };
        self.views.insert(key.clone(), view);
        view
    }
}

/// Feeds one past event: decisions update the keys' levels the way they did when the event
/// happened; the actions were applied (or not) then.
fn replay(engine: &mut Engine, e: &UsageEvent, scratch: &mut Vec<Alert>) {
    scratch.clear();
    engine.observe_into(e, scratch);
    for a in scratch.iter() {
        let _ = engine.decide(a);
    }
}

/// Events read per store query while warming up.
const WARM_PAGE: usize = 5_000;

/// Replays recent stored events into the engine so baselines survive a restart and a new
/// replica starts with what the others learned. Alerts the replay raises are history (they
/// were raised when the events happened): they shape the risk scores but are not acted on.
async fn warm_start(state: &ControlPlane, engine: &mut Engine, verdicts: &mut Verdicts) {
    let hours = engine.config().detect.warm_start_hours;
    let max = engine.config().detect.warm_start_max_events;
    if hours == 0 || max == 0 {
        return;
    }
    let started = std::time::Instant::now();
    let since = OffsetDateTime::now_utc() - time::Duration::hours(i64::from(hours));
    let mut query = stormwall_store::EventQuery {
        since: Some(since),
        limit: Some(WARM_PAGE),
        ..Default::default()
    };
    let mut replayed: u64 = 0;
    let mut scratch = Vec::new();
    loop {
        let page = match state.store.query_events(&query).await {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, replayed, "detection warm start stopped: cannot read events");
                break;
            }
        };
        for e in &page {
            replay(engine, e, &mut scratch);
            replayed += 1;
        }
        let full = page.len() == WARM_PAGE;
        match page.last() {
            Some(last) if full && replayed < max => query.after_id = Some(last.id.clone()),
            _ => break,
        }
        tokio::task::yield_now().await;
    }
    if replayed >= max {
        tracing::warn!(
            replayed,
            "detection warm start hit warm_start_max_events; older baselines are partial"
        );
    }
    // Operators' false-positive verdicts (from any replica) teach this engine too.
    verdicts.catch_up(state, engine, None).await;
    tracing::info!(
        replayed,
        hours,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "detection warmed from stored events"
    );
}

async fn on_control(
    state: &ControlPlane,
    engine: &mut Engine,
    verdicts: &mut Verdicts,
    window: u32,
    c: Control,
) {
    match c {
        Control::KeyStatus { key, status, at } => engine.key_status(&key, status, at),
        Control::Exposure(reported) => {
            let Some(key) = reported.key_id.clone() else {
                return;
            };
            let source = reported
                .subjects
                .iter()
                .find(|s| s.kind == "reporter")
                .map_or("exposure report", |s| s.value.as_str())
                .to_owned();
            let engine_alert =
                engine.note_exposure(&key, reported.tenant.as_deref(), reported.at, &source);
            // The report's own description, under the id the engine's risk ledger knows.
            let alert = Alert {
                id: engine_alert.id,
                ..*reported
            };
            handle_alert(state, engine, window, alert).await;
        }
        Control::FalsePositive { alert, done } => {
            let _ = done.send(verdicts.apply(engine, &alert));
        }
        Control::Verdicts(key) => verdicts.catch_up(state, engine, key.as_ref()).await,
        Control::External(alert) => handle_alert(state, engine, window, *alert).await,
        Control::History(events) => {
            let mut scratch = Vec::new();
            for e in &events {
                replay(engine, e, &mut scratch);
            }
        }
    }
}

/// The false-positive verdicts this engine has learned, by alert id: each verdict teaches
/// the engine once (learning is not idempotent: it relaxes the detector's thresholds each
/// time), whether it came from this replica's admin API, the warm start or another replica.
#[derive(Default)]
struct Verdicts {
    applied: std::collections::HashSet<String>,
}

/// Most verdict ids remembered; past this the set starts over (verdicts older than the warm
/// start window are not read again, so at worst a recent one is learned twice).
const MAX_VERDICTS: usize = 100_000;

impl Verdicts {
    /// Teaches the engine one verdict unless it already learned it. Returns whether the
    /// engine holds (or held) state for the alert's key.
    fn apply(&mut self, engine: &mut Engine, alert: &Alert) -> bool {
        if self.applied.len() >= MAX_VERDICTS {
            self.applied.clear();
        }
        if !self.applied.insert(alert.id.clone()) {
            return true;
        }
        engine.false_positive(alert)
    }

    /// Reads the stored verdicts of the warm start window (about one key, or all) and
    /// applies those not yet learned, oldest first.
    async fn catch_up(&mut self, state: &ControlPlane, engine: &mut Engine, key: Option<&KeyId>) {
        let hours = engine.config().detect.warm_start_hours;
        let query = stormwall_store::AlertQuery {
            status: Some(AlertStatus::FalsePositive),
            key_id: key.cloned(),
            since: Some(OffsetDateTime::now_utc() - time::Duration::hours(i64::from(hours))),
            ..Default::default()
        };
        match state.store.list_alerts(&query).await {
            Ok(alerts) => {
                for a in alerts.iter().rev() {
                    self.apply(engine, &a.alert);
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read false-positive verdicts"),
        }
    }
}

/// Stores, announces and acts on one alert, then adds it to its incident.
async fn handle_alert(state: &ControlPlane, engine: &mut Engine, window: u32, alert: Alert) {
    let fresh = match state
        .store
        .insert_alert(&alert, &incident(&alert, window))
        .await
    {
        Ok(fresh) => fresh,
        Err(e) => {
            // Announce anyway: losing the record is better than losing the alert.
            tracing::error!(alert_id = %alert.id, error = %e, "cannot store an alert");
            true
        }
    };
    if fresh {
        state
            .metrics
            .alerts
            .get_or_create(&AlertLabels {
                detector: alert.detector.as_str(),
                severity: alert.severity.as_str(),
            })
            .inc();
        state.alerts.raise(&alert);
        if state.alerts.per_alert()
            && let Some(hook) = &state.webhook
        {
            hook.send_alert(&alert);
        }
    }
    let record = match engine.decide(&alert) {
        Some(action) => Some(act(state, action).await),
        None => None,
    };
    // Only the replica that stored the alert adds it to an incident, so each alert joins
    // one incident however many replicas raised it.
    if fresh {
        crate::control::incidents::record(state, &alert, record.as_ref()).await;
    }
}

/// Applies the response policy's action, audits, notifies (per alert) and records it.
async fn act(state: &ControlPlane, action: Action) -> ActionRecord {
    let record = apply(state, &action).await;
    state
        .metrics
        .actions
        .get_or_create(&ActionLabels {
            kind: action.kind.as_str(),
            outcome: outcome_name(record.outcome),
        })
        .inc();
    if record.outcome == ActionOutcome::Applied && action.kind != ActionKind::Alert {
        crate::control::audit::record(
            state,
            crate::control::audit::DETECTION,
            &format!("key.{}", action.kind.as_str()),
            Some(action.key_id.as_str()),
            action.tenant.as_deref(),
            serde_json::json!({
                "alert_id": action.alert_id,
                "contributing_alerts": action.contributing_alerts,
                "risk_score": action.risk_score,
                "kill_chain": action.kill_chain,
                "throttle_rpm": action.throttle_rpm,
                "reason": action.reason,
            }),
        )
        .await;
        tracing::warn!(
            key_id = %action.key_id,
            action = %action.kind,
            alert_id = %action.alert_id,
            risk_score = action.risk_score,
            reason = %action.reason,
            "response action applied"
        );
        if state.alerts.per_alert()
            && let Some(hook) = &state.webhook
        {
            hook.send_action(&record);
        }
    }
    if let Err(e) = state.store.record_action(&record).await {
        tracing::error!(key_id = %action.key_id, error = %e, "cannot record an action");
    }
    record
}

fn outcome_name(o: ActionOutcome) -> &'static str {
    match o {
        ActionOutcome::Applied => "applied",
        ActionOutcome::AlreadyInEffect => "already_in_effect",
        ActionOutcome::Failed => "failed",
    }
}

/// Applies an action to its key and says what happened.
async fn apply(state: &ControlPlane, action: &Action) -> ActionRecord {
    let (outcome, message) = match apply_inner(state, action).await {
        Ok(o) => (o, None),
        Err(e) => (ActionOutcome::Failed, Some(e.to_string())),
    };
    ActionRecord {
        id: crate::ids::event_id(),
        action: action.clone(),
        outcome,
        message,
        applied_at: OffsetDateTime::now_utc(),
    }
}

async fn apply_inner(
    state: &ControlPlane,
    action: &Action,
) -> Result<ActionOutcome, crate::control::keys::KeyError> {
    let id = action.key_id.as_str();
    let reason = Some(truncate_reason(&action.reason));
    if action.kind == ActionKind::Alert {
        return Ok(ActionOutcome::Applied);
    }
    let record = crate::control::keys::get(state, id).await?;
    match action.effect_on(record.status, record.scope.rpm) {
        KeyEffect::Notify => {}
        KeyEffect::AlreadyInEffect => return Ok(ActionOutcome::AlreadyInEffect),
        KeyEffect::Throttle(rpm) => {
            let mut scope = record.scope.clone();
            scope.rpm = Some(rpm);
            crate::control::keys::update(
                state,
                id,
                crate::control::keys::UpdateKey {
                    label: None,
                    scope: Some(scope),
                },
            )
            .await?;
        }
        KeyEffect::Suspend => {
            crate::control::keys::suspend(state, id, reason).await?;
        }
        KeyEffect::Revoke => {
            crate::control::keys::revoke(state, id, reason).await?;
        }
    }
    Ok(ActionOutcome::Applied)
}

fn truncate_reason(s: &str) -> String {
    crate::data::request::truncate(s, 500).to_owned()
}

/// Marks an alert false-positive in the store and teaches the engine.
pub async fn mark_false_positive(
    state: &ControlPlane,
    id: &str,
    note: Option<&str>,
) -> Result<StoredAlert, stormwall_store::StoreError> {
    let stored = state
        .store
        .set_alert_status(
            id,
            AlertStatus::FalsePositive,
            note,
            OffsetDateTime::now_utc(),
        )
        .await?;
    if let Some(d) = &state.detection {
        d.false_positive(stored.alert.clone()).await;
    }
    // The other replicas' engines learn it too: a key change makes them re-read the key
    // and its verdicts.
    if let Some(key) = &stored.alert.key_id {
        crate::control::keys::announce(state, key).await;
    }
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;
    use stormwall_types::{DetectorId, Severity, Stage};

    fn alert(at: i64, key: Option<&str>) -> Alert {
        Alert {
            id: format!("a{at}"),
            detector: DetectorId::P1,
            stage: Stage::Proxy,
            severity: Severity::High,
            at: OffsetDateTime::from_unix_timestamp(at).unwrap(),
            key_id: key.map(|k| KeyId::new(k).unwrap()),
            tenant: None,
            source_ip: Some("127.0.0.1".parse().unwrap()),
            features: Vec::new(),
            subjects: Vec::new(),
            explanation: String::new(),
            evidence: Vec::new(),
            score: 1.0,
        }
    }

    #[test]
    fn incidents_group_by_detector_subject_and_window() {
        let k = "abcdefghijkl";
        assert_eq!(
            incident(&alert(600, Some(k)), 600),
            incident(&alert(1199, Some(k)), 600)
        );
        assert_ne!(
            incident(&alert(1199, Some(k)), 600),
            incident(&alert(1200, Some(k)), 600)
        );
        assert_eq!(incident(&alert(5, None), 0), "P1:127.0.0.1:5");
    }

    #[test]
    fn severity_is_left_to_the_store() {
        // The store tells an escalation (stored) from a lower raise (a copy) by severity, so
        // the incident name must be the same for both.
        let k = "abcdefghijkl";
        let high = alert(600, Some(k));
        let mut critical = alert(700, Some(k));
        critical.severity = Severity::Critical;
        assert_eq!(incident(&high, 3600), incident(&critical, 3600));
    }
}
