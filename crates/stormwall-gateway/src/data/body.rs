//! Response bodies: a whole body, or a relay that passes upstream chunks to the client as
//! they arrive (never buffering a stream whole), watches them for usage over borrowed
//! slices, enforces the idle timeout between chunks, and reports how the stream ended
//! exactly once — including when the client goes away, which drops the relay and with it
//! the upstream connection, cancelling the upstream request, and when the key is suspended
//! or revoked mid-stream, which ends the stream the same way.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::LazyLock;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use memchr::memmem::Finder;
use stormwall_store::Durable;
use stormwall_types::{KeyStatus, StreamOutcome};
use tokio::time::Sleep;

use crate::data::conn::UpstreamBody;
use crate::data::keycache::StopWatch;

/// Error type of [`ProxyBody`]; relays end streams cleanly instead of failing them.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// Token usage reported by an upstream (chat/completions/embeddings or responses naming).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
pub struct Usage {
    /// Chat/completions input tokens.
    #[serde(default)]
    pub prompt_tokens: Option<u64>,
    /// Chat/completions output tokens.
    #[serde(default)]
    pub completion_tokens: Option<u64>,
    /// Responses API input tokens.
    #[serde(default)]
    pub input_tokens: Option<u64>,
    /// Responses API output tokens.
    #[serde(default)]
    pub output_tokens: Option<u64>,
    /// Total tokens.
    #[serde(default)]
    pub total_tokens: Option<u64>,
}

impl Usage {
    /// Input tokens, whichever naming the upstream used.
    pub fn input(&self) -> Option<u64> {
        self.prompt_tokens.or(self.input_tokens)
    }

    /// Output tokens, whichever naming the upstream used (embeddings: 0).
    pub fn output(&self) -> Option<u64> {
        self.completion_tokens
            .or(self.output_tokens)
            .or_else(|| self.input().map(|_| 0))
    }
}

#[derive(serde::Deserialize)]
struct UsageCarrier {
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(default)]
    model: Option<String>,
    #[serde(default)]
    response: Option<Box<UsageCarrier>>,
}

/// Usage and model found in a JSON document (a whole body or one SSE event's data).
pub fn usage_in_json(json: &[u8]) -> (Option<Usage>, Option<String>) {
    match serde_json::from_slice::<UsageCarrier>(json) {
        Ok(c) => {
            let nested = c
                .response
                .map(|r| (r.usage, r.model))
                .unwrap_or((None, None));
            (c.usage.or(nested.0), c.model.or(nested.1))
        }
        Err(_) => (None, None),
    }
}

/// Largest partial SSE event held while waiting for its end; past it, scanning stops
/// (the relay goes on).
const MAX_PARTIAL_EVENT: usize = 1024 * 1024;

/// Watches an SSE stream for usage and counts content events, over borrowed slices; with
/// `collect_text`, also gathers the output text deltas for the safety stage.
#[derive(Debug, Default)]
pub struct SseScanner {
    partial: Vec<u8>,
    overflowed: bool,
    /// Usage from the final chunk, when the upstream sent one.
    pub usage: Option<Usage>,
    /// Model the upstream named.
    pub model: Option<String>,
    /// Data events seen (roughly one output token each, for when no usage arrives).
    pub data_events: u64,
    /// `data: [DONE]` was seen.
    pub done: bool,
    /// Gather `choices[].delta.content`, `choices[].text` and responses
    /// `response.output_text.delta` text into [`SseScanner::text`].
    pub collect_text: bool,
    /// Output text gathered since the caller last drained it.
    pub text: String,
}

/// The text-carrying fields of one streamed chunk (chat, completions, responses).
#[derive(serde::Deserialize)]
struct TextChunk<'a> {
    #[serde(borrow, default)]
    choices: Vec<TextChoice<'a>>,
    #[serde(borrow, default, rename = "type")]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    delta: Option<&'a serde_json::value::RawValue>,
}

#[derive(serde::Deserialize)]
struct TextChoice<'a> {
    #[serde(borrow, default)]
    delta: Option<TextDelta<'a>>,
    #[serde(borrow, default)]
    text: Option<std::borrow::Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct TextDelta<'a> {
    #[serde(borrow, default)]
    content: Option<std::borrow::Cow<'a, str>>,
}

/// The substrings the stream scan looks for, each searcher built once: `memmem::find`
/// builds a searcher on every call, and on a stream's short chunks building them cost more
/// than searching (the scan looks for up to nine per chunk).
struct Needles {
    blank_line: Finder<'static>,
    content_key: Finder<'static>,
    content: Finder<'static>,
    delta_open: Finder<'static>,
    delta: Finder<'static>,
    text: Finder<'static>,
    kind: Finder<'static>,
    usage: Finder<'static>,
    model: Finder<'static>,
}

static NEEDLES: LazyLock<Needles> = LazyLock::new(|| Needles {
    blank_line: Finder::new(b"\n\n"),
    content_key: Finder::new(CONTENT_KEY),
    content: Finder::new(b"\"content\""),
    delta_open: Finder::new(b"\"delta\":{"),
    delta: Finder::new(b"\"delta\""),
    text: Finder::new(b"\"text\""),
    kind: Finder::new(b"\"type\""),
    usage: Finder::new(b"\"usage\""),
    model: Finder::new(b"\"model\""),
});

/// A chunk's `"content":"` key, compact encoding.
const CONTENT_KEY: &[u8] = b"\"content\":\"";

/// The text of a chunk's one `delta.content` string, found without parsing the chunk.
enum DeltaText<'a> {
    /// No escapes: the text as it is.
    Plain(&'a str),
    /// The JSON string literal, quotes included, to be unescaped.
    Escaped(&'a [u8]),
}

/// The common chat chunk — one choice whose delta carries a `"content":"…"` string, in the
/// compact encoding every OpenAI-compatible upstream sends — read by scanning instead of
/// parsing (most of a stream's relay cost was parsing each chunk). Anything else (several
/// `content` keys, `text` or `type` fields, spaces after the colon, a chunk that is not
/// well formed around the string) returns `None` and takes the full parse.
fn lone_delta_content(data: &[u8]) -> Option<DeltaText<'_>> {
    let n = &*NEEDLES;
    // A quote inside a JSON string is always escaped, so `"content":"` can only be a key.
    let at = n.content_key.find(data)?;
    let start = at + CONTENT_KEY.len();
    if n.content_key.find(&data[start..]).is_some()
        || n.delta_open.find(&data[..at]).is_none()
        || n.text.find(data).is_some()
        || n.kind.find(data).is_some()
    {
        return None;
    }
    let mut escaped = false;
    let mut i = start;
    loop {
        let q = i + memchr::memchr2(b'"', b'\\', &data[i..])?;
        if data[q] == b'\\' {
            escaped = true;
            // Skip the escaped byte (an escaped quote does not end the string).
            i = q + 2;
            if i > data.len() {
                return None;
            }
            continue;
        }
        // The string must be followed by the end of the delta or another field.
        if !matches!(data.get(q + 1), Some(b'}' | b',')) {
            return None;
        }
        return if escaped {
            Some(DeltaText::Escaped(&data[start - 1..=q]))
        } else {
            std::str::from_utf8(&data[start..q])
                .ok()
                .map(DeltaText::Plain)
        };
    }
}

/// Appends the output text of one SSE data payload to `out`.
pub fn text_in_chunk(data: &[u8], out: &mut String) {
    // Most chunks carry text; the cheap test skips role-only and usage-only chunks.
    let n = &*NEEDLES;
    if n.content.find(data).is_none() && n.text.find(data).is_none() && n.delta.find(data).is_none()
    {
        return;
    }
    if let Some(text) = lone_delta_content(data) {
        match text {
            DeltaText::Plain(t) => out.push_str(t),
            DeltaText::Escaped(raw) => {
                if let Ok(t) = serde_json::from_slice::<std::borrow::Cow<'_, str>>(raw) {
                    out.push_str(&t);
                }
            }
        }
        return;
    }
    let Ok(chunk) = serde_json::from_slice::<TextChunk<'_>>(data) else {
        return;
    };
    for c in &chunk.choices {
        if let Some(t) = c.delta.as_ref().and_then(|d| d.content.as_deref()) {
            out.push_str(t);
        }
        if let Some(t) = c.text.as_deref() {
            out.push_str(t);
        }
    }
    if chunk.kind.as_deref() == Some("response.output_text.delta")
        && let Some(raw) = chunk.delta
        && let Ok(t) = serde_json::from_str::<std::borrow::Cow<'_, str>>(raw.get())
    {
        out.push_str(&t);
    }
}

impl SseScanner {
    /// Feeds one chunk.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.overflowed {
            return;
        }
        let mut rest = chunk;
        if !self.partial.is_empty() {
            // Finish the event that straddled the previous chunk boundary.
            match find_event_end(&self.partial, rest) {
                Some(end) => {
                    let mut ev = std::mem::take(&mut self.partial);
                    ev.extend_from_slice(&rest[..end]);
                    self.event(&ev);
                    rest = &rest[end..];
                }
                None => {
                    self.stash(rest);
                    return;
                }
            }
        }
        while let Some(pos) = NEEDLES.blank_line.find(rest) {
            self.event(&rest[..pos]);
            rest = &rest[pos + 2..];
        }
        if !rest.is_empty() {
            self.stash(rest);
        }
    }

    fn stash(&mut self, bytes: &[u8]) {
        if self.partial.len() + bytes.len() > MAX_PARTIAL_EVENT {
            self.overflowed = true;
            self.partial = Vec::new();
        } else {
            self.partial.extend_from_slice(bytes);
        }
    }

    fn event(&mut self, ev: &[u8]) {
        for line in ev.split(|&b| b == b'\n') {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let Some(data) = line.strip_prefix(b"data:") else {
                continue;
            };
            let data = data.strip_prefix(b" ").unwrap_or(data);
            if data == b"[DONE]" {
                self.done = true;
                continue;
            }
            self.data_events += 1;
            if self.collect_text {
                text_in_chunk(data, &mut self.text);
            }
            if NEEDLES.usage.find(data).is_some() {
                let (usage, model) = usage_in_json(data);
                if let Some(u) = usage.filter(|u| u.input().is_some()) {
                    self.usage = Some(u);
                }
                if model.is_some() {
                    self.model = model;
                }
            } else if self.model.is_none() && NEEDLES.model.find(data).is_some() {
                self.model = usage_in_json(data).1;
            }
        }
    }
}

/// Where the end of the event begun in `partial` lies in `next`, as an index into `next`
/// just past the blank line.
fn find_event_end(partial: &[u8], next: &[u8]) -> Option<usize> {
    // The "\n\n" may be split across the boundary.
    if partial.last() == Some(&b'\n') && next.first() == Some(&b'\n') {
        return Some(1);
    }
    NEEDLES.blank_line.find(next).map(|p| p + 2)
}

/// How a relayed stream ended, with what was learned from it.
#[derive(Debug)]
pub struct StreamEnd {
    /// Outcome.
    pub outcome: StreamOutcome,
    /// Usage and counters seen.
    pub scanner: SseScanner,
    /// Bytes relayed.
    pub bytes: u64,
}

/// Watches a relayed stream for the stages after the relay (output screening, accounting):
/// it may read each chunk's text and cut the stream, and it hears how the stream ended,
/// exactly once. The transport knows nothing else about them.
pub trait StreamObserver: Send {
    /// Whether it reads the chunks' text (the relay then collects the deltas for it).
    fn wants_text(&self) -> bool {
        false
    }

    /// The text deltas of the chunk just received; `Some(outcome)` cuts the stream there:
    /// the chunk is withheld, the upstream dropped (cancelling it) and the client gets the
    /// error event for that outcome.
    fn text(&mut self, _text: &str) -> Option<StreamOutcome> {
        None
    }

    /// The stream ended, for whatever reason (called exactly once); the stream's last
    /// bytes wait for the returned [`Durable`] (its event journaled).
    fn ended(&mut self, end: StreamEnd) -> Durable;
}

/// Where relayed chunks come from.
pub enum Source {
    /// A real upstream response body.
    Upstream(UpstreamBody),
    /// Pre-built events (the built-in mock upstream).
    Events(VecDeque<Bytes>),
}

/// Most bytes held back to be sent as one frame.
const MAX_COALESCED: usize = 64 * 1024;

/// Data chunks received and screened but not yet sent: the first one as it came (sent
/// without a copy when nothing joins it), the rest appended to a buffer. Every frame costs
/// the connection a write, and upstream chunks come in bursts: the upstream connection is
/// driven by this task ([`crate::data::conn`]), so one poll reads all the socket holds,
/// and what it held goes out as one frame when the upstream has nothing more for now.
#[derive(Default)]
struct Held {
    lone: Option<Bytes>,
    joined: BytesMut,
}

impl Held {
    fn push(&mut self, data: Bytes) {
        if self.joined.is_empty() && self.lone.is_none() {
            self.lone = Some(data);
            return;
        }
        if let Some(first) = self.lone.take() {
            self.joined.reserve(first.len() + data.len());
            self.joined.extend_from_slice(&first);
        }
        self.joined.extend_from_slice(&data);
    }

    fn len(&self) -> usize {
        self.lone.as_ref().map_or(self.joined.len(), Bytes::len)
    }

    fn take(&mut self) -> Option<Bytes> {
        match self.lone.take() {
            Some(b) => Some(b),
            None if self.joined.is_empty() => None,
            None => Some(self.joined.split().freeze()),
        }
    }
}

/// A streaming relay.
pub struct Relay {
    source: Source,
    /// Screened chunks waiting to be sent together.
    held: Held,
    /// A non-data frame (trailers) that arrived while data was held; sent after it.
    after_held: Option<Frame<Bytes>>,
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    last_frame: tokio::time::Instant,
    scanner: SseScanner,
    bytes: u64,
    observer: Option<Box<dyn StreamObserver>>,
    trailer: Option<Bytes>,
    done: bool,
    stop: Option<StopWatch>,
    /// Hold `[DONE]` and what follows until the event is journaled.
    hold_done: bool,
    /// The chunks from `[DONE]` on, sent once `durable` resolves.
    withheld: VecDeque<Bytes>,
    /// The event of the ended stream, being journaled.
    durable: Option<Durable>,
}

impl Relay {
    /// Relays `source` to `observer`, which hears when it ends for any reason.
    pub fn new(source: Source, idle_timeout: Duration, observer: Box<dyn StreamObserver>) -> Self {
        let scanner = SseScanner {
            collect_text: observer.wants_text(),
            ..SseScanner::default()
        };
        Self {
            source,
            held: Held::default(),
            after_held: None,
            idle: Box::pin(tokio::time::sleep(idle_timeout)),
            idle_timeout,
            last_frame: tokio::time::Instant::now(),
            scanner,
            bytes: 0,
            observer: Some(observer),
            trailer: None,
            done: false,
            stop: None,
            hold_done: false,
            withheld: VecDeque::new(),
            durable: None,
        }
    }

    /// Holds `data: [DONE]` and everything after it until the stream has ended and its
    /// event is journaled, so a client that saw the stream complete has its record.
    pub fn hold_done(mut self) -> Self {
        self.hold_done = true;
        self
    }

    /// Ends the stream as soon as its key is suspended or revoked — even while the upstream
    /// is silent: the upstream is dropped (cancelling it) and the client gets the error a
    /// request with the key would now get, without `[DONE]`.
    pub fn with_stop(mut self, stop: StopWatch) -> Self {
        self.stop = Some(stop);
        self
    }

    fn end(&mut self, outcome: StreamOutcome) {
        if let Some(mut observer) = self.observer.take() {
            self.durable = Some(observer.ended(StreamEnd {
                outcome,
                scanner: std::mem::take(&mut self.scanner),
                bytes: self.bytes,
            }));
        }
        self.trailer = crate::error::stream_end_event(outcome);
        self.done = true;
    }

    /// After the end: what was held (it came before `[DONE]`), then — once the event is
    /// journaled — the withheld end of the stream and the trailer. An event that could not
    /// be journaled (fail_closed) breaks the stream instead, so the client never sees a
    /// complete answer without its record.
    fn poll_after_end(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(b) = self.held.take() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        if let Some(durable) = &mut self.durable {
            let written = std::task::ready!(Pin::new(durable).poll(cx));
            self.durable = None;
            if written.is_err() {
                self.withheld.clear();
                self.trailer = None;
                return Poll::Ready(Some(Err("usage event not journaled".into())));
            }
        }
        if let Some(b) = self.withheld.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        Poll::Ready(self.trailer.take().map(|b| Ok(Frame::data(b))))
    }

    fn poll_relay(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.done {
            return self.poll_after_end(cx);
        }
        if let Some(frame) = self.after_held.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        if let Some(stop) = &mut self.stop
            && let Poll::Ready(status) = stop.poll_stopped(cx)
        {
            // Dropping the upstream body cancels the upstream request.
            self.source = Source::Events(VecDeque::new());
            self.end(match status {
                KeyStatus::Suspended => StreamOutcome::KeySuspended,
                _ => StreamOutcome::KeyRevoked,
            });
            return self.poll_after_end(cx);
        }
        loop {
            let polled = match &mut self.source {
                Source::Events(q) => Poll::Ready(q.pop_front().map(|b| Ok(Frame::data(b)))),
                Source::Upstream(inc) => Pin::new(inc).poll_frame(cx),
            };
            match polled {
                Poll::Ready(Some(Ok(frame))) => {
                    // Re-arming the timer on every frame would take the timer wheel's lock
                    // per chunk; instead note the time, and push the deadline back only when
                    // it fires.
                    self.last_frame = tokio::time::Instant::now();
                    let data = match frame.into_data() {
                        Ok(data) => data,
                        Err(frame) => match self.held.take() {
                            Some(held) => {
                                self.after_held = Some(frame);
                                return Poll::Ready(Some(Ok(Frame::data(held))));
                            }
                            None => return Poll::Ready(Some(Ok(frame))),
                        },
                    };
                    self.scanner.feed(&data);
                    if self.scanner.collect_text {
                        let cut = self
                            .observer
                            .as_mut()
                            .and_then(|o| o.text(&self.scanner.text));
                        self.scanner.text.clear();
                        if let Some(outcome) = cut {
                            // Dropping the upstream body cancels the upstream request; what
                            // was held passed screening and goes first.
                            self.source = Source::Events(VecDeque::new());
                            self.end(outcome);
                            return self.poll_after_end(cx);
                        }
                    }
                    self.bytes += data.len() as u64;
                    if self.hold_done && self.scanner.done {
                        // The answer's end: withheld until its event is journaled (see
                        // `hold_done`); polling goes on for the rest of the stream.
                        self.withheld.push_back(data);
                        continue;
                    }
                    self.held.push(data);
                    if self.held.len() >= MAX_COALESCED {
                        return Poll::Ready(self.held.take().map(|b| Ok(Frame::data(b))));
                    }
                }
                Poll::Ready(Some(Err(_))) => {
                    self.end(StreamOutcome::UpstreamCut);
                    return self.poll_after_end(cx);
                }
                Poll::Ready(None) => {
                    self.end(StreamOutcome::Completed);
                    return self.poll_after_end(cx);
                }
                Poll::Pending if self.held.len() > 0 => {
                    return Poll::Ready(self.held.take().map(|b| Ok(Frame::data(b))));
                }
                Poll::Pending => return self.poll_idle(cx),
            }
        }
    }

    /// Nothing arrived and nothing is held: wait, ending the stream at the idle timeout.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        loop {
            match self.idle.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(()) => {
                    let deadline = self.last_frame + self.idle_timeout;
                    if deadline > tokio::time::Instant::now() {
                        // Chunks arrived since the timer was set: wait out the rest.
                        self.idle.as_mut().reset(deadline);
                        continue;
                    }
                    self.end(StreamOutcome::IdleTimeout);
                    return self.poll_after_end(cx);
                }
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        // Dropped before the end: the client went away (or the server is shutting down).
        if self.observer.is_some() {
            self.end(StreamOutcome::ClientDisconnected);
        }
    }
}

enum Inner {
    Full(Option<Bytes>),
    Relay(Box<Relay>),
    /// A complete body whose bytes wait until the request's event is journaled.
    After(Durable, Option<Bytes>),
}

/// Every response body the gateway sends.
pub struct ProxyBody {
    inner: Inner,
}

impl ProxyBody {
    /// A complete body.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self {
            inner: Inner::Full(Some(bytes.into())),
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        Self {
            inner: Inner::Full(None),
        }
    }

    /// A streaming relay.
    pub fn relay(relay: Relay) -> Self {
        Self {
            inner: Inner::Relay(Box::new(relay)),
        }
    }

    /// Waits until a body made by [`ProxyBody::after`] may be sent, so the handler returns
    /// a body that is ready at once (hyper then writes it with the headers, in one write).
    pub async fn settle(&mut self) {
        if let Inner::After(durable, _) = &mut self.inner {
            // The outcome stays in `durable`; polling the body reports it.
            let _ = durable.await;
        }
    }

    /// This complete body, sent once `durable` resolves (the request's event journaled);
    /// if the event could not be journaled, the body breaks instead of completing. A relay
    /// waits for its own event (see [`Relay::hold_done`]) and is returned unchanged.
    pub fn after(self, durable: Durable) -> Self {
        match self.inner {
            Inner::Full(b) => Self {
                inner: Inner::After(durable, b),
            },
            inner => Self { inner },
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        match &mut this.inner {
            Inner::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Inner::Relay(r) => r.poll_relay(cx),
            Inner::After(durable, b) => {
                let written = std::task::ready!(Pin::new(durable).poll(cx));
                if written.is_err() {
                    return Poll::Ready(Some(Err("usage event not journaled".into())));
                }
                let b = b.take();
                this.inner = Inner::Full(None);
                Poll::Ready(b.map(|b| Ok(Frame::data(b))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(&self.inner, Inner::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Full(Some(b)) | Inner::After(_, Some(b)) => SizeHint::with_exact(b.len() as u64),
            Inner::Full(None) | Inner::After(_, None) => SizeHint::with_exact(0),
            Inner::Relay(_) => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &str = "data: {\"id\":\"c\",\"model\":\"gpt-4o-mini\",\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n\
data: {\"id\":\"c\",\"choices\":[],\"usage\":{\"prompt_tokens\":11,\"completion_tokens\":3,\"total_tokens\":14}}\n\n\
data: [DONE]\n\n";

    #[test]
    fn finds_usage_at_any_chunking() {
        for split in 1..STREAM.len() {
            for step in [1, 7, split] {
                let mut s = SseScanner::default();
                for chunk in STREAM.as_bytes().chunks(step) {
                    s.feed(chunk);
                }
                assert_eq!(s.usage.and_then(|u| u.input()), Some(11), "step {step}");
                assert_eq!(s.usage.and_then(|u| u.output()), Some(3));
                assert_eq!(s.model.as_deref(), Some("gpt-4o-mini"));
                assert_eq!(s.data_events, 2);
            }
        }
    }

    #[test]
    fn collects_output_text_at_any_chunking() {
        let stream = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n\
data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n\
data: {\"choices\":[{\"text\":\"lo\"}]}\n\n\
data: {\"type\":\"response.output_text.delta\",\"delta\":\" w\\u00f6rld\"}\n\n\
data: {\"type\":\"response.function_call_arguments.delta\",\"delta\":\"{}\"}\n\n\
data: [DONE]\n\n";
        for step in [1, 5, stream.len()] {
            let mut s = SseScanner {
                collect_text: true,
                ..SseScanner::default()
            };
            for chunk in stream.as_bytes().chunks(step) {
                s.feed(chunk);
            }
            assert_eq!(s.text, "Hello wörld", "step {step}");
        }
        let mut off = SseScanner::default();
        off.feed(stream.as_bytes());
        assert!(off.text.is_empty());
    }

    /// The full parse alone, for comparison with the scanning fast path.
    fn parsed_text(data: &[u8]) -> String {
        let mut out = String::new();
        if let Ok(chunk) = serde_json::from_slice::<TextChunk<'_>>(data) {
            for c in &chunk.choices {
                if let Some(t) = c.delta.as_ref().and_then(|d| d.content.as_deref()) {
                    out.push_str(t);
                }
                if let Some(t) = c.text.as_deref() {
                    out.push_str(t);
                }
            }
        }
        out
    }

    #[test]
    fn scanned_delta_text_matches_the_full_parse() {
        let texts = [
            "Hi",
            "",
            " w\\u00f6rld",
            "say \\\"content\\\":\\\"x\\\"",
            "tab\\there\\\\",
            "caf\u{e9} \u{1f600}",
            "ends in backslash \\\\",
        ];
        let shapes = [
            |t: &str| {
                format!(
                    "{{\"id\":\"c\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"{t}\"}},\"finish_reason\":null}}]}}"
                )
            },
            |t: &str| {
                format!(
                    "{{\"choices\":[{{\"delta\":{{\"role\":\"assistant\",\"content\":\"{t}\"}}}}]}}"
                )
            },
            |t: &str| {
                format!("{{\"choices\":[{{\"delta\":{{\"content\":\"{t}\",\"refusal\":null}}}}]}}")
            },
            |t: &str| format!("{{\"choices\":[{{\"delta\":{{\"content\": \"{t}\"}}}}]}}"),
            |t: &str| {
                format!(
                    "{{\"choices\":[{{\"delta\":{{\"content\":\"{t}\"}}}},{{\"delta\":{{\"content\":\"{t}\"}}}}]}}"
                )
            },
            |t: &str| format!("{{\"choices\":[{{\"delta\":{{\"content\":\"{t}\""),
            |t: &str| format!("{{\"content\":\"{t}\",\"choices\":[]}}"),
        ];
        for text in texts {
            for shape in shapes {
                let data = shape(text);
                let mut fast = String::new();
                text_in_chunk(data.as_bytes(), &mut fast);
                assert_eq!(fast, parsed_text(data.as_bytes()), "{data}");
            }
        }
        let mut fast = String::new();
        text_in_chunk(br#"{"choices":[{"delta":{"content":"a\"b"}}]}"#, &mut fast);
        assert_eq!(fast, "a\"b");
    }

    #[test]
    fn responses_usage_is_nested() {
        let (u, m) = usage_in_json(br#"{"type":"response.completed","response":{"model":"m","usage":{"input_tokens":5,"output_tokens":2}}}"#);
        assert_eq!(u.and_then(|u| u.input()), Some(5));
        assert_eq!(m.as_deref(), Some("m"));
    }

    /// Records how the stream ended; cuts it when the text contains `cut_on`.
    struct Watch {
        cut_on: Option<&'static str>,
        ended: std::sync::Arc<std::sync::Mutex<Vec<(StreamOutcome, u64)>>>,
    }

    impl StreamObserver for Watch {
        fn wants_text(&self) -> bool {
            self.cut_on.is_some()
        }

        fn text(&mut self, text: &str) -> Option<StreamOutcome> {
            self.cut_on
                .filter(|c| text.contains(c))
                .map(|_| StreamOutcome::ContentBlocked)
        }

        fn ended(&mut self, end: StreamEnd) -> Durable {
            self.ended.lock().unwrap().push((end.outcome, end.bytes));
            Durable::ready()
        }
    }

    fn chunk(text: &str) -> Bytes {
        Bytes::from(format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"{text}\"}}}}]}}\n\n"
        ))
    }

    /// A relay of `chunks` to a [`Watch`] recording into `ended`.
    fn watched(
        chunks: VecDeque<Bytes>,
        cut_on: Option<&'static str>,
        ended: &std::sync::Arc<std::sync::Mutex<Vec<(StreamOutcome, u64)>>>,
    ) -> Relay {
        let watch = Watch {
            cut_on,
            ended: std::sync::Arc::clone(ended),
        };
        Relay::new(
            Source::Events(chunks),
            Duration::from_secs(5),
            Box::new(watch),
        )
    }

    /// Polls the relay to its end with a waker that does nothing, as a connection would.
    fn drain(relay: &mut Relay) -> Vec<Bytes> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut frames = Vec::new();
        for _ in 0..100 {
            match relay.poll_relay(&mut cx) {
                Poll::Ready(Some(Ok(f))) => frames.push(f.into_data().unwrap()),
                Poll::Ready(None) => return frames,
                Poll::Ready(Some(Err(e))) => panic!("{e}"),
                Poll::Pending => {}
            }
        }
        panic!("the relay never ended");
    }

    #[tokio::test]
    async fn chunks_ready_together_go_out_as_one_frame() {
        let ended = std::sync::Arc::default();
        let chunks: VecDeque<Bytes> = ["a", "b", "c"].into_iter().map(chunk).collect();
        let whole: Vec<u8> = chunks.iter().flatten().copied().collect();
        let frames = drain(&mut watched(chunks, None, &ended));
        assert_eq!(frames.len(), 1, "{frames:?}");
        assert_eq!(frames[0], whole);
        assert_eq!(
            *ended.lock().unwrap(),
            vec![(StreamOutcome::Completed, whole.len() as u64)]
        );
    }

    /// An observer whose event is journaled when the test says so.
    struct Journaled(
        Option<tokio::sync::oneshot::Receiver<Result<(), stormwall_store::journal::NotJournaled>>>,
    );

    impl StreamObserver for Journaled {
        fn ended(&mut self, _end: StreamEnd) -> Durable {
            self.0.take().map_or_else(Durable::ready, Durable::after)
        }
    }

    #[tokio::test]
    async fn done_waits_for_the_journal_and_what_came_before_it_does_not() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let chunks: VecDeque<Bytes> = [chunk("a"), chunk("b"), Bytes::from("data: [DONE]\n\n")]
            .into_iter()
            .collect();
        let before: Vec<u8> = chunks.iter().take(2).flatten().copied().collect();
        let mut relay = Relay::new(
            Source::Events(chunks),
            Duration::from_secs(5),
            Box::new(Journaled(Some(rx))),
        )
        .hold_done();
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let first = loop {
            if let Poll::Ready(f) = relay.poll_relay(&mut cx) {
                break f.unwrap().unwrap().into_data().unwrap();
            }
        };
        assert_eq!(first, before);
        for _ in 0..10 {
            assert!(
                relay.poll_relay(&mut cx).is_pending(),
                "[DONE] before the journal"
            );
        }
        tx.send(Ok(())).unwrap();
        let rest = drain(&mut relay);
        assert_eq!(rest, vec![Bytes::from("data: [DONE]\n\n")]);
    }

    #[tokio::test]
    async fn a_cut_sends_what_passed_then_the_error_and_never_the_cut_chunk() {
        let ended = std::sync::Arc::default();
        let chunks: VecDeque<Bytes> = ["fine", "also fine", "BAD", "after"]
            .into_iter()
            .map(chunk)
            .collect();
        let passed: Vec<u8> = chunks.iter().take(2).flatten().copied().collect();
        let frames = drain(&mut watched(chunks, Some("BAD"), &ended));
        assert_eq!(frames.len(), 2, "{frames:?}");
        assert_eq!(frames[0], passed);
        let trailer = String::from_utf8_lossy(&frames[1]);
        assert!(trailer.contains("error"), "{trailer}");
        assert!(!trailer.contains("BAD") && !trailer.contains("after"));
        assert_eq!(
            *ended.lock().unwrap(),
            vec![(StreamOutcome::ContentBlocked, passed.len() as u64)]
        );
    }

    #[test]
    fn huge_partial_event_stops_scanning_without_growing() {
        let mut s = SseScanner::default();
        let big = vec![b'a'; 600 * 1024];
        s.feed(&big);
        s.feed(&big);
        assert!(s.partial.is_empty());
        s.feed(b"data: {\"usage\":{\"prompt_tokens\":1}}\n\n");
        assert!(s.usage.is_none());
    }
}
