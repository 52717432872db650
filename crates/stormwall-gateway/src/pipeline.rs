//! The request pipeline, in the order a request meets it:
//!
//! route → authenticate → authorize → read body → admit → forward → relay → account
//!
//! Each stage is a small function; this file only calls them in order, so the life of a
//! request reads top to bottom. Every path ends in exactly one event (see [`Recorder`]).

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderValue, Request, Response, header};
use hyper::body::Incoming;
use stormwall_types::key::{self, KEY_PREFIX};
use stormwall_types::record::KeyRefusal;
use stormwall_types::{Endpoint, KeyHash, RejectReason};

use crate::admit::{self, DEFAULT_OUTPUT_RESERVE_TOKENS, Demand};
use crate::body::ProxyBody;
use crate::error::{ProxyError, into_response};
use crate::forward;
use crate::keycache::CachedKey;
use crate::recorder::{Recorder, deny};
use crate::request::{self, ParsedRequest};
use crate::route::{self, Route};
use crate::state::AppState;

/// Handles one proxy request. Never fails: errors become OpenAI-shaped responses.
pub async fn handle(
    state: Arc<AppState>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Response<ProxyBody> {
    let mut rec = Recorder::start(
        &state,
        req.method().as_str(),
        req.uri().path(),
        req.headers(),
        peer,
    );
    let result = proxy(&state, &mut rec, req).await;
    match result {
        Ok(resp) => resp,
        Err(err) => {
            let mut resp = into_response(&err);
            set_request_id(&mut resp, rec.id());
            let status = resp.status().as_u16();
            rec.fail(&err, status);
            resp
        }
    }
}

async fn proxy(
    state: &Arc<AppState>,
    rec: &mut Recorder,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (parts, body) = req.into_parts();

    if let Some((path, verifier)) = &state.leak_reports
        && parts.method == http::Method::POST
        && parts.uri.path() == path
    {
        return leak_report(state, rec, verifier, &parts.headers, body).await;
    }

    // 1. route
    let route = route::classify(&parts.method, parts.uri.path(), parts.uri.query())
        .ok_or_else(|| deny(rec, RejectReason::NotFound))?;
    note_route(rec, &route);

    // 2. authenticate
    let key = match authenticate(state, &parts.headers, rec) {
        Ok(key) => key,
        Err(AuthFailure { reason, tripwire }) => {
            if tripwire {
                // A revoked or canary key in use is intelligence: capture what was asked
                // (digests only), then refuse exactly like an unknown key.
                capture_tripwire(state, rec, &route, body).await;
            }
            return Err(deny(rec, reason));
        }
    };
    let scope = &key.record.scope;

    // 3. authorize (what can be decided before reading the body)
    if !scope.allows_endpoint(route.endpoint) {
        return Err(deny(rec, RejectReason::EndpointNotAllowed));
    }
    if !scope.allows_ip(rec.event().source_ip) {
        return Err(deny(rec, RejectReason::NetworkNotAllowed));
    }
    if route.endpoint == Endpoint::Models {
        return Ok(forward::list_models(state, rec, &key));
    }

    // 4. read and parse the body
    let body = forward::read_request_body(body, &state.limits).await?;
    let parsed = request::parse(&body, route.endpoint, &state.digester).map_err(|e| {
        rec.event().deny(RejectReason::BadRequest);
        ProxyError::Rejected {
            reason: RejectReason::BadRequest,
            limits: None,
            detail: Some(match e {
                request::BodyError::InvalidJson => {
                    "The request body is not valid JSON for this endpoint."
                }
                request::BodyError::MissingModel => "The request body must name a model.",
            }),
        }
    })?;
    parsed.note_into(rec.event());
    rec.event().prompt_credentials = credentials_in(state, &body);
    rec.event().safety.extend(parsed.roleplay_verdict());
    let model = route
        .deployment
        .clone()
        .or_else(|| parsed.model.clone())
        .ok_or_else(|| {
            rec.event().deny(RejectReason::BadRequest);
            ProxyError::Rejected {
                reason: RejectReason::BadRequest,
                limits: None,
                detail: Some("The request body must name a model."),
            }
        })?;
    rec.event().model = Some(model.clone());
    if !scope.allows_model(&model) {
        return Err(deny(rec, RejectReason::ModelNotAllowed));
    }
    let upstream = state
        .router
        .route(&model)
        .cloned()
        .ok_or_else(|| deny(rec, RejectReason::NoRoute))?;

    // 5. admit
    let output_reserve = parsed.max_tokens.unwrap_or(DEFAULT_OUTPUT_RESERVE_TOKENS);
    let demand = Demand {
        tokens: parsed.estimated_input_tokens,
        reserve_usd: state.pricing.cost(
            &model,
            parsed.estimated_input_tokens,
            output_reserve,
            parsed.images.unwrap_or(0),
        ),
    };
    let admission = admit_request(state, &key, demand).await.inspect_err(|e| {
        if let Some(r) = e.reject_reason() {
            rec.event().deny(r);
        }
    })?;
    rec.event().inflight = admission.inflight();

    // 6. screen the request (a refusal drops the admission, which settles it)
    let safety = screen_request(state, rec, &key, route.endpoint, &parsed).await?;

    // 7–9. forward (screening the response), relay, account
    forward::forward(
        state,
        rec,
        forward::Call {
            route,
            model,
            parsed,
            upstream,
            body,
            admission,
            accept: parts.headers.get(header::ACCEPT).cloned(),
            openai_beta: parts.headers.get("openai-beta").cloned(),
            safety,
        },
    )
    .await
}

/// The screen-request stage: the prompt under the key's profile, then the enforce-mode
/// classifiers; a block refuses the request with `content_policy_violation` before any
/// upstream call. Verdicts (never the prompt, unless the profile keeps evidence) go on the
/// event. Flag-mode classifiers start here and run alongside the upstream call.
async fn screen_request(
    state: &Arc<AppState>,
    rec: &mut Recorder,
    key: &CachedKey,
    endpoint: Endpoint,
    parsed: &ParsedRequest,
) -> Result<Option<crate::safety::RequestSafety>, ProxyError> {
    let Some(stage) = &state.safety else {
        return Ok(None);
    };
    let Some(kind) = crate::safety::input_kind(endpoint) else {
        return Ok(None);
    };
    let (profile, known) = stage.profile_for(
        &key.record.tenant,
        key.record.scope.policy_profile.as_deref(),
        kind,
    );
    if !known {
        tracing::warn!(
            key_id = key.record.id.as_str(),
            "key names an unknown policy profile; screening with its tenant's"
        );
    }
    let text: Arc<str> = Arc::from(parsed.prompt_text.as_str());
    let mut verdict = if text.is_empty() {
        stormwall_safety::Verdict::allow(kind)
    } else {
        stage
            .analyze(Arc::clone(&text))
            .await
            .decide(kind, &profile)
    };
    let mut notes = Vec::new();
    let mut fail_closed = false;
    if !verdict.is_blocked() && !text.is_empty() {
        fail_closed = stage
            .enforce(
                &state.client,
                &state.metrics,
                &text,
                &mut verdict,
                &profile,
                &mut notes,
            )
            .await;
    }
    let input = stormwall_types::SafetyStage::Input;
    crate::safety::count(&state.metrics, input, &verdict);
    let e = rec.event();
    e.safety
        .extend(crate::safety::record(&verdict, input, &text, 0, &profile));
    e.safety.extend(notes);
    if verdict.is_blocked() || fail_closed {
        return Err(deny(rec, RejectReason::ContentPolicy));
    }
    let pending = if text.is_empty() {
        None
    } else {
        stage.spawn_flag(
            &state.client,
            Arc::clone(&state.metrics.safety),
            text,
            verdict,
            Arc::clone(&profile),
        )
    };
    Ok(Some(crate::safety::RequestSafety {
        stage: Arc::clone(stage),
        profile,
        kind,
        pending,
    }))
}

/// Handles a signed leaked-key report (see [`crate::leak_report`]).
async fn leak_report(
    state: &Arc<AppState>,
    rec: &mut Recorder,
    verifier: &crate::leak_report::ReportVerifier,
    headers: &http::HeaderMap,
    body: Incoming,
) -> Result<Response<ProxyBody>, ProxyError> {
    use crate::leak_report::{self as lr, ReportError};
    let limits = crate::config::LimitsConfig {
        max_request_body_bytes: lr::MAX_REPORT_BYTES,
        ..state.limits.clone()
    };
    let bytes = forward::read_request_body(body, &limits).await?;
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let refuse = |rec: &mut Recorder, status: http::StatusCode, err: ReportError| {
        rec.event()
            .deny(if status == http::StatusCode::UNAUTHORIZED {
                RejectReason::UnknownKey
            } else {
                RejectReason::BadRequest
            });
        let code = if status == http::StatusCode::UNAUTHORIZED {
            "invalid_signature"
        } else {
            "invalid_request"
        };
        let mut resp = json_response(
            status,
            crate::error::error_body(&err.to_string(), "invalid_request_error", code),
        );
        set_request_id(&mut resp, rec.id());
        rec.event().error_code = Some(code.to_owned());
        rec.take().finish(status.as_u16());
        Ok(resp)
    };
    let reporter = match verifier.verify(
        header(lr::KEY_ID_HEADER),
        header(lr::SIGNATURE_HEADER),
        &bytes,
    ) {
        Ok(r) => r,
        Err(e) => return refuse(rec, http::StatusCode::UNAUTHORIZED, e),
    };
    let tokens = match lr::parse_report(&bytes) {
        Ok(t) => t,
        Err(e) => return refuse(rec, http::StatusCode::BAD_REQUEST, e),
    };
    let report_event = rec.id().to_owned();
    let labels = lr::handle_report(state, &reporter, &report_event, tokens).await;
    let body = serde_json::to_vec(&labels).map_err(|_| ProxyError::BodyUnreadable)?;
    let mut resp = json_response(http::StatusCode::OK, Bytes::from(body));
    set_request_id(&mut resp, rec.id());
    rec.take().finish(200);
    Ok(resp)
}

/// Admits a request locally and, with shared counters, across replicas.
async fn admit_request(
    state: &AppState,
    key: &CachedKey,
    demand: Demand,
) -> Result<admit::Grant, ProxyError> {
    static NO_LIMITS: std::sync::LazyLock<stormwall_types::KeyScope> =
        std::sync::LazyLock::new(Default::default);
    let scope = &key.record.scope;
    match &state.counters {
        None => Ok(admit::Grant {
            local: admit::admit(&key.state, scope, demand, state.clock)?,
            shared: None,
        }),
        Some((counters, settler)) => {
            // The shared counters enforce the limits; the local admission only counts.
            let shared = crate::shared_admit::admit(
                counters.as_ref(),
                settler,
                &key.record.id,
                scope,
                demand,
            )
            .await?;
            Ok(admit::Grant {
                local: admit::admit(&key.state, &NO_LIMITS, demand, state.clock)?,
                shared: Some(shared),
            })
        }
    }
}

/// Why authentication failed, and whether the key is a tripwire worth capturing.
struct AuthFailure {
    reason: RejectReason,
    tripwire: bool,
}

impl AuthFailure {
    fn plain(reason: RejectReason) -> Self {
        Self {
            reason,
            tripwire: false,
        }
    }
}

/// The key a client presented: `Authorization: Bearer` first, then Azure's `api-key`.
fn presented_key(headers: &http::HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            return Some(v[7..].trim());
        }
    }
    headers
        .get("api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
}

/// Finds and checks the caller's key. A malformed key never reaches the cache or store.
fn authenticate(
    state: &AppState,
    headers: &http::HeaderMap,
    rec: &mut Recorder,
) -> Result<Arc<CachedKey>, AuthFailure> {
    let Some(presented) = presented_key(headers) else {
        return Err(AuthFailure::plain(RejectReason::MissingKey));
    };
    if key::validate(presented).is_err() {
        return Err(AuthFailure::plain(RejectReason::MalformedKey));
    }
    let id = key::id_of(presented).unwrap_or_default();
    let event = rec.event();
    event.key_last4 = presented.get(presented.len() - 4..).map(str::to_owned);
    event.key_id = stormwall_types::KeyId::new(id).ok();
    // Past the bound, a key revoked meanwhile on another replica might still be cached.
    if state.keys.is_stale(state.key_max_stale_secs) {
        return Err(AuthFailure::plain(RejectReason::KeysUnverified));
    }
    let Some(cached) = state.keys.get(id) else {
        return Err(AuthFailure::plain(RejectReason::UnknownKey));
    };
    // Constant-time: the timing of a wrong secret must not say how much of it was right.
    if !KeyHash::of(presented).ct_eq(&cached.record.hash) {
        return Err(AuthFailure::plain(RejectReason::UnknownKey));
    }
    event.tenant = Some(cached.record.tenant.clone());
    event.key_kind = Some(cached.record.kind);
    match cached.record.usable_at(time::OffsetDateTime::now_utc()) {
        Ok(()) => Ok(cached),
        Err(refusal) => {
            let (reason, tripwire) = match refusal {
                KeyRefusal::Canary => (RejectReason::CanaryKey, true),
                KeyRefusal::Revoked => (RejectReason::RevokedKey, true),
                KeyRefusal::Suspended => (RejectReason::SuspendedKey, false),
                KeyRefusal::Expired => (RejectReason::ExpiredKey, false),
                KeyRefusal::NotYetValid => (RejectReason::NotYetValidKey, false),
            };
            if tripwire {
                tracing::warn!(
                    key_id = %id,
                    reason = reason.as_str(),
                    source_ip = %event.source_ip,
                    "tripwire key used"
                );
            }
            Err(AuthFailure { reason, tripwire })
        }
    }
}

async fn capture_tripwire(state: &AppState, rec: &mut Recorder, route: &Route, body: Incoming) {
    if route.endpoint == Endpoint::Models {
        return;
    }
    if let Ok(bytes) = forward::read_request_body(body, &state.limits).await
        && let Ok(parsed) = request::parse(&bytes, route.endpoint, &state.digester)
    {
        rec.event().model = route.deployment.clone().or_else(|| parsed.model.clone());
        parsed.note_into(rec.event());
    }
}

fn note_route(rec: &mut Recorder, route: &Route) {
    let e = rec.event();
    e.set_endpoint(route.endpoint);
    e.flavor = Some(route.flavor);
    e.api_version = route.api_version.clone();
}

/// Rule ids of credentials a body contains (a leaked key pasted into a prompt, or a model
/// echoing one), deduplicated; the secrets themselves are never kept.
pub fn credentials_in(state: &AppState, body: &[u8]) -> Vec<String> {
    let Some(matcher) = &state.secrets else {
        return Vec::new();
    };
    let mut ids: Vec<String> = matcher
        .find(body)
        .iter()
        .map(|m| m.rule().id().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Sets `x-request-id` (the event id) on a response.
pub fn set_request_id(resp: &mut Response<ProxyBody>, id: &str) {
    if let Ok(v) = HeaderValue::from_str(id) {
        resp.headers_mut().insert("x-request-id", v);
    }
}

/// A JSON response with the gateway's standard headers.
pub fn json_response(status: http::StatusCode, body: Bytes) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Whether a string looks like a Stormwall key at all (used to keep tokens out of logs).
pub fn looks_like_key(s: &str) -> bool {
    s.starts_with(KEY_PREFIX)
}
