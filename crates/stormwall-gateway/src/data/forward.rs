//! The forward stage: send an admitted request to its upstream (or the built-in mock), with
//! the gateway's own provider credential, and hand the answer to [`relay`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use stormwall_mock as mock;

use super::DataPlane;
use crate::data::admit::Grant;
use crate::data::body::ProxyBody;
use crate::data::conn::UpstreamBody;
use crate::data::keycache::CachedKey;
use crate::data::recorder::Recorder;
use crate::data::relay;
use crate::data::request::ParsedRequest;
use crate::data::route::Route;
use crate::error::ProxyError;
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

/// What came back from upstream, before relaying.
pub struct UpstreamReply {
    /// Status.
    pub status: StatusCode,
    /// `Content-Type`.
    pub content_type: Option<HeaderValue>,
    /// `Retry-After`.
    pub retry_after: Option<HeaderValue>,
    /// The body, as it arrives.
    pub body: ReplyBody,
}

/// An upstream body: a real one, or the built-in mock's.
pub enum ReplyBody {
    /// A real upstream response body.
    Incoming(UpstreamBody),
    /// A whole body (the mock).
    Full(Bytes),
    /// Pre-built SSE events (the mock).
    Events(VecDeque<Bytes>),
}

/// Sends an admitted request upstream (or to the built-in mock) and hands the answer to
/// the relay stage. A refusal of the gateway's own upstream credential never reaches the
/// client: its body may echo part of it.
pub async fn forward(
    state: &Arc<DataPlane>,
    rec: &mut Recorder,
    call: Call,
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
        return Err(ProxyError::UpstreamAuth);
    }
    relay::relay(state, rec, call, reply).await
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
    let resp = match tokio::time::timeout(first_byte, state.upstreams.send(req)).await {
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
