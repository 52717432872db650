//! The investigation as JSON for any UI (`GET /admin/investigation`): the entity graph
//! built from the store's incidents, events, alerts, actions and control events (cloud
//! management calls), its clusters with roles and reasons, and harm per cluster, victim
//! and incident — the same assessment as `stormwall investigate roles`, from
//! `stormwall_investigate`.
//!
//! The graph is built per request from a bounded window of events (`max_events`), on the
//! blocking pool, so a large store neither exhausts memory nor stalls the admin listener.
//!
//! Analyst overrides (`POST /admin/investigation/overrides`) are kept in the store's
//! audit log — the record of who decided what is the decision's only copy, so it cannot
//! be lost on a rebuild or disagree with the audit trail — and re-applied on every
//! assessment, together with those the CLI recorded with `--config`. Personal data is
//! redacted as in the exports unless the request asks for it, which is audited first.
//!
//! Scan findings (`POST /admin/investigation/scan-findings`, the scanner's `--format
//! jsonl`) are kept in the audit log the same way, for the same reason: each is on the hash
//! chain with who submitted it, and every assessment adds those naming Stormwall keys as
//! exposure locations.

use std::collections::BTreeMap;

use stormwall_investigate::export::ExportOptions;
use stormwall_investigate::graph::{Graph, NodeKind};
use stormwall_investigate::{Assessment, Override, OverrideOp, Overrides, RoleConfig};
use stormwall_scan::Finding;
use stormwall_store::{
    ActionQuery, AlertQuery, AuditEntry, AuditQuery, ControlEventQuery, EventQuery, IncidentQuery,
    StoreError,
};
use stormwall_types::pricing::Pricing;
use time::OffsetDateTime;

use super::ControlPlane;

/// Events read when the request names no `max_events`.
pub const DEFAULT_MAX_EVENTS: usize = 200_000;
/// Most events one request may read.
pub const MAX_EVENTS: usize = 2_000_000;
/// Events read from the store per page.
const PAGE: usize = 10_000;
/// Most alerts, actions and incidents read (newest first).
const MAX_RECORDS: usize = 100_000;

/// What to build the assessment from.
#[derive(Debug, Clone, Default)]
pub struct InvestigationQuery {
    /// Only events (and alerts, incidents) at or after this instant (event time).
    pub since: Option<OffsetDateTime>,
    /// Only events before this instant.
    pub until: Option<OffsetDateTime>,
    /// Most events read, oldest first.
    pub max_events: usize,
    /// Keep tenant, key, end-user and incident ids, exposure locations and analysts' names
    /// (the caller has audited the request).
    pub include_personal_data: bool,
}

/// The graph's size.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct GraphSummary {
    /// Events added.
    pub events: u64,
    /// Nodes in all.
    pub nodes: usize,
    /// Edges in all.
    pub edges: usize,
    /// Nodes per kind (`key`, `tenant`, `network`, `fingerprint`, `style`, `end_user`,
    /// `exposure`, `incident`, `tls`, `control`).
    pub nodes_by_kind: BTreeMap<&'static str, usize>,
    /// Stored incidents in the graph.
    pub incidents: usize,
    /// `max_events` stopped the read before the window's end.
    pub truncated: bool,
}

/// The answer of `GET /admin/investigation`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct InvestigationSummary {
    /// The graph's size.
    pub graph: GraphSummary,
    /// Clusters, roles with reasons, harm per cluster, victim and incident.
    #[serde(flatten)]
    pub assessment: Assessment,
}

/// Why the assessment could not be built.
#[derive(Debug, thiserror::Error)]
pub enum InvestigationError {
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] StoreError),
    /// The blocking task building the graph did not finish (panicked or was cancelled).
    #[error("the assessment task did not finish")]
    Aborted,
}

/// Builds the graph from the store and assesses it.
pub async fn assess(
    app: &ControlPlane,
    q: &InvestigationQuery,
) -> Result<InvestigationSummary, InvestigationError> {
    let store = &app.store;
    // Incidents first: the events that follow count toward their harm.
    let incidents = store
        .list_incidents(&IncidentQuery {
            since: q.since,
            limit: Some(MAX_RECORDS),
            ..IncidentQuery::default()
        })
        .await?;
    let mut events = Vec::new();
    let mut query = EventQuery {
        since: q.since,
        until: q.until,
        limit: Some(PAGE.min(q.max_events.max(1))),
        ..EventQuery::default()
    };
    let mut truncated = false;
    loop {
        let page = store.query_events(&query).await?;
        let full = page.len() == query.limit.unwrap_or(PAGE);
        let last = page.last().map(|e| e.id.clone());
        events.extend(page);
        if events.len() >= q.max_events {
            events.truncate(q.max_events);
            truncated = full;
            break;
        }
        match last {
            Some(id) if full => query.after_id = Some(id),
            _ => break,
        }
    }
    let mut alerts = store
        .list_alerts(&AlertQuery {
            since: q.since,
            until: q.until,
            limit: Some(MAX_RECORDS),
            ..AlertQuery::default()
        })
        .await?;
    // Newest first from the store; the graph takes them in time order.
    alerts.reverse();
    let actions = store
        .list_actions(&ActionQuery {
            limit: Some(MAX_RECORDS),
            ..ActionQuery::default()
        })
        .await?;
    let controls = store
        .query_control_events(&ControlEventQuery {
            since: q.since,
            until: q.until,
            limit: Some(MAX_RECORDS),
            // Past the cap the graph keeps the latest calls, as it does alerts.
            newest: true,
            ..ControlEventQuery::default()
        })
        .await?;
    let AnalystRecords {
        overrides,
        scan_findings,
    } = analyst_records(app).await?;
    let intel = app.ipintel.clone();
    let include_personal_data = q.include_personal_data;
    let build = move || {
        let mut g = Graph::new(Pricing::default());
        for inc in &incidents {
            g.add_incident(inc);
        }
        for e in &events {
            let flags: Vec<&str> = intel.flags(e.source_ip, e.source_asn).names().collect();
            g.add_event(e, &flags);
        }
        for a in &alerts {
            g.add_alert(&a.alert);
        }
        for r in &actions {
            g.add_action(&r.action);
        }
        for c in &controls {
            let flags: Vec<&str> = c
                .source_ip
                .map(|ip| intel.flags(ip, None).names().collect())
                .unwrap_or_default();
            g.add_control_event(c, &flags);
        }
        for (f, at) in &scan_findings {
            g.add_scan_finding(f, *at);
        }
        let assessment = stormwall_investigate::assess(&g, &RoleConfig::default(), &overrides);
        let assessment = stormwall_investigate::export::redact(
            &g,
            &assessment,
            &ExportOptions {
                include_personal_data,
                ..ExportOptions::default()
            },
        );
        let mut nodes_by_kind: BTreeMap<&'static str, usize> = BTreeMap::new();
        for n in g.nodes() {
            *nodes_by_kind.entry(n.kind.as_str()).or_default() += 1;
        }
        InvestigationSummary {
            graph: GraphSummary {
                events: g.events(),
                nodes: g.nodes().len(),
                edges: g.edges().len(),
                incidents: nodes_by_kind
                    .get(NodeKind::Incident.as_str())
                    .copied()
                    .unwrap_or(0),
                nodes_by_kind,
                truncated,
            },
            assessment,
        }
    };
    // Awaited at once and bounded by `max_events`: the admin request waits for it, and
    // the graph's CPU work stays off the runtime's threads.
    #[allow(clippy::disallowed_methods)]
    let task = tokio::task::spawn_blocking(build);
    task.await.map_err(|_| InvestigationError::Aborted)
}

/// Audit records read per page when collecting the overrides.
const AUDIT_PAGE: usize = 10_000;
/// Audit actor prefix of an analyst's decision (the CLI's and the admin API's).
pub const ANALYST: &str = stormwall_investigate::overrides::ANALYST_ACTOR;

/// What the analysts put in the audit log: their decisions and the scan findings they
/// submitted, oldest first.
#[derive(Debug, Clone, Default)]
pub struct AnalystRecords {
    /// Decisions ([`stormwall_investigate::overrides::from_audit`]).
    pub overrides: Overrides,
    /// Scan findings with when each was submitted
    /// ([`stormwall_investigate::findings::from_audit`]).
    pub scan_findings: Vec<(Finding, OffsetDateTime)>,
}

/// Reads the analysts' records from the audit log.
pub async fn analyst_records(app: &ControlPlane) -> Result<AnalystRecords, StoreError> {
    let mut out = AnalystRecords::default();
    let mut after_seq = None;
    loop {
        let page = app
            .store
            .list_audit(&AuditQuery {
                after_seq,
                target: None,
                limit: Some(AUDIT_PAGE),
            })
            .await?;
        let full = page.len() == AUDIT_PAGE;
        after_seq = page.last().map(|r| r.seq);
        for r in &page {
            if let Some(o) = stormwall_investigate::overrides::from_audit(&r.entry) {
                out.overrides.entries.push(o);
            } else if let Some(f) = stormwall_investigate::findings::from_audit(&r.entry) {
                out.scan_findings.push(f);
            }
        }
        if !full {
            return Ok(out);
        }
    }
}

/// Every analyst decision in the audit log, oldest first
/// ([`stormwall_investigate::overrides::from_audit`]).
pub async fn overrides(app: &ControlPlane) -> Result<Overrides, StoreError> {
    Ok(analyst_records(app).await?.overrides)
}

/// Most findings one submission may hold.
pub const MAX_SCAN_FINDINGS: usize = 10_000;

/// The answer of `POST /admin/investigation/scan-findings`.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct ScanSubmission {
    /// Findings read.
    pub findings: usize,
    /// Recorded now (each an audit entry, and an exposure in the graph from now on).
    pub recorded: usize,
    /// Already recorded (by an earlier submission, or twice in this one).
    pub already_recorded: usize,
    /// Naming no Stormwall key (another provider's credential, or a checksum that
    /// failed): not kept.
    pub not_stormwall_keys: usize,
    /// Stormwall keys the recorded findings name (public ids), sorted.
    pub keys: Vec<String>,
    /// Audit sequence numbers of the recorded findings.
    pub audit_seqs: Vec<u64>,
}

/// Why a submission was refused.
#[derive(Debug, thiserror::Error)]
pub enum SubmitError {
    /// The body is not `stormwall scan --format jsonl` output, or holds too many findings.
    #[error("{0}")]
    Invalid(String),
    /// The store failed (findings recorded before the failure stay recorded).
    #[error("store: {0}")]
    Store(#[from] StoreError),
}

/// Records the findings of a `stormwall scan --format jsonl` report that name Stormwall
/// keys, each as an audit entry (actor `analyst:<handle>`, or the admin token holder)
/// holding the finding without the secret's redacted form or the git author. Recorded
/// findings become exposure nodes of every assessment that follows.
pub async fn submit_scan_findings(
    app: &ControlPlane,
    analyst: Option<&str>,
    text: &str,
) -> Result<ScanSubmission, SubmitError> {
    use stormwall_investigate::findings;
    let parsed =
        findings::parse_scan_findings(text).map_err(|e| SubmitError::Invalid(e.to_string()))?;
    if parsed.len() > MAX_SCAN_FINDINGS {
        return Err(SubmitError::Invalid(format!(
            "at most {MAX_SCAN_FINDINGS} findings per request"
        )));
    }
    let mut known: std::collections::BTreeSet<String> = analyst_records(app)
        .await?
        .scan_findings
        .iter()
        .map(|(f, _)| findings::identity(f))
        .collect();
    let actor = analyst.map_or_else(
        || super::audit::ADMIN.to_owned(),
        |a| format!("{ANALYST}{a}"),
    );
    let mut out = ScanSubmission {
        findings: parsed.len(),
        ..ScanSubmission::default()
    };
    let mut keys = std::collections::BTreeSet::new();
    for f in &parsed {
        let Some(key) = findings::key_of(f) else {
            out.not_stormwall_keys += 1;
            continue;
        };
        if !known.insert(findings::identity(f)) {
            out.already_recorded += 1;
            continue;
        }
        let mut detail = serde_json::to_value(findings::scrub(f))
            .map_err(|_| StoreError::Corrupt("finding does not encode".to_owned()))?;
        if let Some(m) = detail.as_object_mut() {
            m.insert("via".to_owned(), serde_json::Value::from("admin_api"));
        }
        let rec = app
            .store
            .append_audit(&AuditEntry {
                at: OffsetDateTime::now_utc(),
                actor: actor.clone(),
                action: findings::AUDIT_ACTION.to_owned(),
                target: Some(key.to_owned()),
                tenant: None,
                detail,
            })
            .await?;
        out.recorded += 1;
        out.audit_seqs.push(rec.seq);
        keys.insert(key.to_owned());
    }
    out.keys = keys.into_iter().collect();
    Ok(out)
}

/// Records an analyst's decision in the audit log (its only store) and returns it with
/// the audit record's sequence number. Unlike other audit appends, a failure is the
/// request's failure: an unrecorded decision would be lost.
pub async fn record_override(
    app: &ControlPlane,
    analyst: &str,
    op: OverrideOp,
) -> Result<(Override, u64), StoreError> {
    let mut detail = serde_json::to_value(&op)
        .map_err(|_| StoreError::Corrupt("override does not encode".to_owned()))?;
    if let Some(m) = detail.as_object_mut() {
        m.insert("via".to_owned(), serde_json::Value::from("admin_api"));
    }
    let entry = AuditEntry {
        at: OffsetDateTime::now_utc(),
        actor: format!("{ANALYST}{analyst}"),
        action: op.audit_action().to_owned(),
        target: Some(op.entity().to_owned()),
        tenant: None,
        detail,
    };
    let rec = app.store.append_audit(&entry).await?;
    Ok((
        Override {
            at: rec.entry.at,
            analyst: analyst.to_owned(),
            op,
        },
        rec.seq,
    ))
}

/// Records that personal data is being served (before it is), with who asked: the
/// analyst's handle when given, else the admin token holder.
pub async fn audit_personal_data(
    app: &ControlPlane,
    analyst: Option<&str>,
    q: &InvestigationQuery,
) -> Result<(), StoreError> {
    let actor = analyst.map_or_else(
        || super::audit::ADMIN.to_owned(),
        |a| format!("{ANALYST}{a}"),
    );
    let t = |t: Option<OffsetDateTime>| t.map(stormwall_types::timefmt::format);
    app.store
        .append_audit(&AuditEntry {
            at: OffsetDateTime::now_utc(),
            actor,
            action: "investigate.include_personal_data".to_owned(),
            target: None,
            tenant: None,
            detail: serde_json::json!({
                "via": "admin_api",
                "since": t(q.since),
                "until": t(q.until),
                "max_events": q.max_events,
            }),
        })
        .await?;
    Ok(())
}
