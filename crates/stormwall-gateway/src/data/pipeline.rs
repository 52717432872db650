//! The request pipeline, in the order a request meets it — one module per stage:
//!
//! [`route`](crate::data::route) → [`authenticate`](crate::data::authenticate) → authorize
//! (here, from the key's scope) → read body ([`request`](crate::data::request)) →
//! [`admit`](crate::data::admit) → [`screen`](crate::data::screen) the request →
//! [`forward`](crate::data::forward) → [`relay`](crate::data::relay) (screening the answer)
//! → [`account`](crate::data::account) → [`recorder`](crate::data::recorder) (the event).
//!
//! This file only calls the stages in order, so the life of a request reads top to bottom.
//! Every path ends in exactly one event (see [`Recorder`]), and every refusal is recorded on
//! it once, by [`answer`].

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Response, header};
use hyper::body::Incoming;
use stormwall_types::{Endpoint, RejectReason};

use super::DataPlane;
use crate::data::admit::{self, DEFAULT_OUTPUT_RESERVE_TOKENS, Demand};
use crate::data::body::ProxyBody;
use crate::data::forward;
use crate::data::keycache::CachedKey;
use crate::data::recorder::Recorder;
use crate::data::request;
use crate::data::route::{self, Route};
use crate::data::{authenticate, models, screen};
use crate::error::{ProxyError, into_response};
use crate::http::set_request_id;

/// Handles one proxy request. Never fails: errors become OpenAI-shaped responses.
/// `tls` is the connection's ClientHello fingerprint when the gateway terminated TLS.
pub async fn handle(
    state: Arc<DataPlane>,
    req: Request<Incoming>,
    peer: SocketAddr,
    tls: Option<&str>,
) -> Response<ProxyBody> {
    let mut rec = Recorder::start(
        &state,
        req.method().as_str(),
        req.uri().path(),
        req.headers(),
        peer,
    );
    if let Some(fp) = tls {
        rec.event().tls_fingerprint = Some(fp.to_owned());
    }
    let result = proxy(&state, &mut rec, req).await;
    let mut resp = answer(rec, result);
    // A whole answer waits for its event here rather than in the body, so its headers and
    // body still leave together.
    resp.body_mut().settle().await;
    resp
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
            let durable = rec.fail(&err, status);
            resp.map(|b| b.after(durable))
        }
    }
}

async fn proxy(
    state: &Arc<DataPlane>,
    rec: &mut Recorder,
    req: Request<Incoming>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (parts, body) = req.into_parts();

    // 0. the journal: at its bound under fail_closed, no request is served unrecorded
    if state.journal.as_ref().is_some_and(|j| j.refuses_requests()) {
        return Err(ProxyError::JournalFull);
    }

    // 1. route
    let mut route = route::classify(&parts.method, parts.uri.path(), parts.uri.query())
        .ok_or_else(|| ProxyError::reject(RejectReason::NotFound))?;
    if route.api_version_error == Some(route::ApiVersionError::Missing)
        && let Some(v) = &state.azure_default_api_version
    {
        route.api_version = Some(v.clone());
        route.api_version_error = None;
    }
    note_route(rec, &route);
    if let Some(e) = route.api_version_error {
        return Err(ProxyError::ApiVersion(e));
    }

    // 2. authenticate
    let key = match authenticate::authenticate(state, &parts.headers, rec) {
        Ok(key) => key,
        Err(authenticate::AuthFailure { reason, tripwire }) => {
            if tripwire {
                // A revoked or canary key in use is intelligence: capture what was asked
                // (digests only), then refuse exactly like an unknown key.
                authenticate::capture_tripwire(state, rec, &route, body).await;
            }
            return Err(ProxyError::reject(reason));
        }
    };
    let scope = &key.record.scope;

    // 3. authorize (what can be decided before reading the body)
    if !scope.allows_endpoint(route.endpoint) {
        return Err(ProxyError::reject(RejectReason::EndpointNotAllowed));
    }
    if !scope.allows_ip(rec.event().source_ip) {
        return Err(ProxyError::reject(RejectReason::NetworkNotAllowed));
    }
    if route.endpoint == Endpoint::Models {
        return match &route.model {
            None => Ok(models::list_models(state, rec, &key)),
            Some(id) => models::retrieve_model(state, rec, &key, id),
        };
    }

    // 4. read and parse the body
    let body = crate::http::read_request_body(body, &state.limits).await?;
    let parsed = request::parse(&body, route.endpoint, &state.digester).map_err(bad_request)?;
    parsed.note_into(rec.event());
    rec.event().prompt_credentials = credentials_in(state, &body);
    rec.event().safety.extend(parsed.roleplay_verdict());
    let model = route
        .deployment
        .clone()
        .or_else(|| parsed.model.clone())
        .ok_or_else(|| bad_request(request::BodyError::MissingModel))?;
    rec.event().model = Some(model.clone());
    if !scope.allows_model(&model) {
        return Err(ProxyError::reject(RejectReason::ModelNotAllowed));
    }
    let upstream = state
        .router
        .route(&model)
        .cloned()
        .ok_or_else(|| ProxyError::reject(RejectReason::NoRoute))?;
    parsed
        .check_counts(route.endpoint, &model)
        .map_err(bad_request)?;

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
    let admission = admit_request(state, &key, demand).await?;
    rec.event().inflight = admission.inflight();

    // 6. screen the request (a refusal drops the admission, which settles it)
    let safety = screen::screen_request(state, rec, &key, route.endpoint, &parsed).await?;

    // 7–9. forward, then relay (screening the answer) and account
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
fn bad_request(e: request::BodyError) -> ProxyError {
    ProxyError::Rejected {
        reason: RejectReason::BadRequest,
        limits: None,
        detail: Some(e.message()),
    }
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
