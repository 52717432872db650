//! Upstream HTTP/1 connections driven by the request's own task.
//!
//! A pooled client (hyper-util's) runs each upstream connection as a task of its own and
//! hands the response body over through a one-chunk channel: every streamed chunk then
//! hopped between that task and the server connection task twice (the chunk one way, the
//! demand for the next the other), and each hop woke the runtime's other worker to steal
//! it — ~17 cross-thread wake-ups per streamed request, most of a stream's extra CPU. Here
//! the request's task polls the connection itself, jointly with the response body
//! ([`Joint`]): the wake-ups between the two become another turn of one loop, and whatever
//! the socket already holds is read in one poll. Idle connections wait in a small
//! per-upstream [`UpstreamPool`] undriven (no task); one the upstream closed meanwhile is
//! found when it is taken, and a request it could not send is sent again on a new one.
//!
//! Nothing polls an idle connection, so the runtime learns of a close only when its I/O
//! driver next turns: on a busy runtime a connection the upstream closed a moment ago still
//! looks open, and a request sent on it fails (and a POST cannot simply be sent again: the
//! upstream may have acted on it). A connection idle for more than [`PROBE_AFTER`] is
//! therefore asked directly, with a non-blocking peek at its socket, before it is reused.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http::uri::{Authority, Scheme};
use http::{HeaderValue, Request, Response, Uri, header};
use http_body::{Body, Frame, SizeHint};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tower_service::Service;

/// The transport of one upstream connection (TLS or plain TCP).
type Io = MaybeHttpsStream<TokioIo<TcpStream>>;
/// The driving half of one upstream connection.
type Connection = http1::Connection<Io, Full<Bytes>>;

/// How long an idle connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Most turns of a [`Joint`] loop in one poll before it yields to the runtime (hyper's own
/// connection yields after 16 rounds of reading and writing; this bounds a connection that
/// keeps asking for turns without producing any of the body).
const MAX_TURNS: u32 = 32;
/// Idle longer than this, a connection's socket is peeked at before reuse (one system call):
/// upstreams close idle connections after seconds, while a connection handed from one
/// request to the next under load is idle for microseconds and is not probed.
const PROBE_AFTER: Duration = Duration::from_millis(1);

/// Why no answer came from an upstream.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be made.
    #[error("upstream connect failed: {0}")]
    Connect(Box<dyn std::error::Error + Send + Sync>),
    /// The request failed on the connection.
    #[error("upstream request failed: {0}")]
    Request(#[from] hyper::Error),
}

/// Idle upstream connections by scheme and authority, and how to make new ones.
pub struct UpstreamPool {
    connector: HttpsConnector<HttpConnector>,
    idle: Mutex<HashMap<PoolKey, Vec<Idle>>>,
    max_idle_per_host: usize,
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    https: bool,
    authority: Authority,
}

/// A connection between requests: its sending half, its undriven connection and its
/// joint-poll state, kept together.
struct Idle {
    lease: Box<Lease>,
    since: Instant,
}

impl UpstreamPool {
    /// A pool making connections with `connector`, keeping at most `max_idle_per_host`
    /// idle connections per upstream host.
    pub fn new(connector: HttpsConnector<HttpConnector>, max_idle_per_host: usize) -> Arc<Self> {
        Arc::new(Self {
            connector,
            idle: Mutex::new(HashMap::new()),
            max_idle_per_host,
        })
    }

    /// Sends `req` (absolute URI) on a pooled or new connection and returns the answer's
    /// head, its body driving the connection as it is read.
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<Full<Bytes>>,
    ) -> Result<Response<UpstreamBody>, SendError> {
        let key = pool_key(req.uri()).ok_or_else(|| SendError::Connect("no authority".into()))?;
        let connect_uri = prepare(&mut req);
        let mut lease = match self.take(&key) {
            Some(lease) => lease,
            None => self.connect(&connect_uri).await?,
        };
        let resp = loop {
            match lease.send(req).await {
                Ok(resp) => break resp,
                // A pooled connection the upstream closed while it was idle: the request was
                // not sent (hyper hands it back), so it goes once more on a new connection.
                Err(mut e) if lease.reused => match e.take_message() {
                    Some(again) => {
                        req = again;
                        lease = self.connect(&connect_uri).await?;
                    }
                    None => return Err(SendError::Request(e.into_error())),
                },
                Err(e) => return Err(SendError::Request(e.into_error())),
            }
        };
        let (parts, body) = resp.into_parts();
        Ok(Response::from_parts(
            parts,
            UpstreamBody {
                body,
                lease: Some(lease),
                pool: Arc::clone(self),
                key,
            },
        ))
    }

    async fn connect(&self, uri: &Uri) -> Result<Box<Lease>, SendError> {
        let io = self
            .connector
            .clone()
            .call(uri.clone())
            .await
            .map_err(SendError::Connect)?;
        let probe = probe_of(&io);
        let (sender, conn) = http1::handshake(io).await?;
        // Boxed once per connection: a connection with its buffers is ~1.9 kB, and it moves
        // between the pool and the requests that use it.
        Ok(Box::new(Lease::new(sender, conn, probe)))
    }

    /// The most recently used idle connection still open, if any.
    fn take(&self, key: &PoolKey) -> Option<Box<Lease>> {
        loop {
            let idle = {
                let mut map = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
                map.get_mut(key)?.pop()?
            };
            let mut lease = idle.lease;
            let idle_for = idle.since.elapsed();
            if idle_for < IDLE_TIMEOUT
                && lease.still_open()
                && (idle_for < PROBE_AFTER || lease.peer_silent())
            {
                lease.reused = true;
                return Some(lease);
            }
            // Dropped: the connection closes.
        }
    }

    fn put(&self, key: PoolKey, mut lease: Box<Lease>) {
        // The request's task is done with it: a wake-up while idle goes nowhere.
        lease.joint.signal.task.take();
        if self.max_idle_per_host == 0 || !lease.still_open() {
            return;
        }
        let now = Instant::now();
        let mut map = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        let list = map.entry(key).or_default();
        list.retain(|i| now.duration_since(i.since) < IDLE_TIMEOUT);
        if list.len() < self.max_idle_per_host {
            list.push(Idle { lease, since: now });
        }
    }
}

fn pool_key(uri: &Uri) -> Option<PoolKey> {
    Some(PoolKey {
        https: uri.scheme() == Some(&Scheme::HTTPS),
        authority: uri.authority()?.clone(),
    })
}

/// Turns an absolute-URI request into what goes on the wire: a `Host` header (the port
/// only when it is not the scheme's default) and the origin-form target, as a pooled
/// client does. Returns the absolute URI it replaced (what a new connection dials).
fn prepare(req: &mut Request<Full<Bytes>>) -> Uri {
    let uri = std::mem::take(req.uri_mut());
    if let Some(host) = uri.host() {
        let default_port = match uri.scheme_str() {
            Some("https") => Some(443),
            Some("http") => Some(80),
            _ => None,
        };
        let value = match uri.port_u16() {
            Some(p) if Some(p) != default_port => HeaderValue::from_str(&format!("{host}:{p}")),
            _ => HeaderValue::from_str(host),
        };
        if let Ok(v) = value {
            req.headers_mut().entry(header::HOST).or_insert(v);
        }
    }
    *req.uri_mut() = match uri.path_and_query() {
        Some(pq) if pq.as_str() != "/" => {
            let mut parts = http::uri::Parts::default();
            parts.path_and_query = Some(pq.clone());
            Uri::from_parts(parts).unwrap_or_default()
        }
        _ => Uri::default(),
    };
    uri
}

/// A second handle on a connection's socket (a duplicated descriptor), to peek at it while
/// the connection is idle; `None` where that is not possible.
#[cfg(unix)]
fn probe_of(io: &Io) -> Option<std::net::TcpStream> {
    use std::os::fd::AsFd;
    let tcp: &TcpStream = match io {
        MaybeHttpsStream::Http(t) => t.inner(),
        MaybeHttpsStream::Https(t) => t.inner().get_ref().0.inner().inner(),
    };
    // The duplicate shares the socket's file description, non-blocking as the runtime set it.
    let fd = tcp.as_fd().try_clone_to_owned().ok()?;
    Some(std::net::TcpStream::from(fd))
}

#[cfg(not(unix))]
fn probe_of(_io: &Io) -> Option<std::net::TcpStream> {
    None
}

/// One connection in use by one request.
struct Lease {
    sender: http1::SendRequest<Full<Bytes>>,
    conn: Connection,
    /// The connection's socket, peeked at before an idle connection is reused.
    probe: Option<std::net::TcpStream>,
    /// The connection future returned (closed or failed): it is not polled again.
    closed: bool,
    joint: Joint,
    /// Taken from the pool (a send that fails unsent is retried on a new connection).
    reused: bool,
}

/// A failed send, with the request when it was never written.
type Unsent = hyper::client::conn::TrySendError<Request<Full<Bytes>>>;

impl Lease {
    fn new(
        sender: http1::SendRequest<Full<Bytes>>,
        conn: Connection,
        probe: Option<std::net::TcpStream>,
    ) -> Self {
        Self {
            sender,
            conn,
            probe,
            closed: false,
            joint: Joint::new(),
            reused: false,
        }
    }

    /// Whether the connection can take another request: polled once, undriven since it
    /// was last used, so a close the upstream sent meanwhile is seen.
    fn still_open(&mut self) -> bool {
        if !self.closed {
            let waker = self.joint.waker.clone();
            let mut cx = Context::from_waker(&waker);
            if Pin::new(&mut self.conn).poll(&mut cx).is_ready() {
                self.closed = true;
            }
        }
        !self.closed && self.sender.is_ready()
    }

    /// Whether the upstream has sent nothing on the idle connection, asked of the socket
    /// itself rather than of the runtime's last word on it: a close (or, under TLS, the
    /// close alert before it) leaves bytes to read, and so would anything else the upstream
    /// had no reason to send between answers. A socket that cannot be asked counts as open.
    fn peer_silent(&self) -> bool {
        let Some(probe) = &self.probe else {
            return true;
        };
        match probe.peek(&mut [0u8; 1]) {
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted
            ),
            Ok(_) => false,
        }
    }

    async fn send(&mut self, req: Request<Full<Bytes>>) -> Result<Response<Incoming>, Unsent> {
        let mut sending = std::pin::pin!(self.sender.try_send_request(req));
        let Self {
            conn,
            closed,
            joint,
            ..
        } = self;
        std::future::poll_fn(|cx| joint.poll(cx, conn, closed, |jcx| sending.as_mut().poll(jcx)))
            .await
    }
}

/// The joint-poll state of a connection: while the request's task polls the connection and
/// the body together, a wake-up from one to the other only asks for another turn of the
/// loop instead of scheduling the task again (which, on a multi-threaded runtime, wakes a
/// sleeping worker); a wake-up from outside (the socket ready) wakes the task.
struct Joint {
    signal: Arc<Signal>,
    waker: Waker,
}

/// Nobody is polling: a wake-up goes to the task.
const IDLE: u8 = 0;
/// The task is polling: a wake-up asks for another turn.
const POLLING: u8 = 1;
/// The task is polling and another turn was asked for.
const NOTIFIED: u8 = 2;

struct Signal {
    state: AtomicU8,
    task: AtomicWaker,
}

impl Wake for Signal {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        match self
            .state
            .compare_exchange(POLLING, NOTIFIED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) | Err(NOTIFIED) => {}
            Err(_) => self.task.wake(),
        }
    }
}

impl Joint {
    fn new() -> Self {
        let signal = Arc::new(Signal {
            state: AtomicU8::new(IDLE),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(Arc::clone(&signal));
        Self { signal, waker }
    }

    /// Polls the connection and then `f` (the response or the body) until `f` is ready, or
    /// both wait and neither woke the other meanwhile.
    fn poll<T>(
        &mut self,
        cx: &mut Context<'_>,
        conn: &mut Connection,
        closed: &mut bool,
        mut f: impl FnMut(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        self.signal.task.register(cx.waker());
        self.signal.state.store(POLLING, Ordering::Release);
        let mut jcx = Context::from_waker(&self.waker);
        let mut turns = 0;
        loop {
            if !*closed && Pin::new(&mut *conn).poll(&mut jcx).is_ready() {
                // Closed or failed: the body (or the response) reports how.
                *closed = true;
            }
            if let Poll::Ready(v) = f(&mut jcx) {
                // A turn asked for now is not lost: the caller polls again for more.
                self.signal.state.store(IDLE, Ordering::Release);
                return Poll::Ready(v);
            }
            match self.signal.state.compare_exchange(
                POLLING,
                IDLE,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return Poll::Pending,
                Err(_) => {
                    turns += 1;
                    if turns >= MAX_TURNS {
                        self.signal.state.store(IDLE, Ordering::Release);
                        cx.waker().wake_by_ref();
                        return Poll::Pending;
                    }
                    self.signal.state.store(POLLING, Ordering::Release);
                }
            }
        }
    }
}

/// An upstream response body that drives its connection while it is read, and returns the
/// connection to the pool once the body has ended (dropped before: the connection closes,
/// cancelling the upstream request).
pub struct UpstreamBody {
    body: Incoming,
    lease: Option<Box<Lease>>,
    pool: Arc<UpstreamPool>,
    key: PoolKey,
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let Some(lease) = this.lease.as_mut() else {
            return Pin::new(&mut this.body).poll_frame(cx);
        };
        let body = &mut this.body;
        let Lease {
            conn,
            closed,
            joint,
            ..
        } = &mut **lease;
        let polled = joint.poll(cx, conn, closed, |jcx| Pin::new(&mut *body).poll_frame(jcx));
        match &polled {
            Poll::Ready(None) => {
                if let Some(lease) = this.lease.take() {
                    this.pool.put(this.key.clone(), lease);
                }
            }
            Poll::Ready(Some(Err(_))) => this.lease = None,
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    async fn get(pool: &Arc<UpstreamPool>, uri: &Uri) -> Bytes {
        let req = Request::builder()
            .method(http::Method::POST)
            .uri(uri.clone())
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = pool.send(req).await.unwrap();
        match crate::http::read_capped(resp.into_body(), 1024, None).await {
            Ok(b) => b,
            Err(_) => panic!("body not read"),
        }
    }

    #[tokio::test]
    async fn connections_are_reused_and_one_the_upstream_closed_is_replaced() {
        let (uri, accepted) = closing_upstream();
        let pool = UpstreamPool::new(
            crate::upstream::connector(&crate::config::LimitsConfig::default()),
            4,
        );
        assert_eq!(get(&pool, &uri).await, "ok");
        assert_eq!(get(&pool, &uri).await, "ok");
        assert_eq!(
            accepted.load(Ordering::SeqCst),
            1,
            "the idle connection is reused"
        );
        // The upstream closes the idle connection; the next request gets a new one.
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(get(&pool, &uri).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    /// An upstream that answers each request `ok` with keep-alive, and closes a connection
    /// that stays idle for 20 ms (as upstreams close idle connections); counts connections.
    /// It runs on threads of its own, so it answers and closes even while the test's runtime
    /// is blocked.
    fn closing_upstream() -> (Uri, Arc<AtomicUsize>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        std::thread::spawn(move || {
            for s in listener.incoming() {
                let Ok(mut s) = s else { return };
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    // A read error is the idle timeout: the connection closes.
                    while let Ok(n) = s.read(&mut chunk) {
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            buf.clear();
                            let reply = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
                            s.write_all(reply).unwrap();
                        }
                    }
                });
            }
        });
        (format!("http://{addr}/v1/x").parse().unwrap(), accepted)
    }

    /// The runtime has not seen the upstream close the idle connection (its I/O driver did
    /// not turn since, as on a busy runtime): the pool still finds out, and the request goes
    /// out on a new connection instead of failing on the closed one.
    #[tokio::test]
    async fn a_close_the_runtime_has_not_seen_yet_is_found_before_reuse() {
        let (uri, accepted) = closing_upstream();
        let pool = UpstreamPool::new(
            crate::upstream::connector(&crate::config::LimitsConfig::default()),
            4,
        );
        assert_eq!(get(&pool, &uri).await, "ok");
        // Blocks the (single-threaded) runtime while the upstream closes the connection.
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(get(&pool, &uri).await, "ok");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn requests_go_out_in_origin_form_with_their_host() {
        let mut req = Request::builder()
            .uri("https://example.com/v1/chat/completions?api-version=1")
            .body(Full::new(Bytes::new()))
            .unwrap();
        prepare(&mut req);
        assert_eq!(req.uri().to_string(), "/v1/chat/completions?api-version=1");
        assert_eq!(req.headers()[header::HOST], "example.com");
        let mut req = Request::builder()
            .uri("http://127.0.0.1:8080")
            .body(Full::new(Bytes::new()))
            .unwrap();
        prepare(&mut req);
        assert_eq!(req.uri().to_string(), "/");
        assert_eq!(req.headers()[header::HOST], "127.0.0.1:8080");
    }
}
