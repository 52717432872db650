//! Every way a proxied request can fail, and the one function that turns a failure into an
//! OpenAI-shaped HTTP response (`{"error":{"message","type","code"}}`), so the official SDKs
//! raise the right exception class. Nothing here logs, and no message carries a key or
//! prompt text: the event records the details.

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use stormwall_types::{RejectReason, StreamOutcome};

use crate::data::body::ProxyBody;
use crate::data::route::ApiVersionError;

/// Rate-limit figures for `x-ratelimit-*` and `Retry-After` headers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateLimitInfo {
    /// Requests per minute allowed.
    pub limit_requests: Option<u32>,
    /// Requests left in the current window.
    pub remaining_requests: Option<u32>,
    /// Seconds until the request window has room again.
    pub reset_requests_secs: Option<f64>,
    /// Tokens per minute allowed.
    pub limit_tokens: Option<u64>,
    /// Tokens left in the current window.
    pub remaining_tokens: Option<u64>,
    /// Seconds until the token window has room again.
    pub reset_tokens_secs: Option<f64>,
    /// Seconds the client should wait (`Retry-After`).
    pub retry_after_secs: Option<u64>,
    /// Retrying the same request cannot succeed soon (`x-should-retry: false`).
    pub never_fits: bool,
}

/// A failure of the proxy path, with the side it belongs to.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The gateway refused the request.
    #[error("rejected: {}", .reason.as_str())]
    Rejected {
        /// Why.
        reason: RejectReason,
        /// Limits to report, for 429s.
        limits: Option<RateLimitInfo>,
        /// A safe, fixed detail for the client (never user input).
        detail: Option<&'static str>,
    },
    /// The upstream could not be reached or broke before answering.
    #[error("upstream unavailable")]
    UpstreamUnavailable,
    /// The upstream took longer than the first-byte timeout.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// The upstream refused the gateway's own credential.
    #[error("upstream rejected the gateway's credential")]
    UpstreamAuth,
    /// The upstream's response exceeded the size cap.
    #[error("upstream response too large")]
    UpstreamTooLarge,
    /// The client's body exceeded the size cap.
    #[error("request body too large")]
    BodyTooLarge,
    /// A leaked-key report was refused: its signature (401 `invalid_signature`) or its body
    /// (400 `invalid_request`).
    #[error("leaked-key report refused: {message}")]
    ReportRefused {
        /// The signature, not the body, was at fault.
        bad_signature: bool,
        /// A fixed message for the reporter.
        message: &'static str,
    },
    /// The client's body took too long to arrive or broke.
    #[error("request body could not be read")]
    BodyUnreadable,
    /// An Azure route without a usable `api-version`.
    #[error("azure api-version missing or malformed")]
    ApiVersion(crate::data::route::ApiVersionError),
    /// The event journal is at its bound under `fail_closed`: no request is served that
    /// could not be recorded.
    #[error("event journal at its bound")]
    JournalFull,
}

impl ProxyError {
    /// Shorthand for a rejection without limit figures.
    pub fn reject(reason: RejectReason) -> Self {
        ProxyError::Rejected {
            reason,
            limits: None,
            detail: None,
        }
    }

    /// The rejection reason recorded on the event, when the gateway refused.
    pub fn reject_reason(&self) -> Option<RejectReason> {
        match self {
            ProxyError::Rejected { reason, .. } => Some(*reason),
            ProxyError::ReportRefused {
                bad_signature: true,
                ..
            } => Some(RejectReason::UnknownKey),
            ProxyError::ReportRefused { .. } => Some(RejectReason::BadRequest),
            ProxyError::BodyTooLarge | ProxyError::BodyUnreadable | ProxyError::ApiVersion(_) => {
                Some(RejectReason::BadRequest)
            }
            _ => None,
        }
    }
}

/// The message the client sees for a refusal (a fixed text: never user input).
fn rejection_message(reason: RejectReason, detail: Option<&'static str>) -> &'static str {
    use RejectReason as R;
    const AUTH: &str =
        "Incorrect API key provided. You can obtain a new key from your gateway operator.";
    match reason {
        R::MissingKey => {
            "You didn't provide an API key. Send it as 'Authorization: Bearer KEY' or in the 'api-key' header."
        }
        // One body for every other authentication failure (see `RejectReason::openai_error`).
        R::MalformedKey
        | R::UnknownKey
        | R::RevokedKey
        | R::CanaryKey
        | R::SuspendedKey
        | R::ExpiredKey
        | R::NotYetValidKey => AUTH,
        R::ModelNotAllowed => "This API key is not allowed to use the requested model.",
        R::EndpointNotAllowed => "This API key is not allowed to call this endpoint.",
        R::NetworkNotAllowed => "This API key may not be used from your network.",
        R::RateLimitRequests => {
            "Rate limit reached for requests per minute on this key. Retry after the time in the Retry-After header."
        }
        R::RateLimitTokens => {
            "Rate limit reached for tokens per minute on this key. Retry after the time in the Retry-After header."
        }
        R::ConcurrencyLimit => "Too many requests in flight on this key.",
        R::BudgetExhausted => "This key has spent its budget for the current period.",
        R::BadRequest => detail.unwrap_or("The request body is not valid JSON for this endpoint."),
        R::NotFound => "Unknown request URL or method.",
        R::NoRoute => "The model does not exist or is not served by this gateway.",
        R::ContentPolicy => "Your request was rejected by the content policy.",
        R::KeysUnverified => "The gateway cannot verify API keys right now. Please retry later.",
    }
}

/// Status, `type` and `code` for an error, and the message the client sees.
fn describe(err: &ProxyError) -> (StatusCode, &'static str, &'static str, &'static str) {
    match err {
        ProxyError::Rejected { reason, detail, .. } => {
            let e = reason.openai_error();
            let status =
                StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (
                status,
                e.error_type,
                e.code,
                rejection_message(*reason, *detail),
            )
        }
        ProxyError::ReportRefused {
            bad_signature,
            message,
        } => {
            if *bad_signature {
                let status = StatusCode::UNAUTHORIZED;
                (
                    status,
                    "invalid_request_error",
                    "invalid_signature",
                    *message,
                )
            } else {
                let status = StatusCode::BAD_REQUEST;
                (status, "invalid_request_error", "invalid_request", *message)
            }
        }
        ProxyError::UpstreamUnavailable => (
            StatusCode::BAD_GATEWAY,
            "api_error",
            "upstream_unavailable",
            "The upstream service could not be reached.",
        ),
        ProxyError::UpstreamTimeout => (
            StatusCode::GATEWAY_TIMEOUT,
            "api_error",
            "upstream_timeout",
            "The upstream service did not answer in time.",
        ),
        ProxyError::UpstreamAuth => (
            StatusCode::BAD_GATEWAY,
            "api_error",
            "upstream_auth_failed",
            "The gateway's upstream credential was refused; contact the gateway operator.",
        ),
        ProxyError::UpstreamTooLarge => (
            StatusCode::BAD_GATEWAY,
            "api_error",
            "upstream_response_too_large",
            "The upstream response exceeded the gateway's size limit.",
        ),
        ProxyError::BodyTooLarge => (
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request_error",
            "request_too_large",
            "The request body exceeds the gateway's size limit.",
        ),
        ProxyError::BodyUnreadable => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "invalid_request",
            "The request body could not be read.",
        ),
        ProxyError::JournalFull => (
            StatusCode::SERVICE_UNAVAILABLE,
            "api_error",
            "events_unrecordable",
            "The gateway cannot record requests right now. Please retry later.",
        ),
        // Azure's code and wording, in the OpenAI shape the SDKs parse.
        ProxyError::ApiVersion(ApiVersionError::Missing) => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "BadRequest",
            "Missing required query parameter: api-version (a dated version such as 2024-10-21).",
        ),
        ProxyError::ApiVersion(ApiVersionError::Malformed) => (
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "BadRequest",
            "API version not supported: api-version must be a date, YYYY-MM-DD, optionally followed by a suffix such as -preview.",
        ),
    }
}

/// The error's OpenAI `code`, as recorded on events.
pub fn error_code(err: &ProxyError) -> &'static str {
    describe(err).2
}

/// An OpenAI-shaped JSON error body.
pub fn error_body(message: &str, kind: &str, code: &str) -> Bytes {
    let v = serde_json::json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    Bytes::from(v.to_string())
}

/// The same error as one SSE event (`data: {...}`), for a stream that must end mid-way.
pub fn sse_error_event(err: &ProxyError) -> Bytes {
    let (_, kind, code, message) = describe(err);
    let body = error_body(message, kind, code);
    let mut ev = Vec::with_capacity(body.len() + 8);
    ev.extend_from_slice(b"data: ");
    ev.extend_from_slice(&body);
    ev.extend_from_slice(b"\n\n");
    Bytes::from(ev)
}

/// The error a stream cut because its key stopped ends with (and records), if it was.
pub fn key_stopped_error(outcome: StreamOutcome) -> Option<ProxyError> {
    let reason = match outcome {
        StreamOutcome::KeyRevoked => RejectReason::RevokedKey,
        StreamOutcome::KeySuspended => RejectReason::SuspendedKey,
        _ => return None,
    };
    Some(ProxyError::reject(reason))
}

/// The SSE event a stream ends with when it did not complete (`None` when it did, or when
/// the client left): every stream's error event is made here, beside the other error bodies.
pub fn stream_end_event(outcome: StreamOutcome) -> Option<Bytes> {
    if let Some(err) = key_stopped_error(outcome) {
        return Some(sse_error_event(&err));
    }
    let (message, kind, code, done) = match outcome {
        StreamOutcome::Completed | StreamOutcome::ClientDisconnected => return None,
        StreamOutcome::ContentBlocked => (
            "The response was stopped by the content policy.",
            "invalid_request_error",
            "content_policy_violation",
            true,
        ),
        StreamOutcome::IdleTimeout => (
            "The upstream stream ended unexpectedly.",
            "api_error",
            "upstream_timeout",
            false,
        ),
        _ => (
            "The upstream stream ended unexpectedly.",
            "api_error",
            "upstream_stream_interrupted",
            false,
        ),
    };
    let body = error_body(message, kind, code);
    let mut ev = Vec::with_capacity(body.len() + 24);
    ev.extend_from_slice(b"data: ");
    ev.extend_from_slice(&body);
    ev.extend_from_slice(b"\n\n");
    if done {
        // A content block is a clean end for the SDKs: they stop at `[DONE]`.
        ev.extend_from_slice(b"data: [DONE]\n\n");
    }
    Some(Bytes::from(ev))
}

/// Turns a proxy error into the client's response. The only place that does.
pub fn into_response(err: &ProxyError) -> Response<ProxyBody> {
    let (status, kind, code, message) = describe(err);
    let mut resp = Response::new(ProxyBody::full(error_body(message, kind, code)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let ProxyError::Rejected {
        limits: Some(info), ..
    } = err
    {
        apply_rate_limit_headers(resp.headers_mut(), info);
    }
    if status == StatusCode::UNAUTHORIZED {
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    resp
}

/// Writes `x-ratelimit-*` and `Retry-After` headers the way OpenAI does.
pub fn apply_rate_limit_headers(headers: &mut http::HeaderMap, info: &RateLimitInfo) {
    fn put(headers: &mut http::HeaderMap, name: &'static str, value: String) {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(name, v);
        }
    }
    if let Some(v) = info.limit_requests {
        put(headers, "x-ratelimit-limit-requests", v.to_string());
    }
    if let Some(v) = info.remaining_requests {
        put(headers, "x-ratelimit-remaining-requests", v.to_string());
    }
    if let Some(v) = info.reset_requests_secs {
        put(headers, "x-ratelimit-reset-requests", duration_text(v));
    }
    if let Some(v) = info.limit_tokens {
        put(headers, "x-ratelimit-limit-tokens", v.to_string());
    }
    if let Some(v) = info.remaining_tokens {
        put(headers, "x-ratelimit-remaining-tokens", v.to_string());
    }
    if let Some(v) = info.reset_tokens_secs {
        put(headers, "x-ratelimit-reset-tokens", duration_text(v));
    }
    if let Some(v) = info.retry_after_secs {
        put(headers, "retry-after", v.to_string());
    }
    if info.never_fits {
        // Honoured by the official SDKs, which otherwise retry every 429.
        headers.insert("x-should-retry", HeaderValue::from_static("false"));
    }
}

/// OpenAI's reset format: `1s`, `6m0s`, `250ms`.
fn duration_text(secs: f64) -> String {
    if secs < 1.0 {
        return format!("{}ms", (secs * 1000.0).ceil() as u64);
    }
    let whole = secs.ceil() as u64;
    if whole < 60 {
        format!("{whole}s")
    } else {
        format!("{}m{}s", whole / 60, whole % 60)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_failures_share_one_body() {
        let bodies: Vec<_> = [
            RejectReason::UnknownKey,
            RejectReason::RevokedKey,
            RejectReason::CanaryKey,
            RejectReason::ExpiredKey,
            RejectReason::MalformedKey,
            RejectReason::SuspendedKey,
        ]
        .into_iter()
        .map(|r| {
            let (s, t, c, m) = describe(&ProxyError::reject(r));
            (s, t, c, m)
        })
        .collect();
        assert!(bodies.windows(2).all(|w| w[0] == w[1]));
    }

    #[test]
    fn reset_text_matches_openai_style() {
        assert_eq!(duration_text(0.25), "250ms");
        assert_eq!(duration_text(1.2), "2s");
        assert_eq!(duration_text(360.0), "6m0s");
    }
}
