//! Incidents: alerts about one key (or, for alerts without a key, one source network)
//! within an episode become one [`Incident`] — its timeline, the kill-chain stages covered,
//! evidence events, a risk score and its reasons — so a person reads one thing per attack
//! and a notifier sends one message per incident plus its updates, not one per alert.
//!
//! Pure: alerts (and the actions the policy took on them) in, incident changes out, on
//! event time. An episode ends when its subject has had no alert for `episode_gap_secs`;
//! the next alert opens a new incident.
//!
//! Severity combines signals (the policy `docs/detection.md` explains): an incident starts
//! at its strongest alert's severity; weak signals from three or more detectors over three
//! or more stages make it medium; medium-or-worse signals over three stages make it high;
//! a suspended or revoked key makes it high (someone must confirm the stop today).

use std::collections::HashMap;
use std::net::IpAddr;

use stormwall_types::{
    Action, ActionKind, Alert, DetectorId, Incident, IncidentStatus, IncidentSubject, Severity,
    Stage, TimelineEntry,
};
use time::OffsetDateTime;

/// How alerts are grouped.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IncidentConfig {
    /// Seconds without an alert after which a subject's episode ends.
    pub episode_gap_secs: u32,
    /// Most timeline entries kept per incident (the first and the strongest survive).
    pub max_timeline: usize,
    /// Most evidence event ids kept per incident.
    pub max_evidence: usize,
    /// Most open incidents held; past it the oldest is closed.
    pub max_open: usize,
}

impl Default for IncidentConfig {
    fn default() -> Self {
        Self {
            episode_gap_secs: 6 * 3600,
            max_timeline: 64,
            max_evidence: 32,
            max_open: 100_000,
        }
    }
}

/// What an alert did to its incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    /// A new incident: notify.
    Opened,
    /// Severity, stages or action changed: notify an update.
    Escalated,
    /// One more alert on the timeline, nothing a person must hear about again.
    Appended,
}

/// The result of adding one alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// What changed.
    pub change: Change,
    /// The incident after the change.
    pub incident: Incident,
}

impl Update {
    /// Whether a notification should go out (opened or escalated).
    pub fn notify(&self) -> bool {
        !matches!(self.change, Change::Appended)
    }
}

/// Groups alerts into incidents.
#[derive(Debug, Default)]
pub struct Grouper {
    cfg: IncidentConfig,
    open: HashMap<IncidentSubject, Incident>,
    /// Per open incident, per detector: (strongest points, sum of the others).
    points: HashMap<String, [(f64, f64); DETECTORS]>,
    /// Per resumed incident, the risk score it had when stored (its points are not).
    floors: HashMap<String, f64>,
}

const DETECTORS: usize = DetectorId::ALL.len();

/// The subject of an alert: its key, else its source /24 (/48 for IPv6).
pub fn subject_of(alert: &Alert) -> Option<IncidentSubject> {
    if let Some(k) = &alert.key_id {
        return Some(IncidentSubject::Key(k.as_str().to_owned()));
    }
    alert
        .source_ip
        .map(|ip| IncidentSubject::Network(network_of(ip)))
}

/// The /24 (IPv4) or /48 (IPv6) of an address, in CIDR notation.
pub fn network_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            format!("{}.{}.{}.0/24", o[0], o[1], o[2])
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
    }
}

fn summary(s: &str) -> String {
    let end = s.find(". ").map_or(s.len(), |i| i + 1);
    s.chars().take(end.min(200)).collect()
}

impl Grouper {
    /// A grouper.
    pub fn new(cfg: IncidentConfig) -> Self {
        Self {
            cfg,
            open: HashMap::new(),
            points: HashMap::new(),
            floors: HashMap::new(),
        }
    }

    /// Whether `subject` has an open incident.
    pub fn is_open(&self, subject: &IncidentSubject) -> bool {
        self.open.contains_key(subject)
    }

    /// Seconds without an alert after which an episode ends.
    pub fn episode_gap_secs(&self) -> u32 {
        self.cfg.episode_gap_secs
    }

    /// Takes back an incident stored earlier (before a restart), so its subject's next alert
    /// within the episode joins it instead of opening another. Its risk score stays a floor
    /// (the points behind it are not stored). Ignored when the subject already has one.
    pub fn resume(&mut self, incident: Incident) {
        if self.open.contains_key(&incident.subject) {
            return;
        }
        if self.open.len() >= self.cfg.max_open {
            self.evict_oldest();
        }
        self.floors.insert(incident.id.clone(), incident.risk_score);
        self.open.insert(incident.subject.clone(), incident);
    }

    /// Takes another writer's incident as its subject's open one in place of whatever this
    /// grouper holds for that subject (an incident it opened at the same moment, which the
    /// store refused): the subject's next alert joins the adopted one.
    pub fn adopt(&mut self, incident: Incident) {
        if let Some(old) = self.open.remove(&incident.subject) {
            self.points.remove(&old.id);
            self.floors.remove(&old.id);
        }
        self.resume(incident);
    }

    /// Open incidents.
    pub fn open(&self) -> impl Iterator<Item = &Incident> {
        self.open.values()
    }

    /// Adds an alert (and the action the policy took on it, if any). `None` for an alert
    /// with neither a key nor a source address.
    pub fn add(&mut self, alert: &Alert, action: Option<&Action>) -> Option<Update> {
        let subject = subject_of(alert)?;
        // Exact time differences, as the store's `close_quiet_incidents` compares them:
        // whole seconds left a second in which the store had closed an incident that the
        // next alert still joined here.
        let gap = time::Duration::seconds(i64::from(self.cfg.episode_gap_secs));
        let t = alert.at.unix_timestamp();
        let expired = self
            .open
            .get(&subject)
            .is_some_and(|i| alert.at - i.updated_at > gap);
        if expired && let Some(old) = self.open.remove(&subject) {
            self.points.remove(&old.id);
            self.floors.remove(&old.id);
        }
        if !self.open.contains_key(&subject) && self.open.len() >= self.cfg.max_open {
            self.evict_oldest();
        }
        let mut change = Change::Appended;
        let inc = self.open.entry(subject.clone()).or_insert_with(|| {
            change = Change::Opened;
            Incident {
                id: format!("inc-{}-{}", subject.label().replace(['/', ':'], "_"), t),
                subject,
                tenant: alert.tenant.clone(),
                opened_at: alert.at,
                updated_at: alert.at,
                severity: Severity::Info,
                stages: Vec::new(),
                risk_score: 0.0,
                reasons: Vec::new(),
                timeline: Vec::new(),
                evidence: Vec::new(),
                action: None,
                status: IncidentStatus::Open,
                revision: 0,
            }
        });
        if inc.timeline.iter().any(|e| e.alert_id == alert.id) {
            // The same alert again (a replay): only a new action can change anything.
            if let Some(a) = action.filter(|a| a.kind > ActionKind::Alert)
                && inc.action.is_none_or(|k| a.kind > k)
            {
                inc.action = Some(a.kind);
                let (sev, reasons) = combine(&inc.timeline, inc.action);
                inc.severity = sev;
                inc.reasons = reasons;
                inc.revision += 1;
                return Some(Update {
                    change: Change::Escalated,
                    incident: inc.clone(),
                });
            }
            return Some(Update {
                change: Change::Appended,
                incident: inc.clone(),
            });
        }
        let before = (inc.severity, inc.stages.clone(), inc.action);
        if alert.at > inc.updated_at {
            inc.updated_at = alert.at;
        }
        if inc.tenant.is_none() {
            inc.tenant.clone_from(&alert.tenant);
        }
        let acted = action.map(|a| a.kind).filter(|k| *k > ActionKind::Alert);
        if let Some(k) = acted
            && inc.action.is_none_or(|a| k > a)
        {
            inc.action = Some(k);
        }
        let entry = TimelineEntry {
            at: alert.at,
            alert_id: alert.id.clone(),
            detector: alert.detector,
            stage: alert.stage,
            severity: alert.severity,
            summary: summary(&alert.explanation),
            action: acted,
        };
        insert_entry(&mut inc.timeline, entry, self.cfg.max_timeline);
        add_evidence(&mut inc.evidence, &alert.evidence, self.cfg.max_evidence);
        let pts = self
            .points
            .entry(inc.id.clone())
            .or_insert([(0.0, 0.0); DETECTORS]);
        if let Some(p) = pts.get_mut(alert.detector.index()) {
            if alert.score > p.0 {
                p.1 += p.0;
                p.0 = alert.score;
            } else {
                p.1 += alert.score;
            }
        }
        inc.stages = stages_of(&inc.timeline);
        let base: f64 = pts.iter().map(|(b, r)| (b + r * 0.25).min(b * 2.0)).sum();
        inc.risk_score = base + 10.0 * inc.stages.len().saturating_sub(1) as f64;
        if let Some(floor) = self.floors.get(&inc.id) {
            inc.risk_score = inc.risk_score.max(*floor);
        }
        let (sev, reasons) = combine(&inc.timeline, inc.action);
        inc.severity = sev;
        inc.reasons = reasons;
        if change == Change::Opened {
            inc.revision = 1;
        } else if (inc.severity, &inc.stages, inc.action) != (before.0, &before.1, before.2) {
            change = Change::Escalated;
            inc.revision += 1;
            if inc.status == IncidentStatus::Closed {
                inc.status = IncidentStatus::Open;
            }
        }
        Some(Update {
            change,
            incident: inc.clone(),
        })
    }

    /// The open incident of `subject`, if any.
    pub fn get(&self, subject: &IncidentSubject) -> Option<&Incident> {
        self.open.get(subject)
    }

    /// The ids among `alert_ids` (every alert the store links to an incident) missing from
    /// the timeline of `subject`'s open incident `id`: alerts another replica added in a
    /// write this grouper's write replaced. Empty when the incident is not held or its
    /// timeline is full (then entries are dropped by design).
    pub fn missing(
        &self,
        subject: &IncidentSubject,
        id: &str,
        alert_ids: &[String],
    ) -> Vec<String> {
        let Some(inc) = self.open.get(subject).filter(|i| i.id == id) else {
            return Vec::new();
        };
        if inc.timeline.len() >= self.cfg.max_timeline.max(2) {
            return Vec::new();
        }
        alert_ids
            .iter()
            .filter(|a| !inc.timeline.iter().any(|e| &e.alert_id == *a))
            .cloned()
            .collect()
    }

    /// Takes in what another writer (another gateway replica) stored of an incident this
    /// grouper holds open: the timeline entries it does not hold (by alert id), the stronger
    /// action, the evidence, the later update time and revision, its risk score as a floor;
    /// stages, severity and reasons are judged again over the whole timeline. Without it a
    /// replica's next write of the incident would replace the timeline the other stored.
    /// Returns whether anything changed; ignored for an incident it does not hold.
    pub fn merge(&mut self, stored: &Incident) -> bool {
        let Some(inc) = self.open.get_mut(&stored.subject) else {
            return false;
        };
        if inc.id != stored.id {
            return false;
        }
        let before = (inc.action, inc.evidence.len());
        let mut added = false;
        for e in &stored.timeline {
            if !inc.timeline.iter().any(|x| x.alert_id == e.alert_id) {
                insert_entry(&mut inc.timeline, e.clone(), self.cfg.max_timeline);
                added = true;
            }
        }
        if let Some(k) = stored.action
            && inc.action.is_none_or(|a| k > a)
        {
            inc.action = Some(k);
        }
        add_evidence(&mut inc.evidence, &stored.evidence, self.cfg.max_evidence);
        if stored.updated_at > inc.updated_at {
            inc.updated_at = stored.updated_at;
        }
        inc.revision = inc.revision.max(stored.revision);
        if inc.tenant.is_none() {
            inc.tenant.clone_from(&stored.tenant);
        }
        let floor = self.floors.entry(inc.id.clone()).or_insert(0.0);
        *floor = floor.max(stored.risk_score);
        inc.risk_score = inc.risk_score.max(*floor);
        let changed = added || before != (inc.action, inc.evidence.len());
        if changed {
            inc.stages = stages_of(&inc.timeline);
            let (sev, reasons) = combine(&inc.timeline, inc.action);
            inc.severity = sev;
            inc.reasons = reasons;
        }
        changed
    }

    /// Closes the episodes idle for longer than the gap at `now`, and returns them.
    pub fn close_idle(&mut self, now: OffsetDateTime) -> Vec<Incident> {
        let gap = time::Duration::seconds(i64::from(self.cfg.episode_gap_secs));
        let idle: Vec<IncidentSubject> = self
            .open
            .iter()
            .filter(|(_, i)| now - i.updated_at > gap)
            .map(|(s, _)| s.clone())
            .collect();
        let mut out = Vec::new();
        for s in idle {
            if let Some(mut i) = self.open.remove(&s) {
                self.points.remove(&i.id);
                self.floors.remove(&i.id);
                if i.status == IncidentStatus::Open {
                    i.status = IncidentStatus::Closed;
                }
                out.push(i);
            }
        }
        out
    }

    /// Closes every open incident and returns them (at the end of a replay).
    pub fn drain(&mut self) -> Vec<Incident> {
        self.points.clear();
        self.floors.clear();
        let mut v: Vec<Incident> = self.open.drain().map(|(_, i)| i).collect();
        v.sort_by(|a, b| a.opened_at.cmp(&b.opened_at).then(a.id.cmp(&b.id)));
        v
    }

    fn evict_oldest(&mut self) {
        if let Some(s) = self
            .open
            .iter()
            .min_by_key(|(_, i)| i.updated_at)
            .map(|(s, _)| s.clone())
            && let Some(i) = self.open.remove(&s)
        {
            self.points.remove(&i.id);
            self.floors.remove(&i.id);
        }
    }
}

/// Puts an entry in time order; past `cap` the first and the strongest survive (the weakest
/// later one is dropped).
fn insert_entry(timeline: &mut Vec<TimelineEntry>, entry: TimelineEntry, cap: usize) {
    if timeline.len() >= cap.max(2)
        && let Some(pos) = timeline
            .iter()
            .enumerate()
            .skip(1)
            .min_by_key(|(_, e)| e.severity)
            .map(|(i, _)| i)
    {
        timeline.remove(pos);
    }
    let pos = timeline.partition_point(|e| e.at <= entry.at);
    timeline.insert(pos, entry);
}

fn add_evidence(evidence: &mut Vec<String>, ids: &[String], cap: usize) {
    for id in ids {
        if evidence.len() >= cap {
            break;
        }
        if !evidence.contains(id) {
            evidence.push(id.clone());
        }
    }
}

/// The kill-chain stages a timeline covers, in kill-chain order.
fn stages_of(timeline: &[TimelineEntry]) -> Vec<Stage> {
    let mut stages: Vec<Stage> = timeline.iter().map(|e| e.stage).collect();
    stages.sort();
    stages.dedup();
    stages
}

/// Whether a timeline entry counts towards weak signals combining. R4 (traffic at an hour the
/// key is usually quiet) says when, not who: the owner's night batch and a developer's
/// evening look the same, so it never tips a combination (it still shows on the timeline).
fn combines(e: &TimelineEntry) -> bool {
    e.severity >= Severity::Low && e.detector != DetectorId::R4
}

/// The severity policy: an incident's severity from its timeline and the action taken,
/// with the reasons a person reads.
pub fn combine(timeline: &[TimelineEntry], action: Option<ActionKind>) -> (Severity, Vec<String>) {
    let mut reasons = Vec::new();
    let strongest = timeline
        .iter()
        .map(|e| e.severity)
        .max()
        .unwrap_or(Severity::Info);
    let mut sev = strongest;
    if let Some(top) = timeline.iter().find(|e| e.severity == strongest) {
        reasons.push(format!(
            "strongest signal: {} {} ({})",
            top.detector, top.severity, top.summary
        ));
    }
    let mut weak_detectors: Vec<DetectorId> = timeline
        .iter()
        .filter(|e| combines(e))
        .map(|e| e.detector)
        .collect();
    weak_detectors.sort();
    weak_detectors.dedup();
    let mut weak_stages: Vec<Stage> = timeline
        .iter()
        .filter(|e| combines(e))
        .map(|e| e.stage)
        .collect();
    weak_stages.sort();
    weak_stages.dedup();
    if sev < Severity::Medium && weak_detectors.len() >= 3 && weak_stages.len() >= 3 {
        sev = Severity::Medium;
        reasons.push(format!(
            "{} weak signals combine over {} stages",
            weak_detectors.len(),
            weak_stages.len()
        ));
    }
    let mut strong_stages: Vec<Stage> = timeline
        .iter()
        .filter(|e| e.severity >= Severity::Medium && e.stage != Stage::Disruption)
        .map(|e| e.stage)
        .collect();
    strong_stages.sort();
    strong_stages.dedup();
    if strong_stages.len() >= 3 {
        sev = sev.max(Severity::High);
        reasons.push(format!(
            "kill chain: {}",
            strong_stages
                .iter()
                .map(|s| s.as_str())
                .collect::<Vec<_>>()
                .join(" → ")
        ));
    }
    match action {
        Some(ActionKind::Suspend | ActionKind::Revoke) if sev < Severity::High => {
            sev = Severity::High;
            reasons.push("the key was stopped: confirm or resume it".to_owned());
        }
        Some(k @ (ActionKind::Suspend | ActionKind::Revoke)) => {
            reasons.push(format!(
                "the key was {}",
                if k == ActionKind::Revoke {
                    "revoked"
                } else {
                    "suspended"
                }
            ));
        }
        Some(ActionKind::Throttle) => {
            if sev < Severity::Medium {
                sev = Severity::Medium;
            }
            reasons.push("the key was throttled".to_owned());
        }
        _ => {}
    }
    (sev, reasons)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use stormwall_types::KeyId;
    use time::Duration;
    use time::macros::datetime;

    const T0: OffsetDateTime = datetime!(2025-03-03 10:00 UTC);

    fn alert(key: Option<&str>, d: DetectorId, sev: Severity, at: OffsetDateTime) -> Alert {
        Alert {
            id: format!("ev-{}-{}", at.unix_timestamp(), d.as_str()),
            detector: d,
            stage: d.stage(),
            severity: sev,
            at,
            key_id: key.map(|k| KeyId::new(k).unwrap()),
            tenant: Some("acme".into()),
            source_ip: Some("203.0.113.9".parse().unwrap()),
            features: Vec::new(),
            subjects: Vec::new(),
            explanation: format!("{d} fired. More words."),
            evidence: vec![format!("ev-{}", at.unix_timestamp())],
            score: 15.0,
        }
    }

    fn action(kind: ActionKind, a: &Alert) -> Action {
        Action {
            kind,
            key_id: a.key_id.clone().unwrap(),
            tenant: None,
            at: a.at,
            throttle_rpm: None,
            alert_id: a.id.clone(),
            contributing_alerts: Vec::new(),
            risk_score: 0.0,
            kill_chain: false,
            reason: String::new(),
        }
    }

    #[test]
    fn alerts_of_one_key_in_an_episode_are_one_incident_with_stages_and_evidence() {
        let mut g = Grouper::default();
        let k = Some("AbCdEfGhIjKl");
        let a1 = alert(k, DetectorId::V1, Severity::Medium, T0);
        let a2 = alert(
            k,
            DetectorId::P4,
            Severity::Medium,
            T0 + Duration::minutes(5),
        );
        let a3 = alert(k, DetectorId::R2, Severity::High, T0 + Duration::minutes(9));
        let u1 = g.add(&a1, None).unwrap();
        assert_eq!(u1.change, Change::Opened);
        let u2 = g.add(&a2, None).unwrap();
        assert_eq!(u2.change, Change::Escalated, "a new stage is news");
        let u3 = g.add(&a3, Some(&action(ActionKind::Suspend, &a3))).unwrap();
        assert_eq!(u3.incident.id, u1.incident.id);
        let inc = u3.incident;
        assert_eq!(inc.timeline.len(), 3);
        assert_eq!(
            inc.stages,
            vec![Stage::Validation, Stage::Proxy, Stage::Resale]
        );
        assert_eq!(inc.evidence.len(), 3);
        assert_eq!(inc.action, Some(ActionKind::Suspend));
        assert_eq!(inc.severity, Severity::High);
        assert!(inc.risk_score > 45.0);
        assert!(inc.reasons.iter().any(|r| r.contains("kill chain")));
        // The same detector again at the same severity: appended, no new notification.
        let a4 = alert(
            k,
            DetectorId::P4,
            Severity::Medium,
            T0 + Duration::minutes(12),
        );
        let u4 = g.add(&a4, None).unwrap();
        assert_eq!(u4.change, Change::Appended);
        assert!(!u4.notify());
    }

    #[test]
    fn a_quiet_gap_ends_the_episode_and_other_keys_get_their_own() {
        let mut g = Grouper::default();
        let a = alert(Some("AbCdEfGhIjKl"), DetectorId::P3, Severity::Medium, T0);
        let first = g.add(&a, None).unwrap().incident.id;
        let other = alert(Some("ZyXwVuTsRqPo"), DetectorId::P3, Severity::Medium, T0);
        assert_ne!(g.add(&other, None).unwrap().incident.id, first);
        let later = alert(
            Some("AbCdEfGhIjKl"),
            DetectorId::P3,
            Severity::Medium,
            T0 + Duration::hours(7),
        );
        let u = g.add(&later, None).unwrap();
        assert_eq!(u.change, Change::Opened);
        assert_ne!(u.incident.id, first);
    }

    #[test]
    fn alerts_without_a_key_group_by_source_network() {
        let mut g = Grouper::default();
        let a = alert(None, DetectorId::P6, Severity::High, T0);
        let mut b = alert(
            None,
            DetectorId::P6,
            Severity::High,
            T0 + Duration::minutes(1),
        );
        b.source_ip = Some("203.0.113.200".parse().unwrap());
        let ia = g.add(&a, None).unwrap().incident;
        let ib = g.add(&b, None).unwrap().incident;
        assert_eq!(ia.id, ib.id);
        assert_eq!(
            ib.subject,
            IncidentSubject::Network("203.0.113.0/24".into())
        );
    }

    #[test]
    fn single_weak_signals_stay_low_and_combine_into_medium() {
        let mut g = Grouper::default();
        let k = Some("AbCdEfGhIjKl");
        let u = g
            .add(&alert(k, DetectorId::P5, Severity::Low, T0), None)
            .unwrap();
        assert_eq!(u.incident.severity, Severity::Low);
        let u = g
            .add(
                &alert(k, DetectorId::V1, Severity::Low, T0 + Duration::minutes(1)),
                None,
            )
            .unwrap();
        assert_eq!(
            u.incident.severity,
            Severity::Low,
            "two weak signals are not enough"
        );
        let u = g
            .add(
                &alert(k, DetectorId::R6, Severity::Low, T0 + Duration::minutes(2)),
                None,
            )
            .unwrap();
        assert_eq!(u.incident.severity, Severity::Medium);
        assert_eq!(u.change, Change::Escalated);
    }

    #[test]
    fn a_resumed_incident_takes_the_next_alert_and_keeps_its_score() {
        let k = Some("AbCdEfGhIjKl");
        let mut before = Grouper::default();
        let a1 = alert(k, DetectorId::V1, Severity::Medium, T0);
        let a2 = alert(k, DetectorId::P4, Severity::High, T0 + Duration::minutes(1));
        before.add(&a1, None);
        let stored = before.add(&a2, None).unwrap().incident;
        // A restart: a new grouper, given the stored incident back.
        let mut g = Grouper::default();
        assert!(!g.is_open(&stored.subject));
        g.resume(stored.clone());
        assert!(g.is_open(&stored.subject));
        let a3 = alert(k, DetectorId::P4, Severity::High, T0 + Duration::minutes(2));
        let u = g.add(&a3, None).unwrap();
        assert_eq!(u.change, Change::Appended, "nothing new to tell");
        assert_eq!(u.incident.id, stored.id);
        assert_eq!(u.incident.timeline.len(), 3);
        assert!(u.incident.risk_score >= stored.risk_score);
        assert_eq!(u.incident.revision, stored.revision);
    }

    #[test]
    fn an_adopted_incident_replaces_the_one_opened_at_the_same_moment() {
        let k = Some("AbCdEfGhIjKl");
        let (mut one, mut two) = (Grouper::default(), Grouper::default());
        let a1 = alert(k, DetectorId::P5, Severity::Low, T0);
        let held = one.add(&a1, None).unwrap().incident;
        // The second replica opened its own at the same moment; the store kept the first's.
        let b1 = alert(k, DetectorId::V1, Severity::Low, T0 + Duration::seconds(1));
        let mine = two.add(&b1, None).unwrap();
        assert_eq!(mine.change, Change::Opened);
        assert_ne!(mine.incident.id, held.id);
        two.adopt(held.clone());
        let u = two.add(&b1, None).unwrap();
        assert_ne!(u.change, Change::Opened);
        assert_eq!(u.incident.id, held.id);
        let ids: Vec<&str> = u
            .incident
            .timeline
            .iter()
            .map(|e| e.alert_id.as_str())
            .collect();
        assert_eq!(ids, vec![a1.id.as_str(), b1.id.as_str()]);
        assert_eq!(two.open().count(), 1);
    }

    #[test]
    fn a_replica_merges_what_another_stored_before_writing_its_own() {
        let k = Some("AbCdEfGhIjKl");
        let (mut one, mut two) = (Grouper::default(), Grouper::default());
        let a1 = alert(k, DetectorId::P5, Severity::Low, T0);
        let stored = one.add(&a1, None).unwrap().incident;
        // The second replica takes the stored incident back and adds its own alert, which
        // suspends the key.
        two.resume(stored.clone());
        let b1 = alert(k, DetectorId::V1, Severity::Low, T0 + Duration::minutes(1));
        let stored = two
            .add(&b1, Some(&action(ActionKind::Suspend, &b1)))
            .unwrap()
            .incident;
        assert_eq!(stored.timeline.len(), 2);
        // The first replica still holds only its own entry; merging first keeps both.
        assert!(one.merge(&stored));
        assert!(
            !one.merge(&stored),
            "a second merge of the same changes nothing"
        );
        let a2 = alert(k, DetectorId::R6, Severity::Low, T0 + Duration::minutes(2));
        let inc = one.add(&a2, None).unwrap().incident;
        let ids: Vec<&str> = inc.timeline.iter().map(|e| e.alert_id.as_str()).collect();
        assert_eq!(ids, vec![a1.id.as_str(), b1.id.as_str(), a2.id.as_str()]);
        assert_eq!(inc.action, Some(ActionKind::Suspend));
        assert_eq!(
            inc.severity,
            Severity::High,
            "the other replica's stop counts"
        );
        assert!(inc.risk_score >= stored.risk_score);
        assert!(inc.revision > stored.revision);
        assert_eq!(inc.stages, stages_of(&inc.timeline));
        let all = vec![
            a1.id.clone(),
            b1.id.clone(),
            a2.id.clone(),
            "late".to_owned(),
        ];
        assert_eq!(
            one.missing(&inc.subject, &inc.id, &all),
            vec!["late".to_owned()]
        );
        assert!(one.missing(&inc.subject, "inc-other", &all).is_empty());
        // Another incident's record (an earlier episode) is not merged.
        let mut other = stored.clone();
        other.id = "inc-other".into();
        other.timeline[0].alert_id = "x".into();
        assert!(!one.merge(&other));
    }

    #[test]
    fn close_idle_closes_only_ended_episodes() {
        let mut g = Grouper::default();
        g.add(
            &alert(Some("AbCdEfGhIjKl"), DetectorId::P3, Severity::Medium, T0),
            None,
        );
        assert!(g.close_idle(T0 + Duration::hours(1)).is_empty());
        let closed = g.close_idle(T0 + Duration::hours(7));
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].status, IncidentStatus::Closed);
        assert_eq!(g.open().count(), 0);
    }
}
