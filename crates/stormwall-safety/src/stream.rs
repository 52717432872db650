//! Incremental screening of streamed output: a sliding window over text deltas.
//!
//! Deltas are appended to a buffer; every [`STREAM_STEP`] new bytes the buffer is screened,
//! then trimmed to the last [`STREAM_OVERLAP`] bytes once it passes [`STREAM_WINDOW`], so
//! a phrase split across deltas or windows is still seen whole and work per byte stays
//! constant. Once a block fires the screener stays blocked.

use crate::category::Kind;
use crate::policy::{Action, Profile};
use crate::screen::Screener;
use crate::verdict::Verdict;

/// Largest buffer screened at once.
pub const STREAM_WINDOW: usize = 2048;
/// New bytes that trigger a screening pass.
pub const STREAM_STEP: usize = 192;
/// Bytes kept from the previous window: longer than any lexicon phrase.
pub const STREAM_OVERLAP: usize = 512;

/// What to do with the stream after a delta.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamDecision {
    /// Keep forwarding.
    Continue,
    /// Cut the stream: send a final error event instead of more content.
    Block(Box<Verdict>),
}

/// The sliding window over a stream's text: deltas are appended, the window is screened
/// every [`STREAM_STEP`] new bytes and trimmed to its last [`STREAM_OVERLAP`] bytes once it
/// passes [`STREAM_WINDOW`]. [`OutputScreener`] and the gateway's stream guard (which owns
/// its screener and records each window's verdict) both keep one.
#[derive(Debug)]
pub struct StreamWindow {
    buf: String,
    /// Offset of `buf[0]` in the whole stream.
    base: usize,
    /// Bytes of `buf` not yet screened.
    unscreened: usize,
}

impl Default for StreamWindow {
    fn default() -> Self {
        StreamWindow {
            buf: String::with_capacity(STREAM_WINDOW + STREAM_STEP),
            base: 0,
            unscreened: 0,
        }
    }
}

impl StreamWindow {
    /// Appends a delta; `true` when enough new text arrived to screen the window.
    pub fn push(&mut self, delta: &str) -> bool {
        self.buf.push_str(delta);
        self.unscreened += delta.len();
        self.unscreened >= STREAM_STEP
    }

    /// Whether text arrived since the last screening.
    pub fn has_unscreened(&self) -> bool {
        self.unscreened > 0
    }

    /// The window's verdict, spans as offsets in the whole stream.
    pub fn screen(&self, screener: &Screener, kind: Kind, profile: &Profile) -> Verdict {
        let mut analysis = crate::screen::Analysis::default();
        analysis.merge_shifted(screener.analyze(&self.buf), self.base);
        analysis.decide(kind, profile)
    }

    /// The window's text and the stream offset of its first byte.
    pub fn text(&self) -> (&str, usize) {
        (&self.buf, self.base)
    }

    /// Marks the window screened and trims it to the overlap once it is full.
    pub fn advance(&mut self) {
        self.unscreened = 0;
        if self.buf.len() > STREAM_WINDOW {
            let mut cut = self.buf.len() - STREAM_OVERLAP;
            while !self.buf.is_char_boundary(cut) {
                cut -= 1;
            }
            self.buf.drain(..cut);
            self.base += cut;
        }
    }

    /// Total bytes seen.
    pub fn bytes_seen(&self) -> usize {
        self.base + self.buf.len()
    }
}

/// A stateful screener for one streamed response.
#[derive(Debug)]
pub struct OutputScreener<'a> {
    screener: &'a Screener,
    kind: Kind,
    profile: &'a Profile,
    window: StreamWindow,
    verdict: Verdict,
}

impl<'a> OutputScreener<'a> {
    /// Starts screening a stream headed for `kind` under `profile`.
    pub fn new(screener: &'a Screener, kind: Kind, profile: &'a Profile) -> Self {
        OutputScreener {
            screener,
            kind,
            profile,
            window: StreamWindow::default(),
            verdict: Verdict::allow(kind),
        }
    }

    /// Adds a text delta; returns `Block` as soon as (and every time after) a block fires.
    pub fn push(&mut self, delta: &str) -> StreamDecision {
        if self.verdict.is_blocked() {
            return self.decision();
        }
        if self.window.push(delta) {
            self.screen_buffer();
        }
        self.decision()
    }

    /// Screens whatever is left and returns the verdict for the whole stream.
    pub fn finish(&mut self) -> Verdict {
        if self.window.has_unscreened() && !self.verdict.is_blocked() {
            self.screen_buffer();
        }
        self.verdict.clone()
    }

    /// The verdict so far.
    pub fn verdict(&self) -> &Verdict {
        &self.verdict
    }

    /// Total bytes seen.
    pub fn bytes_seen(&self) -> usize {
        self.window.bytes_seen()
    }

    fn decision(&self) -> StreamDecision {
        if self.verdict.action == Action::Block {
            StreamDecision::Block(Box::new(self.verdict.clone()))
        } else {
            StreamDecision::Continue
        }
    }

    fn screen_buffer(&mut self) {
        let v = self.window.screen(self.screener, self.kind, self.profile);
        // Signals of the overlap would be counted twice; keep the larger per field instead.
        let mut signals = self.verdict.signals;
        signals.max(&v.signals);
        self.verdict.merge(&v, self.profile);
        self.verdict.signals = signals;
        self.window.advance();
    }
}
