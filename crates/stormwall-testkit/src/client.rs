//! HTTP test clients: whole-body and streaming, optionally bound to a chosen source address.
//!
//! Binding the source address (`127.0.0.2`, `127.0.1.5`, ...) lets one machine look like
//! many clients, which the gateway's per-IP scoping, network allow-lists and detectors need.

use std::net::IpAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

use crate::Error;
use crate::sse::{SseEvent, SseParser};

/// A complete response.
#[derive(Debug, Clone)]
pub struct TestResponse {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl TestResponse {
    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// The body as text (lossy UTF-8).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A response whose body is read chunk by chunk; drop it to disconnect mid-body.
#[derive(Debug)]
pub struct StreamingResponse {
    /// Status code.
    pub status: StatusCode,
    /// Response headers.
    pub headers: HeaderMap,
    body: Incoming,
    sse: SseParser,
    pending: std::collections::VecDeque<SseEvent>,
}

impl StreamingResponse {
    /// The next data chunk as it arrived; `None` at the end of the body.
    pub async fn next_chunk(&mut self) -> Option<Result<Bytes, Error>> {
        loop {
            match self.body.frame().await? {
                Ok(frame) => {
                    // Trailers carry no data; keep reading.
                    if let Ok(data) = frame.into_data() {
                        return Some(Ok(data));
                    }
                }
                Err(e) => return Some(Err(e.into())),
            }
        }
    }

    /// The next complete SSE event, however the bytes were chunked; `None` at the end.
    pub async fn next_event(&mut self) -> Option<Result<SseEvent, Error>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            match self.next_chunk().await? {
                Ok(chunk) => self.pending.extend(self.sse.push(&chunk)),
                Err(e) => return Some(Err(e)),
            }
        }
    }

    /// Reads the rest of the body (events already taken with `next_event` are not included).
    pub async fn read_to_end(mut self) -> Result<Bytes, Error> {
        let mut out = Vec::new();
        while let Some(chunk) = self.next_chunk().await {
            out.extend_from_slice(&chunk?);
        }
        Ok(Bytes::from(out))
    }
}

/// A reusable client (keeps connections alive between requests), optionally bound to a
/// source address.
#[derive(Debug, Clone)]
pub struct TestClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl TestClient {
    /// A client whose sockets bind to `local_addr` (any port) when given.
    pub fn new(local_addr: Option<IpAddr>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_local_address(local_addr);
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(5)));
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Self { client }
    }

    async fn send(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<hyper::Response<Incoming>, Error> {
        let mut builder = Request::builder()
            .method(Method::from_bytes(method.as_bytes())?)
            .uri(url);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder.body(Full::new(body))?;
        Ok(self.client.request(request).await?)
    }

    /// Sends a request and reads the whole response.
    pub async fn request(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<TestResponse, Error> {
        let response = self.send(method, url, headers, body.into()).await?;
        let (parts, body) = response.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok(TestResponse {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Sends a request and returns as soon as the response headers arrive.
    pub async fn stream(
        &self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<StreamingResponse, Error> {
        let response = self.send(method, url, headers, body.into()).await?;
        let (parts, body) = response.into_parts();
        Ok(StreamingResponse {
            status: parts.status,
            headers: parts.headers,
            body,
            sse: SseParser::new(),
            pending: std::collections::VecDeque::new(),
        })
    }
}

/// Sends one request on a fresh connection (from `local_addr` when given) and reads the
/// whole response. No timeout: wrap in `tokio::time::timeout` when the server may stall.
pub async fn http_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
    local_addr: Option<IpAddr>,
) -> Result<TestResponse, Error> {
    TestClient::new(local_addr)
        .request(method, url, headers, body)
        .await
}

/// Sends one request on a fresh connection (from `local_addr` when given) and returns the
/// response with its body unread, to consume chunk by chunk or drop early.
pub async fn http_stream(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
    local_addr: Option<IpAddr>,
) -> Result<StreamingResponse, Error> {
    TestClient::new(local_addr)
        .stream(method, url, headers, body)
        .await
}
