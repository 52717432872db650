//! The console's pages: each reads the store (and the gateway's health), adds up with
//! [`super::stats`] and renders with [`super::html`]; each change goes through the same
//! functions as the admin API ([`crate::control::keys`], the alert store, detection
//! feedback) and is audited with the session that made it. No page shows a key secret
//! (bar the one-time message after creation) or prompt text.

use std::collections::{HashSet, VecDeque};
use std::fmt::Write as _;
use std::str::FromStr;
use std::time::Duration;

use http::{Response, StatusCode};
use stormwall_store::{
    ActionQuery, AlertQuery, AlertStatus, AuditQuery, AuditRecord, EventSummary, IncidentQuery,
    StoredAlert, SummaryParts,
};
use stormwall_types::{KeyId, KeyKind, KeyRecord, KeyStatus, UsageEvent};
use time::OffsetDateTime;

use super::html::{self, E, Nav, Series, action_button, csrf_field, esc, ro, table, url_part};
use super::incidents::{self, INCIDENT_HEAD, incident_rows};
use super::session::Flash;
use super::stats::{self, Window};
use super::{Ctx, field, html_response, redirect};
use crate::control::keys::{self, CreateKey, KeyError, UpdateKey};
use crate::data::body::ProxyBody;

/// Most alerts the overview reads for its alert chart and risk ranking.
const MAX_ALERTS: usize = 20_000;
/// Most audit records a page walks back through for its newest entries.
const AUDIT_PAGE: usize = 10_000;
/// Seconds between the script's refreshes of live pages.
pub(super) const LIVE_SECS: u32 = 5;

/// The queues the alerts page shows as tabs.
const QUEUE_TABS: &[(&str, &str)] = &[
    ("alerts", "/console/alerts"),
    ("incidents", "/console/incidents"),
];

pub(super) type Page = Response<ProxyBody>;

pub(super) fn not_found() -> Page {
    html_response(
        StatusCode::NOT_FOUND,
        html::message_page("Not found", "There is no such page or record."),
    )
}

pub(super) fn store_failed(e: impl std::fmt::Display) -> Page {
    tracing::error!(error = %e, "console: store error");
    html_response(
        StatusCode::INTERNAL_SERVER_ERROR,
        html::message_page(
            "Store error",
            "The store did not answer; see the gateway log.",
        ),
    )
}

pub(super) fn ts(t: OffsetDateTime) -> String {
    stormwall_types::timefmt::format(t)
}

pub(super) fn short_ts(t: OffsetDateTime) -> String {
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

pub(super) fn key_link(id: &str) -> String {
    format!(
        "<a href=\"/console/keys/{}\"><code>{}</code></a>",
        url_part(id),
        E(id)
    )
}

pub(super) fn status_badge(s: &str) -> String {
    format!("<span class=\"badge b-{0}\">{0}</span>", esc(s))
}

/// Links to `base` for each time window, the current one marked.
pub(super) fn window_tabs(base: &str, current: Window) -> String {
    let mut h = String::from("<nav class=\"tabs\" aria-label=\"Time window\"><ul>");
    for w in Window::ALL {
        let cur = if w == current {
            " aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(
            h,
            "<li><a href=\"{base}?window={0}\"{cur}>Last {0}</a></li>",
            w.as_str()
        );
    }
    h.push_str("</ul></nav>");
    h
}

/// The store's summary of `window` ending at `now`: the store adds up, the page reads
/// totals only.
async fn summary(
    ctx: &Ctx<'_>,
    window: Window,
    now: OffsetDateTime,
    key: Option<KeyId>,
    parts: SummaryParts,
) -> Result<EventSummary, stormwall_store::StoreError> {
    ctx.app
        .store
        .summarize_events(&window.summary_query(now, key, parts))
        .await
}

/// Serves a GET.
pub async fn get(ctx: &Ctx<'_>, segs: &[&str]) -> Page {
    match segs {
        [] => overview(ctx).await,
        ["keys"] => keys_page(ctx).await,
        ["keys", id] => key_page(ctx, id).await,
        ["alerts"] => alerts_page(ctx).await,
        ["alerts", id] => alert_page(ctx, id).await,
        ["incidents"] => incidents::queue(ctx).await,
        ["incidents", id] => incidents::page(ctx, id).await,
        ["safety"] => safety_page(ctx).await,
        ["leaks"] => leaks_page(ctx).await,
        ["cloud"] => super::cloud::queue(ctx).await,
        ["cloud", id] => super::cloud::principal(ctx, id).await,
        ["audit"] => audit_page(ctx).await,
        _ => not_found(),
    }
}

/// Serves a POST of an admin session whose CSRF token was checked.
pub async fn post(ctx: &Ctx<'_>, segs: &[&str], form: &[(String, String)]) -> Page {
    match segs {
        ["keys"] => create_key(ctx, form).await,
        ["keys", id, "scope"] => edit_scope(ctx, id, form).await,
        ["keys", id, action] => key_action(ctx, id, action, form).await,
        ["alerts", id, action] => alert_action(ctx, id, action, form).await,
        ["incidents", id, action] => incidents::action(ctx, id, action, form).await,
        ["reveal"] => reveal(ctx, form).await,
        _ => not_found(),
    }
}

// ---------------------------------------------------------------------------- overview

/// Metric totals by name, and by (upstream, name) for samples with an `upstream` label.
type MetricSums = (Vec<(String, f64)>, Vec<(String, String, f64)>);

/// Sums of Prometheus samples by metric name, and by `upstream` label for upstream ones.
fn metric_sums(text: &str) -> MetricSums {
    let mut by_name: Vec<(String, f64)> = Vec::new();
    let mut by_upstream: Vec<(String, String, f64)> = Vec::new();
    for line in text.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Ok(v) = value.parse::<f64>() else {
            continue;
        };
        let name = series.split('{').next().unwrap_or(series).to_owned();
        match by_name.iter_mut().find(|(n, _)| *n == name) {
            Some(e) => e.1 += v,
            None => by_name.push((name.clone(), v)),
        }
        if let Some(up) = series
            .split("upstream=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
        {
            match by_upstream
                .iter_mut()
                .find(|(u, n, _)| u == up && *n == name)
            {
                Some(e) => e.2 += v,
                None => by_upstream.push((up.to_owned(), name, v)),
            }
        }
    }
    (by_name, by_upstream)
}

/// Whether a metric belongs in the health table: drops, failures, queues, in-flight work.
fn health_metric(name: &str) -> bool {
    [
        "dropped", "failures", "inflight", "queue", "backlog", "errors", "journal",
    ]
    .iter()
    .any(|w| name.contains(w))
        && !name.ends_with("_bucket")
}

async fn health(ctx: &Ctx<'_>) -> String {
    let (status, text) = crate::control::admin::readiness(ctx.app).await;
    let mut h =
        String::from("<section aria-labelledby=\"health-h\"><h2 id=\"health-h\">Health</h2>");
    let ok = status.is_success();
    let _ = write!(
        h,
        "<p class=\"{}\"><strong>{}</strong></p><pre class=\"ready\">{}</pre>",
        if ok { "good" } else { "bad" },
        if ok { "Ready" } else { "Not ready" },
        E(text.trim_end())
    );
    let events = ctx.app.store.count_events().await.ok();
    let mut rows = vec![
        vec![
            "Events stored".to_owned(),
            events.map_or_else(|| "store did not answer".to_owned(), |n| n.to_string()),
        ],
        vec![
            "Keys in the cache".to_owned(),
            ctx.app.keys.len().to_string(),
        ],
        vec![
            "Counters".to_owned(),
            if ctx.app.counters.is_some() {
                "shared (replicas)".to_owned()
            } else {
                "this process".to_owned()
            },
        ],
        vec![
            "Detection".to_owned(),
            if ctx.app.detection.is_some() {
                "on".to_owned()
            } else {
                "off".to_owned()
            },
        ],
        vec![
            "Console sessions".to_owned(),
            ctx.console.sessions.len().to_string(),
        ],
    ];
    let (sums, upstreams) = metric_sums(&ctx.app.metrics.encode());
    for (name, v) in sums.iter().filter(|(n, _)| health_metric(n)) {
        rows.push(vec![format!("<code>{}</code>", E(name)), html::fmt_num(*v)]);
    }
    h.push_str(&table(
        "Gateway",
        &["What", "Value"],
        &rows,
        "nothing to show",
    ));
    let up_rows: Vec<Vec<String>> = upstreams
        .iter()
        .filter(|(_, n, _)| n.ends_with("_count") || n.contains("errors"))
        .map(|(u, n, v)| vec![esc(u), format!("<code>{}</code>", E(n)), html::fmt_num(*v)])
        .collect();
    h.push_str(&table(
        "Upstreams",
        &["Upstream", "Metric", "Value"],
        &up_rows,
        "no upstream traffic yet",
    ));
    h.push_str("</section>");
    h
}

async fn overview(ctx: &Ctx<'_>) -> Page {
    let window = Window::parse(ctx.param("window").as_deref(), Window::Day);
    let now = OffsetDateTime::now_utc();
    let parts = SummaryParts {
        keys: true,
        ..SummaryParts::default()
    };
    let sum = match summary(ctx, window, now, None, parts).await {
        Ok(v) => v,
        Err(e) => return store_failed(e),
    };
    let alerts = match ctx
        .app
        .store
        .list_alerts(&AlertQuery {
            since: Some(window.start(now)),
            limit: Some(MAX_ALERTS),
            ..Default::default()
        })
        .await
    {
        Ok(a) => a,
        Err(e) => return store_failed(e),
    };
    let o = stats::overview(&sum, &alerts, window, now);
    let mut h = window_tabs("/console/", window);
    let refused: u64 = o.refusals.values().sum();
    let blocks: u64 = o.content.values().map(|c| c.0).sum();
    let _ = write!(
        h,
        "<ul class=\"cards\" aria-label=\"Totals\">\
         <li><span class=\"n\" id=\"total-requests\">{}</span> requests</li>\
         <li><span class=\"n\" id=\"total-refused\">{refused}</span> refused</li>\
         <li><span class=\"n\" id=\"total-blocks\">{blocks}</span> content blocks</li>\
         <li><span class=\"n\" id=\"total-alerts\">{}</span> alerts</li></ul>",
        o.requests,
        alerts.len()
    );
    h.push_str("<div class=\"grid\">");
    h.push_str(&requests_chart("chart-requests", &o));
    h.push_str(&html::bar_chart(
        "chart-alerts",
        "Alerts",
        &o.labels,
        &[Series {
            name: "alerts",
            class: "s4",
            values: &o.alerts,
        }],
    ));
    h.push_str(&html::bar_chart(
        "chart-blocks",
        "Content blocks",
        &o.labels,
        &[Series {
            name: "blocked requests",
            class: "s3",
            values: &o.blocked,
        }],
    ));
    h.push_str("</div><div class=\"grid\">");
    let rows: Vec<Vec<String>> = o
        .refusals
        .iter()
        .map(|(r, n)| vec![format!("<code>{}</code>", E(r)), n.to_string()])
        .collect();
    h.push_str(&table(
        "Refusals by reason",
        &["Reason", "Requests"],
        &rows,
        "none",
    ));
    let rows: Vec<Vec<String>> = o
        .content
        .iter()
        .map(|(c, (b, f))| vec![esc(c), b.to_string(), f.to_string()])
        .collect();
    h.push_str(&table(
        "Content safety by category",
        &["Category", "Blocks", "Flags"],
        &rows,
        "none",
    ));
    let rows: Vec<Vec<String>> = o
        .top_spend
        .iter()
        .map(|k| vec![key_link(&k.key), html::usd(k.value), k.count.to_string()])
        .collect();
    h.push_str(&table(
        "Top keys by spend",
        &["Key", "Spend", "Requests"],
        &rows,
        "no spend",
    ));
    let rows: Vec<Vec<String>> = o
        .top_risk
        .iter()
        .map(|k| {
            vec![
                key_link(&k.key),
                status_badge(&k.worst),
                format!("{:.2}", k.value),
                k.count.to_string(),
            ]
        })
        .collect();
    h.push_str(&table(
        "Top keys by risk",
        &["Key", "Worst", "Score", "Alerts"],
        &rows,
        "no alerts",
    ));
    h.push_str("</div>");
    h.push_str(&health(ctx).await);
    html_response(
        StatusCode::OK,
        html::page("Overview", &ctx.session, Nav::Overview, LIVE_SECS, &h),
    )
}

// ---------------------------------------------------------------------------- keys

pub(super) fn select(name: &str, label: &str, options: &[&str], current: Option<&str>) -> String {
    let mut h =
        format!("<label for=\"f-{name}\">{label}</label><select id=\"f-{name}\" name=\"{name}\">");
    for o in options {
        let sel = if Some(*o) == current || (o.is_empty() && current.is_none()) {
            " selected"
        } else {
            ""
        };
        let text = if o.is_empty() { "any" } else { o };
        let _ = write!(h, "<option value=\"{}\"{sel}>{}</option>", E(o), E(text));
    }
    h.push_str("</select>");
    h
}

fn key_row(k: &KeyRecord) -> Vec<String> {
    vec![
        key_link(k.id.as_str()),
        esc(&k.tenant),
        esc(k.label.as_deref().unwrap_or("")),
        esc(k.kind.as_str()),
        status_badge(k.status.as_str()),
        format!("…{}", E(&k.last4)),
        short_ts(k.created_at),
    ]
}

async fn keys_page(ctx: &Ctx<'_>) -> Page {
    let all = match keys::list(ctx.app, ctx.param("tenant")).await {
        Ok(k) => k,
        Err(e) => return store_failed(e),
    };
    let q = ctx.param("q").map(|q| q.to_lowercase());
    let status = ctx.param("status");
    let kind = ctx.param("kind");
    let shown: Vec<&KeyRecord> = all
        .iter()
        .rev()
        .filter(|k| status.as_deref().is_none_or(|s| k.status.as_str() == s))
        .filter(|k| kind.as_deref().is_none_or(|s| k.kind.as_str() == s))
        .filter(|k| {
            q.as_deref().is_none_or(|q| {
                k.id.as_str().to_lowercase().contains(q)
                    || k.tenant.to_lowercase().contains(q)
                    || k.label
                        .as_deref()
                        .is_some_and(|l| l.to_lowercase().contains(q))
            })
        })
        .take(500)
        .collect();
    let mut h = String::new();
    let _ = write!(
        h,
        "<form method=\"get\" action=\"/console/keys\" class=\"filters\" role=\"search\">\
         <label for=\"f-q\">Search</label><input id=\"f-q\" name=\"q\" type=\"search\" value=\"{}\" placeholder=\"id, tenant or label\">\
         <label for=\"f-tenant\">Tenant</label><input id=\"f-tenant\" name=\"tenant\" value=\"{}\">{}{}\
         <button type=\"submit\">Filter</button></form>",
        E(ctx.param("q").as_deref().unwrap_or("")),
        E(ctx.param("tenant").as_deref().unwrap_or("")),
        select(
            "status",
            "Status",
            &["", "active", "suspended", "revoked"],
            status.as_deref()
        ),
        select("kind", "Kind", &["", "normal", "canary"], kind.as_deref()),
    );
    let _ = write!(
        h,
        "<details class=\"create\"><summary>Create a key</summary>\
         <form method=\"post\" action=\"/console/keys\" class=\"stack\" id=\"create-key\">{csrf}\
         <label for=\"c-tenant\">Tenant</label><input id=\"c-tenant\" name=\"tenant\" required{ro}>\
         <label for=\"c-label\">Label</label><input id=\"c-label\" name=\"label\"{ro}>\
         <label for=\"c-kind\">Kind</label><select id=\"c-kind\" name=\"kind\"{ro}><option value=\"normal\">normal</option><option value=\"canary\">canary (tripwire: any use raises an alert)</option></select>\
         <label for=\"c-models\">Models (comma-separated; empty: all)</label><input id=\"c-models\" name=\"models\"{ro}>\
         <label for=\"c-rpm\">Requests per minute</label><input id=\"c-rpm\" name=\"rpm\" inputmode=\"numeric\"{ro}>\
         <label for=\"c-budget\">Daily budget (USD)</label><input id=\"c-budget\" name=\"budget_daily_usd\" inputmode=\"decimal\"{ro}>\
         <button type=\"submit\"{ro}>Create key</button></form></details>",
        csrf = csrf_field(&ctx.session),
        ro = ro(&ctx.session),
    );
    let rows: Vec<Vec<String>> = shown.iter().map(|k| key_row(k)).collect();
    let _ = write!(
        h,
        "<p class=\"muted\">{} of {} keys shown.</p>",
        rows.len(),
        all.len()
    );
    h.push_str(&table(
        "Keys",
        &[
            "Key",
            "Tenant",
            "Label",
            "Kind",
            "Status",
            "Ends",
            "Created (UTC)",
        ],
        &rows,
        "no key matches",
    ));
    html_response(
        StatusCode::OK,
        html::page("Keys", &ctx.session, Nav::Keys, 0, &h),
    )
}

pub(super) fn opt_text(v: Option<&str>) -> Option<String> {
    v.map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

fn opt_num<T: FromStr>(form: &[(String, String)], name: &str) -> Result<Option<T>, String> {
    match opt_text(field(form, name)) {
        None => Ok(None),
        Some(v) => v
            .parse()
            .map(Some)
            .map_err(|_| format!("{name} must be a number")),
    }
}

fn list_field(form: &[(String, String)], name: &str) -> Vec<String> {
    field(form, name)
        .unwrap_or("")
        .split([',', '\n'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

fn key_error(ctx: &Ctx<'_>, e: KeyError, back: &str) -> Page {
    let msg = match e {
        KeyError::NotFound => "No key with that id.".to_owned(),
        KeyError::Invalid(m) => m,
        KeyError::Conflict(m) => m.to_owned(),
        KeyError::Store(e) => return store_failed(e),
    };
    ctx.flash(Flash::Error(msg));
    redirect(back)
}

async fn create_key(ctx: &Ctx<'_>, form: &[(String, String)]) -> Page {
    let mut scope = stormwall_types::KeyScope {
        models: list_field(form, "models"),
        ..Default::default()
    };
    let parsed = (|| -> Result<(), String> {
        scope.rpm = opt_num(form, "rpm")?;
        scope.budget_daily_usd = opt_num(form, "budget_daily_usd")?;
        Ok(())
    })();
    if let Err(m) = parsed {
        ctx.flash(Flash::Error(m));
        return redirect("/console/keys");
    }
    let kind = if field(form, "kind") == Some("canary") {
        KeyKind::Canary
    } else {
        KeyKind::Normal
    };
    let req = CreateKey {
        tenant: field(form, "tenant").unwrap_or("").trim().to_owned(),
        kind,
        label: opt_text(field(form, "label")),
        scope,
    };
    match keys::create(ctx.app, req).await {
        Ok(created) => {
            let r = &created.record;
            ctx.audit(
                "key.create",
                Some(r.id.as_str()),
                Some(&r.tenant),
                serde_json::json!({"kind": r.kind, "label": r.label, "scope": r.scope}),
            )
            .await;
            ctx.flash(Flash::Secret {
                id: r.id.as_str().to_owned(),
                secret: created.key.clone(),
            });
            redirect(&format!("/console/keys/{}", r.id.as_str()))
        }
        Err(e) => key_error(ctx, e, "/console/keys"),
    }
}

async fn edit_scope(ctx: &Ctx<'_>, id: &str, form: &[(String, String)]) -> Page {
    let back = format!("/console/keys/{}", url_part(id));
    let current = match keys::get(ctx.app, id).await {
        Ok(r) => r,
        Err(e) => return key_error(ctx, e, "/console/keys"),
    };
    let mut scope = current.scope.clone();
    let parsed = (|| -> Result<(), String> {
        scope.models = list_field(form, "models");
        scope.cidrs = list_field(form, "cidrs")
            .iter()
            .map(|c| {
                c.parse()
                    .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                    .map_err(|_| format!("{c:?} is not a network (CIDR) or address"))
            })
            .collect::<Result<_, _>>()?;
        scope.rpm = opt_num(form, "rpm")?;
        scope.tpm = opt_num(form, "tpm")?;
        scope.max_concurrency = opt_num(form, "max_concurrency")?;
        scope.budget_daily_usd = opt_num(form, "budget_daily_usd")?;
        scope.budget_monthly_usd = opt_num(form, "budget_monthly_usd")?;
        scope.policy_profile = opt_text(field(form, "policy_profile"));
        Ok(())
    })();
    if let Err(m) = parsed {
        ctx.flash(Flash::Error(m));
        return redirect(&back);
    }
    let patch = UpdateKey {
        label: opt_text(field(form, "label")),
        scope: Some(scope),
    };
    match keys::update(ctx.app, id, patch).await {
        Ok(record) => {
            ctx.audit(
                "key.update",
                Some(record.id.as_str()),
                Some(&record.tenant),
                serde_json::json!({"label": record.label, "scope": record.scope}),
            )
            .await;
            ctx.flash(Flash::Notice("Scope saved.".into()));
            redirect(&back)
        }
        Err(e) => key_error(ctx, e, &back),
    }
}

async fn key_action(ctx: &Ctx<'_>, id: &str, action: &str, form: &[(String, String)]) -> Page {
    let back = format!("/console/keys/{}", url_part(id));
    let reason = opt_text(field(form, "reason"));
    let result = match action {
        "suspend" => keys::suspend(ctx.app, id, reason.clone()).await,
        "resume" => keys::resume(ctx.app, id).await,
        "revoke" => keys::revoke(ctx.app, id, reason.clone()).await,
        "rotate" => {
            let grace = match opt_num::<u64>(form, "grace_seconds") {
                Ok(g) => g.map_or(keys::DEFAULT_ROTATION_GRACE, Duration::from_secs),
                Err(m) => {
                    ctx.flash(Flash::Error(m));
                    return redirect(&back);
                }
            };
            return match keys::rotate(ctx.app, id, grace).await {
                Ok(created) => {
                    ctx.audit(
                        "key.rotate",
                        Some(created.record.id.as_str()),
                        Some(&created.record.tenant),
                        serde_json::json!({"rotated_from": id, "grace_seconds": grace.as_secs()}),
                    )
                    .await;
                    ctx.flash(Flash::Secret {
                        id: created.record.id.as_str().to_owned(),
                        secret: created.key.clone(),
                    });
                    redirect(&format!("/console/keys/{}", created.record.id.as_str()))
                }
                Err(e) => key_error(ctx, e, &back),
            };
        }
        _ => return not_found(),
    };
    match result {
        Ok(record) => {
            ctx.audit(
                &format!("key.{action}"),
                Some(record.id.as_str()),
                Some(&record.tenant),
                serde_json::json!({ "reason": reason }),
            )
            .await;
            ctx.flash(Flash::Notice(format!(
                "Key {} is now {}.",
                record.id.as_str(),
                record.status.as_str()
            )));
            redirect(&back)
        }
        Err(e) => key_error(ctx, e, &back),
    }
}

pub(super) fn dl(rows: &[(&str, String)]) -> String {
    let mut h = String::from("<dl class=\"facts\">");
    for (k, v) in rows {
        let _ = write!(h, "<dt>{}</dt><dd>{v}</dd>", E(k));
    }
    h.push_str("</dl>");
    h
}

pub(super) fn alert_rows(alerts: &[StoredAlert]) -> Vec<Vec<String>> {
    alerts
        .iter()
        .map(|a| {
            let mut expl = a.alert.explanation.clone();
            if expl.len() > 140 {
                let mut cut = 140;
                while !expl.is_char_boundary(cut) {
                    cut -= 1;
                }
                expl.truncate(cut);
                expl.push('…');
            }
            vec![
                short_ts(a.alert.at),
                status_badge(a.alert.severity.as_str()),
                format!("<code>{}</code>", E(a.alert.detector.as_str())),
                esc(a.alert.stage.as_str()),
                a.alert
                    .key_id
                    .as_ref()
                    .map_or_else(|| "—".to_owned(), |k| key_link(k.as_str())),
                esc(&expl),
                status_badge(a.status.as_str()),
                format!(
                    "<a href=\"/console/alerts/{}\">Open</a>",
                    url_part(&a.alert.id)
                ),
            ]
        })
        .collect()
}

pub(super) const ALERT_HEAD: &[&str] = &[
    "Time (UTC)",
    "Severity",
    "Detector",
    "Stage",
    "Key",
    "Explanation",
    "Status",
    "",
];

pub(super) fn audit_rows(records: &[AuditRecord]) -> Vec<Vec<String>> {
    records
        .iter()
        .map(|r| {
            vec![
                r.seq.to_string(),
                short_ts(r.entry.at),
                esc(&r.entry.actor),
                format!("<code>{}</code>", E(&r.entry.action)),
                r.entry.target.as_deref().map_or_else(String::new, |t| {
                    if KeyId::new(t).is_ok() {
                        key_link(t)
                    } else if let Some(kind) = ["alert", "incident"]
                        .into_iter()
                        .find(|k| r.entry.action.starts_with(&format!("{k}.")))
                    {
                        format!(
                            "<a href=\"/console/{kind}s/{}\"><code>{}</code></a>",
                            url_part(t),
                            E(t)
                        )
                    } else {
                        format!("<code>{}</code>", E(t))
                    }
                }),
                format!(
                    "<code class=\"detail\">{}</code>",
                    E(&r.entry.detail.to_string())
                ),
            ]
        })
        .collect()
}

pub(super) const AUDIT_HEAD: &[&str] = &["#", "Time (UTC)", "Who", "Action", "Target", "Detail"];

/// Whether an event carries kept content-safety evidence (prompt or output text).
fn has_evidence(e: &UsageEvent) -> bool {
    e.safety.iter().any(|v| v.evidence.is_some())
}

/// The audited "reveal" button for an event's kept evidence.
fn reveal_button(ctx: &Ctx<'_>, event_id: &str) -> String {
    format!(
        "<form method=\"post\" action=\"/console/reveal\" class=\"inline\">{}\
         <input type=\"hidden\" name=\"event\" value=\"{}\">\
         <button type=\"submit\" class=\"reveal\">Reveal (audited)</button></form>",
        csrf_field(&ctx.session),
        E(event_id),
    )
}

pub(super) fn event_rows(ctx: &Ctx<'_>, events: &[&UsageEvent]) -> Vec<Vec<String>> {
    events
        .iter()
        .map(|e| {
            vec![
                short_ts(e.timestamp),
                e.status.to_string(),
                e.reject_reason.map_or_else(
                    || "allowed".to_owned(),
                    |r| format!("<code>{}</code>", r.as_str()),
                ),
                esc(e.endpoint.map_or("-", |x| x.as_str())),
                esc(e.model.as_deref().unwrap_or("-")),
                format!("<code>{}</code>", e.source_ip),
                e.source_asn
                    .map_or_else(|| "-".to_owned(), |a| format!("AS{a}")),
                esc(e.source_as_org.as_deref().unwrap_or("-")),
                esc(e.source_country.as_deref().unwrap_or("-")),
                esc(e.user_agent.as_deref().unwrap_or("-")),
                if has_evidence(e) {
                    reveal_button(ctx, &e.id)
                } else {
                    "—".to_owned()
                },
            ]
        })
        .collect()
}

pub(super) const EVENT_HEAD: &[&str] = &[
    "Time (UTC)",
    "Status",
    "Outcome",
    "Endpoint",
    "Model",
    "Address",
    "Network",
    "Organisation",
    "Country",
    "Client",
    "Evidence",
];

fn scope_form(ctx: &Ctx<'_>, k: &KeyRecord) -> String {
    let s = &k.scope;
    let num = |v: Option<String>| v.map(|v| esc(&v)).unwrap_or_default();
    let cidrs: Vec<String> = s.cidrs.iter().map(ToString::to_string).collect();
    let ro = ro(&ctx.session);
    format!(
        "<form method=\"post\" action=\"/console/keys/{id}/scope\" class=\"stack\" id=\"scope-form\">{csrf}\
         <label for=\"s-label\">Label</label><input id=\"s-label\" name=\"label\" value=\"{label}\"{ro}>\
         <label for=\"s-models\">Models (comma-separated; empty: all)</label><input id=\"s-models\" name=\"models\" value=\"{models}\"{ro}>\
         <label for=\"s-cidrs\">Networks (CIDRs, comma-separated; empty: any)</label><input id=\"s-cidrs\" name=\"cidrs\" value=\"{cidrs}\"{ro}>\
         <label for=\"s-rpm\">Requests per minute</label><input id=\"s-rpm\" name=\"rpm\" inputmode=\"numeric\" value=\"{rpm}\"{ro}>\
         <label for=\"s-tpm\">Tokens per minute</label><input id=\"s-tpm\" name=\"tpm\" inputmode=\"numeric\" value=\"{tpm}\"{ro}>\
         <label for=\"s-conc\">Concurrent requests</label><input id=\"s-conc\" name=\"max_concurrency\" inputmode=\"numeric\" value=\"{conc}\"{ro}>\
         <label for=\"s-bd\">Daily budget (USD)</label><input id=\"s-bd\" name=\"budget_daily_usd\" inputmode=\"decimal\" value=\"{bd}\"{ro}>\
         <label for=\"s-bm\">Monthly budget (USD)</label><input id=\"s-bm\" name=\"budget_monthly_usd\" inputmode=\"decimal\" value=\"{bm}\"{ro}>\
         <label for=\"s-pp\">Content policy profile</label><input id=\"s-pp\" name=\"policy_profile\" value=\"{pp}\"{ro}>\
         <button type=\"submit\"{ro}>Save scope</button></form>",
        id = url_part(k.id.as_str()),
        csrf = csrf_field(&ctx.session),
        label = E(k.label.as_deref().unwrap_or("")),
        models = E(&s.models.join(", ")),
        cidrs = E(&cidrs.join(", ")),
        rpm = num(s.rpm.map(|v| v.to_string())),
        tpm = num(s.tpm.map(|v| v.to_string())),
        conc = num(s.max_concurrency.map(|v| v.to_string())),
        bd = num(s.budget_daily_usd.map(|v| v.to_string())),
        bm = num(s.budget_monthly_usd.map(|v| v.to_string())),
        pp = E(s.policy_profile.as_deref().unwrap_or("")),
    )
}

async fn key_page(ctx: &Ctx<'_>, id: &str) -> Page {
    let k = match keys::get(ctx.app, id).await {
        Ok(k) => k,
        // Alerts name a cloud principal by a key id no key record has: its page is the
        // cloud principal's.
        Err(KeyError::NotFound) => return super::cloud::principal(ctx, id).await,
        Err(e) => return store_failed(e),
    };
    let window = Window::parse(ctx.param("window").as_deref(), Window::Day);
    let now = OffsetDateTime::now_utc();
    let parts = SummaryParts {
        networks: true,
        ..SummaryParts::default()
    };
    let sum = match summary(ctx, window, now, Some(k.id.clone()), parts).await {
        Ok(v) => v,
        Err(e) => return store_failed(e),
    };
    let alerts = match ctx
        .app
        .store
        .list_alerts(&AlertQuery {
            key_id: Some(k.id.clone()),
            limit: Some(100),
            ..Default::default()
        })
        .await
    {
        Ok(a) => a,
        Err(e) => return store_failed(e),
    };
    let incidents = match ctx
        .app
        .store
        .list_incidents(&IncidentQuery {
            key_id: Some(k.id.clone()),
            limit: Some(50),
            ..Default::default()
        })
        .await
    {
        Ok(a) => a,
        Err(e) => return store_failed(e),
    };
    let trail = match ctx
        .app
        .store
        .list_audit(&AuditQuery {
            target: Some(k.id.as_str().to_owned()),
            limit: Some(500),
            ..Default::default()
        })
        .await
    {
        Ok(a) => a,
        Err(e) => return store_failed(e),
    };
    let link = |o: &Option<KeyId>| {
        o.as_ref()
            .map_or_else(|| "—".to_owned(), |i| key_link(i.as_str()))
    };
    let mut h = dl(&[
        (
            "Key",
            format!("<code id=\"key-id\">{}</code>", E(k.id.as_str())),
        ),
        (
            "Status",
            format!(
                "<span id=\"key-status\">{}</span>",
                status_badge(k.status.as_str())
            ),
        ),
        ("Reason", esc(k.status_reason.as_deref().unwrap_or("—"))),
        ("Tenant", esc(&k.tenant)),
        ("Label", esc(k.label.as_deref().unwrap_or("—"))),
        ("Kind", esc(k.kind.as_str())),
        ("Ends with", format!("…{}", E(&k.last4))),
        ("Created", ts(k.created_at)),
        ("Updated", ts(k.updated_at)),
        ("Rotated from", link(&k.rotated_from)),
        ("Rotated to", link(&k.rotated_to)),
        (
            "Expires",
            k.scope.expires_at.map_or_else(|| "never".to_owned(), ts),
        ),
    ]);
    let kid = url_part(k.id.as_str());
    h.push_str(
        "<section aria-labelledby=\"act-h\" class=\"actions\"><h2 id=\"act-h\">Actions</h2>",
    );
    let ro = ro(&ctx.session);
    if k.status != KeyStatus::Revoked {
        if k.status == KeyStatus::Active {
            let _ = write!(
                h,
                "<form method=\"post\" action=\"/console/keys/{kid}/suspend\" class=\"inline\">{}\
                 <label for=\"a-reason\">Reason</label><input id=\"a-reason\" name=\"reason\"{ro}>\
                 <button type=\"submit\" id=\"btn-suspend\"{ro}>Suspend</button></form>",
                csrf_field(&ctx.session)
            );
            if k.kind == KeyKind::Normal && k.rotated_to.is_none() {
                h.push_str(&action_button(
                    &ctx.session,
                    &format!("/console/keys/{kid}/rotate"),
                    "Rotate",
                    "",
                    Some("Rotate this key? The old key keeps working for an hour."),
                ));
            }
        } else {
            h.push_str(&action_button(
                &ctx.session,
                &format!("/console/keys/{kid}/resume"),
                "Resume",
                "",
                None,
            ));
        }
        h.push_str(&action_button(
            &ctx.session,
            &format!("/console/keys/{kid}/revoke"),
            "Revoke",
            "danger",
            Some("Revoke this key for good?"),
        ));
    } else {
        h.push_str(
            "<p class=\"muted\">Revoked keys stay as tripwires: any use raises an alert.</p>",
        );
    }
    h.push_str("</section><details><summary>Edit scope</summary>");
    h.push_str(&scope_form(ctx, &k));
    h.push_str("</details>");
    let _ = write!(
        h,
        "<h2>Usage</h2>{}",
        window_tabs(&format!("/console/keys/{kid}"), window)
    );
    let o = stats::overview(&sum, &[], window, now);
    let _ = write!(
        h,
        "<p>{} requests, {} spent in the last {}.</p>",
        o.requests,
        html::usd(sum.spend_usd),
        window.as_str()
    );
    h.push_str(&requests_chart("chart-key-requests", &o));
    h.push_str(&networks_and_clients(
        "Networks it was used from",
        &sum,
        "no requests in this window",
    ));
    h.push_str("<h2>Incidents</h2>");
    h.push_str(&table(
        "Incidents about this key",
        INCIDENT_HEAD,
        &incident_rows(&incidents),
        "none",
    ));
    h.push_str("<h2>Alerts</h2>");
    h.push_str(&table(
        "Alerts about this key",
        ALERT_HEAD,
        &alert_rows(&alerts),
        "none",
    ));
    h.push_str("<h2>Audit trail</h2>");
    h.push_str(&table(
        "Changes to this key",
        AUDIT_HEAD,
        &audit_rows(&trail),
        "none",
    ));
    html_response(
        StatusCode::OK,
        html::page(
            &format!("Key {}", k.id.as_str()),
            &ctx.session,
            Nav::Keys,
            0,
            &h,
        ),
    )
}

// ---------------------------------------------------------------------------- alerts

pub(super) fn queue_tabs(current: &str) -> String {
    let mut h = String::from("<nav class=\"tabs\" aria-label=\"Queues\"><ul>");
    for (name, href) in QUEUE_TABS {
        let cur = if *name == current {
            " aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(
            h,
            "<li><a href=\"{href}\"{cur}>{}</a></li>",
            E(&capitalise(name))
        );
    }
    h.push_str("</ul></nav>");
    h
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

async fn alerts_page(ctx: &Ctx<'_>) -> Page {
    let status_param = ctx.param("status").unwrap_or_else(|| "open".to_owned());
    let status = AlertStatus::parse(&status_param);
    let detector = ctx
        .param("detector")
        .and_then(|d| d.parse::<stormwall_types::DetectorId>().ok());
    let key = ctx.param("key").and_then(|k| KeyId::new(&k).ok());
    let severity = ctx.param("severity");
    let alerts = match ctx
        .app
        .store
        .list_alerts(&AlertQuery {
            key_id: key,
            detector,
            status,
            limit: Some(500),
            ..Default::default()
        })
        .await
    {
        Ok(a) => a,
        Err(e) => return store_failed(e),
    };
    let alerts: Vec<StoredAlert> = alerts
        .into_iter()
        .filter(|a| {
            severity
                .as_deref()
                .is_none_or(|s| a.alert.severity.as_str() == s)
        })
        .collect();
    let mut h = queue_tabs("alerts");
    let _ = write!(
        h,
        "<form method=\"get\" action=\"/console/alerts\" class=\"filters\" role=\"search\">{}{}\
         <label for=\"f-detector\">Detector</label><input id=\"f-detector\" name=\"detector\" value=\"{}\">\
         <label for=\"f-key\">Key</label><input id=\"f-key\" name=\"key\" value=\"{}\">\
         <button type=\"submit\">Filter</button></form>",
        select(
            "status",
            "Status",
            &["open", "acknowledged", "false_positive", "any"],
            Some(status_param.as_str())
        ),
        select(
            "severity",
            "Severity",
            &["", "critical", "high", "medium", "low", "info"],
            severity.as_deref()
        ),
        E(ctx.param("detector").as_deref().unwrap_or("")),
        E(ctx.param("key").as_deref().unwrap_or("")),
    );
    h.push_str(&table(
        "Alert queue",
        ALERT_HEAD,
        &alert_rows(&alerts),
        "no alert matches",
    ));
    html_response(
        StatusCode::OK,
        html::page("Alerts", &ctx.session, Nav::Alerts, LIVE_SECS, &h),
    )
}

async fn alert_page(ctx: &Ctx<'_>, id: &str) -> Page {
    let a = match ctx.app.store.get_alert(id).await {
        Ok(Some(a)) => a,
        Ok(None) => return not_found(),
        Err(e) => return store_failed(e),
    };
    let actions = ctx
        .app
        .store
        .list_actions(&ActionQuery {
            alert_id: Some(id.to_owned()),
            ..Default::default()
        })
        .await
        .unwrap_or_default();
    let trail = audit_trail(ctx, id).await;
    let evidence = evidence_events(ctx, &a.alert.evidence).await;
    let al = &a.alert;
    let mut h = dl(&[
        ("Alert", format!("<code>{}</code>", E(&al.id))),
        (
            "Status",
            format!(
                "<span id=\"alert-status\">{}</span>",
                status_badge(a.status.as_str())
            ),
        ),
        ("Severity", status_badge(al.severity.as_str())),
        (
            "Detector",
            format!("<code>{}</code>", E(al.detector.as_str())),
        ),
        ("Kill-chain stage", esc(al.stage.as_str())),
        ("Score", format!("{:.2}", al.score)),
        ("At", ts(al.at)),
        (
            "Key",
            al.key_id
                .as_ref()
                .map_or_else(|| "—".to_owned(), |k| key_link(k.as_str())),
        ),
        ("Tenant", esc(al.tenant.as_deref().unwrap_or("—"))),
        (
            "Client address",
            al.source_ip
                .map_or_else(|| "—".to_owned(), |ip| format!("<code>{ip}</code>")),
        ),
        ("Note", esc(a.note.as_deref().unwrap_or("—"))),
    ]);
    let _ = write!(
        h,
        "<section aria-labelledby=\"why-h\"><h2 id=\"why-h\">What happened</h2><p class=\"explanation\">{}</p></section>",
        E(&al.explanation)
    );
    let aid = url_part(&al.id);
    let ro = ro(&ctx.session);
    h.push_str(
        "<section aria-labelledby=\"act-h\" class=\"actions\"><h2 id=\"act-h\">Actions</h2>",
    );
    let _ = write!(
        h,
        "<form method=\"post\" action=\"/console/alerts/{aid}/ack\" class=\"inline\">{csrf}\
         <label for=\"n-ack\">Note</label><input id=\"n-ack\" name=\"note\"{ro}>\
         <button type=\"submit\" id=\"btn-ack\"{ro}>Acknowledge</button></form>\
         <form method=\"post\" action=\"/console/alerts/{aid}/false-positive\" class=\"inline\">{csrf}\
         <label for=\"n-fp\">Note</label><input id=\"n-fp\" name=\"note\"{ro}>\
         <button type=\"submit\" id=\"btn-fp\"{ro}>False positive</button></form>",
        csrf = csrf_field(&ctx.session),
    );
    if al.key_id.is_some() {
        h.push_str(&action_button(
            &ctx.session,
            &format!("/console/alerts/{aid}/suspend-key"),
            "Suspend key",
            "",
            None,
        ));
        h.push_str(&action_button(
            &ctx.session,
            &format!("/console/alerts/{aid}/revoke-key"),
            "Revoke key",
            "danger",
            Some("Revoke this alert's key for good?"),
        ));
    }
    h.push_str("</section><div class=\"grid\">");
    let rows: Vec<Vec<String>> = al
        .features
        .iter()
        .map(|f| {
            vec![
                format!("<code>{}</code>", E(&f.name)),
                html::fmt_num(f.value),
                f.threshold.map_or_else(|| "—".to_owned(), html::fmt_num),
            ]
        })
        .collect();
    h.push_str(&table(
        "Features",
        &["Feature", "Value", "Threshold"],
        &rows,
        "none",
    ));
    let rows: Vec<Vec<String>> = al
        .subjects
        .iter()
        .map(|s| vec![esc(&s.kind), format!("<code>{}</code>", E(&s.value))])
        .collect();
    h.push_str(&table("Subjects", &["Kind", "Value"], &rows, "none"));
    h.push_str("</div><h2>Evidence</h2>");
    let refs: Vec<&UsageEvent> = evidence.iter().collect();
    let _ = write!(
        h,
        "<p class=\"muted\">{} of {} evidence events found. Prompt text is never shown.</p>",
        refs.len(),
        al.evidence.len()
    );
    h.push_str(&table(
        "Evidence events",
        EVENT_HEAD,
        &event_rows(ctx, &refs),
        "none",
    ));
    let rows: Vec<Vec<String>> = actions
        .iter()
        .map(|r| {
            vec![
                short_ts(r.applied_at),
                format!("<code>{}</code>", E(r.action.kind.as_str())),
                esc(r.outcome.as_str()),
                esc(r.message.as_deref().unwrap_or("")),
            ]
        })
        .collect();
    h.push_str(&table(
        "Actions taken",
        &["Time (UTC)", "Action", "Outcome", "Message"],
        &rows,
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
        html::page("Alert", &ctx.session, Nav::Alerts, 0, &h),
    )
}

async fn alert_action(ctx: &Ctx<'_>, id: &str, action: &str, form: &[(String, String)]) -> Page {
    let back = format!("/console/alerts/{}", url_part(id));
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
    let now = OffsetDateTime::now_utc();
    let stored = match action {
        "ack" => {
            ctx.app
                .store
                .set_alert_status(id, AlertStatus::Acknowledged, note.as_deref(), now)
                .await
        }
        "false-positive" => {
            crate::control::detection::mark_false_positive(ctx.app, id, note.as_deref()).await
        }
        "suspend-key" | "revoke-key" => {
            let a = match ctx.app.store.get_alert(id).await {
                Ok(Some(a)) => a,
                Ok(None) => return not_found(),
                Err(e) => return store_failed(e),
            };
            let Some(key) = a.alert.key_id.clone() else {
                ctx.flash(Flash::Error("This alert names no key.".into()));
                return redirect(&back);
            };
            return act_on_key(ctx, key.as_str(), action, ("alert", id), &back).await;
        }
        _ => return not_found(),
    };
    match stored {
        Ok(stored) => {
            ctx.audit(
                &format!("alert.{}", stored.status.as_str()),
                Some(id),
                stored.alert.tenant.as_deref(),
                serde_json::json!({ "note": note, "key_id": stored.alert.key_id }),
            )
            .await;
            ctx.flash(Flash::Notice(format!(
                "Alert marked {}.",
                stored.status.as_str().replace('_', " ")
            )));
            redirect(&back)
        }
        Err(stormwall_store::StoreError::NotFound) => not_found(),
        Err(e) => store_failed(e),
    }
}

// ---------------------------------------------------------------------------- safety

async fn safety_page(ctx: &Ctx<'_>) -> Page {
    let window = Window::parse(ctx.param("window").as_deref(), Window::Day);
    let now = OffsetDateTime::now_utc();
    let parts = SummaryParts {
        findings: true,
        ..SummaryParts::default()
    };
    let sum = match summary(ctx, window, now, None, parts).await {
        Ok(v) => v,
        Err(e) => return store_failed(e),
    };
    let mut h = window_tabs("/console/safety", window);
    h.push_str("<div class=\"grid\">");
    let rows: Vec<Vec<String>> = sum
        .findings_by_category()
        .iter()
        .map(|((c, a), n)| vec![esc(c), status_badge(a), n.to_string()])
        .collect();
    h.push_str(&table(
        "By category",
        &["Category", "Action", "Findings"],
        &rows,
        "no blocks or flags",
    ));
    let rows: Vec<Vec<String>> = sum
        .findings
        .iter()
        .map(|((k, c, a), n)| {
            let key = if KeyId::new(k).is_ok() {
                key_link(k)
            } else if k.is_empty() {
                "(no key)".to_owned()
            } else {
                esc(k)
            };
            vec![key, esc(c), status_badge(a), n.to_string()]
        })
        .collect();
    h.push_str(&table(
        "By key",
        &["Key", "Category", "Action", "Findings"],
        &rows,
        "no blocks or flags",
    ));
    h.push_str("</div>");
    let recent: Vec<Vec<String>> = sum
        .recent_findings
        .iter()
        .map(|f| {
            vec![
                short_ts(f.at),
                f.key_id.as_deref().map_or_else(|| "—".to_owned(), key_link),
                esc(&f.category),
                status_badge(&f.action),
                esc(&f.stage),
                format!("{:.2}", f.score),
                esc(f.view.as_deref().unwrap_or("text")),
                if f.has_evidence {
                    reveal_button(ctx, &f.event_id)
                } else {
                    "—".to_owned()
                },
            ]
        })
        .collect();
    h.push_str(&table(
        "Recent findings",
        &[
            "Time (UTC)",
            "Key",
            "Category",
            "Action",
            "Stage",
            "Score",
            "View",
            "Evidence",
        ],
        &recent,
        "no blocks or flags",
    ));
    html_response(
        StatusCode::OK,
        html::page("Content safety", &ctx.session, Nav::Safety, LIVE_SECS, &h),
    )
}

/// Shows the content-safety evidence kept on one event (the screened text, kept only when
/// the key's profile keeps evidence), after recording in the audit log who asked.
async fn reveal(ctx: &Ctx<'_>, form: &[(String, String)]) -> Page {
    let Some(id) = field(form, "event") else {
        return html_response(
            StatusCode::BAD_REQUEST,
            html::message_page("Bad request", "Name an event."),
        );
    };
    let events = match ctx.app.store.events_by_id(&[id.to_owned()]).await {
        Ok(v) => v,
        Err(e) => return store_failed(e),
    };
    let Some(event) = events.into_iter().next() else {
        return not_found();
    };
    let kept: Vec<&stormwall_types::SafetyVerdict> = event
        .safety
        .iter()
        .filter(|v| v.evidence.is_some())
        .collect();
    ctx.audit(
        "evidence.reveal",
        Some(&event.id),
        event.tenant.as_deref(),
        serde_json::json!({
            "key_id": event.key_id,
            "categories": kept.iter().map(|v| v.category.as_str()).collect::<Vec<_>>(),
        }),
    )
    .await;
    let mut h = String::from(
        "<p class=\"note\">You asked to see the text this finding kept; the audit log records \
         that you did. Nothing here is shown on any other page.</p>",
    );
    h.push_str(&dl(&[
        ("Event", format!("<code>{}</code>", E(&event.id))),
        ("Time", ts(event.timestamp)),
        (
            "Key",
            event
                .key_id
                .as_ref()
                .map_or_else(|| "—".to_owned(), |k| key_link(k.as_str())),
        ),
    ]));
    if kept.is_empty() {
        h.push_str("<p>This event kept no evidence.</p>");
    }
    for v in kept {
        let _ = write!(
            h,
            "<section><h2>{} ({}, {})</h2><pre class=\"evidence\">{}</pre></section>",
            E(v.category.as_str()),
            E(v.action.as_str()),
            E(v.stage.as_str()),
            E(v.evidence.as_deref().unwrap_or("")),
        );
    }
    html_response(
        StatusCode::OK,
        html::page("Kept evidence", &ctx.session, Nav::Safety, 0, &h),
    )
}

// ---------------------------------------------------------------------------- leaks, audit

/// The newest `n` audit records (matching `keep`), walking the log page by page.
async fn audit_tail(
    ctx: &Ctx<'_>,
    n: usize,
    keep: impl Fn(&AuditRecord) -> bool,
) -> Result<Vec<AuditRecord>, stormwall_store::StoreError> {
    let mut tail = VecDeque::with_capacity(n);
    let mut after = 0u64;
    loop {
        let page = ctx
            .app
            .store
            .list_audit(&AuditQuery {
                after_seq: Some(after),
                target: None,
                limit: Some(AUDIT_PAGE),
            })
            .await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        let full = page.len() == AUDIT_PAGE;
        for r in page {
            if keep(&r) {
                if tail.len() == n {
                    tail.pop_front();
                }
                tail.push_back(r);
            }
        }
        if !full {
            break;
        }
    }
    Ok(tail.into_iter().rev().collect())
}

/// When a UUIDv7 event id was minted (the report's arrival), if it is one.
fn uuid7_time(id: &str) -> Option<OffsetDateTime> {
    let u = uuid::Uuid::parse_str(id).ok()?;
    if u.get_version_num() != 7 {
        return None;
    }
    let b = u.as_bytes();
    let ms = b[..6]
        .iter()
        .fold(0u64, |acc, x| (acc << 8) | u64::from(*x));
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

async fn leaks_page(ctx: &Ctx<'_>) -> Page {
    let records = match audit_tail(ctx, 1_000, |r| {
        r.entry.actor.starts_with("leak-report:") && r.entry.action == "key.revoke"
    })
    .await
    {
        Ok(r) => r,
        Err(e) => return store_failed(e),
    };
    let reports: HashSet<&str> = records
        .iter()
        .filter_map(|r| r.entry.detail.get("report_event").and_then(|v| v.as_str()))
        .collect();
    let delays: Vec<f64> = records
        .iter()
        .filter_map(|r| {
            let ev = r.entry.detail.get("report_event")?.as_str()?;
            let at = uuid7_time(ev)?;
            Some(((r.entry.at - at).as_seconds_f64()).max(0.0))
        })
        .collect();
    let mut h = String::new();
    let worst = delays.iter().copied().fold(0.0_f64, f64::max);
    let mean = if delays.is_empty() {
        0.0
    } else {
        delays.iter().sum::<f64>() / delays.len() as f64
    };
    let _ = write!(
        h,
        "<ul class=\"cards\" aria-label=\"Totals\"><li><span class=\"n\">{}</span> reports with a Stormwall key</li>\
         <li><span class=\"n\">{}</span> keys revoked through them</li>\
         <li><span class=\"n\">{:.3} s</span> mean time from report to revocation</li>\
         <li><span class=\"n\">{:.3} s</span> longest</li></ul>",
        reports.len(),
        records.len(),
        mean,
        worst
    );
    let rows: Vec<Vec<String>> = records
        .iter()
        .map(|r| {
            let ev = r.entry.detail.get("report_event").and_then(|v| v.as_str());
            let delay = ev
                .and_then(uuid7_time)
                .map(|at| format!("{:.3} s", (r.entry.at - at).as_seconds_f64().max(0.0)))
                .unwrap_or_else(|| "—".to_owned());
            vec![
                short_ts(r.entry.at),
                esc(r.entry.actor.trim_start_matches("leak-report:")),
                r.entry.target.as_deref().map_or_else(String::new, key_link),
                esc(r.entry.tenant.as_deref().unwrap_or("—")),
                delay,
                esc(r
                    .entry
                    .detail
                    .get("reason")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")),
            ]
        })
        .collect();
    h.push_str(&table(
        "Keys revoked through leak reports",
        &[
            "Revoked (UTC)",
            "Reporter",
            "Key",
            "Tenant",
            "Report to revocation",
            "Reason",
        ],
        &rows,
        "no leak report has named a Stormwall key",
    ));
    html_response(
        StatusCode::OK,
        html::page("Leaked keys", &ctx.session, Nav::Leaks, 0, &h),
    )
}

async fn audit_page(ctx: &Ctx<'_>) -> Page {
    let check = match crate::control::admin::verify_chain(ctx.app).await {
        Ok(c) => c,
        Err(e) => return store_failed(e),
    };
    let target = ctx.param("target");
    let records = match audit_tail(ctx, 300, |r| {
        target
            .as_deref()
            .is_none_or(|t| r.entry.target.as_deref() == Some(t))
    })
    .await
    {
        Ok(r) => r,
        Err(e) => return store_failed(e),
    };
    let mut h = String::new();
    if check.ok {
        let _ = write!(
            h,
            "<p class=\"good\" id=\"audit-verify\"><strong>Hash chain verified</strong>: {} records, head <code>{}</code>.</p>",
            check.records,
            E(check.head.as_deref().unwrap_or("(empty log)"))
        );
    } else {
        let _ = write!(
            h,
            "<p class=\"bad\" id=\"audit-verify\" role=\"alert\"><strong>Hash chain broken</strong> at record {}: {}.</p>",
            check.broken_at.unwrap_or(0),
            E(check.reason.unwrap_or("unknown"))
        );
    }
    let _ = write!(
        h,
        "<form method=\"get\" action=\"/console/audit\" class=\"filters\" role=\"search\">\
         <label for=\"f-target\">Target (key or alert id)</label><input id=\"f-target\" name=\"target\" value=\"{}\">\
         <button type=\"submit\">Filter</button></form>",
        E(target.as_deref().unwrap_or(""))
    );
    h.push_str(&table(
        "Newest entries first",
        AUDIT_HEAD,
        &audit_rows(&records),
        "no entries",
    ));
    html_response(
        StatusCode::OK,
        html::page("Audit", &ctx.session, Nav::Audit, 0, &h),
    )
}

/// Suspends or revokes (`action` `suspend-key` or `revoke-key`) `key` from an alert's or an
/// incident's page (`from`: its kind and id, named in the reason and the audit), then
/// returns to `back`.
pub(super) async fn act_on_key(
    ctx: &Ctx<'_>,
    key: &str,
    action: &str,
    from: (&str, &str),
    back: &str,
) -> Page {
    let reason = Some(format!("console: {} {}", from.0, from.1));
    let (r, verb) = match action {
        "suspend-key" => (keys::suspend(ctx.app, key, reason.clone()).await, "suspend"),
        "revoke-key" => (keys::revoke(ctx.app, key, reason.clone()).await, "revoke"),
        _ => return not_found(),
    };
    match r {
        Ok(record) => {
            let mut detail = serde_json::json!({ "reason": reason });
            detail[from.0] = from.1.into();
            ctx.audit(
                &format!("key.{verb}"),
                Some(record.id.as_str()),
                Some(&record.tenant),
                detail,
            )
            .await;
            ctx.flash(Flash::Notice(format!(
                "Key {} is now {}.",
                record.id.as_str(),
                record.status.as_str()
            )));
            redirect(back)
        }
        Err(e) => key_error(ctx, e, back),
    }
}

/// The stored events among `ids` (an alert's or an incident's evidence); none when the
/// store fails (the page still shows the rest).
pub(super) async fn evidence_events(ctx: &Ctx<'_>, ids: &[String]) -> Vec<UsageEvent> {
    if ids.is_empty() {
        return Vec::new();
    }
    ctx.app.store.events_by_id(ids).await.unwrap_or_else(|e| {
        tracing::warn!(error = %e, "console: cannot read evidence events");
        Vec::new()
    })
}

/// The networks (address, AS, organisation, country) and clients (user agents) of a
/// summary, as two tables side by side.
pub(super) fn networks_and_clients(caption: &str, sum: &EventSummary, empty: &str) -> String {
    let rows: Vec<Vec<String>> = sum
        .networks
        .iter()
        .map(|n| {
            vec![
                format!("<code>{}</code>", E(&n.ip)),
                n.asn.map_or_else(|| "-".to_owned(), |a| format!("AS{a}")),
                esc(n.org.as_deref().unwrap_or("-")),
                esc(n.country.as_deref().unwrap_or("-")),
                n.requests.to_string(),
                short_ts(n.last),
            ]
        })
        .collect();
    let mut h = String::from("<div class=\"grid\">");
    h.push_str(&table(
        caption,
        &[
            "Address",
            "Network",
            "Organisation",
            "Country",
            "Requests",
            "Last (UTC)",
        ],
        &rows,
        empty,
    ));
    let rows: Vec<Vec<String>> = sum
        .clients
        .iter()
        .map(|(ua, n)| vec![esc(ua.as_deref().unwrap_or("(none)")), n.to_string()])
        .collect();
    h.push_str(&table("Clients", &["User agent", "Requests"], &rows, empty));
    h.push_str("</div>");
    h
}

/// Requests allowed and refused per bucket: the overview's chart and each key's.
fn requests_chart(id: &str, o: &stats::Overview) -> String {
    html::bar_chart(
        id,
        "Requests",
        &o.labels,
        &[
            Series {
                name: "allowed",
                class: "s1",
                values: &o.allowed,
            },
            Series {
                name: "refused",
                class: "s2",
                values: &o.refused,
            },
        ],
    )
}

/// The newest audit entries about one alert or incident, for its page (none when the store
/// cannot answer: the rest of the page still helps).
pub(super) async fn audit_trail(ctx: &Ctx<'_>, target: &str) -> Vec<AuditRecord> {
    ctx.app
        .store
        .list_audit(&AuditQuery {
            target: Some(target.to_owned()),
            limit: Some(200),
            ..Default::default()
        })
        .await
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_sum_by_name_and_upstream() {
        let text = "# TYPE x counter\nstormwall_events_dropped_total 3\n\
                    stormwall_upstream_errors_total{upstream=\"a\",kind=\"x\"} 2\n\
                    stormwall_upstream_errors_total{upstream=\"a\",kind=\"y\"} 1\n\
                    stormwall_upstream_errors_total{upstream=\"b\",kind=\"y\"} 4\n";
        let (names, ups) = metric_sums(text);
        assert!(names.contains(&("stormwall_events_dropped_total".into(), 3.0)));
        assert!(names.contains(&("stormwall_upstream_errors_total".into(), 7.0)));
        assert!(ups.contains(&("a".into(), "stormwall_upstream_errors_total".into(), 3.0)));
        assert!(health_metric("stormwall_events_dropped_total"));
    }

    #[test]
    fn uuid7_times_are_read() {
        let id =
            uuid::Uuid::from_bytes([0, 0, 0, 0, 0x03, 0xe8, 0x70, 0, 0x80, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            uuid7_time(&id.to_string()),
            OffsetDateTime::from_unix_timestamp(1).ok()
        );
        assert_eq!(uuid7_time("not-a-uuid"), None);
    }
}
