//! The console's incidents: the queue (filtered by status, severity and key) and one
//! incident's page — its reasons, kill-chain stages, timeline, and evidence events with
//! their networks and clients (never prompt text) — where an operator acknowledges,
//! resolves or marks it false-positive, or suspends or revokes its key. Changes go through
//! the same function as the admin API ([`crate::control::incidents::handle_as`]) and are
//! audited with the console session that made them.

use std::fmt::Write as _;

use http::StatusCode;
use stormwall_store::{EventSummary, IncidentQuery, StoredIncident, SummaryParts};
use stormwall_types::{IncidentStatus, IncidentSubject, Severity, Stage};

use super::html::{self, E, Nav, csrf_field, esc, ro, table, url_part};
use super::pages::{
    AUDIT_HEAD, EVENT_HEAD, LIVE_SECS, Page, act_on_key, audit_rows, audit_trail, dl, event_rows,
    evidence_events, key_link, networks_and_clients, not_found, opt_text, queue_tabs, select,
    short_ts, status_badge, store_failed, ts,
};
use super::session::Flash;
use super::{Ctx, field, html_response, redirect};
use crate::control::incidents::{Handling, handle_as};

/// Most incidents the queue shows.
const QUEUE_ROWS: usize = 500;

/// The kill chain in order, to show which stages an incident covers and which it does not.
const KILL_CHAIN: [Stage; 8] = [
    Stage::Exposure,
    Stage::Harvest,
    Stage::Validation,
    Stage::Proxy,
    Stage::Resale,
    Stage::Abuse,
    Stage::Disruption,
    Stage::Evasion,
];

/// Columns of an incident list (the queue, a key's page).
pub(super) const INCIDENT_HEAD: &[&str] = &[
    "Latest alert (UTC)",
    "Severity",
    "Subject",
    "Stages",
    "Risk",
    "Alerts",
    "Status",
    "",
];

fn subject_html(s: &IncidentSubject) -> String {
    match s {
        IncidentSubject::Key(k) => format!("key {}", key_link(k)),
        IncidentSubject::Network(n) => format!("network <code>{}</code>", E(n)),
    }
}

/// One row per incident.
pub(super) fn incident_rows(incidents: &[StoredIncident]) -> Vec<Vec<String>> {
    incidents
        .iter()
        .map(|s| {
            let i = &s.incident;
            let stages: Vec<&str> = i.stages.iter().map(|st| st.as_str()).collect();
            vec![
                short_ts(i.updated_at),
                status_badge(i.severity.as_str()),
                subject_html(&i.subject),
                esc(&stages.join(", ")),
                format!("{:.2}", i.risk_score),
                s.alert_ids.len().to_string(),
                status_badge(i.status.as_str()),
                format!(
                    "<a href=\"/console/incidents/{}\">Open</a>",
                    url_part(&i.id)
                ),
            ]
        })
        .collect()
}

/// The incident queue.
pub(super) async fn queue(ctx: &Ctx<'_>) -> Page {
    let status_param = ctx.param("status").unwrap_or_else(|| "open".to_owned());
    let severity = ctx.param("severity");
    let key = ctx.param("key");
    let q = IncidentQuery {
        status: IncidentStatus::parse(&status_param),
        min_severity: severity.as_deref().and_then(Severity::parse),
        key_id: key
            .as_deref()
            .and_then(|k| stormwall_types::KeyId::new(k).ok()),
        limit: Some(QUEUE_ROWS),
        ..Default::default()
    };
    let incidents = match ctx.app.store.list_incidents(&q).await {
        Ok(v) => v,
        Err(e) => return store_failed(e),
    };
    let mut h = queue_tabs("incidents");
    let _ = write!(
        h,
        "<form method=\"get\" action=\"/console/incidents\" class=\"filters\" role=\"search\">{}{}\
         <label for=\"f-key\">Key</label><input id=\"f-key\" name=\"key\" value=\"{}\">\
         <button type=\"submit\">Filter</button></form>",
        select(
            "status",
            "Status",
            &[
                "open",
                "acknowledged",
                "resolved",
                "false_positive",
                "closed",
                "any"
            ],
            Some(status_param.as_str())
        ),
        select(
            "severity",
            "At least",
            &["", "critical", "high", "medium", "low", "info"],
            severity.as_deref()
        ),
        E(key.as_deref().unwrap_or("")),
    );
    h.push_str(&table(
        "Incident queue",
        INCIDENT_HEAD,
        &incident_rows(&incidents),
        "no incident matches",
    ));
    html_response(
        StatusCode::OK,
        html::page("Incidents", &ctx.session, Nav::Alerts, LIVE_SECS, &h),
    )
}

fn kill_chain(covered: &[Stage]) -> String {
    let mut h = String::from(
        "<section aria-labelledby=\"kc-h\"><h2 id=\"kc-h\">Kill-chain stages</h2><ol class=\"killchain\">",
    );
    for st in KILL_CHAIN {
        let (class, word) = if covered.contains(&st) {
            ("hit", "seen")
        } else {
            ("miss", "not seen")
        };
        let _ = write!(
            h,
            "<li class=\"{class}\">{} <span class=\"muted\">({word})</span></li>",
            E(st.as_str())
        );
    }
    h.push_str("</ol></section>");
    h
}

/// One incident's page.
pub(super) async fn page(ctx: &Ctx<'_>, id: &str) -> Page {
    let stored = match ctx.app.store.get_incident(id).await {
        Ok(Some(s)) => s,
        Ok(None) => return not_found(),
        Err(e) => return store_failed(e),
    };
    let trail = audit_trail(ctx, id).await;
    let i = &stored.incident;
    let evidence = evidence_events(ctx, &i.evidence).await;
    let mut h = dl(&[
        ("Incident", format!("<code>{}</code>", E(&i.id))),
        (
            "Status",
            format!(
                "<span id=\"incident-status\">{}</span>",
                status_badge(i.status.as_str())
            ),
        ),
        ("Severity", status_badge(i.severity.as_str())),
        ("Subject", subject_html(&i.subject)),
        ("Tenant", esc(i.tenant.as_deref().unwrap_or("—"))),
        ("First alert", ts(i.opened_at)),
        ("Latest alert", ts(i.updated_at)),
        ("Risk score", format!("{:.2}", i.risk_score)),
        ("Alerts", stored.alert_ids.len().to_string()),
        (
            "Strongest action",
            esc(i.action.map_or("none", |a| a.as_str())),
        ),
        ("Revision", i.revision.to_string()),
        ("Note", esc(stored.note.as_deref().unwrap_or("—"))),
    ]);
    h.push_str(
        "<section aria-labelledby=\"why-h\"><h2 id=\"why-h\">Why</h2><ul class=\"reasons\">",
    );
    for r in &i.reasons {
        let _ = write!(h, "<li>{}</li>", E(r));
    }
    h.push_str("</ul></section>");
    h.push_str(&kill_chain(&i.stages));
    let iid = url_part(&i.id);
    let ro = ro(&ctx.session);
    h.push_str(
        "<section aria-labelledby=\"act-h\" class=\"actions\"><h2 id=\"act-h\">Actions</h2>",
    );
    for (verb, label, field_id) in [
        ("ack", "Acknowledge", "ack"),
        ("resolve", "Resolve", "resolve"),
        ("false-positive", "False positive", "fp"),
    ] {
        let _ = write!(
            h,
            "<form method=\"post\" action=\"/console/incidents/{iid}/{verb}\" class=\"inline\">{csrf}\
             <label for=\"n-{field_id}\">Note</label><input id=\"n-{field_id}\" name=\"note\"{ro}>\
             <button type=\"submit\" id=\"btn-inc-{field_id}\"{ro}>{label}</button></form>",
            csrf = csrf_field(&ctx.session),
        );
    }
    if let IncidentSubject::Key(_) = &i.subject {
        h.push_str(&html::action_button(
            &ctx.session,
            &format!("/console/incidents/{iid}/suspend-key"),
            "Suspend key",
            "",
            None,
        ));
        h.push_str(&html::action_button(
            &ctx.session,
            &format!("/console/incidents/{iid}/revoke-key"),
            "Revoke key",
            "danger",
            Some("Revoke this incident's key for good?"),
        ));
    }
    h.push_str("</section><h2>Timeline</h2>");
    let rows: Vec<Vec<String>> = i
        .timeline
        .iter()
        .map(|t| {
            vec![
                short_ts(t.at),
                status_badge(t.severity.as_str()),
                format!("<code>{}</code>", E(t.detector.as_str())),
                esc(t.stage.as_str()),
                esc(&t.summary),
                esc(t.action.map_or("—", |a| a.as_str())),
                format!(
                    "<a href=\"/console/alerts/{}\">Open</a>",
                    url_part(&t.alert_id)
                ),
            ]
        })
        .collect();
    h.push_str(&table(
        "Alerts, oldest first",
        &[
            "Time (UTC)",
            "Severity",
            "Detector",
            "Stage",
            "Summary",
            "Action",
            "",
        ],
        &rows,
        "none",
    ));
    if stored.alert_ids.len() > i.timeline.len() {
        let _ = write!(
            h,
            "<p class=\"muted\">The timeline keeps {} of its {} alerts.</p>",
            i.timeline.len(),
            stored.alert_ids.len()
        );
    }
    h.push_str("<h2>Evidence</h2>");
    let _ = write!(
        h,
        "<p class=\"muted\">{} of {} evidence events found. Prompt text is never shown.</p>",
        evidence.len(),
        i.evidence.len()
    );
    h.push_str(&networks_and_clients(
        "Networks of the evidence",
        &evidence_summary(&evidence),
        "no evidence events",
    ));
    let refs: Vec<&stormwall_types::UsageEvent> = evidence.iter().collect();
    h.push_str(&table(
        "Evidence events",
        EVENT_HEAD,
        &event_rows(ctx, &refs),
        "none",
    ));
    h.push_str(&table(
        "Audit trail",
        AUDIT_HEAD,
        &audit_rows(&trail),
        "none",
    ));
    html_response(
        StatusCode::OK,
        html::page("Incident", &ctx.session, Nav::Alerts, 0, &h),
    )
}

/// Networks and clients of a few evidence events, added up in memory with the store's own
/// reference sum (they are already read, and capped by the incident).
fn evidence_summary(events: &[stormwall_types::UsageEvent]) -> EventSummary {
    let (Some(first), Some(last)) = (
        events.iter().map(|e| e.timestamp).min(),
        events.iter().map(|e| e.timestamp).max(),
    ) else {
        return EventSummary::default();
    };
    let q = stormwall_store::SummaryQuery {
        key_id: None,
        since: first,
        until: last + time::Duration::seconds(1),
        bucket_secs: 86_400,
        top: 100,
        parts: SummaryParts {
            networks: true,
            ..SummaryParts::default()
        },
    };
    EventSummary::from_events(&q, events).unwrap_or_default()
}

/// A change from an incident's page: `ack`, `resolve`, `false-positive`, `suspend-key`,
/// `revoke-key`.
pub(super) async fn action(
    ctx: &Ctx<'_>,
    id: &str,
    action: &str,
    form: &[(String, String)],
) -> Page {
    let back = format!("/console/incidents/{}", url_part(id));
    if matches!(action, "suspend-key" | "revoke-key") {
        let stored = match ctx.app.store.get_incident(id).await {
            Ok(Some(s)) => s,
            Ok(None) => return not_found(),
            Err(e) => return store_failed(e),
        };
        let IncidentSubject::Key(key) = &stored.incident.subject else {
            ctx.flash(Flash::Error(
                "This incident is about a network, not a key.".into(),
            ));
            return redirect(&back);
        };
        return act_on_key(ctx, key, action, ("incident", id), &back).await;
    }
    let Some(handling) = Handling::from_verb(action) else {
        return not_found();
    };
    let note = opt_text(field(form, "note"));
    if note
        .as_deref()
        .is_some_and(|n| n.len() > 2_000 || n.chars().any(char::is_control))
    {
        ctx.flash(Flash::Error(
            "A note is at most 2000 bytes without control characters.".into(),
        ));
        return redirect(&back);
    }
    let actor = format!("console:{}", ctx.session.role.as_str());
    match handle_as(
        ctx.app,
        &actor,
        Some(&ctx.session.tag),
        id,
        handling,
        note.as_deref(),
    )
    .await
    {
        Ok(stored) => {
            ctx.flash(Flash::Notice(format!(
                "Incident marked {}.",
                stored.incident.status.as_str().replace('_', " ")
            )));
            redirect(&back)
        }
        Err(stormwall_store::StoreError::NotFound) => not_found(),
        Err(e) => store_failed(e),
    }
}
