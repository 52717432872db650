//! The mock upstream: a real HTTP/1.1 server speaking the OpenAI and Azure OpenAI paths,
//! scriptable per request with [`Fault`]s and recording what it received.
//!
//! Streams are sent event by event through a custom body, so a test can observe exactly
//! how the gateway relays, times out, and cancels them; the body counts itself as a
//! cancelled stream when it is dropped before the end, which is how a test proves that a
//! client disconnect reached the upstream.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use serde_json::value::RawValue;
use stormwall_mock::{self as mock, MockBody, MockRequest};
use stormwall_types::Endpoint;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Largest request body the mock reads; bigger bodies get a 413 like the real API.
const MAX_REQUEST_BODY: usize = 64 << 20;

/// How long [`MockUpstream::shutdown`] waits for open connections to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Models listed by `GET /v1/models` unless configured otherwise; the same as `examples/local.toml`.
const DEFAULT_MODELS: [&str; 4] = [
    "gpt-4o-mini",
    "gpt-4o",
    "text-embedding-3-small",
    "dall-e-3",
];

/// One scripted misbehaviour, applied to one request (or to every request, as the default).
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answer with this status and JSON body instead of a mock reply; 429 and 503 also
    /// carry `retry-after: 1`. An empty body becomes an OpenAI-shaped error.
    Status(u16, String),
    /// Answer with exactly this status, these headers and this body.
    Response {
        /// HTTP status code.
        status: u16,
        /// Extra headers, sent as given.
        headers: Vec<(String, String)>,
        /// Body, sent as given.
        body: String,
    },
    /// Send the headers and the first `after_events` SSE events (a whole JSON body counts as
    /// one event), then go silent until the client leaves or the mock shuts down.
    Stall {
        /// Events to send before stalling.
        after_events: usize,
    },
    /// Send the headers and the first `after_events` events, then drop the connection mid-body.
    Cut {
        /// Events to send before cutting.
        after_events: usize,
    },
    /// Wait this long before sending the response headers.
    SlowFirstByte(Duration),
    /// Wait this long between consecutive SSE events.
    ChunkDelay(Duration),
    /// Answer with this status and content type, sending `chunks` one body frame each with
    /// `delay` between them (e.g. a scripted SSE stream whose text a test chooses). A body
    /// dropped before its last chunk counts as a cancelled stream.
    Script {
        /// HTTP status code.
        status: u16,
        /// `content-type`, e.g. `text/event-stream`.
        content_type: String,
        /// Body frames, in order.
        chunks: Vec<String>,
        /// Pause between frames.
        delay: Option<Duration>,
    },
}

impl Fault {
    /// A 429 with the OpenAI rate-limit error body and `retry-after: 1`.
    pub fn rate_limited() -> Self {
        Fault::Status(
            429,
            openai_error(
                "Rate limit reached for requests",
                "requests",
                "rate_limit_exceeded",
            ),
        )
    }

    /// A 500 with the OpenAI server-error body.
    pub fn server_error() -> Self {
        Fault::Status(
            500,
            openai_error(
                "The server had an error while processing your request.",
                "server_error",
                "",
            ),
        )
    }
}

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// HTTP method.
    pub method: Method,
    /// Path and query, e.g. `/openai/deployments/gpt4/chat/completions?api-version=2024-10-21`.
    pub path: String,
    /// All request headers.
    pub headers: HeaderMap,
    /// The request body.
    pub body: Bytes,
    /// The TCP peer (the gateway's outbound socket, or the test client's).
    pub peer: SocketAddr,
}

impl RecordedRequest {
    /// The body parsed as JSON.
    pub fn json(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }

    /// A header's value, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// How to run a [`MockUpstream`].
#[derive(Debug, Clone)]
pub struct MockConfig {
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Keep every request for [`MockUpstream::requests`]; turn off for load tests.
    pub record_requests: bool,
    /// Models listed by `GET /v1/models`.
    pub models: Vec<String>,
}

impl Default for MockConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            record_requests: true,
            models: DEFAULT_MODELS.iter().map(|m| (*m).to_owned()).collect(),
        }
    }
}

/// A running mock upstream; stops (gracefully) when dropped.
#[derive(Debug)]
pub struct MockUpstream {
    /// The bound address.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    accept_task: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    faults: Mutex<VecDeque<Fault>>,
    default_fault: Mutex<Option<Fault>>,
    requests: Mutex<Vec<RecordedRequest>>,
    record: bool,
    models: Vec<String>,
    request_count: AtomicU64,
    accepted: AtomicU64,
    open_connections: AtomicUsize,
    cancelled_streams: AtomicU64,
    shutdown: watch::Receiver<bool>,
}

/// A poisoned lock only means another test thread panicked; the data is still usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Shared {
    fn next_fault(&self) -> Option<Fault> {
        lock(&self.faults)
            .pop_front()
            .or_else(|| lock(&self.default_fault).clone())
    }
}

impl MockUpstream {
    /// Starts a recording mock on `127.0.0.1` with a free port.
    pub async fn start() -> io::Result<Self> {
        Self::start_with(MockConfig::default()).await
    }

    /// Starts a mock with `config`.
    pub async fn start_with(config: MockConfig) -> io::Result<Self> {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let shared = Arc::new(Shared {
            faults: Mutex::new(VecDeque::new()),
            default_fault: Mutex::new(None),
            requests: Mutex::new(Vec::new()),
            record: config.record_requests,
            models: config.models,
            request_count: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            open_connections: AtomicUsize::new(0),
            cancelled_streams: AtomicU64::new(0),
            shutdown: shutdown_rx,
        });
        let accept_task = tokio::spawn(accept_loop(listener, shared.clone()));
        Ok(Self {
            addr,
            shared,
            shutdown,
            accept_task: Some(accept_task),
        })
    }

    /// The base URL, `http://127.0.0.1:PORT` (append `/v1` for an OpenAI `base_url`).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues a fault for the next request that has none queued before it.
    pub fn push_fault(&self, fault: Fault) {
        lock(&self.shared.faults).push_back(fault);
    }

    /// Sets the fault applied when the queue is empty (`None`: behave normally).
    pub fn set_default_fault(&self, fault: Option<Fault>) {
        *lock(&self.shared.default_fault) = fault;
    }

    /// Drops all queued faults and the default fault.
    pub fn clear_faults(&self) {
        lock(&self.shared.faults).clear();
        *lock(&self.shared.default_fault) = None;
    }

    /// Every request received so far (empty when recording is off).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.requests).clone()
    }

    /// The most recent request, if any was recorded.
    pub fn last_request(&self) -> Option<RecordedRequest> {
        lock(&self.shared.requests).last().cloned()
    }

    /// Requests received so far, counted whether or not recording is on.
    pub fn request_count(&self) -> u64 {
        self.shared.request_count.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections_accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// TCP connections currently open.
    pub fn open_connections(&self) -> usize {
        self.shared.open_connections.load(Ordering::SeqCst)
    }

    /// Response bodies dropped before their end because the client went away.
    pub fn cancelled_streams(&self) -> u64 {
        self.shared.cancelled_streams.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` streams were cancelled; false if `timeout` passed first.
    /// Cancellation reaches the mock asynchronously, so tests poll rather than assert once.
    pub async fn wait_for_cancelled_streams(&self, n: u64, timeout: Duration) -> bool {
        self.wait_until(timeout, |m| m.cancelled_streams() >= n)
            .await
    }

    /// Polls `done` every few milliseconds until it holds; false if `timeout` passed first.
    pub async fn wait_until(&self, timeout: Duration, done: impl Fn(&Self) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if done(self) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Stops accepting, ends stalled streams, and waits (briefly) for connections to close.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.accept_task.take() {
            let _ = task.await;
        }
        let shared = self.shared.clone();
        let _ = tokio::time::timeout(SHUTDOWN_GRACE, async move {
            while shared.open_connections.load(Ordering::SeqCst) > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        // The accept loop and every connection watch this flag; in-flight responses finish,
        // stalled ones end, and the listener closes.
        let _ = self.shutdown.send(true);
    }
}

/// Resolves once shutdown is signalled (or the `MockUpstream` is gone).
async fn wait_shutdown(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut shutdown = std::pin::pin!(wait_shutdown(shared.shutdown.clone()));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.as_mut() => return,
        };
        match accepted {
            Ok((stream, peer)) => {
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve_connection(stream, peer, shared.clone()));
            }
            // Accept errors (e.g. EMFILE under load) are transient; back off briefly.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

/// Keeps `open_connections` right however the connection task ends.
struct ConnectionGuard(Arc<Shared>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn serve_connection(stream: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    shared.open_connections.fetch_add(1, Ordering::SeqCst);
    let _guard = ConnectionGuard(shared.clone());
    // Small SSE events must leave immediately, not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let shutdown = shared.shutdown.clone();
    let service = service_fn(move |req| handle(req, peer, shared.clone()));
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    let mut conn = std::pin::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => {}
        () = wait_shutdown(shutdown) => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, conn).await;
        }
    }
}

/// The fields of an OpenAI / Azure request body the mock cares about.
#[derive(Deserialize)]
struct WireRequest<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    stream: Option<bool>,
    stream_options: Option<StreamOptions>,
    max_tokens: Option<u64>,
    max_completion_tokens: Option<u64>,
    max_output_tokens: Option<u64>,
    n: Option<u32>,
    #[serde(borrow)]
    input: Option<&'a RawValue>,
    #[serde(borrow)]
    encoding_format: Option<Cow<'a, str>>,
    dimensions: Option<u64>,
}

#[derive(Deserialize)]
struct StreamOptions {
    include_usage: Option<bool>,
}

/// Where a path leads.
enum Route<'a> {
    Models,
    Call {
        endpoint: Endpoint,
        deployment: Option<&'a str>,
    },
}

/// A reply that is not a mock completion (errors, faults): status, JSON body, extra headers.
struct Plain {
    status: u16,
    body: Bytes,
    headers: Vec<(String, String)>,
}

impl Plain {
    fn error(status: u16, message: &str, kind: &str, code: &str) -> Self {
        Plain {
            status,
            body: Bytes::from(openai_error(message, kind, code)),
            headers: Vec::new(),
        }
    }

    /// Azure answers unknown routes (and a missing `api-version`) with this body.
    fn azure_not_found() -> Self {
        Plain {
            status: 404,
            body: Bytes::from_static(br#"{"error":{"code":"404","message":"Resource not found"}}"#),
            headers: Vec::new(),
        }
    }
}

fn openai_error(message: &str, kind: &str, code: &str) -> String {
    serde_json::json!({
        "error": {
            "message": message,
            "type": kind,
            "param": null,
            "code": if code.is_empty() { serde_json::Value::Null } else { code.into() },
        }
    })
    .to_string()
}

fn endpoint_for_suffix(suffix: &str) -> Option<Endpoint> {
    Endpoint::ALL
        .into_iter()
        .find(|e| *e != Endpoint::Models && e.path_suffix() == suffix)
}

fn has_api_version(query: Option<&str>) -> bool {
    query.is_some_and(|q| {
        q.split('&')
            .any(|kv| kv.starts_with("api-version=") && kv.len() > "api-version=".len())
    })
}

fn route<'a>(path: &'a str, query: Option<&str>) -> Result<Route<'a>, Plain> {
    let not_found = || {
        Plain::error(
            404,
            &format!("Invalid URL (POST {path})"),
            "invalid_request_error",
            "",
        )
    };
    if let Some(rest) = path.strip_prefix("/openai/deployments/") {
        // Azure: /openai/deployments/{deployment}/{operation}?api-version=...
        let (deployment, suffix) = rest.split_once('/').ok_or_else(Plain::azure_not_found)?;
        if deployment.is_empty() || !has_api_version(query) {
            return Err(Plain::azure_not_found());
        }
        let endpoint = endpoint_for_suffix(suffix).ok_or_else(Plain::azure_not_found)?;
        return Ok(Route::Call {
            endpoint,
            deployment: Some(deployment),
        });
    }
    if path == "/openai/models" || path == "/openai/responses" {
        // Azure's non-deployment routes also insist on an api-version.
        if !has_api_version(query) {
            return Err(Plain::azure_not_found());
        }
        return Ok(if path == "/openai/models" {
            Route::Models
        } else {
            Route::Call {
                endpoint: Endpoint::Responses,
                deployment: None,
            }
        });
    }
    // OpenAI (/v1/...) and Azure's OpenAI-compatible v1 surface (/openai/v1/...).
    let suffix = path
        .strip_prefix("/v1/")
        .or_else(|| path.strip_prefix("/openai/v1/"))
        .ok_or_else(not_found)?;
    if suffix == "models" {
        return Ok(Route::Models);
    }
    let endpoint = endpoint_for_suffix(suffix).ok_or_else(not_found)?;
    Ok(Route::Call {
        endpoint,
        deployment: None,
    })
}

/// Number of embeddings inputs: a string or a token array is one, an array of either is many.
fn count_inputs(input: Option<&RawValue>) -> usize {
    let Some(raw) = input else { return 1 };
    if !raw.get().trim_start().starts_with('[') {
        return 1;
    }
    match serde_json::from_str::<Vec<&RawValue>>(raw.get()) {
        Ok(items) => {
            let tokens = items.first().is_some_and(|i| {
                i.get()
                    .starts_with(|c: char| c == '-' || c.is_ascii_digit())
            });
            if tokens { 1 } else { items.len() }
        }
        Err(_) => 1,
    }
}

/// Turns a parsed request into the mock's reply, or an error reply as the real API gives.
fn plan(
    method: &Method,
    path: &str,
    query: Option<&str>,
    body: &[u8],
    shared: &Shared,
) -> Result<mock::MockReply, Plain> {
    let route = route(path, query)?;
    let (endpoint, deployment) = match route {
        Route::Models => {
            if method != Method::GET {
                return Err(Plain::error(
                    405,
                    "Method not allowed",
                    "invalid_request_error",
                    "",
                ));
            }
            let models: Vec<&str> = shared.models.iter().map(String::as_str).collect();
            return Ok(mock::MockReply {
                status: 200,
                content_type: "application/json",
                body: MockBody::Full(mock::models_list(&models)),
            });
        }
        Route::Call {
            endpoint,
            deployment,
        } => (endpoint, deployment),
    };
    if method != Method::POST {
        return Err(Plain::error(
            405,
            "Method not allowed",
            "invalid_request_error",
            "",
        ));
    }
    let wire: WireRequest<'_> = serde_json::from_slice(body).map_err(|_| {
        Plain::error(
            400,
            "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly.)",
            "invalid_request_error",
            "",
        )
    })?;
    let model = match (deployment, wire.model.as_deref(), endpoint) {
        (Some(d), _, _) => d,
        (None, Some(m), _) => m,
        // The images API defaults its model; everything else requires one.
        (None, None, Endpoint::ImagesGenerations) => "dall-e-2",
        (None, None, _) => {
            return Err(Plain::error(
                400,
                "you must provide a model parameter",
                "invalid_request_error",
                "",
            ));
        }
    };
    let request = MockRequest {
        endpoint,
        model,
        stream: wire.stream.unwrap_or(false),
        include_usage: wire
            .stream_options
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        // A rough but stable estimate: about four bytes of JSON per token.
        prompt_tokens: (body.len() as u64 / 4).max(1),
        max_tokens: wire
            .max_completion_tokens
            .or(wire.max_tokens)
            .or(wire.max_output_tokens),
        inputs: count_inputs(wire.input),
        images: wire.n.unwrap_or(1),
        base64: wire.encoding_format.as_deref() == Some("base64"),
        dimensions: wire.dimensions,
    };
    Ok(mock::respond(&request))
}

async fn handle(
    req: Request<Incoming>,
    peer: SocketAddr,
    shared: Arc<Shared>,
) -> Result<Response<MockResponseBody>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = match Limited::new(body, MAX_REQUEST_BODY).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            let plain = Plain::error(
                413,
                "Request body too large or unreadable",
                "invalid_request_error",
                "",
            );
            return Ok(plain_response(plain, &shared));
        }
    };
    shared.request_count.fetch_add(1, Ordering::SeqCst);
    if shared.record {
        let path = parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_owned(), |pq| pq.as_str().to_owned());
        lock(&shared.requests).push(RecordedRequest {
            method: parts.method.clone(),
            path,
            headers: parts.headers.clone(),
            body: body.clone(),
            peer,
        });
    }

    let fault = shared.next_fault();
    let mut limit = None;
    let mut delay = None;
    match fault {
        Some(Fault::SlowFirstByte(wait)) => tokio::time::sleep(wait).await,
        Some(Fault::Status(status, body)) => {
            let body = if body.is_empty() {
                openai_error("Mock upstream fault", "server_error", "")
            } else {
                body
            };
            let headers = if status == 429 || status == 503 {
                vec![("retry-after".to_owned(), "1".to_owned())]
            } else {
                Vec::new()
            };
            return Ok(plain_response(
                Plain {
                    status,
                    body: Bytes::from(body),
                    headers,
                },
                &shared,
            ));
        }
        Some(Fault::Response {
            status,
            headers,
            body,
        }) => {
            return Ok(plain_response(
                Plain {
                    status,
                    body: Bytes::from(body),
                    headers,
                },
                &shared,
            ));
        }
        Some(Fault::Stall { after_events }) => limit = Some((after_events, BodyEnd::Stall)),
        Some(Fault::Cut { after_events }) => limit = Some((after_events, BodyEnd::Cut)),
        Some(Fault::ChunkDelay(wait)) => delay = Some(wait),
        Some(Fault::Script {
            status,
            content_type,
            chunks,
            delay,
        }) => {
            return Ok(scripted_response(
                status,
                &content_type,
                chunks,
                delay,
                &shared,
            ));
        }
        None => {}
    }

    let reply = match plan(
        &parts.method,
        parts.uri.path(),
        parts.uri.query(),
        &body,
        &shared,
    ) {
        Ok(reply) => reply,
        Err(plain) => return Ok(plain_response(plain, &shared)),
    };
    let (events, exact_len) = match reply.body {
        MockBody::Full(b) => {
            let len = b.len() as u64;
            (VecDeque::from([b]), Some(len))
        }
        MockBody::Sse(events) => (VecDeque::from(events), None),
    };
    let body = MockResponseBody {
        events,
        sent: 0,
        exact_len,
        limit,
        delay,
        sleep: None,
        stall: None,
        shared: shared.clone(),
        cut_armed: false,
        finished: false,
    };
    let mut response = Response::new(body);
    *response.status_mut() =
        http::StatusCode::from_u16(reply.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(reply.content_type),
    );
    headers.insert("x-request-id", request_id(&shared));
    if exact_len.is_none() {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    }
    Ok(response)
}

fn scripted_response(
    status: u16,
    content_type: &str,
    chunks: Vec<String>,
    delay: Option<Duration>,
    shared: &Arc<Shared>,
) -> Response<MockResponseBody> {
    let body = MockResponseBody {
        events: chunks.into_iter().map(Bytes::from).collect(),
        sent: 0,
        exact_len: None,
        limit: None,
        delay,
        sleep: None,
        stall: None,
        shared: shared.clone(),
        cut_armed: false,
        finished: false,
    };
    let mut response = Response::new(body);
    *response.status_mut() =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(content_type)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    headers.insert("x-request-id", request_id(shared));
    response
}

fn request_id(shared: &Shared) -> HeaderValue {
    let n = shared.request_count.load(Ordering::Relaxed);
    HeaderValue::from_str(&format!("req_mock{n:016x}"))
        .unwrap_or(HeaderValue::from_static("req_mock"))
}

fn plain_response(plain: Plain, shared: &Arc<Shared>) -> Response<MockResponseBody> {
    let len = plain.body.len() as u64;
    let body = MockResponseBody {
        events: VecDeque::from([plain.body]),
        sent: 0,
        exact_len: Some(len),
        limit: None,
        delay: None,
        sleep: None,
        stall: None,
        shared: shared.clone(),
        cut_armed: false,
        finished: false,
    };
    let mut response = Response::new(body);
    *response.status_mut() =
        http::StatusCode::from_u16(plain.status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("x-request-id", request_id(shared));
    for (name, value) in plain.headers {
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::try_from(name),
            HeaderValue::try_from(value),
        ) {
            headers.append(name, value);
        }
    }
    response
}

/// What happens once a faulted body has sent its allowed events.
#[derive(Debug, Clone, Copy)]
enum BodyEnd {
    Stall,
    Cut,
}

/// Why a mock body ended early; hyper aborts the connection on any body error.
#[derive(Debug, thiserror::Error)]
enum MockBodyError {
    #[error("mock upstream cut the connection (scripted fault)")]
    Cut,
    #[error("mock upstream shutting down")]
    Shutdown,
}

/// A response body sent event by event, honouring the request's fault.
struct MockResponseBody {
    events: VecDeque<Bytes>,
    sent: usize,
    exact_len: Option<u64>,
    limit: Option<(usize, BodyEnd)>,
    delay: Option<Duration>,
    sleep: Option<Pin<Box<tokio::time::Sleep>>>,
    stall: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    shared: Arc<Shared>,
    /// Set once a cut is due and the body yielded so hyper could flush.
    cut_armed: bool,
    /// Set once the body reached its natural or scripted end; a body dropped before that
    /// was abandoned by the client.
    finished: bool,
}

impl Body for MockResponseBody {
    type Data = Bytes;
    type Error = MockBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, MockBodyError>>> {
        let this = self.get_mut();
        if this.finished {
            return Poll::Ready(None);
        }
        if let Some((after, end)) = this.limit
            && this.sent >= after
        {
            match end {
                BodyEnd::Cut if !this.cut_armed => {
                    // Yield once first: hyper flushes what it has buffered (the headers, the
                    // events so far) when the body is pending, so the client really sees a
                    // response that stops mid-body rather than an empty reply.
                    this.cut_armed = true;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                BodyEnd::Cut => {
                    this.finished = true;
                    return Poll::Ready(Some(Err(MockBodyError::Cut)));
                }
                BodyEnd::Stall => {
                    let shutdown = this.shared.shutdown.clone();
                    let stall = this
                        .stall
                        .get_or_insert_with(|| Box::pin(wait_shutdown(shutdown)));
                    ready!(stall.as_mut().poll(cx));
                    // Ended by our own shutdown, not by the client: not a cancellation.
                    this.finished = true;
                    return Poll::Ready(Some(Err(MockBodyError::Shutdown)));
                }
            }
        }
        if this.sent > 0
            && let Some(wait) = this.delay
        {
            let sleep = this
                .sleep
                .get_or_insert_with(|| Box::pin(tokio::time::sleep(wait)));
            ready!(sleep.as_mut().poll(cx));
            this.sleep = None;
        }
        match this.events.pop_front() {
            Some(event) => {
                this.sent += 1;
                let fault_pending = this.limit.is_some_and(|(after, _)| this.sent >= after);
                if this.events.is_empty() && !fault_pending {
                    this.finished = true;
                }
                Poll::Ready(Some(Ok(Frame::data(event))))
            }
            None => {
                this.finished = true;
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }

    fn size_hint(&self) -> SizeHint {
        match self.exact_len {
            Some(len) => SizeHint::with_exact(len),
            None => SizeHint::default(),
        }
    }
}

impl Drop for MockResponseBody {
    fn drop(&mut self) {
        if !self.finished {
            self.shared.cancelled_streams.fetch_add(1, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        assert!(matches!(
            route("/v1/chat/completions", None),
            Ok(Route::Call {
                endpoint: Endpoint::ChatCompletions,
                deployment: None
            })
        ));
        assert!(matches!(route("/v1/models", None), Ok(Route::Models)));
        assert!(matches!(
            route(
                "/openai/deployments/gpt4/embeddings",
                Some("api-version=2024-10-21")
            ),
            Ok(Route::Call {
                endpoint: Endpoint::Embeddings,
                deployment: Some("gpt4")
            })
        ));
        assert!(route("/openai/deployments/gpt4/embeddings", None).is_err());
        assert!(route("/openai/deployments/gpt4/embeddings", Some("api-version=")).is_err());
        assert!(route("/openai/deployments/gpt4/models", Some("api-version=1")).is_err());
        assert!(route("/v2/chat/completions", None).is_err());
    }

    #[test]
    fn counts_inputs() {
        let n = |s: &str| count_inputs(Some(&*RawValue::from_string(s.to_owned()).unwrap()));
        assert_eq!(count_inputs(None), 1);
        assert_eq!(n(r#""one""#), 1);
        assert_eq!(n(r#"["a","b","c"]"#), 3);
        assert_eq!(n("[1,2,3]"), 1);
        assert_eq!(n("[[1,2],[3]]"), 2);
    }
}
