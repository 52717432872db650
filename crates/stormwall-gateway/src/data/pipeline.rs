//! The request pipeline, in the order a request meets it:
//!
//! route → authenticate → authorize → read body → admit → forward → relay → account
//!
//! Each stage is a small function; this file only calls them in order, so the life of a
//! request reads top to bottom. Every path ends in exactly one event (see [`Recorder`]).

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response, header};
use hyper::body::Incoming;
use stormwall_types::key::{self, KEY_PREFIX};
use stormwall_types::record::KeyRefusal;
use stormwall_types::{Endpoint, KeyHash, RejectReason};

use super::DataPlane;
use crate::data::admit::{self, DEFAULT_OUTPUT_RESERVE_TOKENS, Demand};
use crate::data::body::ProxyBody;
use crate::data::forward;
use crate::data::keycache::CachedKey;
use crate::data::recorder::{Recorder, deny};
use crate::data::request::{self, ParsedRequest};
use crate::data::route::{self, Route};
use crate::error::{ProxyError, into_response};
use crate::http::set_request_id;

/// Handles one proxy request. Never fails: errors become OpenAI-shaped responses.
pub async fn handle(
    state: Arc<DataPlane>,
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
    answer(rec, result)
}

/// The response for a stage's result: an error becomes its OpenAI-shaped answer, recorded on
/// the event with the status the client gets.
pub fn answer(
    rec: Recorder,
    result: Result<Response<ProxyBody>, ProxyError>,
) -> Response<ProxyBody> {
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
    state: &Arc<DataPlane>,
    rec: &mut Recorder,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (parts, body) = req.into_parts();

    // 1. route
    let mut route = route::classify(&parts.method, parts.uri.path(), parts.uri.query())
        .ok_or_else(|| deny(rec, RejectReason::NotFound))?;
    if route.api_version_error == Some(route::ApiVersionError::Missing)
        && let Some(v) = &state.azure_default_api_version
    {
        route.api_version = Some(v.clone());
        route.api_version_error = None;
    }
    note_route(rec, &route);
    if let Some(e) = route.api_version_error {
        rec.event().deny(RejectReason::BadRequest);
        return Err(ProxyError::ApiVersion(e));
    }

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
        return match &route.model {
            None => Ok(forward::list_models(state, rec, &key)),
            Some(id) => forward::retrieve_model(state, rec, &key, id),
        };
    }

    // 4. read and parse the body
    let body = forward::read_request_body(body, &state.limits).await?;
    let parsed =
        request::parse(&body, route.endpoint, &state.digester).map_err(|e| bad_request(rec, e))?;
    parsed.note_into(rec.event());
    rec.event().prompt_credentials = credentials_in(state, &body);
    rec.event().safety.extend(parsed.roleplay_verdict());
    let model = route
        .deployment
        .clone()
        .or_else(|| parsed.model.clone())
        .ok_or_else(|| bad_request(rec, request::BodyError::MissingModel))?;
    rec.event().model = Some(model.clone());
    if !scope.allows_model(&model) {
        return Err(deny(rec, RejectReason::ModelNotAllowed));
    }
    let upstream = state
        .router
        .route(&model)
        .cloned()
        .ok_or_else(|| deny(rec, RejectReason::NoRoute))?;
    parsed
        .check_counts(route.endpoint, &model)
        .map_err(|e| bad_request(rec, e))?;

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
            key,
        },
    )
    .await
}

/// Refuses a body the gateway cannot proxy: 400 with the error's fixed message.
fn bad_request(rec: &mut Recorder, e: request::BodyError) -> ProxyError {
    rec.event().deny(RejectReason::BadRequest);
    ProxyError::Rejected {
        reason: RejectReason::BadRequest,
        limits: None,
        detail: Some(e.message()),
    }
}

/// The screen-request stage: the prompt under the key's profile, then the enforce-mode
/// classifiers; a block refuses the request with `content_policy_violation` before any
/// upstream call. Verdicts (never the prompt, unless the profile keeps evidence) go on the
/// event. Flag-mode classifiers start here and run alongside the upstream call.
async fn screen_request(
    state: &Arc<DataPlane>,
    rec: &mut Recorder,
    key: &CachedKey,
    endpoint: Endpoint,
    parsed: &ParsedRequest,
) -> Result<Option<crate::data::safety::RequestSafety>, ProxyError> {
    let Some(stage) = &state.safety else {
        return Ok(None);
    };
    let Some(kind) = crate::data::safety::input_kind(endpoint) else {
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
    crate::data::safety::count(&state.metrics, input, &verdict);
    let e = rec.event();
    e.safety.extend(crate::data::safety::record(
        &verdict, input, &text, 0, &profile,
    ));
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
    Ok(Some(crate::data::safety::RequestSafety {
        stage: Arc::clone(stage),
        profile,
        kind,
        pending,
    }))
}

/// Admits a request locally and, with shared counters, across replicas.
async fn admit_request(
    state: &DataPlane,
    key: &CachedKey,
    demand: Demand,
) -> Result<admit::Grant, ProxyError> {
    let scope = &key.record.scope;
    match &state.counters {
        None => Ok(admit::Grant {
            local: admit::admit(&key.state, scope, demand, state.clock)?,
            shared: None,
        }),
        Some((counters, settler)) => {
            // The shared counters enforce the limits; the local admission only counts.
            let shared = crate::data::shared_admit::admit(
                counters.as_ref(),
                settler,
                &key.record.id,
                scope,
                demand,
            )
            .await?;
            Ok(admit::Grant {
                local: admit::count(&key.state, state.clock),
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

/// The keys a client presented: the one that authenticates (`Authorization: Bearer` first,
/// then Azure's `api-key`), and the `api-key` too when both headers carry one.
fn presented_keys(headers: &http::HeaderMap) -> (Option<&str>, Option<&str>) {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer "))
        .map(|v| v[7..].trim());
    let api_key = headers
        .get("api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    match bearer {
        Some(b) => (Some(b), api_key.filter(|a| *a != b)),
        None => (api_key, None),
    }
}

/// Finds and checks the caller's key, and the second key when both headers carry one.
fn authenticate(
    state: &DataPlane,
    headers: &http::HeaderMap,
    rec: &mut Recorder,
) -> Result<Arc<CachedKey>, AuthFailure> {
    let (presented, other) = presented_keys(headers);
    let Some(presented) = presented else {
        return Err(AuthFailure::plain(RejectReason::MissingKey));
    };
    let first = authenticate_key(state, presented, rec);
    match other {
        // Not a Stormwall key (or none): nothing more to look at.
        Some(other) if key::validate(other).is_ok() => {
            check_other_key(state, rec, first, presented, other)
        }
        _ => first,
    }
}

/// The cached key a presented string is, secret checked; `None` for a malformed key.
fn verified(state: &DataPlane, presented: &str) -> Option<Arc<CachedKey>> {
    key::validate(presented).ok()?;
    let cached = state.keys.get(key::id_of(presented)?)?;
    KeyHash::of(presented)
        .ct_eq(&cached.record.hash)
        .then_some(cached)
}

/// Why a key is a tripwire (canary or revoked), if it is one.
fn tripwire_reason(cached: &CachedKey) -> Option<RejectReason> {
    match cached.record.usable_at(time::OffsetDateTime::now_utc()) {
        Err(KeyRefusal::Canary) => Some(RejectReason::CanaryKey),
        Err(KeyRefusal::Revoked) => Some(RejectReason::RevokedKey),
        _ => None,
    }
}

/// A request carrying a Stormwall key in both `Authorization` and `api-key`. Only the first
/// authenticates, but a tripwire in the other header must not go unseen: a client holding a
/// canary or a revoked key is using harvested keys, whatever else it sends. Such a request
/// is recorded as the tripwire's use (its key id, kind and tenant, so detection raises H1 or
/// D1 on it) with the genuine key noted in `key.other_id`, and refused with the same 401 as
/// an unknown key. Refusing is the safer choice: serving it would let a harvester test a
/// batch of stolen keys at once and learn which works, and the 401 is the answer it would
/// get with the tripwire alone — it learns nothing about either key.
fn check_other_key(
    state: &DataPlane,
    rec: &mut Recorder,
    first: Result<Arc<CachedKey>, AuthFailure>,
    presented: &str,
    other: &str,
) -> Result<Arc<CachedKey>, AuthFailure> {
    if matches!(
        first,
        Err(AuthFailure {
            reason: RejectReason::KeysUnverified,
            ..
        })
    ) {
        return first;
    }
    let Some(second) = verified(state, other) else {
        return first;
    };
    let second_trips = tripwire_reason(&second);
    if let Some(reason) = second_trips {
        tracing::warn!(
            key_id = second.record.id.as_str(),
            reason = reason.as_str(),
            source_ip = %rec.event().source_ip,
            "tripwire key used"
        );
    }
    if matches!(first, Err(AuthFailure { tripwire: true, .. })) {
        // Already the use of a tripwire: note the other key it came with.
        rec.event().other_key_id = Some(second.record.id.clone());
        return first;
    }
    let Some(reason) = second_trips else {
        return first;
    };
    let first_id = match &first {
        Ok(k) => Some(k.record.id.clone()),
        Err(_) => verified(state, presented).map(|k| k.record.id.clone()),
    };
    let e = rec.event();
    e.key_id = Some(second.record.id.clone());
    e.key_last4 = other.get(other.len() - 4..).map(str::to_owned);
    e.tenant = Some(second.record.tenant.to_string());
    e.key_kind = Some(second.record.kind);
    e.other_key_id = first_id;
    Err(AuthFailure {
        reason,
        tripwire: true,
    })
}

/// Checks one presented key. A malformed key never reaches the cache or store.
fn authenticate_key(
    state: &DataPlane,
    presented: &str,
    rec: &mut Recorder,
) -> Result<Arc<CachedKey>, AuthFailure> {
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
    event.tenant = Some(cached.record.tenant.to_string());
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

async fn capture_tripwire(state: &DataPlane, rec: &mut Recorder, route: &Route, body: Incoming) {
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
pub fn credentials_in(state: &DataPlane, body: &[u8]) -> Vec<String> {
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

/// Whether a string looks like a Stormwall key at all (used to keep tokens out of logs).
pub fn looks_like_key(s: &str) -> bool {
    s.starts_with(KEY_PREFIX)
}
