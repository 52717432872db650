//! The forward, relay and account stages: send the request to its upstream (or the built-in
//! mock), relay the answer — whole, or chunk by chunk for streams — and settle tokens and
//! spend with what the upstream reports.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use stormwall_mock as mock;
use stormwall_types::StreamOutcome;

use super::DataPlane;
use crate::config::LimitsConfig;
use crate::data::admit::Grant;
use crate::data::body::{ProxyBody, Relay, Source, StreamEnd, Usage, usage_in_json};
use crate::data::keycache::CachedKey;
use crate::data::models;
use crate::data::recorder::Recorder;
use crate::data::request::ParsedRequest;
use crate::data::route::Route;
use crate::error::{ProxyError, apply_rate_limit_headers};
use crate::http::{ReadError, json_response, read_capped, set_request_id};
use crate::metrics::UpstreamLabels;
use crate::upstream::{self, Upstream};

/// Everything the forward stage needs about an admitted request.
pub struct Call {
    /// Route.
    pub route: Route,
    /// Routing model (or deployment) name.
    pub model: String,
    /// Parsed body fields.
    pub parsed: ParsedRequest,
    /// Upstream serving the model.
    pub upstream: Arc<Upstream>,
    /// Body as received.
    pub body: Bytes,
    /// The granted admission (settled when the response ends).
    pub admission: Grant,
    /// Client `Accept` header.
    pub accept: Option<HeaderValue>,
    /// Client `OpenAI-Beta` header.
    pub openai_beta: Option<HeaderValue>,
    /// The screened request's safety context (`None`: not screened).
    pub safety: Option<crate::data::safety::RequestSafety>,
    /// The key as authenticated (a stream watches it for suspension and revocation).
    pub key: Arc<CachedKey>,
}

/// Reads a request body within the size cap and read timeout.
pub async fn read_request_body(body: Incoming, limits: &LimitsConfig) -> Result<Bytes, ProxyError> {
    let deadline = Duration::from_secs(limits.body_read_timeout_secs);
    match tokio::time::timeout(
        deadline,
        read_capped(body, limits.max_request_body_bytes, None),
    )
    .await
    {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(ReadError::TooLarge)) => Err(ProxyError::BodyTooLarge),
        Ok(Err(_)) | Err(_) => Err(ProxyError::BodyUnreadable),
    }
}

/// Answers `GET /v1/models` locally with the models this key may use.
pub fn list_models(state: &DataPlane, rec: &mut Recorder, key: &CachedKey) -> Response<ProxyBody> {
    let allowed: Vec<&str> = state
        .router
        .models()
        .iter()
        .filter(|m| key.record.scope.allows_model(m))
        .map(String::as_str)
        .collect();
    let mut resp = json_response(StatusCode::OK, models::list_body(&allowed));
    set_request_id(&mut resp, rec.id());
    rec.take().finish(200);
    resp
}

/// Answers `GET /v1/models/{model}` locally: the model object when the routing table
/// serves it and the key may use it; otherwise the same 404 `model_not_found` for both,
/// so a key learns nothing about models outside its scope.
pub fn retrieve_model(
    state: &DataPlane,
    rec: &mut Recorder,
    key: &CachedKey,
    id: &str,
) -> Result<Response<ProxyBody>, ProxyError> {
    rec.event().model = Some(id.to_owned());
    if !key.record.scope.allows_model(id) || state.router.route(id).is_none() {
        return Err(crate::data::recorder::deny(
            rec,
            stormwall_types::RejectReason::NoRoute,
        ));
    }
    let body = models::object_body(id).map_err(|_| ProxyError::UpstreamUnavailable)?;
    let mut resp = json_response(StatusCode::OK, body);
    set_request_id(&mut resp, rec.id());
    rec.take().finish(200);
    Ok(resp)
}

/// What came back from upstream, before relaying.
struct UpstreamReply {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    retry_after: Option<HeaderValue>,
    body: ReplyBody,
}

enum ReplyBody {
    Incoming(Incoming),
    Full(Bytes),
    Events(VecDeque<Bytes>),
}

/// Sends an admitted request upstream and relays the answer.
pub async fn forward(
    state: &Arc<DataPlane>,
    rec: &mut Recorder,
    mut call: Call,
) -> Result<Response<ProxyBody>, ProxyError> {
    let up = &call.upstream;
    {
        let e = rec.event();
        e.upstream = Some(up.name.to_string());
        e.system = Some(up.system().to_owned());
    }
    let sent = Instant::now();
    let reply = match upstream::target(up, call.route.endpoint, &call.model, call.route.flavor) {
        None => mock_reply(&call),
        Some(Err(_)) => return Err(ProxyError::UpstreamUnavailable),
        Some(Ok(target)) => send(state, &call, target).await.inspect_err(|_| {
            state
                .metrics
                .upstream_errors
                .get_or_create(&UpstreamLabels {
                    upstream: Arc::clone(&up.name),
                })
                .inc();
        })?,
    };
    let ttfb = sent.elapsed();
    state
        .metrics
        .upstream_duration
        .get_or_create(&UpstreamLabels {
            upstream: Arc::clone(&up.name),
        })
        .observe(ttfb.as_secs_f64());
    rec.event().upstream_status = Some(reply.status.as_u16());
    rec.event().upstream_ttfb_ms = Some(ttfb.as_secs_f64() * 1e3);

    if matches!(
        reply.status,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
    ) {
        // The upstream refused *our* credential; its body may echo part of it.
        return Err(ProxyError::UpstreamAuth);
    }

    let is_stream = reply
        .content_type
        .as_ref()
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let mut builder = Response::builder().status(reply.status);
    if let Some(ct) = &reply.content_type {
        builder = builder.header(header::CONTENT_TYPE, ct.clone());
    }
    if let Some(ra) = &reply.retry_after {
        builder = builder.header(header::RETRY_AFTER, ra.clone());
    }
    let info = call.admission.info();
    let success = reply.status.is_success();

    let id = rec.id().to_owned();
    if is_stream {
        let source = match reply.body {
            ReplyBody::Incoming(i) => Source::Upstream(i),
            ReplyBody::Events(q) => Source::Events(q),
            ReplyBody::Full(b) => Source::Events(VecDeque::from([b])),
        };
        let guard = call
            .safety
            .as_ref()
            .filter(|_| success)
            .and_then(crate::data::safety::RequestSafety::stream_guard);
        let finisher = Finisher {
            state: Arc::clone(state),
            rec: rec.take(),
            admission: call.admission,
            model: call.model,
            images: call.parsed.images,
            estimated_input: call.parsed.estimated_input_tokens,
            success,
            status: reply.status.as_u16(),
            pending: call.safety.and_then(|s| s.pending),
        };
        let idle = Duration::from_millis(state.limits.upstream_idle_timeout_ms);
        let mut relay = Relay::new(
            source,
            idle,
            Box::new(move |end| finisher.stream_ended(end)),
        );
        if let Some(g) = guard {
            relay = relay.with_guard(g);
        }
        relay = relay.with_stop(call.key.stop_watch());
        let mut resp = builder
            .header(header::CACHE_CONTROL, "no-cache")
            .body(ProxyBody::relay(relay))
            .map_err(|_| ProxyError::UpstreamUnavailable)?;
        apply_rate_limit_headers(resp.headers_mut(), &info);
        set_request_id(&mut resp, &id);
        return Ok(resp);
    }

    let body = match reply.body {
        ReplyBody::Full(b) => b,
        ReplyBody::Events(q) => q.into_iter().flatten().collect::<Vec<u8>>().into(),
        ReplyBody::Incoming(i) => {
            let idle = Some(Duration::from_millis(state.limits.upstream_idle_timeout_ms));
            match read_capped(i, state.limits.max_response_body_bytes, idle).await {
                Ok(b) => b,
                Err(ReadError::TooLarge) => return Err(ProxyError::UpstreamTooLarge),
                Err(ReadError::Idle) => return Err(ProxyError::UpstreamTimeout),
                Err(ReadError::Broken) => return Err(ProxyError::UpstreamUnavailable),
            }
        }
    };
    let (usage, response_model) = if success {
        usage_in_json(&body)
    } else {
        (None, None)
    };
    // Images are charged for what the answer holds; the request's `n` only when the
    // answer cannot be read (settle charges nothing for a failed call either way).
    let images = match call.parsed.images {
        Some(requested) if success => Some(images_in_json(&body).unwrap_or(requested)),
        other => other,
    };
    let output_blocked = match &call.safety {
        Some(s) if success && s.stage.screens_output() => {
            screen_output(state, rec, s, call.route.endpoint, &body).await
        }
        _ => false,
    };
    let pending = call.safety.take().and_then(|s| s.pending);
    let mut finisher = Finisher {
        state: Arc::clone(state),
        rec: rec.take(),
        admission: call.admission,
        model: call.model,
        images,
        estimated_input: call.parsed.estimated_input_tokens,
        success,
        status: reply.status.as_u16(),
        pending,
    };
    if output_blocked {
        // The upstream was paid for the answer; the client gets an error instead of it.
        let err = crate::data::recorder::deny(
            &mut finisher.rec,
            stormwall_types::RejectReason::ContentPolicy,
        );
        let mut resp = crate::error::into_response(&err);
        finisher.rec.event().error_code = Some(crate::error::error_code(&err).to_owned());
        finisher.status = resp.status().as_u16();
        finisher.settle(usage, response_model, None);
        apply_rate_limit_headers(resp.headers_mut(), &info);
        set_request_id(&mut resp, &id);
        return Ok(resp);
    }
    finisher.settle(usage, response_model, None);
    let mut resp = builder
        .body(ProxyBody::full(body))
        .map_err(|_| ProxyError::UpstreamUnavailable)?;
    apply_rate_limit_headers(resp.headers_mut(), &info);
    set_request_id(&mut resp, &id);
    Ok(resp)
}

/// How many images an images answer holds (its `data` entries), when it parses as one.
fn images_in_json(body: &[u8]) -> Option<u32> {
    #[derive(serde::Deserialize)]
    struct Images {
        data: Vec<serde::de::IgnoredAny>,
    }
    let images: Images = serde_json::from_slice(body).ok()?;
    Some(u32::try_from(images.data.len()).unwrap_or(u32::MAX))
}

/// Settles a request when its response is complete.
struct Finisher {
    state: Arc<DataPlane>,
    rec: Recorder,
    admission: Grant,
    model: String,
    images: Option<u32>,
    estimated_input: u64,
    success: bool,
    status: u16,
    /// Flag-mode classifiers still annotating the event.
    pending: Option<tokio::task::JoinHandle<Vec<stormwall_types::SafetyVerdict>>>,
}

/// Screens a non-streamed answer (chat, completions and responses text; images'
/// `revised_prompt`) and records the verdicts; `true` when it must be withheld.
async fn screen_output(
    state: &Arc<DataPlane>,
    rec: &mut Recorder,
    s: &crate::data::safety::RequestSafety,
    endpoint: stormwall_types::Endpoint,
    body: &[u8],
) -> bool {
    let Some((text, kind)) = crate::data::safety::output_text(endpoint, body) else {
        return false;
    };
    let text: Arc<str> = text.into();
    let verdict = s
        .stage
        .analyze(Arc::clone(&text))
        .await
        .decide(kind, &s.profile);
    let output = stormwall_types::SafetyStage::Output;
    crate::data::safety::count(&state.metrics, output, &verdict);
    rec.event().safety.extend(crate::data::safety::record(
        &verdict, output, &text, 0, &s.profile,
    ));
    verdict.is_blocked()
}

impl Finisher {
    fn stream_ended(mut self, end: StreamEnd) {
        if let Some((verdict, notes)) = end.output_safety {
            let output = stormwall_types::SafetyStage::Output;
            crate::data::safety::count(&self.state.metrics, output, &verdict);
            self.rec.event().safety.extend(notes);
            if end.outcome == StreamOutcome::ContentBlocked {
                let err = crate::data::recorder::deny(
                    &mut self.rec,
                    stormwall_types::RejectReason::ContentPolicy,
                );
                self.rec.event().error_code = Some(crate::error::error_code(&err).to_owned());
            }
        }
        let usage = end.scanner.usage.or_else(|| {
            // No usage chunk (the client did not ask for one): count content events, about
            // one token each, so TPM and spend still move.
            Some(Usage {
                prompt_tokens: Some(self.estimated_input),
                completion_tokens: Some(end.scanner.data_events.saturating_sub(2)),
                ..Usage::default()
            })
            .filter(|_| self.success)
        });
        let model = end.scanner.model;
        self.settle(usage, model, Some(end.outcome));
    }

    fn settle(
        mut self,
        usage: Option<Usage>,
        response_model: Option<String>,
        outcome: Option<StreamOutcome>,
    ) {
        let input = usage.and_then(|u| u.input());
        let output = usage.and_then(|u| u.output());
        let images = if self.success {
            self.images.unwrap_or(0)
        } else {
            0
        };
        let cost = if self.success {
            self.state
                .pricing
                .cost(&self.model, input.unwrap_or(0), output.unwrap_or(0), images)
        } else {
            0.0
        };
        let total = match (input, output) {
            (None, None) => None,
            (i, o) => Some(i.unwrap_or(0) + o.unwrap_or(0)),
        };
        self.admission.settle(total, cost);
        let e = self.rec.event();
        e.input_tokens = input;
        e.output_tokens = output;
        e.cost_usd = cost;
        e.response_model = response_model;
        e.stream_outcome = outcome;
        if matches!(
            outcome,
            Some(StreamOutcome::UpstreamCut | StreamOutcome::IdleTimeout)
        ) {
            e.error_code = Some("upstream_stream_interrupted".to_owned());
        }
        // The request was admitted with a serving key, so the decision stays `allow`; the
        // outcome says the gateway cut it, and the code is what the client's stream ended with.
        if let Some(err) = outcome.and_then(crate::data::body::key_stopped_error) {
            e.error_code = Some(crate::error::error_code(&err).to_owned());
        }
        let status = if outcome == Some(StreamOutcome::ClientDisconnected) {
            crate::data::recorder::CLIENT_CLOSED
        } else {
            self.status
        };
        crate::data::safety::finish_event(self.rec, status, self.pending);
    }
}

fn mock_reply(call: &Call) -> UpstreamReply {
    let req = mock::MockRequest {
        endpoint: call.route.endpoint,
        model: &call.model,
        stream: call.parsed.stream,
        include_usage: call.parsed.include_usage,
        prompt_tokens: call.parsed.estimated_input_tokens,
        max_tokens: call.parsed.max_tokens,
        inputs: call.parsed.inputs,
        images: call.parsed.images.unwrap_or(1),
        base64: call.parsed.base64,
        dimensions: call.parsed.dimensions,
    };
    let reply = mock::respond(&req);
    UpstreamReply {
        status: StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK),
        content_type: Some(HeaderValue::from_static(reply.content_type)),
        retry_after: None,
        body: match reply.body {
            mock::MockBody::Full(b) => ReplyBody::Full(b),
            mock::MockBody::Sse(events) => ReplyBody::Events(events.into()),
        },
    }
}

async fn send(
    state: &DataPlane,
    call: &Call,
    target: upstream::Target,
) -> Result<UpstreamReply, ProxyError> {
    let body = match &target.set_model {
        Some(model) => set_model(&call.body, model).ok_or(ProxyError::reject(
            stormwall_types::RejectReason::BadRequest,
        ))?,
        None => call.body.clone(),
    };
    let mut req = Request::builder()
        .method(http::Method::POST)
        .uri(target.uri)
        .header(header::CONTENT_TYPE, "application/json")
        .header(
            header::USER_AGENT,
            concat!("stormwall/", env!("CARGO_PKG_VERSION")),
        )
        .header(target.auth.0, target.auth.1);
    if let Some(org) = target.organization {
        req = req.header("openai-organization", org);
    }
    if let Some(a) = &call.accept {
        req = req.header(header::ACCEPT, a.clone());
    }
    if let Some(b) = &call.openai_beta {
        req = req.header("openai-beta", b.clone());
    }
    let req = req
        .body(Full::new(body))
        .map_err(|_| ProxyError::UpstreamUnavailable)?;
    let first_byte = Duration::from_millis(state.limits.upstream_first_byte_timeout_ms);
    let resp = match tokio::time::timeout(first_byte, state.client.request(req)).await {
        Err(_) => return Err(ProxyError::UpstreamTimeout),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "upstream request failed");
            return Err(ProxyError::UpstreamUnavailable);
        }
        Ok(Ok(r)) => r,
    };
    let (parts, body) = resp.into_parts();
    Ok(UpstreamReply {
        status: parts.status,
        content_type: parts.headers.get(header::CONTENT_TYPE).cloned(),
        retry_after: parts.headers.get(header::RETRY_AFTER).cloned(),
        body: ReplyBody::Incoming(body),
    })
}

/// Returns the body with `"model"` set (Azure-dialect clients name the deployment in the
/// path; OpenAI-compatible upstreams need it in the body).
fn set_model(body: &[u8], model: &str) -> Option<Bytes> {
    let mut map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    map.insert(
        "model".to_owned(),
        serde_json::Value::String(model.to_owned()),
    );
    serde_json::to_vec(&map).ok().map(Bytes::from)
}
