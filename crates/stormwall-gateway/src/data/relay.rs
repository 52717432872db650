//! The relay stage: the upstream's answer to the client — whole (read within its cap, then
//! screened), or chunk by chunk for streams (the transport in [`crate::data::body`], watched
//! by the request's [`StreamAccount`]: the stream guard and the accounting). Rate-limit
//! headers and the request id go on every answer.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Response, header};
use stormwall_types::RejectReason;

use super::DataPlane;
use crate::data::account::{Finisher, StreamAccount};
use crate::data::body::{ProxyBody, Relay, Source, usage_in_json};
use crate::data::forward::{Call, ReplyBody, UpstreamReply};
use crate::data::recorder::Recorder;
use crate::data::screen;
use crate::error::{ProxyError, apply_rate_limit_headers};
use crate::http::{ReadError, read_capped, set_request_id};

/// Relays an upstream answer to the client, screening it and settling the request.
pub async fn relay(
    state: &Arc<DataPlane>,
    rec: &mut Recorder,
    call: Call,
    reply: UpstreamReply,
) -> Result<Response<ProxyBody>, ProxyError> {
    let is_stream = reply
        .content_type
        .as_ref()
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    let success = reply.status.is_success();
    let info = call.admission.info();
    let id = rec.id().to_owned();
    let mut builder = Response::builder().status(reply.status);
    if let Some(ct) = &reply.content_type {
        builder = builder.header(header::CONTENT_TYPE, ct.clone());
    }
    if let Some(ra) = &reply.retry_after {
        builder = builder.header(header::RETRY_AFTER, ra.clone());
    }
    let idle = Duration::from_millis(state.limits.upstream_idle_timeout_ms);
    // A whole body is read before the request is handed to its finisher: a failed read is
    // the handler's error, recorded on the request's own event.
    let body = match reply.body {
        ReplyBody::Incoming(i) if is_stream => Answer::Stream(Source::Upstream(i)),
        ReplyBody::Events(q) if is_stream => Answer::Stream(Source::Events(q)),
        ReplyBody::Full(b) if is_stream => Answer::Stream(Source::Events(VecDeque::from([b]))),
        ReplyBody::Full(b) => Answer::Whole(b),
        ReplyBody::Events(q) => Answer::Whole(q.into_iter().flatten().collect::<Vec<u8>>().into()),
        ReplyBody::Incoming(i) => {
            match read_capped(i, state.limits.max_response_body_bytes, Some(idle)).await {
                Ok(b) => Answer::Whole(b),
                Err(ReadError::TooLarge) => return Err(ProxyError::UpstreamTooLarge),
                Err(ReadError::Idle) => return Err(ProxyError::UpstreamTimeout),
                Err(ReadError::Broken) => return Err(ProxyError::UpstreamUnavailable),
            }
        }
    };
    let mut resp = match body {
        Answer::Stream(source) => {
            let guard = call
                .safety
                .as_ref()
                .filter(|_| success)
                .and_then(crate::data::safety::RequestSafety::stream_guard);
            let stop = call.key.stop_watch();
            let finisher = Finisher::new(state, rec.take(), call, success, reply.status);
            let account = StreamAccount::new(finisher, guard);
            let mut relay = Relay::new(source, idle, Box::new(account)).with_stop(stop);
            if state.journal.is_some() {
                relay = relay.hold_done();
            }
            builder
                .header(header::CACHE_CONTROL, "no-cache")
                .body(ProxyBody::relay(relay))
                .map_err(|_| ProxyError::UpstreamUnavailable)?
        }
        Answer::Whole(body) => {
            let blocked = match call.safety.as_ref() {
                Some(s) if success && s.stage.screens_output() => {
                    screen::screen_output(state, rec, s, call.route.endpoint, &body).await
                }
                _ => false,
            };
            let (usage, response_model) = if success {
                usage_in_json(&body)
            } else {
                (None, None)
            };
            let mut finisher = Finisher::new(state, rec.take(), call, success, reply.status);
            // Images are charged for what the answer holds; the request's `n` only when
            // the answer cannot be read (nothing is charged for a failed call either way).
            if success && let Some(held) = images_in_json(&body) {
                finisher.images = Some(held);
            }
            if blocked {
                // The upstream was paid for the answer; the client gets an error instead.
                let err = ProxyError::reject(RejectReason::ContentPolicy);
                let resp = crate::error::into_response(&err);
                finisher.refuse(&err, resp.status());
                let durable = finisher.settle(usage, response_model, None);
                resp.map(|b| b.after(durable))
            } else {
                let durable = finisher.settle(usage, response_model, None);
                builder
                    .body(ProxyBody::full(body).after(durable))
                    .map_err(|_| ProxyError::UpstreamUnavailable)?
            }
        }
    };
    apply_rate_limit_headers(resp.headers_mut(), &info);
    set_request_id(&mut resp, &id);
    Ok(resp)
}

/// An answer as the relay passes it on.
enum Answer {
    /// Chunk by chunk.
    Stream(Source),
    /// Whole, already read.
    Whole(Bytes),
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
