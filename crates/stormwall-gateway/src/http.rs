//! Small HTTP pieces both planes use: capped body reads, JSON responses and the request-id
//! header.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, Response, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::config::LimitsConfig;
use crate::data::body::ProxyBody;
use crate::error::ProxyError;

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

/// Why a capped body read failed.
pub enum ReadError {
    /// Longer than the cap.
    TooLarge,
    /// The connection broke mid-body.
    Broken,
    /// No frame arrived within the idle timeout.
    Idle,
}

/// Reads a whole body up to `cap` bytes, optionally with an idle timeout between frames.
/// The common single-frame body is returned without copying.
pub async fn read_capped<B>(
    mut body: B,
    cap: usize,
    idle: Option<Duration>,
) -> Result<Bytes, ReadError>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    // A declared length over the cap is refused before a byte is read: waiting for a body
    // that will be refused anyway only holds the connection (and a client's slot) open.
    let declared = hyper::body::Body::size_hint(&body).lower();
    if usize::try_from(declared).map_or(true, |n| n > cap) {
        return Err(ReadError::TooLarge);
    }
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    loop {
        let next = match idle {
            Some(d) => tokio::time::timeout(d, body.frame())
                .await
                .map_err(|_| ReadError::Idle)?,
            None => body.frame().await,
        };
        let Some(frame) = next else { break };
        let frame = frame.map_err(|_| ReadError::Broken)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let total = first.as_ref().map_or(0, Bytes::len) + buf.len() + data.len();
        if total > cap {
            return Err(ReadError::TooLarge);
        }
        match first.take() {
            None if buf.is_empty() => first = Some(data),
            None => buf.extend_from_slice(&data),
            Some(f) => {
                buf.extend_from_slice(&f);
                buf.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
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
