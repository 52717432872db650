//! The admin listener: REST JSON for keys, events, alerts and incidents behind a bearer
//! token, an OpenAPI document, Prometheus metrics and health checks. Kept off the proxy
//! listener so it can be bound to loopback or a private network.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use secrecy::{ExposeSecret, SecretString};
use stormwall_store::EventQuery;
use stormwall_types::KeyId;
use subtle::ConstantTimeEq;

use super::ControlPlane;
use crate::control::keys::{self, CreateKey, KeyError, UpdateKey};
use crate::data::body::ProxyBody;
use crate::error::error_body;
use crate::http::json_response;

/// The OpenAPI 3.1 description of this API.
pub const OPENAPI_JSON: &str = include_str!("../../openapi.json");

/// Largest admin request body.
const MAX_ADMIN_BODY: usize = 1024 * 1024;
/// Default and largest page of events.
const DEFAULT_EVENT_PAGE: usize = 1_000;
/// Largest page of events.
const MAX_EVENT_PAGE: usize = 10_000;

/// Everything the admin handlers share.
pub struct AdminState {
    /// The control plane.
    pub control: Arc<ControlPlane>,
    /// Bearer token.
    pub token: SecretString,
    /// The web console at `/console/`, when enabled.
    pub console: Option<crate::control::console::Console>,
}

/// An admin API failure.
enum AdminError {
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    BadRequest(String),
    Conflict(String),
    Internal,
}

impl From<KeyError> for AdminError {
    fn from(e: KeyError) -> Self {
        match e {
            KeyError::NotFound => AdminError::NotFound,
            KeyError::Invalid(m) => AdminError::BadRequest(m),
            KeyError::Conflict(m) => AdminError::Conflict(m.to_owned()),
            KeyError::Store(e) => {
                tracing::error!(error = %e, "admin: store error");
                AdminError::Internal
            }
        }
    }
}

fn error_response(e: AdminError) -> Response<ProxyBody> {
    let (status, code, msg) = match e {
        AdminError::Unauthorized => (
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong admin token".to_owned(),
        ),
        AdminError::NotFound => (StatusCode::NOT_FOUND, "not_found", "not found".to_owned()),
        AdminError::MethodNotAllowed => (
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "method not allowed".to_owned(),
        ),
        AdminError::BadRequest(m) => (StatusCode::BAD_REQUEST, "invalid_request", m),
        AdminError::Conflict(m) => (StatusCode::CONFLICT, "conflict", m),
        AdminError::Internal => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            "internal error; see the gateway log".to_owned(),
        ),
    };
    json_response(status, error_body(&msg, "admin_error", code))
}

/// Handles one admin request.
pub async fn handle(
    state: Arc<AdminState>,
    req: Request<Incoming>,
    peer: std::net::SocketAddr,
) -> Result<Response<ProxyBody>, Infallible> {
    let path = req.uri().path();
    if (path == "/console" || path.starts_with("/console/"))
        && let Some(console) = &state.console
    {
        return Ok(crate::control::console::handle(&state, console, req, peer).await);
    }
    Ok(route(&state, req).await.unwrap_or_else(error_response))
}

fn ok_json<T: serde::Serialize>(
    status: StatusCode,
    v: &T,
) -> Result<Response<ProxyBody>, AdminError> {
    let body = serde_json::to_vec(v).map_err(|_| AdminError::Internal)?;
    Ok(json_response(status, Bytes::from(body)))
}

fn text(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<ProxyBody> {
    let mut r = Response::new(ProxyBody::full(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

fn authorized(state: &AdminState, req: &Request<Incoming>) -> bool {
    let Some(v) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return false;
    };
    let Some(token) = v
        .strip_prefix("Bearer ")
        .or_else(|| v.strip_prefix("bearer "))
    else {
        return false;
    };
    token
        .trim()
        .as_bytes()
        .ct_eq(state.token.expose_secret().as_bytes())
        .into()
}

async fn route(
    state: &AdminState,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, AdminError> {
    let path = req.uri().path().trim_end_matches('/').to_owned();
    let method = req.method().clone();
    match (method.clone(), path.as_str()) {
        (Method::GET, "/healthz") => return Ok(text(StatusCode::OK, "text/plain", "ok\n")),
        (Method::GET, "/readyz") => return Ok(readyz(state).await),
        (Method::GET, "/metrics") => {
            return Ok(text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                state.control.metrics.encode(),
            ));
        }
        (Method::GET, "/admin/openapi.json") => {
            return Ok(text(StatusCode::OK, "application/json", OPENAPI_JSON));
        }
        _ => {}
    }
    if !path.starts_with("/admin/") {
        return Err(AdminError::NotFound);
    }
    if !authorized(state, &req) {
        return Err(AdminError::Unauthorized);
    }
    let segments: Vec<&str> = path.trim_start_matches("/admin/").split('/').collect();
    let query = req.uri().query().unwrap_or("").to_owned();
    let app = &state.control;
    match (method, segments.as_slice()) {
        (Method::GET, ["keys"]) => {
            let tenant = param(&query, "tenant");
            ok_json(StatusCode::OK, &keys::list(app, tenant).await?)
        }
        (Method::POST, ["keys"]) => {
            let body: CreateKey = read_json(req).await?;
            let created = keys::create(app, body).await?;
            let r = &created.record;
            let detail = serde_json::json!({"kind": r.kind, "label": r.label, "scope": r.scope});
            audit_key(app, "key.create", r, detail).await;
            ok_json(StatusCode::CREATED, &created)
        }
        (Method::GET, ["keys", id]) => ok_json(StatusCode::OK, &keys::get(app, id).await?),
        (Method::PATCH, ["keys", id]) => {
            let id = (*id).to_owned();
            let body: UpdateKey = read_json(req).await?;
            let record = keys::update(app, &id, body).await?;
            let detail = serde_json::json!({"label": record.label, "scope": record.scope});
            audit_key(app, "key.update", &record, detail).await;
            ok_json(StatusCode::OK, &record)
        }
        (Method::POST, ["keys", id, action]) => {
            let (id, action) = ((*id).to_owned(), (*action).to_owned());
            let body: ActionBody = read_json_or_default(req).await?;
            let reason = serde_json::json!({ "reason": body.reason });
            let record = match action.as_str() {
                "suspend" => keys::suspend(app, &id, body.reason).await?,
                "resume" => keys::resume(app, &id).await?,
                "revoke" => keys::revoke(app, &id, body.reason).await?,
                "rotate" => {
                    let grace = body
                        .grace_seconds
                        .map_or(keys::DEFAULT_ROTATION_GRACE, Duration::from_secs);
                    let created = keys::rotate(app, &id, grace).await?;
                    let detail = serde_json::json!({
                        "rotated_from": id, "grace_seconds": grace.as_secs()
                    });
                    audit_key(app, "key.rotate", &created.record, detail).await;
                    return ok_json(StatusCode::CREATED, &created);
                }
                _ => return Err(AdminError::NotFound),
            };
            audit_key(app, &format!("key.{action}"), &record, reason).await;
            ok_json(StatusCode::OK, &record)
        }
        (Method::GET, ["events"]) => events(app, &query).await,
        (Method::GET, ["control-events"]) => control_events(app, &query).await,
        (Method::POST, ["events"]) => {
            let body: ImportBody = read_json_limited(req, MAX_IMPORT_BODY).await?;
            import_events(app, body).await
        }
        (Method::GET, ["alerts"]) => alerts(app, &query).await,
        (Method::GET, ["alerts", id]) => alert(app, id).await,
        (Method::POST, ["alerts", id, action]) => {
            let (id, action) = ((*id).to_owned(), (*action).to_owned());
            let body: NoteBody = read_json_or_default(req).await?;
            alert_status(app, &id, &action, body.note).await
        }
        (Method::GET, ["incidents"]) => incidents(app, &query).await,
        (Method::GET, ["incidents", id]) => incident(app, id).await,
        (Method::POST, ["incidents", id, action]) => {
            let (id, action) = ((*id).to_owned(), (*action).to_owned());
            let body: NoteBody = read_json_or_default(req).await?;
            incident_status(app, &id, &action, body.note).await
        }
        (Method::GET, ["actions"]) => actions(app, &query).await,
        (Method::GET, ["investigation"]) => investigation(app, &query).await,
        (Method::POST, ["investigation", "overrides"]) => {
            let body: OverrideBody = read_json(req).await?;
            investigation_override(app, body).await
        }
        (Method::POST, ["investigation", "scan-findings"]) => {
            let analyst = param(&query, "analyst");
            if let Some(a) = &analyst {
                check_analyst(a)?;
            }
            let body = read_bytes_limited(req, MAX_SCAN_FINDINGS_BODY).await?;
            scan_findings(app, analyst.as_deref(), &body).await
        }
        (Method::GET, ["audit"]) => audit_log(app, &query).await,
        (Method::GET, ["audit", "verify"]) => audit_verify(app).await,
        (Method::POST, ["ipintel", "reload"]) => {
            match crate::control::ipintel::reload_now(&app.ipintel).await {
                Ok(r) => ok_json(StatusCode::OK, &r),
                Err(crate::control::ipintel::ReloadError::Invalid(e)) => {
                    Err(AdminError::BadRequest(e.to_string()))
                }
                Err(crate::control::ipintel::ReloadError::ShuttingDown) => {
                    Err(AdminError::Internal)
                }
            }
        }
        (
            _,
            ["keys"]
            | ["keys", _]
            | ["keys", _, _]
            | ["events"]
            | ["control-events"]
            | ["alerts"]
            | ["alerts", _]
            | ["alerts", _, _]
            | ["incidents"]
            | ["incidents", _]
            | ["incidents", _, _]
            | ["actions"]
            | ["investigation"]
            | ["investigation", "overrides"]
            | ["investigation", "scan-findings"]
            | ["audit"]
            | ["audit", "verify"]
            | ["ipintel", "reload"],
        ) => Err(AdminError::MethodNotAllowed),
        _ => Err(AdminError::NotFound),
    }
}

/// Records an admin change to a key in the audit log.
async fn audit_key(
    app: &ControlPlane,
    action: &str,
    record: &stormwall_types::KeyRecord,
    detail: serde_json::Value,
) {
    crate::control::audit::record(
        app,
        crate::control::audit::ADMIN,
        action,
        Some(record.id.as_str()),
        Some(&record.tenant),
        detail,
    )
    .await;
}

#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    grace_seconds: Option<u64>,
}

async fn read_bytes(req: Request<Incoming>) -> Result<Bytes, AdminError> {
    read_bytes_limited(req, MAX_ADMIN_BODY).await
}

async fn read_bytes_limited(req: Request<Incoming>, max: usize) -> Result<Bytes, AdminError> {
    let limits = crate::config::LimitsConfig {
        max_request_body_bytes: max,
        ..crate::config::LimitsConfig::default()
    };
    crate::http::read_request_body(req.into_body(), &limits)
        .await
        .map_err(|_| {
            AdminError::BadRequest(format!("body missing, unreadable or over {max} bytes"))
        })
}

async fn read_json_limited<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
    max: usize,
) -> Result<T, AdminError> {
    let bytes = read_bytes_limited(req, max).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| AdminError::BadRequest(format!("invalid JSON body: {e}")))
}

async fn read_json<T: serde::de::DeserializeOwned>(
    req: Request<Incoming>,
) -> Result<T, AdminError> {
    let bytes = read_bytes(req).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| AdminError::BadRequest(format!("invalid JSON body: {e}")))
}

async fn read_json_or_default<T: serde::de::DeserializeOwned + Default>(
    req: Request<Incoming>,
) -> Result<T, AdminError> {
    let bytes = read_bytes(req).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&bytes)
        .map_err(|e| AdminError::BadRequest(format!("invalid JSON body: {e}")))
}

fn param(query: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

async fn readyz(state: &AdminState) -> Response<ProxyBody> {
    let (status, body) = readiness(&state.control).await;
    text(status, "text/plain", body)
}

/// What `/readyz` answers: the status and its text (the console's health shows it too).
pub(crate) async fn readiness(control: &ControlPlane) -> (StatusCode, String) {
    let probe =
        KeyId::new("000000000000").map(|id| async move { control.store.get_key(&id).await });
    let ok = match probe {
        Ok(fut) => tokio::time::timeout(Duration::from_secs(2), fut)
            .await
            .is_ok_and(|r| r.is_ok()),
        Err(_) => false,
    };
    if let Some(journal) = &control.journal {
        if !journal.backlog_shipped() {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "event journal: shipping what a previous run left\n".to_owned(),
            );
        }
        if journal.at_bound() {
            return match journal.policy() {
                stormwall_store::JournalPolicy::FailClosed => (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "event journal at its bound: refusing requests (fail_closed)\n".to_owned(),
                ),
                stormwall_store::JournalPolicy::FailOpen => (
                    StatusCode::OK,
                    "ready; event journal at its bound: events are dropped (fail_open)\n"
                        .to_owned(),
                ),
            };
        }
    }
    if ok {
        // The fast tier always screens; say whether the encoder tier has its model. Missing
        // IP data does not make the gateway unready (it still serves and detects, from
        // prefixes), but the operator reading the probe learns what is missing.
        let mut body = match &control.safety {
            Some(s) => format!("ready\n{}\n", s.encoder_summary()),
            None => "ready\n".to_owned(),
        };
        for m in control.ipintel.current().missing() {
            body.push_str("missing: ");
            body.push_str(&m);
            body.push('\n');
        }
        if let Some(follow) = &control.cloud_logs {
            body.push_str(&follow.readyz());
        }
        (StatusCode::OK, body)
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "store unavailable\n".to_owned(),
        )
    }
}

#[derive(Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NoteBody {
    #[serde(default)]
    note: Option<String>,
}

/// Longest operator note on an alert.
const MAX_NOTE: usize = 2_000;
/// Default and largest page of alerts or actions.
const DEFAULT_ALERT_PAGE: usize = 100;
const MAX_ALERT_PAGE: usize = 10_000;

fn store_error(e: stormwall_store::StoreError) -> AdminError {
    match e {
        stormwall_store::StoreError::NotFound => AdminError::NotFound,
        e => {
            tracing::error!(error = %e, "admin: store error");
            AdminError::Internal
        }
    }
}

fn time_param(query: &str, name: &str) -> Result<Option<time::OffsetDateTime>, AdminError> {
    param(query, name)
        .map(|v| {
            stormwall_types::timefmt::parse(&v).map_err(|_| {
                AdminError::BadRequest(format!("{name} must be an RFC 3339 timestamp"))
            })
        })
        .transpose()
}

fn limit_param(query: &str, default: usize, max: usize) -> Result<usize, AdminError> {
    match param(query, "limit") {
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=max).contains(n))
            .ok_or_else(|| AdminError::BadRequest(format!("limit must be 1..={max}"))),
        None => Ok(default),
    }
}

fn key_param(query: &str) -> Result<Option<KeyId>, AdminError> {
    param(query, "key")
        .or_else(|| param(query, "key_id"))
        .map(|k| {
            KeyId::new(&k).map_err(|_| AdminError::BadRequest("key must be a public key id".into()))
        })
        .transpose()
}

#[derive(serde::Serialize)]
struct AlertPage {
    alerts: Vec<stormwall_store::StoredAlert>,
}

async fn alerts(app: &ControlPlane, query: &str) -> Result<Response<ProxyBody>, AdminError> {
    let detector = param(query, "detector")
        .map(|d| {
            d.parse::<stormwall_types::DetectorId>()
                .map_err(|_| AdminError::BadRequest(format!("unknown detector {d:?}")))
        })
        .transpose()?;
    let status = param(query, "status")
        .map(|s| {
            stormwall_store::AlertStatus::parse(&s).ok_or_else(|| {
                AdminError::BadRequest("status must be open, acknowledged or false_positive".into())
            })
        })
        .transpose()?;
    let q = stormwall_store::AlertQuery {
        key_id: key_param(query)?,
        tenant: param(query, "tenant"),
        detector,
        status,
        since: time_param(query, "since")?,
        until: time_param(query, "until")?,
        limit: Some(limit_param(query, DEFAULT_ALERT_PAGE, MAX_ALERT_PAGE)?),
    };
    let alerts = app.store.list_alerts(&q).await.map_err(store_error)?;
    ok_json(StatusCode::OK, &AlertPage { alerts })
}

#[derive(serde::Serialize)]
struct AlertDetail {
    #[serde(flatten)]
    alert: stormwall_store::StoredAlert,
    actions: Vec<stormwall_store::ActionRecord>,
}

async fn alert(app: &ControlPlane, id: &str) -> Result<Response<ProxyBody>, AdminError> {
    let alert = app
        .store
        .get_alert(id)
        .await
        .map_err(store_error)?
        .ok_or(AdminError::NotFound)?;
    let actions = app
        .store
        .list_actions(&stormwall_store::ActionQuery {
            alert_id: Some(id.to_owned()),
            ..Default::default()
        })
        .await
        .map_err(store_error)?;
    ok_json(StatusCode::OK, &AlertDetail { alert, actions })
}

async fn alert_status(
    app: &ControlPlane,
    id: &str,
    action: &str,
    note: Option<String>,
) -> Result<Response<ProxyBody>, AdminError> {
    check_note(note.as_deref())?;
    let stored = match action {
        "ack" => app
            .store
            .set_alert_status(
                id,
                stormwall_store::AlertStatus::Acknowledged,
                note.as_deref(),
                time::OffsetDateTime::now_utc(),
            )
            .await
            .map_err(store_error)?,
        "false-positive" => {
            crate::control::detection::mark_false_positive(app, id, note.as_deref())
                .await
                .map_err(store_error)?
        }
        _ => return Err(AdminError::NotFound),
    };
    crate::control::audit::record(
        app,
        crate::control::audit::ADMIN,
        &format!("alert.{}", stored.status.as_str()),
        Some(id),
        stored.alert.tenant.as_deref(),
        serde_json::json!({ "note": note, "key_id": stored.alert.key_id }),
    )
    .await;
    ok_json(StatusCode::OK, &stored)
}

#[derive(serde::Serialize)]
struct IncidentPage {
    incidents: Vec<stormwall_store::StoredIncident>,
}

async fn incidents(app: &ControlPlane, query: &str) -> Result<Response<ProxyBody>, AdminError> {
    let status = param(query, "status")
        .map(|s| {
            stormwall_types::IncidentStatus::parse(&s).ok_or_else(|| {
                AdminError::BadRequest(
                    "status must be open, acknowledged, false_positive, resolved or closed".into(),
                )
            })
        })
        .transpose()?;
    let min_severity = param(query, "severity")
        .map(|s| {
            stormwall_types::Severity::parse(&s).ok_or_else(|| {
                AdminError::BadRequest(
                    "severity must be info, low, medium, high or critical".into(),
                )
            })
        })
        .transpose()?;
    let q = stormwall_store::IncidentQuery {
        status,
        min_severity,
        key_id: key_param(query)?,
        tenant: param(query, "tenant"),
        alert_id: param(query, "alert"),
        subject: network_subject(query)?,
        since: time_param(query, "since")?,
        limit: Some(limit_param(query, DEFAULT_ALERT_PAGE, MAX_ALERT_PAGE)?),
    };
    let incidents = app.store.list_incidents(&q).await.map_err(store_error)?;
    ok_json(StatusCode::OK, &IncidentPage { incidents })
}

/// The `network` filter of the incident list: a CIDR prefix (`198.51.100.0/24`), as the
/// subject of a source network's incident, in the canonical form incidents are stored under.
fn network_subject(query: &str) -> Result<Option<String>, AdminError> {
    param(query, "network")
        .map(|n| {
            n.parse::<ipnet::IpNet>()
                .map(|net| format!("network:{}", net.trunc()))
                .map_err(|_| {
                    AdminError::BadRequest(
                        "network must be a CIDR prefix such as 198.51.100.0/24".into(),
                    )
                })
        })
        .transpose()
}

#[derive(serde::Serialize)]
struct IncidentDetail {
    #[serde(flatten)]
    incident: stormwall_store::StoredIncident,
    alerts: Vec<stormwall_store::StoredAlert>,
}

async fn incident(app: &ControlPlane, id: &str) -> Result<Response<ProxyBody>, AdminError> {
    let incident = app
        .store
        .get_incident(id)
        .await
        .map_err(store_error)?
        .ok_or(AdminError::NotFound)?;
    let mut alerts = Vec::new();
    for alert_id in incident
        .alert_ids
        .iter()
        .take(crate::control::incidents::MAX_DETAIL_ALERTS)
    {
        if let Some(a) = app.store.get_alert(alert_id).await.map_err(store_error)? {
            alerts.push(a);
        }
    }
    alerts.sort_by(|a, b| (a.alert.at, &a.alert.id).cmp(&(b.alert.at, &b.alert.id)));
    ok_json(StatusCode::OK, &IncidentDetail { incident, alerts })
}

async fn incident_status(
    app: &ControlPlane,
    id: &str,
    action: &str,
    note: Option<String>,
) -> Result<Response<ProxyBody>, AdminError> {
    let Some(handling) = crate::control::incidents::Handling::from_verb(action) else {
        return Err(AdminError::NotFound);
    };
    check_note(note.as_deref())?;
    let stored = crate::control::incidents::handle(app, id, handling, note.as_deref())
        .await
        .map_err(store_error)?;
    ok_json(StatusCode::OK, &stored)
}

/// Refuses a note that is too long or holds control characters (newlines allowed).
fn check_note(note: Option<&str>) -> Result<(), AdminError> {
    if note.is_some_and(|n| n.len() > MAX_NOTE || n.chars().any(|c| c.is_control() && c != '\n')) {
        return Err(AdminError::BadRequest(format!(
            "note must be at most {MAX_NOTE} bytes without control characters"
        )));
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct ActionPage {
    actions: Vec<stormwall_store::ActionRecord>,
}

async fn actions(app: &ControlPlane, query: &str) -> Result<Response<ProxyBody>, AdminError> {
    let q = stormwall_store::ActionQuery {
        key_id: key_param(query)?,
        alert_id: param(query, "alert"),
        limit: Some(limit_param(query, DEFAULT_ALERT_PAGE, MAX_ALERT_PAGE)?),
    };
    let actions = app.store.list_actions(&q).await.map_err(store_error)?;
    ok_json(StatusCode::OK, &ActionPage { actions })
}

/// Largest event import body.
const MAX_IMPORT_BODY: usize = 16 * 1024 * 1024;
/// Most events in one import.
const MAX_IMPORT_EVENTS: usize = 10_000;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ImportBody {
    events: Vec<stormwall_types::UsageEvent>,
}

#[derive(serde::Serialize)]
struct ImportResult {
    imported: usize,
}

/// Stores events recorded elsewhere (another gateway, a migration, a simulator's history)
/// and replays them into the detectors as history: they shape baselines and risk, and
/// their alerts are not acted on.
async fn import_events(
    app: &ControlPlane,
    body: ImportBody,
) -> Result<Response<ProxyBody>, AdminError> {
    let mut events = body.events;
    if events.len() > MAX_IMPORT_EVENTS {
        return Err(AdminError::BadRequest(format!(
            "at most {MAX_IMPORT_EVENTS} events per import"
        )));
    }
    let now = time::OffsetDateTime::now_utc();
    if let Some(e) = events
        .iter()
        .find(|e| !is_event_id(&e.id) || e.timestamp > now)
    {
        return Err(AdminError::BadRequest(format!(
            "every event needs an id of 1 to {MAX_EVENT_ID} printable ASCII characters (no spaces) and a time not in the future (event {:?})",
            // An id that is refused for its length is not echoed whole.
            crate::data::request::truncate(&e.id, MAX_EVENT_ID)
        )));
    }
    events.sort_by(|a, b| (a.timestamp, &a.id).cmp(&(b.timestamp, &b.id)));
    app.store
        .insert_events(&events)
        .await
        .map_err(|e| match e {
            stormwall_store::StoreError::Duplicate => {
                AdminError::Conflict("an event with one of these ids is already stored".into())
            }
            e => store_error(e),
        })?;
    let imported = events.len();
    let detail = serde_json::json!({
        "events": imported,
        "from": events.first().map(|e| stormwall_types::timefmt::format(e.timestamp)),
        "to": events.last().map(|e| stormwall_types::timefmt::format(e.timestamp)),
    });
    crate::control::audit::record(
        app,
        crate::control::audit::ADMIN,
        "events.import",
        None,
        None,
        detail,
    )
    .await;
    if let Some(d) = &app.detection {
        d.history(events).await;
    }
    ok_json(StatusCode::OK, &ImportResult { imported })
}

#[derive(serde::Serialize)]
struct AuditPage {
    entries: Vec<stormwall_store::AuditRecord>,
    next_after: Option<u64>,
}

async fn audit_log(app: &ControlPlane, query: &str) -> Result<Response<ProxyBody>, AdminError> {
    let after_seq = param(query, "after")
        .map(|v| {
            v.parse::<u64>()
                .map_err(|_| AdminError::BadRequest("after must be a sequence number".into()))
        })
        .transpose()?;
    let limit = limit_param(query, DEFAULT_EVENT_PAGE, MAX_EVENT_PAGE)?;
    let q = stormwall_store::AuditQuery {
        after_seq,
        target: param(query, "target"),
        limit: Some(limit),
    };
    let entries = app.store.list_audit(&q).await.map_err(store_error)?;
    let next_after = (entries.len() == limit)
        .then(|| entries.last().map(|r| r.seq))
        .flatten();
    ok_json(
        StatusCode::OK,
        &AuditPage {
            entries,
            next_after,
        },
    )
}

/// The result of checking the audit log's hash chain.
#[derive(serde::Serialize)]
pub(crate) struct AuditCheck {
    /// Whether the whole chain checks.
    pub ok: bool,
    /// Records checked.
    pub records: u64,
    /// The last record's hash.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub head: Option<String>,
    /// The first record that does not check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub broken_at: Option<u64>,
    /// What is wrong with it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

async fn audit_verify(app: &ControlPlane) -> Result<Response<ProxyBody>, AdminError> {
    let check = verify_chain(app).await.map_err(store_error)?;
    ok_json(StatusCode::OK, &check)
}

/// Walks the whole audit log, page by page, and checks its hash chain.
pub(crate) async fn verify_chain(
    app: &ControlPlane,
) -> Result<AuditCheck, stormwall_store::StoreError> {
    let (mut seq, mut head) = (0u64, stormwall_store::AUDIT_GENESIS.to_owned());
    loop {
        let page = app
            .store
            .list_audit(&stormwall_store::AuditQuery {
                after_seq: Some(seq),
                target: None,
                limit: Some(MAX_EVENT_PAGE),
            })
            .await?;
        if let Err(b) = stormwall_store::verify_audit(&page, seq, &head) {
            return Ok(AuditCheck {
                ok: false,
                records: seq,
                head: None,
                broken_at: Some(b.seq),
                reason: Some(b.reason),
            });
        }
        let Some(last) = page.last() else { break };
        (seq, head) = (last.seq, last.hash.clone());
        if page.len() < MAX_EVENT_PAGE {
            break;
        }
    }
    Ok(AuditCheck {
        ok: true,
        records: seq,
        head: (seq > 0).then_some(head),
        broken_at: None,
        reason: None,
    })
}

#[derive(serde::Serialize)]
struct EventPage {
    events: Vec<stormwall_types::UsageEvent>,
    next_after: Option<String>,
}

/// Longest event id accepted: an imported event's, or a paging cursor.
const MAX_EVENT_ID: usize = 128;

/// Whether `id` can be an event id: the gateway's own UUIDv7s (`recorder::event_id`) and
/// imported ids alike are 1 to 128 printable ASCII characters, so every stored id is a
/// valid cursor, and a mangled cursor is refused instead of silently read as "after this
/// text".
fn is_event_id(id: &str) -> bool {
    (1..=MAX_EVENT_ID).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_graphic())
}

/// The `after` paging cursor: an event id, as a page's `next_after` gives it.
fn after_param(query: &str) -> Result<Option<String>, AdminError> {
    param(query, "after")
        .map(|v| {
            if is_event_id(&v) {
                Ok(v)
            } else {
                Err(AdminError::BadRequest(format!(
                    "after must be an event id (1 to {MAX_EVENT_ID} printable ASCII characters, no spaces), as a page's next_after gives it"
                )))
            }
        })
        .transpose()
}

async fn investigation(app: &ControlPlane, query: &str) -> Result<Response<ProxyBody>, AdminError> {
    use crate::control::investigation::{
        DEFAULT_MAX_EVENTS, InvestigationError, InvestigationQuery, MAX_EVENTS,
    };
    let max_events = match param(query, "max_events") {
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=MAX_EVENTS).contains(n))
            .ok_or_else(|| {
                AdminError::BadRequest(format!("max_events must be 1..={MAX_EVENTS}"))
            })?,
        None => DEFAULT_MAX_EVENTS,
    };
    let include_personal_data = match param(query, "include_personal_data").as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => {
            return Err(AdminError::BadRequest(
                "include_personal_data must be true or false".to_owned(),
            ));
        }
    };
    let analyst = param(query, "analyst");
    if let Some(a) = &analyst {
        check_analyst(a)?;
    }
    let q = InvestigationQuery {
        since: time_param(query, "since")?,
        until: time_param(query, "until")?,
        max_events,
        include_personal_data,
    };
    if include_personal_data {
        // Audited before anything is read: no personal data leaves unrecorded.
        crate::control::investigation::audit_personal_data(app, analyst.as_deref(), &q)
            .await
            .map_err(store_error)?;
    }
    match crate::control::investigation::assess(app, &q).await {
        Ok(summary) => ok_json(StatusCode::OK, &summary),
        Err(InvestigationError::Store(e)) => Err(store_error(e)),
        Err(e @ InvestigationError::Aborted) => {
            tracing::error!(error = %e, "admin: investigation");
            Err(AdminError::Internal)
        }
    }
}

/// `POST /admin/investigation/overrides`: an analyst's decision, the override's own JSON
/// (`op` and its fields) with who made it.
#[derive(serde::Deserialize)]
struct OverrideBody {
    analyst: String,
    #[serde(flatten)]
    op: stormwall_investigate::OverrideOp,
}

/// The answer: the decision as it will be applied, and its audit record.
#[derive(serde::Serialize)]
struct RecordedOverride {
    #[serde(flatten)]
    entry: stormwall_investigate::Override,
    audit_seq: u64,
}

/// Longest analyst handle or entity id accepted.
const MAX_HANDLE: usize = 64;
const MAX_ENTITY: usize = 512;

/// An analyst handle: 1 to 64 letters, digits and `._@-`.
fn check_analyst(a: &str) -> Result<(), AdminError> {
    if a.is_empty()
        || a.len() > MAX_HANDLE
        || !a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'))
    {
        return Err(AdminError::BadRequest(format!(
            "analyst must be 1 to {MAX_HANDLE} letters, digits or ._@-"
        )));
    }
    Ok(())
}

/// A node id: `<kind>:<value>`, at most 512 bytes, no control characters.
fn check_entity(e: &str) -> Result<(), AdminError> {
    let kind_ok = e.split_once(':').is_some_and(|(k, v)| {
        !v.is_empty()
            && [
                "key",
                "tenant",
                "network",
                "fingerprint",
                "style",
                "end_user",
                "exposure",
                "incident",
                "tls",
                "control",
            ]
            .contains(&k)
    });
    if !kind_ok || e.len() > MAX_ENTITY || e.chars().any(char::is_control) {
        return Err(AdminError::BadRequest(format!(
            "entity must be a node id such as network:203.0.113.0/24 or tenant:acme (at most {MAX_ENTITY} bytes)"
        )));
    }
    Ok(())
}

async fn investigation_override(
    app: &ControlPlane,
    body: OverrideBody,
) -> Result<Response<ProxyBody>, AdminError> {
    use stormwall_investigate::OverrideOp;
    check_analyst(&body.analyst)?;
    check_entity(body.op.entity())?;
    match &body.op {
        OverrideOp::Merge { with, .. } => check_entity(with)?,
        OverrideOp::Annotate { note, .. } => {
            if note.trim().is_empty() {
                return Err(AdminError::BadRequest("note must not be empty".to_owned()));
            }
            check_note(Some(note))?;
        }
        OverrideOp::Confirm { .. } | OverrideOp::Reject { .. } | OverrideOp::Split { .. } => {}
    }
    let (entry, audit_seq) =
        crate::control::investigation::record_override(app, &body.analyst, body.op)
            .await
            .map_err(store_error)?;
    ok_json(StatusCode::CREATED, &RecordedOverride { entry, audit_seq })
}

/// Largest scan report accepted (10,000 findings of a few hundred bytes each).
const MAX_SCAN_FINDINGS_BODY: usize = 8 * 1024 * 1024;

/// `POST /admin/investigation/scan-findings`: the JSON lines `stormwall scan --format
/// jsonl` writes; those naming Stormwall keys are recorded in the audit log.
async fn scan_findings(
    app: &ControlPlane,
    analyst: Option<&str>,
    body: &[u8],
) -> Result<Response<ProxyBody>, AdminError> {
    use crate::control::investigation::SubmitError;
    // Nothing of the body is echoed: a line that is not a finding could hold a secret.
    let text = std::str::from_utf8(body)
        .map_err(|_| AdminError::BadRequest("the body is not UTF-8 text".to_owned()))?;
    match crate::control::investigation::submit_scan_findings(app, analyst, text).await {
        Ok(s) => ok_json(StatusCode::OK, &s),
        Err(SubmitError::Invalid(m)) => Err(AdminError::BadRequest(m)),
        Err(SubmitError::Store(e)) => Err(store_error(e)),
    }
}

async fn events(app: &ControlPlane, query: &str) -> Result<Response<ProxyBody>, AdminError> {
    let limit = limit_param(query, DEFAULT_EVENT_PAGE, MAX_EVENT_PAGE)?;
    let q = EventQuery {
        key_id: key_param(query)?,
        tenant: param(query, "tenant"),
        since: time_param(query, "since")?,
        until: time_param(query, "until")?,
        after_id: after_param(query)?,
        limit: Some(limit),
    };
    let events = app.store.query_events(&q).await.map_err(store_error)?;
    let next_after = (events.len() == limit)
        .then(|| events.last().map(|e| e.id.clone()))
        .flatten();
    ok_json(StatusCode::OK, &EventPage { events, next_after })
}

#[derive(serde::Serialize)]
struct ControlEventPage {
    control_events: Vec<stormwall_types::ControlEvent>,
    next_after: Option<String>,
}

/// Longest `dataset`, `principal` or `account` filter: logged names are short; a longer
/// value is a mistake, refused rather than searched for.
const MAX_CONTROL_FILTER: usize = 1_024;

/// A text filter of `/admin/control-events`, checked for length.
fn control_filter(query: &str, name: &str) -> Result<Option<String>, AdminError> {
    match param(query, name) {
        Some(v) if v.is_empty() || v.len() > MAX_CONTROL_FILTER => Err(AdminError::BadRequest(
            format!("{name} must be 1 to {MAX_CONTROL_FILTER} bytes"),
        )),
        v => Ok(v),
    }
}

/// The `action` filter: a normalised control action's name (`list_keys`, …).
fn control_action_param(query: &str) -> Result<Option<stormwall_types::ControlAction>, AdminError> {
    param(query, "action")
        .map(|v| {
            serde_json::from_value(serde_json::Value::String(v.clone())).map_err(|_| {
                AdminError::BadRequest(format!(
                    "action must be a control action name such as list_keys or regenerate_key, not {:?}",
                    v.chars().take(64).collect::<String>()
                ))
            })
        })
        .transpose()
}

/// Management calls read from cloud logs, oldest first, paged like `/admin/events`.
async fn control_events(
    app: &ControlPlane,
    query: &str,
) -> Result<Response<ProxyBody>, AdminError> {
    let limit = limit_param(query, DEFAULT_EVENT_PAGE, MAX_EVENT_PAGE)?;
    let q = stormwall_store::ControlEventQuery {
        since: time_param(query, "since")?,
        until: time_param(query, "until")?,
        dataset: control_filter(query, "dataset")?,
        action: control_action_param(query)?,
        principal: control_filter(query, "principal")?,
        key_id: key_param(query)?,
        account: control_filter(query, "account")?,
        after_id: after_param(query)?,
        limit: Some(limit),
        newest: false,
    };
    let control_events = app
        .store
        .query_control_events(&q)
        .await
        .map_err(store_error)?;
    let next_after = (control_events.len() == limit)
        .then(|| control_events.last().map(|e| e.id.clone()))
        .flatten();
    ok_json(
        StatusCode::OK,
        &ControlEventPage {
            control_events,
            next_after,
        },
    )
}

#[cfg(test)]
mod openapi_tests {
    use super::OPENAPI_JSON;

    /// Every route `route()` serves, as (OpenAPI method, OpenAPI path).
    const ROUTES: &[(&str, &str)] = &[
        ("get", "/healthz"),
        ("get", "/readyz"),
        ("get", "/metrics"),
        ("get", "/admin/openapi.json"),
        ("get", "/admin/keys"),
        ("post", "/admin/keys"),
        ("get", "/admin/keys/{id}"),
        ("patch", "/admin/keys/{id}"),
        ("post", "/admin/keys/{id}/suspend"),
        ("post", "/admin/keys/{id}/resume"),
        ("post", "/admin/keys/{id}/revoke"),
        ("post", "/admin/keys/{id}/rotate"),
        ("get", "/admin/events"),
        ("post", "/admin/events"),
        ("get", "/admin/control-events"),
        ("get", "/admin/alerts"),
        ("get", "/admin/alerts/{id}"),
        ("post", "/admin/alerts/{id}/ack"),
        ("post", "/admin/alerts/{id}/false-positive"),
        ("get", "/admin/incidents"),
        ("get", "/admin/incidents/{id}"),
        ("post", "/admin/incidents/{id}/ack"),
        ("post", "/admin/incidents/{id}/false-positive"),
        ("post", "/admin/incidents/{id}/resolve"),
        ("get", "/admin/actions"),
        ("get", "/admin/investigation"),
        ("post", "/admin/investigation/overrides"),
        ("post", "/admin/investigation/scan-findings"),
        ("get", "/admin/audit"),
        ("get", "/admin/audit/verify"),
        ("post", "/admin/ipintel/reload"),
    ];
    /// Routes served without the bearer token.
    const PUBLIC: &[&str] = &["/healthz", "/readyz", "/metrics", "/admin/openapi.json"];
    const METHODS: &[&str] = &[
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];

    fn check_refs(doc: &serde_json::Value, v: &serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(|r| r.as_str()) {
                    let ptr = r
                        .strip_prefix('#')
                        .unwrap_or_else(|| panic!("external $ref {r}"));
                    assert!(doc.pointer(ptr).is_some(), "dangling $ref {r}");
                }
                m.values().for_each(|c| check_refs(doc, c));
            }
            serde_json::Value::Array(a) => a.iter().for_each(|c| check_refs(doc, c)),
            _ => {}
        }
    }

    #[test]
    fn openapi_documents_every_route() {
        let doc: serde_json::Value =
            serde_json::from_str(OPENAPI_JSON).expect("openapi.json is not valid JSON");
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().expect("openapi.json has no paths");
        for (method, path) in ROUTES {
            let op = paths
                .get(*path)
                .and_then(|p| p.get(*method))
                .unwrap_or_else(|| panic!("{} {path} is not documented", method.to_uppercase()));
            let public = op
                .get("security")
                .is_some_and(|s| s == &serde_json::json!([]));
            assert_eq!(
                public,
                PUBLIC.contains(path),
                "{} {path}: wrong security",
                method.to_uppercase()
            );
        }
        // Nothing documented that the router does not serve.
        for (path, item) in paths {
            for method in METHODS {
                if item.get(*method).is_some() {
                    assert!(
                        ROUTES.contains(&(*method, path.as_str())),
                        "{} {path} is documented but not served",
                        method.to_uppercase()
                    );
                }
            }
        }
        for schema in [
            "KeyRecord",
            "KeyScope",
            "CreateKey",
            "CreatedKey",
            "UpdateKey",
            "UsageEvent",
            "Error",
        ] {
            assert!(
                doc["components"]["schemas"].get(schema).is_some(),
                "schema {schema} missing"
            );
        }
        check_refs(&doc, &doc);
    }
}
