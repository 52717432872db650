//! Stormwall's test kit: a scriptable mock OpenAI / Azure OpenAI upstream, HTTP test
//! clients that can pick their source address, and an SSE reader.
//!
//! The mock is a real HTTP/1.1 server on a loopback socket, so the gateway's upstream
//! client, timeouts and cancellation are exercised exactly as in production. Each test
//! scripts it with a queue of [`Fault`]s and asserts on what it received:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use stormwall_testkit::{Fault, MockUpstream, http_request};
//!
//! let upstream = MockUpstream::start().await?;
//! upstream.push_fault(Fault::rate_limited());
//! let resp = http_request(
//!     "POST",
//!     &format!("{}/v1/chat/completions", upstream.url()),
//!     &[("content-type", "application/json")],
//!     r#"{"model":"gpt-4o-mini","messages":[]}"#,
//!     None,
//! )
//! .await?;
//! assert_eq!(resp.status, 429);
//! assert_eq!(upstream.request_count(), 1);
//! # Ok(()) }
//! ```

// This crate is test-only (publish = false): a mock server and a test client legitimately
// detach per-connection tasks and read whole bodies, which the workspace bans on the
// gateway's request path.
#![allow(clippy::disallowed_methods)]

mod client;
mod encoder;
mod relay;
mod sse;
mod upstream;

pub use client::{StreamingResponse, TestClient, TestResponse, http_request, http_stream};
pub use encoder::{TINY_ENCODER_DIM, write_tiny_encoder};
pub use relay::TcpRelay;
pub use sse::{SseEvent, SseParser, parse_sse};
/// The reply generator the mock server answers with (also the gateway's built-in mock).
pub use stormwall_mock as mock;
pub use upstream::{Fault, MockConfig, MockUpstream, RecordedRequest};

/// Errors from the test clients.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request could not be built (bad URL, header name or value).
    #[error("invalid request: {0}")]
    Request(#[from] http::Error),
    /// The method string is not a valid HTTP method.
    #[error("invalid method: {0}")]
    Method(#[from] http::method::InvalidMethod),
    /// The URL did not parse.
    #[error("invalid url: {0}")]
    Url(#[from] http::uri::InvalidUri),
    /// Connecting or sending failed.
    #[error("client: {0}")]
    Client(#[from] hyper_util::client::legacy::Error),
    /// Reading the response body failed (for example, the server cut the connection).
    #[error("body: {0}")]
    Body(#[from] hyper::Error),
    /// A socket operation failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}
