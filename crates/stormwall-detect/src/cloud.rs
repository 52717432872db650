//! Detection over cloud logs: the data-plane [`Engine`] and the control-plane
//! [`CloudDetectors`] fed the same time-ordered stream, with a recommendation (the exact
//! revocation command) for every serious finding on a cloud principal, and a state that
//! saves and resumes.
//!
//! The engine's own state is not serialisable; a saved state instead keeps the recent usage
//! events (the baseline window) and replays them on resume — the engine is deterministic on
//! event time, so the replay rebuilds exactly the state the last run ended with.

use std::collections::{HashSet, VecDeque};

use stormwall_types::{
    Action, ActionKind, Alert, ControlEvent, KeyId, Principal, Severity, UsageEvent,
};

use crate::config::EngineConfig;
use crate::detectors::cloud::{CloudDetectors, CloudState, Recommendation, recommend};
use crate::engine::{Engine, FastMap};

/// Days of usage events a saved state keeps for the replay (the baseline window).
pub const RETAIN_DAYS: i64 = 28;
/// Most usage events a saved state keeps.
pub const RETAIN_MAX: usize = 2_000_000;

/// One alert with what to do about it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Finding {
    /// The alert (the same record the gateway stores).
    pub alert: Alert,
    /// The response policy's action, when the engine tracks the key.
    pub action: Option<Action>,
    /// For a cloud principal at high severity or an action past `alert`: the command an
    /// operator would run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recommendation: Option<Recommendation>,
}

/// A saved run.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    /// Format version.
    pub version: u32,
    /// The control-plane detectors' state.
    pub cloud: CloudState,
    /// Recent usage events, oldest first, replayed into the engine on resume.
    pub events: Vec<UsageEvent>,
    /// Ids of recent control events (so a re-read file is not judged twice).
    pub control_ids: Vec<String>,
    /// Newest event time seen (unix seconds).
    pub watermark: Option<i64>,
}

/// The engine and the cloud detectors together.
#[derive(Debug)]
pub struct CloudRun {
    engine: Engine,
    cloud: CloudDetectors,
    principals: FastMap<KeyId, (Principal, Option<String>)>,
    retained: VecDeque<UsageEvent>,
    seen: HashSet<String, foldhash::fast::RandomState>,
    control_ids: VecDeque<(i64, String)>,
    watermark: Option<i64>,
    scratch: Vec<Alert>,
    /// Whether recent events are kept for a snapshot (and re-read events skipped).
    keep: bool,
    /// Events skipped because a saved state had already judged them.
    pub duplicates: u64,
}

impl CloudRun {
    /// A fresh run that keeps what a snapshot needs (see [`CloudRun::without_state`]).
    pub fn new(cfg: EngineConfig) -> Self {
        let mut run = Self::without_state(cfg);
        run.keep = true;
        run
    }

    /// A fresh run that will not be saved: no events are kept (a one-off batch, the
    /// benchmark), so memory stays at the detectors' state. The cloud detectors' thresholds
    /// are `[detect.cloud]` of the same configuration.
    pub fn without_state(cfg: EngineConfig) -> Self {
        let cloud = CloudDetectors::new(
            cfg.detect.cloud.clone(),
            cfg.detect.disabled.clone(),
            cfg.response.severity_points,
        );
        Self {
            engine: Engine::new(cfg),
            cloud,
            principals: FastMap::default(),
            retained: VecDeque::new(),
            seen: HashSet::default(),
            control_ids: VecDeque::new(),
            watermark: None,
            scratch: Vec::new(),
            keep: false,
            duplicates: 0,
        }
    }

    /// A run resumed from a snapshot: the cloud state restored, the usage events replayed.
    pub fn resume(cfg: EngineConfig, snap: Snapshot) -> Self {
        let mut run = Self::new(cfg);
        let mut alerts = Vec::new();
        for e in snap.events {
            alerts.clear();
            run.engine.observe_into(&e, &mut alerts);
            for a in &alerts {
                let _ = run.engine.decide(a);
            }
            run.remember(e);
        }
        run.cloud.restore(snap.cloud);
        let at = snap.watermark.unwrap_or(0);
        for id in snap.control_ids {
            run.seen.insert(id.clone());
            run.control_ids.push_back((at, id));
        }
        run.watermark = snap.watermark;
        run
    }

    /// The data-plane engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The principal a key id stands for, when a cloud event named it.
    pub fn principal(&self, key: &KeyId) -> Option<&Principal> {
        self.principals.get(key).map(|(p, _)| p)
    }

    fn remember(&mut self, e: UsageEvent) {
        if let Some(c) = e.cloud.as_deref()
            && let Some(k) = &e.key_id
            && !self.principals.contains_key(k)
        {
            self.principals
                .insert(k.clone(), (c.principal.clone(), c.resource.clone()));
        }
        let t = e.timestamp.unix_timestamp();
        self.watermark = Some(self.watermark.map_or(t, |w| w.max(t)));
        if !self.keep {
            return;
        }
        self.seen.insert(e.id.clone());
        self.retained.push_back(e);
        let horizon = self.watermark.unwrap_or(t) - RETAIN_DAYS * 86_400;
        while self.retained.len() > RETAIN_MAX
            || self
                .retained
                .front()
                .is_some_and(|x| x.timestamp.unix_timestamp() < horizon)
        {
            if let Some(old) = self.retained.pop_front() {
                self.seen.remove(&old.id);
            }
        }
    }

    fn findings(&mut self, out: &mut Vec<Finding>) {
        let alerts = std::mem::take(&mut self.scratch);
        for alert in &alerts {
            let action = self.engine.decide(alert);
            let principal = alert
                .key_id
                .as_ref()
                .and_then(|k| self.principals.get(k))
                .cloned()
                .or_else(|| principal_of_alert(alert));
            let serious = alert.severity >= Severity::High
                || action
                    .as_ref()
                    .is_some_and(|a| a.kind >= ActionKind::Suspend);
            let recommendation = match (&principal, serious) {
                (Some((p, resource)), true) => Some(recommend(p, resource.as_deref(), alert.at)),
                _ => None,
            };
            out.push(Finding {
                alert: alert.clone(),
                action,
                recommendation,
            });
        }
        self.scratch = alerts;
        self.scratch.clear();
    }

    /// Observes a usage event (from a cloud log or the gateway); appends its findings.
    pub fn observe_usage(&mut self, e: UsageEvent, out: &mut Vec<Finding>) {
        if self.keep && self.seen.contains(&e.id) {
            self.duplicates += 1;
            return;
        }
        self.scratch.clear();
        if let Some(c) = e.cloud.as_deref()
            && let Some(k) = &e.key_id
            && !self.principals.contains_key(k)
        {
            self.principals
                .insert(k.clone(), (c.principal.clone(), c.resource.clone()));
        }
        self.engine.observe_into(&e, &mut self.scratch);
        let mut cloud_alerts = Vec::new();
        self.cloud.observe_usage(&e, &mut cloud_alerts);
        self.scratch.extend(cloud_alerts);
        self.findings(out);
        self.remember(e);
    }

    /// Observes a management event; appends its findings.
    pub fn observe_control(&mut self, c: &ControlEvent, out: &mut Vec<Finding>) {
        if self.keep && self.seen.contains(&c.id) {
            self.duplicates += 1;
            return;
        }
        let t = c.timestamp.unix_timestamp();
        self.watermark = Some(self.watermark.map_or(t, |w| w.max(t)));
        if self.keep {
            self.control_ids.push_back((t, c.id.clone()));
            self.seen.insert(c.id.clone());
        }
        let horizon = self.watermark.unwrap_or(t) - RETAIN_DAYS * 86_400;
        while self.control_ids.front().is_some_and(|(x, _)| *x < horizon)
            || self.control_ids.len() > RETAIN_MAX
        {
            if let Some((_, old)) = self.control_ids.pop_front() {
                self.seen.remove(&old);
            }
        }
        let key = c.cloud.principal.key_id();
        self.principals
            .entry(key)
            .or_insert_with(|| (c.cloud.principal.clone(), c.cloud.resource.clone()));
        self.scratch.clear();
        let mut alerts = Vec::new();
        self.cloud.observe_control(c, &mut alerts);
        for a in &alerts {
            // Principals exposed by this event (a read key, a created one) are named in the
            // alert; remember them for the recommendation.
            if let Some(k) = &a.key_id
                && !self.principals.contains_key(k)
                && let Some(p) = principal_of_alert(a)
            {
                self.principals.insert(k.clone(), p);
            }
        }
        self.scratch.extend(alerts);
        self.findings(out);
    }

    /// Judges an alert raised beside the detectors (a Sigma rule's match): its score is the
    /// response policy's points for its severity; the policy's action (when the engine
    /// tracks the key) and the recommendation follow as for the detectors' own alerts.
    pub fn observe_alert(&mut self, mut alert: Alert, out: &mut Vec<Finding>) {
        let points = self.engine.config().response.severity_points;
        alert.score = points.get(alert.severity as usize).copied().unwrap_or(0.0);
        // The principal is not remembered from the alert's label (it lacks the user name
        // a revoke command needs); the record's own event names it.
        self.scratch.clear();
        self.scratch.push(alert);
        self.findings(out);
    }

    /// Whether a resumed state already judged the event with this id.
    pub fn judged(&self, id: &str) -> bool {
        self.keep && self.seen.contains(id)
    }

    /// The state to save.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            version: 1,
            cloud: self.cloud.state().clone(),
            events: self.retained.iter().cloned().collect(),
            control_ids: self.control_ids.iter().map(|(_, id)| id.clone()).collect(),
            watermark: self.watermark,
        }
    }
}

/// The principal an alert's `principal` subject names (`provider:id`), when it can be
/// rebuilt from the label alone.
fn principal_of_alert(a: &Alert) -> Option<(Principal, Option<String>)> {
    use stormwall_types::{CloudProvider as P, CredentialKind as K};
    let label = &a.subjects.iter().find(|s| s.kind == "principal")?.value;
    let kind = a
        .subjects
        .iter()
        .find(|s| s.kind == "credential_kind")
        .map(|s| s.value.as_str())?;
    let (provider, id) = label.split_once(':')?;
    let provider = match provider {
        "aws" => P::Aws,
        "azure" => P::Azure,
        "openai" => P::Openai,
        "gcp" => P::Gcp,
        _ => return None,
    };
    let kind = [
        K::AwsLongTermKey,
        K::AwsSessionKey,
        K::AwsBedrockApiKey,
        K::AwsPrincipal,
        K::AzureResourceKey,
        K::AzureEntraIdentity,
        K::AzureApimSubscription,
        K::OpenaiApiKey,
        K::OpenaiSession,
        K::GcpServiceAccountKey,
        K::GcpPrincipal,
    ]
    .into_iter()
    .find(|k| k.as_str() == kind)?;
    let resource = (kind == K::AzureResourceKey).then(|| id.trim_end_matches("#key").to_owned());
    Some((
        Principal {
            provider,
            kind,
            id: id.to_owned(),
            account: a.tenant.clone(),
            name: None,
        },
        resource,
    ))
}

#[cfg(test)]
mod tests {
    use stormwall_types::{
        CloudContext, CloudProvider, CredentialKind, Endpoint, Principal, UsageEvent,
    };
    use time::OffsetDateTime;

    use super::{CloudRun, Snapshot};
    use crate::config::EngineConfig;

    fn event(i: i64, region: &str) -> UsageEvent {
        let p = Principal {
            provider: CloudProvider::Aws,
            kind: CredentialKind::AwsLongTermKey,
            id: "AKIAEXAMPLE000000009".into(),
            account: Some("111122223333".into()),
            name: Some("arn:aws:iam::111122223333:user/app".into()),
        };
        let t = OffsetDateTime::from_unix_timestamp(1_740_000_000 + i * 60).unwrap();
        let mut e = UsageEvent::new(
            format!("e{i}"),
            t,
            "192.0.2.1".parse().unwrap(),
            "POST",
            "/model/invoke",
        );
        e.set_endpoint(Endpoint::ChatCompletions);
        e.status = 200;
        e.prompt_chars = 1000;
        e.key_id = Some(p.key_id());
        e.cloud = Some(Box::new(CloudContext {
            principal: p,
            operation: "InvokeModel".into(),
            region: Some(region.into()),
            resource: None,
            ip_masked: false,
            ip_missing: false,
            error: None,
            bearer: false,
        }));
        e
    }

    #[test]
    fn a_resumed_run_skips_judged_events_and_keeps_cloud_state() {
        let mut run = CloudRun::new(EngineConfig::default());
        let mut out = Vec::new();
        run.observe_usage(event(0, "us-east-1"), &mut out);
        run.observe_usage(event(1, "us-west-2"), &mut out);
        let snap: Snapshot =
            serde_json::from_str(&serde_json::to_string(&run.snapshot()).unwrap()).unwrap();
        assert_eq!(snap.events.len(), 2);
        let mut resumed = CloudRun::resume(EngineConfig::default(), snap);
        let mut again = Vec::new();
        resumed.observe_usage(event(1, "us-west-2"), &mut again);
        assert_eq!(resumed.duplicates, 1);
        assert!(again.is_empty());
        // The regions of yesterday's run count: a third region now is P7.
        resumed.observe_usage(event(2, "eu-west-1"), &mut again);
        let p7 = again
            .iter()
            .find(|f| f.alert.detector == stormwall_types::DetectorId::P7);
        let p7 = p7.expect("P7 after resume");
        let rec = p7.recommendation.as_ref().expect("a high alert recommends");
        assert!(rec.command.starts_with(
            "aws iam update-access-key --user-name app --access-key-id AKIAEXAMPLE000000009"
        ));
    }
}
