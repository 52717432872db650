//! The Cloud page: management calls read from cloud logs (`[[logs]]` follow mode's control
//! events: keys listed, created or regenerated, logging and guardrail changes, network
//! loosening, model enablement, logins), newest first, by time window, principal, key,
//! source and action; and a cloud principal's page — its calls, its alerts and the revoke
//! command recommended for it. A cloud principal has no Stormwall key record, so a cloud
//! alert's key link leads here.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use http::StatusCode;
use stormwall_store::{AlertQuery, ControlEventQuery};
use stormwall_types::{ControlAction, ControlEvent, KeyId};
use time::OffsetDateTime;

use super::html::{self, E, Nav, esc, table, url_part};
use super::pages::{
    ALERT_HEAD, Page, alert_rows, dl, not_found, short_ts, store_failed, window_tabs,
};
use super::stats::Window;
use super::{Ctx, html_response};

/// Most control events a page reads (its newest [`SHOWN`] are listed).
const READ_MAX: usize = 20_000;
/// Most control events a page lists.
const SHOWN: usize = 300;

/// Columns of [`control_rows`].
pub const CONTROL_HEAD: &[&str] = &[
    "Time (UTC)",
    "Source",
    "Action",
    "Operation",
    "Principal",
    "Account",
    "From",
    "Outcome",
];

/// Table rows of control events, as given (callers pass them newest first).
pub fn control_rows(events: &[&ControlEvent]) -> Vec<Vec<String>> {
    events
        .iter()
        .map(|c| {
            let p = &c.cloud.principal;
            let flag = if c.loosens {
                " <span class=\"badge b-high\">loosens</span>"
            } else {
                ""
            };
            let outcome = if c.success {
                "ok".to_owned()
            } else {
                format!(
                    "<span class=\"bad\">{}</span>",
                    esc(c.cloud.error.as_deref().unwrap_or("failed"))
                )
            };
            vec![
                short_ts(c.timestamp),
                esc(&c.dataset),
                format!("<code>{}</code>{flag}", c.action.as_str()),
                esc(&c.cloud.operation),
                format!(
                    "<a href=\"/console/cloud/{}\">{}</a>",
                    url_part(p.key_id().as_str()),
                    esc(&p.label())
                ),
                esc(p.account.as_deref().unwrap_or("—")),
                c.source_ip
                    .map_or_else(|| "—".to_owned(), |ip| esc(&ip.to_string())),
                outcome,
            ]
        })
        .collect()
}

/// A text filter from the query string: empty means none; overlong is cut (the store
/// compares it whole, so a cut value simply matches nothing).
fn filter(ctx: &Ctx<'_>, name: &str) -> Option<String> {
    ctx.param(name)
        .filter(|v| !v.is_empty())
        .map(|v| v.chars().take(1_024).collect())
}

/// `/console/cloud`: every principal's management calls in a time window.
pub async fn queue(ctx: &Ctx<'_>) -> Page {
    let window = Window::parse(ctx.param("window").as_deref(), Window::Week);
    let now = OffsetDateTime::now_utc();
    let action_name = filter(ctx, "action");
    let action: Option<ControlAction> = action_name
        .as_deref()
        .and_then(|a| serde_json::from_value(serde_json::Value::String(a.to_owned())).ok());
    if action_name.is_some() && action.is_none() {
        return html_response(
            StatusCode::BAD_REQUEST,
            html::page(
                "Cloud",
                &ctx.session,
                Nav::Cloud,
                0,
                "<p class=\"bad\" role=\"alert\">Unknown action: use a name such as <code>list_keys</code> or <code>model_entitlement</code>.</p>",
            ),
        );
    }
    let q = ControlEventQuery {
        since: Some(window.start(now)),
        dataset: filter(ctx, "dataset"),
        action,
        principal: filter(ctx, "principal"),
        account: filter(ctx, "account"),
        limit: Some(READ_MAX),
        newest: true,
        ..Default::default()
    };
    let events = match ctx.app.store.query_control_events(&q).await {
        Ok(e) => e,
        Err(e) => return store_failed(e),
    };
    let principals: BTreeSet<String> = events.iter().map(|c| c.cloud.principal.label()).collect();
    let loosening = events.iter().filter(|c| c.loosens).count();
    let failed = events.iter().filter(|c| !c.success).count();
    let more = if events.len() >= READ_MAX { "+" } else { "" };
    let mut h = String::new();
    h.push_str(&window_tabs("/console/cloud", window));
    let _ = write!(
        h,
        "<ul class=\"cards\" aria-label=\"Totals\"><li><span class=\"n\" id=\"cloud-calls\">{}{more}</span> management calls</li>\
         <li><span class=\"n\">{}</span> principals</li>\
         <li><span class=\"n\">{}</span> loosening access or safety controls</li>\
         <li><span class=\"n\">{}</span> failed or denied</li></ul>",
        events.len(),
        principals.len(),
        loosening,
        failed
    );
    let _ = write!(
        h,
        "<form method=\"get\" action=\"/console/cloud\" class=\"filters\" role=\"search\">\
         <input type=\"hidden\" name=\"window\" value=\"{}\">\
         <label for=\"f-principal\">Principal id</label><input id=\"f-principal\" name=\"principal\" value=\"{}\">\
         <label for=\"f-account\">Account</label><input id=\"f-account\" name=\"account\" value=\"{}\">\
         <label for=\"f-dataset\">Source</label><input id=\"f-dataset\" name=\"dataset\" value=\"{}\" placeholder=\"aws.cloudtrail\">\
         <label for=\"f-action\">Action</label><input id=\"f-action\" name=\"action\" value=\"{}\" placeholder=\"list_keys\">\
         <button type=\"submit\">Filter</button></form>",
        window.as_str(),
        E(ctx.param("principal").as_deref().unwrap_or("")),
        E(ctx.param("account").as_deref().unwrap_or("")),
        E(ctx.param("dataset").as_deref().unwrap_or("")),
        E(action_name.as_deref().unwrap_or("")),
    );
    let newest: Vec<&ControlEvent> = events.iter().rev().take(SHOWN).collect();
    // The store keeps the newest READ_MAX calls of the window; past that the totals are
    // lower bounds (the `+`), and the page says the older calls are not counted.
    let title = if more.is_empty() {
        "Management calls, newest first".to_owned()
    } else {
        format!(
            "Management calls, newest first (totals count the window's latest {READ_MAX}; choose a shorter window or a filter to count the rest)"
        )
    };
    h.push_str(&table(
        &title,
        CONTROL_HEAD,
        &control_rows(&newest),
        "no management call read from cloud logs in this window (follow mode: [[logs]] in the configuration)",
    ));
    html_response(
        StatusCode::OK,
        html::page("Cloud", &ctx.session, Nav::Cloud, 0, &h),
    )
}

/// `/console/cloud/<key id>`: one cloud principal — its management calls (all kept), its
/// alerts and the command recommended to revoke it. Not found when the store holds
/// neither a call nor an alert about it.
pub async fn principal(ctx: &Ctx<'_>, id: &str) -> Page {
    let Ok(key) = KeyId::new(id) else {
        return not_found();
    };
    let calls = match ctx
        .app
        .store
        .query_control_events(&ControlEventQuery {
            key_id: Some(key.clone()),
            limit: Some(READ_MAX),
            newest: true,
            ..Default::default()
        })
        .await
    {
        Ok(e) => e,
        Err(e) => return store_failed(e),
    };
    let alerts = match ctx
        .app
        .store
        .list_alerts(&AlertQuery {
            key_id: Some(key.clone()),
            limit: Some(100),
            ..Default::default()
        })
        .await
    {
        Ok(a) => a,
        Err(e) => return store_failed(e),
    };
    if calls.is_empty() && alerts.is_empty() {
        return not_found();
    }
    let subject = |kind: &str| {
        alerts.iter().find_map(|a| {
            a.alert
                .subjects
                .iter()
                .find(|s| s.kind == kind)
                .map(|s| s.value.clone())
        })
    };
    let label = calls
        .last()
        .map(|c| c.cloud.principal.label())
        .or_else(|| subject("principal"))
        .unwrap_or_else(|| key.as_str().to_owned());
    let kind = calls
        .last()
        .map(|c| c.cloud.principal.kind.as_str().to_owned())
        .or_else(|| subject("credential_kind"))
        .unwrap_or_else(|| "—".to_owned());
    let account = calls
        .last()
        .and_then(|c| c.cloud.principal.account.clone())
        .or_else(|| alerts.iter().find_map(|a| a.alert.tenant.clone()))
        .unwrap_or_else(|| "—".to_owned());
    let mut h = String::new();
    h.push_str(&dl(&[
        ("Principal", esc(&label)),
        (
            "Key id (as alerts name it)",
            format!("<code>{}</code>", E(key.as_str())),
        ),
        ("Credential kind", esc(&kind)),
        ("Account", esc(&account)),
        (
            "Management calls kept",
            format!(
                "{}{}",
                calls.len(),
                if calls.len() >= READ_MAX { "+" } else { "" }
            ),
        ),
    ]));
    // Alerts are newest first: the first command is the latest recommendation.
    if let Some(cmd) = subject("recommended_command") {
        let _ = write!(
            h,
            "<section aria-labelledby=\"rec\"><h2 id=\"rec\">Recommended response</h2>\
             <p>Stormwall holds no cloud credentials. To revoke this credential, an operator runs:</p>\
             <pre id=\"recommended-command\"><code>{}</code></pre></section>",
            E(&cmd)
        );
    }
    h.push_str(&table(
        "Alerts",
        ALERT_HEAD,
        &alert_rows(&alerts),
        "no alert about this principal",
    ));
    let newest: Vec<&ControlEvent> = calls.iter().rev().take(SHOWN).collect();
    h.push_str(&table(
        "Management calls, newest first",
        CONTROL_HEAD,
        &control_rows(&newest),
        "no management call by this principal was read",
    ));
    html_response(
        StatusCode::OK,
        html::page(&label, &ctx.session, Nav::Cloud, 0, &h),
    )
}
