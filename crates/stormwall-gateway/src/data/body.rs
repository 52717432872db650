//! Response bodies: a whole body, or a relay that passes upstream chunks to the client as
//! they arrive (never buffering a stream whole), watches them for usage over borrowed
//! slices, enforces the idle timeout between chunks, and reports how the stream ended
//! exactly once — including when the client goes away, which drops the relay and with it
//! the upstream connection, cancelling the upstream request, and when the key is suspended
//! or revoked mid-stream, which ends the stream the same way.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use stormwall_store::Durable;
use stormwall_types::{KeyStatus, StreamOutcome};
use tokio::time::Sleep;

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

/// Appends the output text of one SSE data payload to `out`.
pub fn text_in_chunk(data: &[u8], out: &mut String) {
    // Most chunks carry text; the cheap test skips role-only and usage-only chunks.
    if memchr::memmem::find(data, b"\"content\"").is_none()
        && memchr::memmem::find(data, b"\"text\"").is_none()
        && memchr::memmem::find(data, b"\"delta\"").is_none()
    {
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
        while let Some(pos) = memchr::memmem::find(rest, b"\n\n") {
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
            if memchr::memmem::find(data, b"\"usage\"").is_some() {
                let (usage, model) = usage_in_json(data);
                if let Some(u) = usage.filter(|u| u.input().is_some()) {
                    self.usage = Some(u);
                }
                if model.is_some() {
                    self.model = model;
                }
            } else if self.model.is_none() && memchr::memmem::find(data, b"\"model\"").is_some() {
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
    memchr::memmem::find(next, b"\n\n").map(|p| p + 2)
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
    Upstream(Incoming),
    /// Pre-built events (the built-in mock upstream).
    Events(VecDeque<Bytes>),
}

/// A streaming relay.
pub struct Relay {
    source: Source,
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
    /// Frames held back (from `[DONE]` on) until `durable` resolves.
    held: VecDeque<Frame<Bytes>>,
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
            held: VecDeque::new(),
            durable: None,
        }
    }

    /// Holds `data: [DONE]` and everything after it until the stream has ended and its
    /// event is journaled, so a client that saw the stream complete has its record.
    pub fn hold_done(mut self) -> Self {
        self.hold_done = true;
        self
    }

    /// After the end: once the event is journaled, the held frames, then the trailer. An
    /// event that could not be journaled (fail_closed) breaks the stream instead, so the
    /// client never sees a complete answer without its record.
    fn poll_after_end(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(durable) = &mut self.durable {
            let written = std::task::ready!(Pin::new(durable).poll(cx));
            self.durable = None;
            if written.is_err() {
                self.held.clear();
                self.trailer = None;
                return Poll::Ready(Some(Err("usage event not journaled".into())));
            }
        }
        if let Some(frame) = self.held.pop_front() {
            return Poll::Ready(Some(Ok(frame)));
        }
        Poll::Ready(self.trailer.take().map(|b| Ok(Frame::data(b))))
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

    fn poll_relay(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.done {
            return self.poll_after_end(cx);
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
        let polled = match &mut self.source {
            Source::Events(q) => Poll::Ready(q.pop_front().map(|b| Ok(Frame::data(b)))),
            Source::Upstream(inc) => Pin::new(inc).poll_frame(cx),
        };
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.scanner.feed(data);
                    if self.scanner.collect_text {
                        let cut = self
                            .observer
                            .as_mut()
                            .and_then(|o| o.text(&self.scanner.text));
                        self.scanner.text.clear();
                        if let Some(outcome) = cut {
                            // Dropping the upstream body cancels the upstream request.
                            self.source = Source::Events(VecDeque::new());
                            self.end(outcome);
                            return self.poll_after_end(cx);
                        }
                    }
                    self.bytes += data.len() as u64;
                }
                // Re-arming the timer on every frame would take the timer wheel's lock per
                // chunk; instead note the time, and push the deadline back only when it fires.
                self.last_frame = tokio::time::Instant::now();
                if self.hold_done && self.scanner.done {
                    // The answer's end: held until its event is journaled (see `hold_done`);
                    // polled again at once for the rest of the stream.
                    self.held.push_back(frame);
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(_))) => {
                self.end(StreamOutcome::UpstreamCut);
                self.poll_after_end(cx)
            }
            Poll::Ready(None) => {
                self.end(StreamOutcome::Completed);
                self.poll_after_end(cx)
            }
            Poll::Pending => loop {
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
            },
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

    #[test]
    fn responses_usage_is_nested() {
        let (u, m) = usage_in_json(br#"{"type":"response.completed","response":{"model":"m","usage":{"input_tokens":5,"output_tokens":2}}}"#);
        assert_eq!(u.and_then(|u| u.input()), Some(5));
        assert_eq!(m.as_deref(), Some("m"));
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
