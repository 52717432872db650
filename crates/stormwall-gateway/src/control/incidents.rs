//! Incidents live: every new alert the detection task stores joins its incident (the alerts
//! about one key, or one source network, within an episode; the grouping is
//! `stormwall_detect::incident`), which is stored and — when it opens or escalates — sent
//! once to the log, the JSON-lines file and the webhook. Operators acknowledge, resolve or
//! mark an incident false-positive through the admin API; the change applies to its alerts
//! and is written to the audit log.

use stormwall_detect::incident::{Change, Update, subject_of};
use stormwall_store::{
    ActionOutcome, ActionQuery, ActionRecord, AlertStatus, IncidentQuery, Opened, StoreError,
    StoredIncident,
};
use stormwall_types::{Alert, IncidentStatus};
use time::OffsetDateTime;

use super::ControlPlane;
use crate::control::alerts::change_name;

/// Most alerts an incident's detail answer carries (the ids are all listed regardless).
pub const MAX_DETAIL_ALERTS: usize = 500;

/// Adds a newly stored alert (and the action taken on it, if any) to its incident, stores
/// the incident and notifies when it opened or escalated. A store failure is logged and
/// the notification still goes out: losing the record is better than losing the news.
pub async fn record(state: &ControlPlane, alert: &Alert, action: Option<&ActionRecord>) {
    // A failed action did not happen; one already in effect still describes the key.
    let action = action
        .filter(|r| r.outcome != ActionOutcome::Failed)
        .map(|r| &r.action);
    resume_stored(state, alert).await;
    merge_stored(state, alert).await;
    let Some(mut update) = state.alerts.group(alert, action) else {
        return;
    };
    if update.change == Change::Opened {
        match open_or_join(state, alert, action, update).await {
            Ok(u) => update = u,
            Err(None) => return,
            Err(Some(u)) => update = u,
        }
    }
    let escalated = update.change == Change::Escalated;
    let written = match state
        .store
        .upsert_incident(&update.incident, std::slice::from_ref(&alert.id), escalated)
        .await
    {
        Ok(s) => Ok(rewrite_lost(state, s).await),
        Err(e) => Err(e),
    };
    let stored = match written {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(incident_id = %update.incident.id, error = %e, "cannot store an incident");
            let now = OffsetDateTime::now_utc();
            StoredIncident {
                alert_ids: update
                    .incident
                    .timeline
                    .iter()
                    .map(|t| t.alert_id.clone())
                    .collect(),
                incident: update.incident.clone(),
                note: None,
                created_at: now,
                changed_at: now,
            }
        }
    };
    // An operator who called it a false positive is not paged again for the same episode.
    if !update.notify() || stored.incident.status == IncidentStatus::FalsePositive {
        return;
    }
    state
        .metrics
        .incidents
        .get_or_create(&crate::metrics::IncidentLabels {
            change: change_name(update.change),
            severity: stored.incident.severity.as_str(),
        })
        .inc();
    state.alerts.raise_incident(update.change, &stored);
    if !state.alerts.per_alert()
        && let Some(hook) = &state.webhook
    {
        hook.send_incident(change_name(update.change), &stored);
    }
}

/// A newly opened incident is stored through the store's atomic opening: two replicas
/// whose first alerts on one subject arrive together (neither finding the other's incident
/// to resume) would otherwise open two. When another replica's incident already holds the
/// subject's episode, this replica takes it in place of its own and the alert joins it
/// (the update then says appended or escalated, and the opening is not notified twice).
/// `Ok` is the update to write as usual (an opened one is stored already; the usual write
/// after it changes nothing), `Err(Some)` the update to fall back on when the store failed,
/// `Err(None)` when the alert no longer groups.
async fn open_or_join(
    state: &ControlPlane,
    alert: &Alert,
    action: Option<&stormwall_types::Action>,
    update: Update,
) -> Result<Update, Option<Update>> {
    let gap = state.alerts.with_grouper(|g| g.episode_gap_secs());
    match state
        .store
        .open_incident(&update.incident, std::slice::from_ref(&alert.id), gap)
        .await
    {
        Ok(Opened::New(_)) => Ok(update),
        Ok(Opened::Running(held)) => {
            state.alerts.with_grouper(|g| g.adopt(held.incident));
            state.alerts.group(alert, action).ok_or(None)
        }
        Err(e) => {
            tracing::warn!(incident_id = %update.incident.id, error = %e, "cannot open an incident");
            Err(Some(update))
        }
    }
}

/// The grouper lives in memory: after a restart, or on a replica that has not seen the
/// incident, the subject's (key's or source network's) latest stored incident whose episode
/// is still running is taken back, so the alert joins it instead of opening (and notifying)
/// another.
async fn resume_stored(state: &ControlPlane, alert: &Alert) {
    let Some(subject) = subject_of(alert) else {
        return;
    };
    let (open, gap) = state
        .alerts
        .with_grouper(|g| (g.is_open(&subject), g.episode_gap_secs()));
    if open {
        return;
    }
    // A key's incidents are found through its indexed column; a network's by its label.
    let q = match &alert.key_id {
        Some(key) => IncidentQuery {
            key_id: Some(key.clone()),
            limit: Some(1),
            ..Default::default()
        },
        None => IncidentQuery {
            subject: Some(subject.label()),
            limit: Some(1),
            ..Default::default()
        },
    };
    match state.store.list_incidents(&q).await {
        Ok(found) => {
            if let Some(prev) = found.into_iter().next()
                && prev.incident.subject == subject
                && prev.incident.status != IncidentStatus::Closed
                && alert.at >= prev.incident.opened_at
                && (alert.at - prev.incident.updated_at).whole_seconds() <= i64::from(gap)
            {
                state.alerts.with_grouper(|g| g.resume(prev.incident));
            }
        }
        Err(e) => {
            tracing::warn!(subject = %subject.label(), error = %e, "cannot read the subject's incident");
        }
    }
}

/// Replicas each hold an open incident in memory and each write it whole: before adding an
/// alert, take in what another replica stored since this one last wrote it, so this write
/// does not replace that replica's timeline entries, action and score.
async fn merge_stored(state: &ControlPlane, alert: &Alert) {
    let Some(subject) = subject_of(alert) else {
        return;
    };
    let Some(id) = state
        .alerts
        .with_grouper(|g| g.get(&subject).map(|i| i.id.clone()))
    else {
        return;
    };
    match state.store.get_incident(&id).await {
        Ok(Some(stored)) => {
            state.alerts.with_grouper(|g| g.merge(&stored.incident));
        }
        Ok(None) => {}
        Err(e) => tracing::warn!(incident_id = %id, error = %e, "cannot read an incident"),
    }
}

/// Two replicas writing one incident at the same moment: the later write replaced the
/// other's timeline, but the store links every alert to the incident. The alerts this
/// replica's timeline lacks are read back (with the actions taken on them) and the incident
/// written again, until the stored timeline holds every linked alert (a few rounds at most:
/// each round only adds). Returns the latest stored incident.
async fn rewrite_lost(state: &ControlPlane, mut stored: StoredIncident) -> StoredIncident {
    let subject = stored.incident.subject.clone();
    for _ in 0..3 {
        let missing = state
            .alerts
            .with_grouper(|g| g.missing(&subject, &stored.incident.id, &stored.alert_ids));
        if missing.is_empty() {
            break;
        }
        for id in missing.iter().take(16) {
            let Ok(Some(found)) = state.store.get_alert(id).await else {
                continue;
            };
            let q = ActionQuery {
                alert_id: Some(id.clone()),
                ..Default::default()
            };
            let action = match state.store.list_actions(&q).await {
                Ok(list) => list
                    .into_iter()
                    .filter(|r| r.outcome != ActionOutcome::Failed && r.action.alert_id == *id)
                    .max_by_key(|r| r.action.kind)
                    .map(|r| r.action),
                Err(_) => None,
            };
            state.alerts.group(&found.alert, action.as_ref());
        }
        let Some(merged) = state.alerts.with_grouper(|g| g.get(&subject).cloned()) else {
            break;
        };
        match state.store.upsert_incident(&merged, &[], false).await {
            Ok(s) => stored = s,
            Err(e) => {
                tracing::warn!(incident_id = %merged.id, error = %e, "cannot store an incident");
                break;
            }
        }
    }
    stored
}

/// How often ended episodes are looked for: a quarter of the gap, between 1 s and a minute,
/// so an incident is `closed` at most that long after its episode ended.
pub fn close_every(gap_secs: u32) -> std::time::Duration {
    std::time::Duration::from_secs(u64::from(gap_secs / 4).clamp(1, 60))
}

/// Closes the incidents whose episode ended by `now`: quiet for longer than the episode gap.
/// The grouper forgets them (the subject's next alert opens a new incident) and the store
/// marks every such `open` incident `closed` — those this replica holds, those another
/// replica opened and those left open across a restart alike. An operator's status stays.
pub async fn close_quiet(state: &ControlPlane, now: OffsetDateTime) {
    let (closed, gap) = state
        .alerts
        .with_grouper(|g| (g.close_idle(now).len(), g.episode_gap_secs()));
    let quiet_since = now - time::Duration::seconds(i64::from(gap));
    match state.store.close_quiet_incidents(quiet_since, now).await {
        Ok(n) if n > 0 || closed > 0 => {
            tracing::debug!(closed = n, held = closed, "incident episodes ended");
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot close ended incidents"),
    }
}

/// What an operator does with an incident.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handling {
    /// Looked at; it stands (its open alerts become acknowledged).
    Acknowledge,
    /// Wrong: the incident and its alerts are false positives (the detectors learn).
    FalsePositive,
    /// Dealt with (its open alerts become acknowledged).
    Resolve,
}

impl Handling {
    /// The admin API's verb: `ack`, `false-positive`, `resolve`.
    pub fn from_verb(verb: &str) -> Option<Self> {
        match verb {
            "ack" => Some(Handling::Acknowledge),
            "false-positive" => Some(Handling::FalsePositive),
            "resolve" => Some(Handling::Resolve),
            _ => None,
        }
    }

    fn status(self) -> IncidentStatus {
        match self {
            Handling::Acknowledge => IncidentStatus::Acknowledged,
            Handling::FalsePositive => IncidentStatus::FalsePositive,
            Handling::Resolve => IncidentStatus::Resolved,
        }
    }
}

/// Sets an incident's status and applies it to its alerts (open ones are acknowledged; a
/// false positive marks every alert not yet so, teaching the detectors), then writes the
/// incident's change and each alert's to the audit log. `StoreError::NotFound` for an
/// unknown incident.
pub async fn handle(
    state: &ControlPlane,
    id: &str,
    handling: Handling,
    note: Option<&str>,
) -> Result<StoredIncident, StoreError> {
    handle_as(
        state,
        crate::control::audit::ADMIN,
        None,
        id,
        handling,
        note,
    )
    .await
}

/// [`handle`], audited as `actor` (e.g. `console:admin`) with the console `session`'s tag
/// when a console session made the change.
pub async fn handle_as(
    state: &ControlPlane,
    actor: &str,
    session: Option<&str>,
    id: &str,
    handling: Handling,
    note: Option<&str>,
) -> Result<StoredIncident, StoreError> {
    let with_session = |mut detail: serde_json::Value| {
        if let Some(tag) = session {
            detail["session"] = tag.into();
        }
        detail
    };
    let now = OffsetDateTime::now_utc();
    let stored = state
        .store
        .set_incident_status(id, handling.status(), note, now)
        .await?;
    let mut changed = Vec::new();
    for alert_id in &stored.alert_ids {
        // An alert another replica de-duplicated away is not stored: nothing to change.
        let Some(current) = state.store.get_alert(alert_id).await? else {
            continue;
        };
        let result = match (handling, current.status) {
            (_, AlertStatus::FalsePositive) => continue,
            (Handling::FalsePositive, _) => {
                crate::control::detection::mark_false_positive(state, alert_id, note).await
            }
            (_, AlertStatus::Acknowledged) => continue,
            (_, AlertStatus::Open) => {
                state
                    .store
                    .set_alert_status(alert_id, AlertStatus::Acknowledged, note, now)
                    .await
            }
        };
        match result {
            Ok(a) => changed.push(a),
            Err(StoreError::NotFound) => {}
            Err(e) => return Err(e),
        }
    }
    let incident = &stored.incident;
    let key_id = match &incident.subject {
        stormwall_types::IncidentSubject::Key(k) => Some(k.as_str()),
        stormwall_types::IncidentSubject::Network(_) => None,
    };
    for a in &changed {
        crate::control::audit::record(
            state,
            actor,
            &format!("alert.{}", a.status.as_str()),
            Some(&a.alert.id),
            a.alert.tenant.as_deref(),
            with_session(
                serde_json::json!({ "note": note, "key_id": a.alert.key_id, "incident_id": id }),
            ),
        )
        .await;
    }
    crate::control::audit::record(
        state,
        actor,
        &format!("incident.{}", incident.status.as_str()),
        Some(id),
        incident.tenant.as_deref(),
        with_session(serde_json::json!({
            "note": note,
            "key_id": key_id,
            "subject": incident.subject.label(),
            "alert_ids": stored.alert_ids,
            "alerts_changed": changed.iter().map(|a| a.alert.id.as_str()).collect::<Vec<_>>(),
        })),
    )
    .await;
    Ok(stored)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_map_to_statuses() {
        assert_eq!(
            Handling::from_verb("ack").map(Handling::status),
            Some(IncidentStatus::Acknowledged)
        );
        assert_eq!(
            Handling::from_verb("false-positive").map(Handling::status),
            Some(IncidentStatus::FalsePositive)
        );
        assert_eq!(
            Handling::from_verb("resolve").map(Handling::status),
            Some(IncidentStatus::Resolved)
        );
        assert_eq!(Handling::from_verb("close"), None);
    }
}
