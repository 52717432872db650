//! Normalization into views: the text as a filter should read it, once per evasion trick.
//!
//! Every view is a lowercase string plus a map from each of its bytes back to a byte range
//! of the original text, so a match in any view reports where it was in what the client
//! sent. What normalization removes or rewrites is counted in [`Signals`]: a prompt that
//! needed a lot of undoing is itself evidence of evasion.
//!
//! The chain is: hidden channels (tag characters, variation-selector runs) extracted →
//! default-ignorable and bidi controls dropped → compatibility decomposition (the NFKC
//! mapping), combining marks dropped, lowercase → confusable skeleton of non-ASCII letters
//! (UTS #39 data) → leetspeak folded inside mixed tokens → separators removed inside runs of
//! single letters. Embedded base64, hex, URL-encoded and rot13 text is decoded and run
//! through the same chain, with bounded depth and size.

use std::ops::Range;

use base64::Engine as _;
use unicode_normalization::char::{decompose_compatible, is_combining_mark};

use crate::decode;

/// Deepest nesting of encodings that is decoded (base64 of hex of base64 stops here).
pub const MAX_DECODE_DEPTH: u8 = 3;
/// Most bytes decoded from one screened text, across all levels, so hostile input stays cheap.
pub const MAX_DECODED_BYTES: usize = 64 * 1024;
/// A run of single letters must be at least this long to be joined (`n a k e d`).
pub const MIN_SPACED_RUN: usize = 3;
/// Tokens longer than this are left alone by leetspeak folding.
const MAX_LEET_TOKEN: usize = 24;
/// Runs of variation selectors shorter than this are ordinary emoji presentation.
const MIN_VS_PAYLOAD: usize = 4;

/// Which normalization produced a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ViewKind {
    /// Ignorables stripped, NFKC-folded, marks dropped, lowercase.
    Text,
    /// Non-ASCII look-alike letters mapped to their UTS #39 prototypes.
    Skeleton,
    /// Leetspeak digits and symbols folded to letters inside mixed tokens.
    Leet,
    /// Separators removed inside runs of single letters.
    Collapsed,
    /// Text smuggled in Unicode tag characters or variation selectors.
    Hidden,
    /// Text decoded from an embedded base64 span.
    Base64,
    /// Text decoded from an embedded hex span.
    Hex,
    /// Text decoded from a URL-encoded span.
    Url,
    /// The text read through rot13.
    Rot13,
}

impl ViewKind {
    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            ViewKind::Text => "text",
            ViewKind::Skeleton => "skeleton",
            ViewKind::Leet => "leet",
            ViewKind::Collapsed => "collapsed",
            ViewKind::Hidden => "hidden",
            ViewKind::Base64 => "base64",
            ViewKind::Hex => "hex",
            ViewKind::Url => "url",
            ViewKind::Rot13 => "rot13",
        }
    }
}

/// Counts of what normalization removed, rewrote or decoded: evasion signals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Signals {
    /// Default-ignorable characters removed (zero-width spaces and joiners, soft hyphens…).
    pub ignorables: u32,
    /// Of those, how many sat between two letters or digits (splitting a word).
    pub ignorables_in_words: u32,
    /// Bidirectional controls removed.
    pub bidi_controls: u32,
    /// Unicode tag characters outside emoji flag sequences.
    pub tag_chars: u32,
    /// Variation selectors in runs too long to be emoji presentation.
    pub variation_selectors: u32,
    /// Combining marks dropped (diacritics and stacked marks).
    pub combining_marks: u32,
    /// Characters changed by compatibility folding (fullwidth, math letters, ligatures).
    pub compat_folded: u32,
    /// Non-ASCII letters replaced by an ASCII look-alike prototype.
    pub confusables: u32,
    /// Words that mix ASCII letters with look-alikes from another script.
    pub mixed_script_words: u32,
    /// Leetspeak characters folded into letters.
    pub leet: u32,
    /// Runs of single letters joined (`n.a.k.e.d`).
    pub spaced_runs: u32,
    /// Embedded encoded spans decoded (base64, hex, URL-encoding).
    pub decoded_spans: u32,
    /// Whether the text read better as rot13.
    pub rot13: u32,
    /// Bytes of hidden payload recovered from tag characters or variation selectors.
    pub hidden_bytes: u32,
    /// Decoding stopped at the depth or size bound.
    pub decode_limited: u32,
}

impl Signals {
    /// Adds another set of counts into this one.
    pub fn add(&mut self, o: &Signals) {
        self.ignorables += o.ignorables;
        self.ignorables_in_words += o.ignorables_in_words;
        self.bidi_controls += o.bidi_controls;
        self.tag_chars += o.tag_chars;
        self.variation_selectors += o.variation_selectors;
        self.combining_marks += o.combining_marks;
        self.compat_folded += o.compat_folded;
        self.confusables += o.confusables;
        self.mixed_script_words += o.mixed_script_words;
        self.leet += o.leet;
        self.spaced_runs += o.spaced_runs;
        self.decoded_spans += o.decoded_spans;
        self.rot13 += o.rot13;
        self.hidden_bytes += o.hidden_bytes;
        self.decode_limited += o.decode_limited;
    }

    /// Takes the larger count field by field (for combining windows of one text).
    pub fn max(&mut self, o: &Signals) {
        macro_rules! m {
            ($($f:ident),*) => { $( self.$f = self.$f.max(o.$f); )* };
        }
        m!(
            ignorables,
            ignorables_in_words,
            bidi_controls,
            tag_chars,
            variation_selectors,
            combining_marks,
            compat_folded,
            confusables,
            mixed_script_words,
            leet,
            spaced_runs,
            decoded_spans,
            rot13,
            hidden_bytes,
            decode_limited
        );
    }
}

/// One normalized reading of the text, with its way back to the original bytes.
#[derive(Debug, Clone)]
pub struct View {
    kind: ViewKind,
    depth: u8,
    text: String,
    /// Per view byte: original start and end; empty when `fixed` or `identity` is set.
    starts: Vec<u32>,
    ends: Vec<u32>,
    /// View byte `j` is original byte `j` (ASCII text with nothing collapsed but a trailing
    /// space): the map is implied, so most prompts write no eight bytes per byte.
    identity: bool,
    /// Decoded views map every byte to the whole encoded span.
    fixed: Option<(u32, u32)>,
    /// Byte ranges of this view made by joining spaced letters; matches there need no
    /// word boundary.
    glued: Vec<(u32, u32)>,
}

impl View {
    /// Which normalization produced this view.
    pub fn kind(&self) -> ViewKind {
        self.kind
    }

    /// Decoding depth: 0 for views of the text itself.
    pub fn depth(&self) -> u8 {
        self.depth
    }

    /// The normalized text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Maps a byte range of this view to a byte range of the original text.
    pub fn original_span(&self, r: Range<usize>) -> Range<usize> {
        if let Some((s, e)) = self.fixed {
            return s as usize..e as usize;
        }
        if self.identity {
            return if r.start >= r.end || r.end > self.text.len() {
                0..0
            } else {
                r
            };
        }
        if r.start >= r.end || r.end > self.starts.len() {
            return 0..0;
        }
        let s = self.starts.get(r.start).copied().unwrap_or(0) as usize;
        let e = self.ends.get(r.end - 1).copied().unwrap_or(0) as usize;
        s..e.max(s)
    }

    /// The original span the whole view covers.
    pub fn whole_span(&self) -> Range<usize> {
        self.original_span(0..self.text.len())
    }

    /// Whether a byte range lies inside a run of joined single letters.
    pub fn in_glued(&self, r: &Range<usize>) -> bool {
        self.glued
            .iter()
            .any(|&(s, e)| r.start >= s as usize && r.end <= e as usize)
    }
}

/// The views of one text and the signals gathered while building them.
#[derive(Debug, Clone, Default)]
pub struct Normalized {
    /// Views in order: the plain text view first, then only views that differ from it.
    pub views: Vec<View>,
    /// What normalization removed or decoded.
    pub signals: Signals,
}

/// Builds every view of `text`.
pub fn normalize(text: &str) -> Normalized {
    let mut out = Normalized::default();
    let mut budget = MAX_DECODED_BYTES;
    normalize_into(text, 0, None, &mut budget, &mut out);
    out
}

/// Folds text the way the plain view does (used to compile lexicon terms).
pub fn fold(text: &str) -> String {
    let mut sig = Signals::default();
    let mut hidden = Hidden::default();
    let units = fold_units(text, &mut sig, &mut hidden);
    emit(ViewKind::Text, 0, &units, &[], None).text
}

/// One character of a view and the original bytes it came from.
#[derive(Debug, Clone, Copy)]
struct Unit {
    c: char,
    start: u32,
    end: u32,
}

/// Hidden channels found while folding.
#[derive(Debug, Default)]
struct Hidden {
    text: String,
    vs_run: Vec<u8>,
    vs_payload: Vec<u8>,
    span: Option<(u32, u32)>,
}

impl Hidden {
    fn cover(&mut self, start: u32, end: u32) {
        self.span = Some(match self.span {
            Some((s, e)) => (s.min(start), e.max(end)),
            None => (start, end),
        });
    }

    fn end_vs_run(&mut self, sig: &mut Signals) {
        if self.vs_run.len() >= 2 {
            sig.variation_selectors += self.vs_run.len() as u32;
        }
        if self.vs_run.len() >= MIN_VS_PAYLOAD {
            self.vs_payload.append(&mut self.vs_run);
            self.vs_payload.push(b' ');
        }
        self.vs_run.clear();
    }
}

fn normalize_into(
    text: &str,
    depth: u8,
    relabel: Option<(ViewKind, (u32, u32))>,
    budget: &mut usize,
    out: &mut Normalized,
) {
    let mut sig = Signals::default();
    let mut hidden = Hidden::default();
    let push = |mut v: View, out: &mut Normalized| {
        if let Some((kind, span)) = relabel {
            v.kind = kind;
            v.fixed = Some(span);
            v.starts = Vec::new();
            v.ends = Vec::new();
            v.identity = false;
        }
        // A view identical to one already there adds nothing but work.
        if !out.views.iter().any(|o| o.text == v.text) && !v.text.is_empty() {
            out.views.push(v);
        }
    };

    let ascii = text.is_ascii();
    if ascii && !ascii_may_leet(text) && !ascii_may_collapse(text) {
        // Most prompts: plain ASCII with no leetspeak character and no spaced letters. Its
        // units would be its lowercased bytes, with no look-alike to fold, no leetspeak to
        // read and no run to join, so the views are the text and perhaps its rot13: both
        // made from the bytes, without the per-character units. Hidden channels and
        // decoding are below, as for every text.
        let text_view = emit_ascii(ViewKind::Text, depth, text);
        let rot = rot13_view(&text_view, &mut sig);
        push(text_view, out);
        if let Some(r) = rot {
            push(r, out);
        }
    } else {
        let base = fold_units(text, &mut sig, &mut hidden);
        let text_view = if ascii {
            emit_ascii(ViewKind::Text, depth, text)
        } else {
            emit(ViewKind::Text, depth, &base, &[], None)
        };
        folded_views(text, depth, &base, text_view, &mut sig, &push, out);
    }
    // Hidden payloads and encoded spans are read through the whole chain again.
    hidden.end_vs_run(&mut sig);
    if !hidden.vs_payload.is_empty()
        && let Ok(s) = std::str::from_utf8(&hidden.vs_payload)
    {
        hidden.text.push(' ');
        hidden.text.push_str(s);
    }
    let hidden_text = hidden.text.trim();
    if !hidden_text.is_empty() {
        sig.hidden_bytes += hidden_text.len() as u32;
        let span = hidden.span.unwrap_or((0, text.len() as u32));
        let span = relabel.map_or(span, |(_, s)| s);
        descend(
            hidden_text,
            ViewKind::Hidden,
            span,
            depth,
            budget,
            &mut sig,
            out,
        );
    }
    for cand in decode::candidates(text) {
        let Some(decoded) = decode_candidate(text, &cand) else {
            continue;
        };
        sig.decoded_spans += 1;
        let span = (cand.range.start as u32, cand.range.end as u32);
        let span = relabel.map_or(span, |(_, s)| s);
        descend(&decoded, cand.kind, span, depth, budget, &mut sig, out);
    }
    out.signals.add(&sig);
}

/// The views past the plain one, from the folded units: look-alikes, leetspeak, spacing,
/// rot13 (pushed in that order after the plain view).
fn folded_views(
    text: &str,
    depth: u8,
    base: &[Unit],
    text_view: View,
    sig: &mut Signals,
    push: &dyn Fn(View, &mut Normalized),
    out: &mut Normalized,
) {
    let skel = skeleton_units(text, base, sig);
    let skel_view = skel
        .as_ref()
        .map(|s| emit(ViewKind::Skeleton, depth, s, &[], None));
    let cur: &[Unit] = skel.as_deref().unwrap_or(base);
    let leet = leet_units(cur, sig);
    let leet_view = leet
        .as_ref()
        .map(|l| emit(ViewKind::Leet, depth, l, &[], None));
    // rot13 is judged on the most readable view, where vowels are vowels.
    let rot = rot13_view(
        leet_view
            .as_ref()
            .or(skel_view.as_ref())
            .unwrap_or(&text_view),
        sig,
    );
    push(text_view, out);
    if let Some(v) = skel_view {
        push(v, out);
    }
    if let Some(v) = leet_view {
        push(v, out);
    }
    let cur: &[Unit] = leet.as_deref().unwrap_or(cur);
    if let Some((units, glued)) = collapse_units(cur, sig) {
        push(emit(ViewKind::Collapsed, depth, &units, &glued, None), out);
    }
    if let Some(r) = rot {
        push(r, out);
    }
}

fn descend(
    text: &str,
    kind: ViewKind,
    span: (u32, u32),
    depth: u8,
    budget: &mut usize,
    sig: &mut Signals,
    out: &mut Normalized,
) {
    if depth + 1 > MAX_DECODE_DEPTH || text.len() > *budget {
        sig.decode_limited += 1;
        return;
    }
    *budget -= text.len();
    normalize_into(text, depth + 1, Some((kind, span)), budget, out);
}

fn decode_candidate(text: &str, cand: &decode::Candidate) -> Option<String> {
    let raw = text.get(cand.range.clone())?;
    let bytes = match cand.kind {
        ViewKind::Base64 => {
            let engine = base64::engine::GeneralPurpose::new(
                if raw.contains(['-', '_']) {
                    &base64::alphabet::URL_SAFE
                } else {
                    &base64::alphabet::STANDARD
                },
                base64::engine::GeneralPurposeConfig::new()
                    .with_decode_allow_trailing_bits(true)
                    .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
            );
            let trimmed = raw.trim_end_matches('=');
            // A final partial group of one character can never decode; drop it.
            let usable = trimmed.len() - usize::from(trimmed.len() % 4 == 1);
            engine.decode(trimmed.get(..usable)?).ok()?
        }
        ViewKind::Hex => decode::hex(raw)?,
        ViewKind::Url => decode::percent(raw)?,
        _ => return None,
    };
    let s = String::from_utf8(bytes).ok()?;
    decode::looks_like_text(&s).then_some(s)
}

/// Unicode's Default_Ignorable_Code_Point set, less variation selectors and tag characters,
/// which are handled as hidden channels.
fn is_ignorable(c: char) -> bool {
    matches!(c,
        '\u{00AD}' | '\u{034F}' | '\u{061C}' | '\u{115F}' | '\u{1160}' | '\u{17B4}' | '\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{2060}'..='\u{206F}'
        | '\u{3164}' | '\u{FEFF}' | '\u{FFA0}' | '\u{FFF0}'..='\u{FFF8}'
        | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}' | '\u{E0080}'..='\u{E00FF}'
        | '\u{E01F0}'..='\u{E0FFF}')
}

fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{200E}' | '\u{200F}' | '\u{061C}')
}

/// Byte value carried by a variation selector (VS1–VS256), as used for payload smuggling.
fn variation_selector_byte(c: char) -> Option<u8> {
    match c {
        '\u{FE00}'..='\u{FE0F}' => Some((c as u32 - 0xFE00) as u8),
        '\u{E0100}'..='\u{E01EF}' => Some((c as u32 - 0xE0100 + 16) as u8),
        _ => None,
    }
}

fn fold_units(text: &str, sig: &mut Signals, hidden: &mut Hidden) -> Vec<Unit> {
    if text.is_ascii() {
        // Most prompts: nothing to strip, decompose or extract, so no signal either; each
        // byte is one lowercase unit. Same units as the loop below, without decoding chars.
        return text
            .bytes()
            .zip(0u32..)
            .map(|(b, i)| Unit {
                c: char::from(b.to_ascii_lowercase()),
                start: i,
                end: i + 1,
            })
            .collect();
    }
    let mut units = Vec::with_capacity(text.len());
    let mut pending_ignorable = 0u32;
    let mut prev_word = false;
    let mut in_flag = false;
    for (i, c) in text.char_indices() {
        let start = i as u32;
        let end = (i + c.len_utf8()) as u32;
        if c.is_ascii() {
            let lc = c.to_ascii_lowercase();
            let word = lc.is_ascii_alphanumeric();
            if pending_ignorable > 0 && prev_word && word {
                sig.ignorables_in_words += pending_ignorable;
            }
            pending_ignorable = 0;
            prev_word = word;
            in_flag = false;
            if !hidden.vs_run.is_empty() {
                hidden.end_vs_run(sig);
            }
            units.push(Unit { c: lc, start, end });
            continue;
        }
        if let Some(b) = variation_selector_byte(c) {
            hidden.vs_run.push(b);
            hidden.cover(start, end);
            continue;
        }
        if !hidden.vs_run.is_empty() {
            hidden.end_vs_run(sig);
        }
        if ('\u{E0000}'..='\u{E007F}').contains(&c) {
            // Subdivision flags (England, Scotland, Wales) are emoji + tag letters + cancel tag.
            if in_flag {
                continue;
            }
            sig.tag_chars += 1;
            if ('\u{E0020}'..='\u{E007E}').contains(&c) {
                hidden.text.push(char::from((c as u32 - 0xE0000) as u8));
                hidden.cover(start, end);
            }
            continue;
        }
        in_flag = c == '\u{1F3F4}';
        if is_bidi_control(c) {
            sig.bidi_controls += 1;
            pending_ignorable += 1;
            continue;
        }
        if is_ignorable(c) {
            sig.ignorables += 1;
            pending_ignorable += 1;
            continue;
        }
        let before = units.len();
        let mut marks = 0u32;
        let mut changed = false;
        // Latin letters with built-in strokes (ø, ł, đ) have no decomposition; fold them
        // to their base letter like any accented letter.
        if let Some(base) = latin_base(c) {
            sig.combining_marks += 1;
            units.push(Unit {
                c: base,
                start,
                end,
            });
            pending_ignorable = 0;
            prev_word = true;
            continue;
        }
        decompose_compatible(c, |d| {
            if is_combining_mark(d) {
                marks += 1;
                return;
            }
            if d != c {
                changed = true;
            }
            for l in d.to_lowercase() {
                units.push(Unit { c: l, start, end });
            }
        });
        if marks > 0 {
            sig.combining_marks += marks;
        } else if changed && units[before..].iter().all(|u| u.c.is_ascii()) {
            sig.compat_folded += 1;
        }
        let word = units[before..].iter().any(|u| u.c.is_alphanumeric());
        if pending_ignorable > 0 && prev_word && word {
            sig.ignorables_in_words += pending_ignorable;
        }
        if units.len() > before {
            pending_ignorable = 0;
            prev_word = word;
        }
    }
    units
}

/// The ASCII base of a Latin letter that does not decompose (ø → o, ł → l), lowercase.
fn latin_base(c: char) -> Option<char> {
    if !matches!(c, '\u{00C0}'..='\u{024F}' | '\u{1E00}'..='\u{1EFF}') {
        return None;
    }
    if decompose_compatible_len(c) != 1 {
        return None;
    }
    let mut buf = [0u8; 4];
    let mut base = None;
    for p in unicode_security::skeleton(c.encode_utf8(&mut buf)) {
        if is_combining_mark(p) {
            continue;
        }
        if base.is_some() || !p.is_ascii_alphabetic() {
            return None;
        }
        base = Some(p.to_ascii_lowercase());
    }
    base
}

/// How many characters the compatibility decomposition of `c` has (1: none).
fn decompose_compatible_len(c: char) -> usize {
    let mut n = 0;
    decompose_compatible(c, |_| n += 1);
    n
}

/// Writes units as a view string, collapsing whitespace runs to one space and trimming.
fn emit(
    kind: ViewKind,
    depth: u8,
    units: &[Unit],
    glued_units: &[(usize, usize)],
    fixed: Option<(u32, u32)>,
) -> View {
    // Bytes rather than a String: pushing an ASCII byte needs no UTF-8 encoding step, and
    // every byte pushed comes from a whole char, so the result is valid UTF-8.
    let mut text: Vec<u8> = Vec::with_capacity(units.len());
    let mut starts = Vec::with_capacity(units.len());
    let mut ends = Vec::with_capacity(units.len());
    let mut glued = Vec::with_capacity(glued_units.len());
    let mut g = glued_units.iter().peekable();
    let mut gstart: Option<usize> = None;
    let mut pending_space: Option<(u32, u32)> = None;
    for (i, u) in units.iter().enumerate() {
        if let Some(&&(s, _)) = g.peek()
            && s == i
        {
            gstart = Some(text.len() + usize::from(pending_space.is_some()));
        }
        if u.c.is_ascii() && !u.c.is_ascii_whitespace() && u.c != '\u{0B}' {
            if let Some((s, e)) = pending_space.take() {
                text.push(b' ');
                starts.push(s);
                ends.push(e);
            }
            text.push(u.c as u8);
            starts.push(u.start);
            ends.push(u.end);
        } else if u.c.is_whitespace() {
            if !text.is_empty() && pending_space.is_none() {
                pending_space = Some((u.start, u.end));
            }
        } else {
            if let Some((s, e)) = pending_space.take() {
                text.push(b' ');
                starts.push(s);
                ends.push(e);
            }
            let mut buf = [0u8; 4];
            let enc = u.c.encode_utf8(&mut buf);
            text.extend_from_slice(enc.as_bytes());
            for _ in 0..enc.len() {
                starts.push(u.start);
                ends.push(u.end);
            }
        }
        if let Some(&&(_, e)) = g.peek()
            && e == i + 1
        {
            if let Some(s) = gstart.take() {
                glued.push((s as u32, text.len() as u32));
            }
            g.next();
        }
    }
    View {
        kind,
        depth,
        text: String::from_utf8(text)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        starts,
        ends,
        identity: false,
        fixed,
        glued,
    }
}

/// Whether [`leet_units`] folds anything in an ASCII text's units: some token (a run of
/// letters, digits and leetspeak symbols, less the `!|+` that end it) of at most
/// [`MAX_LEET_TOKEN`] characters mixes letters with leetspeak characters. Without one the
/// leetspeak view is never made (numbers alone, "in 2024", fold nothing).
fn ascii_may_leet(text: &str) -> bool {
    let is_leet = |b: &u8| {
        let c = char::from(*b);
        leet_letter(c).is_some() && !c.is_alphabetic()
    };
    if !text.as_bytes().iter().any(is_leet) {
        return false;
    }
    text.as_bytes()
        .split(|b| !(b.is_ascii_alphanumeric() || is_leet(b)))
        .any(|tok| {
            let mut end = tok.len();
            while end > 0 && matches!(tok[end - 1], b'!' | b'|' | b'+') {
                end -= 1;
            }
            let tok = &tok[..end];
            tok.len() <= MAX_LEET_TOKEN
                && tok.iter().any(u8::is_ascii_alphabetic)
                && tok.iter().any(is_leet)
        })
}

/// Whether [`collapse_pass`] finds a run of [`MIN_SPACED_RUN`] spaced letters in an ASCII
/// text's units (lowercasing changes none of its tests); without one its collapsed view is
/// never made.
fn ascii_may_collapse(text: &str) -> bool {
    let b = text.as_bytes();
    // `collapse_pass`'s `single_at`: a letter or digit standing alone.
    let single_at = |k: usize| {
        b.get(k).is_some_and(u8::is_ascii_alphanumeric)
            && b.get(k + 1).is_none_or(|c| !c.is_ascii_alphanumeric())
            && (k == 0 || !b[k - 1].is_ascii_alphanumeric())
    };
    // Its pass finds a run exactly where three lone letters sit one spacer apart, the
    // same spacer twice; the first look (equal bytes around a letter) rules out most
    // positions before the lone-letter tests.
    b.windows(5).enumerate().any(|(k, w)| {
        w[3] == w[1]
            && is_spacer(char::from(w[1]))
            && w[0].is_ascii_alphanumeric()
            && w[2].is_ascii_alphanumeric()
            && w[4].is_ascii_alphanumeric()
            && single_at(k)
            && single_at(k + 2)
            && single_at(k + 4)
    })
}

/// [`emit`] of an ASCII text's folded units (each byte lowercased, one unit per byte) as a
/// plain view, straight from the bytes: the same text and the same map, which is left
/// implied while every view byte sits at its own original offset.
fn emit_ascii(kind: ViewKind, depth: u8, text: &str) -> View {
    // Every ASCII byte emit() does not copy is whitespace to it (\t \n \v \f \r and space);
    // \v is `char::is_whitespace` but not `is_ascii_whitespace`.
    let is_space = |b: u8| b.is_ascii_whitespace() || b == 0x0B;
    let bytes = text.as_bytes();
    let end = bytes
        .iter()
        .rposition(|&b| !is_space(b))
        .map_or(0, |p| p + 1);
    let body = bytes.get(..end).unwrap_or_default();
    // Nothing to collapse and no leading space: each byte stays where it was (a trailing
    // run is simply cut off), so the view is the bytes folded one for one.
    if body.first().is_none_or(|&b| !is_space(b))
        && !body.windows(2).any(|w| is_space(w[0]) && is_space(w[1]))
    {
        let out: Vec<u8> = body
            .iter()
            .map(|&b| {
                if is_space(b) {
                    b' '
                } else {
                    b.to_ascii_lowercase()
                }
            })
            .collect();
        return View {
            kind,
            depth,
            text: String::from_utf8(out)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
            starts: Vec::new(),
            ends: Vec::new(),
            identity: true,
            fixed: None,
            glued: Vec::new(),
        };
    }
    // A leading space or a run to collapse: the map is written out, as emit() does.
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut starts: Vec<u32> = Vec::with_capacity(bytes.len());
    let mut ends: Vec<u32> = Vec::with_capacity(bytes.len());
    // The original offset of the whitespace that will become the next space, if any.
    let mut pending_space: Option<u32> = None;
    for (i, &b) in (0u32..).zip(bytes) {
        if is_space(b) {
            if !out.is_empty() && pending_space.is_none() {
                pending_space = Some(i);
            }
            continue;
        }
        if let Some(s) = pending_space.take() {
            out.push(b' ');
            starts.push(s);
            ends.push(s + 1);
        }
        out.push(b.to_ascii_lowercase());
        starts.push(i);
        ends.push(i + 1);
    }
    View {
        kind,
        depth,
        text: String::from_utf8(out)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        starts,
        ends,
        identity: false,
        fixed: None,
        glued: Vec::new(),
    }
}

/// Maps non-ASCII letters that look like ASCII ones onto them; `None` when nothing changed.
/// A letter is looked up as `text` (the folded units' source) wrote it: many capitals are
/// look-alikes whose lowercase is not (Cyrillic `К` `М` `Т` `Н` `В`, Greek `Ν`), and Greek
/// `ν`, lowercased from a look-alike `N`, would read as `v`.
fn skeleton_units(text: &str, units: &[Unit], sig: &mut Signals) -> Option<Vec<Unit>> {
    if units.iter().all(|u| u.c.is_ascii()) {
        return None;
    }
    let mut out = Vec::with_capacity(units.len());
    let mut changed = 0u32;
    // Per word: did it have plain ASCII letters, and did it have substituted ones?
    let (mut word_ascii, mut word_subst) = (false, false);
    let end_word = |a: &mut bool, s: &mut bool, sig: &mut Signals| {
        if *a && *s {
            sig.mixed_script_words += 1;
        }
        *a = false;
        *s = false;
    };
    for u in units {
        if u.c.is_ascii() {
            if u.c.is_ascii_alphanumeric() {
                word_ascii = true;
            } else {
                end_word(&mut word_ascii, &mut word_subst, sig);
            }
            out.push(*u);
            continue;
        }
        if !u.c.is_alphanumeric() {
            end_word(&mut word_ascii, &mut word_subst, sig);
            out.push(*u);
            continue;
        }
        let mut buf = [0u8; 4];
        let mut proto = [' '; 4];
        let mut n = 0usize;
        let mut ascii = true;
        let written = written_as(text, u);
        for p in unicode_security::skeleton(written.encode_utf8(&mut buf)) {
            // Overlays and accents in a prototype (ø is o + a slash) are diacritics here.
            if is_combining_mark(p) {
                continue;
            }
            if n < proto.len() && p.is_ascii_alphanumeric() {
                proto[n] = p.to_ascii_lowercase();
                n += 1;
            } else {
                ascii = false;
            }
        }
        if ascii && n > 0 {
            changed += 1;
            word_subst = true;
            for &p in &proto[..n] {
                out.push(Unit { c: p, ..*u });
            }
        } else {
            // A letter of another script that is no look-alike ends any mixing claim.
            out.push(*u);
        }
    }
    end_word(&mut word_ascii, &mut word_subst, sig);
    if changed == 0 {
        return None;
    }
    sig.confusables += changed;
    Some(out)
}

/// The character `text` has where the unit came from, when the unit is only its lowercase
/// (otherwise, as after compatibility folding or decomposition, the unit's own character).
fn written_as(text: &str, u: &Unit) -> char {
    let mut chars = text
        .get(u.start as usize..u.end as usize)
        .unwrap_or("")
        .chars();
    match (chars.next(), chars.next()) {
        (Some(o), None) if o != u.c && o.to_lowercase().eq(std::iter::once(u.c)) => o,
        _ => u.c,
    }
}

fn leet_letter(c: char) -> Option<char> {
    Some(match c {
        '0' => 'o',
        '1' => 'i',
        '3' => 'e',
        '4' => 'a',
        '5' => 's',
        '7' => 't',
        '8' => 'b',
        '9' => 'g',
        '@' => 'a',
        '$' => 's',
        '!' => 'i',
        '|' => 'l',
        '+' => 't',
        '€' => 'e',
        _ => return None,
    })
}

/// Folds leetspeak inside tokens that mix letters with leet characters; `None` if none.
///
/// Once a text has [`LEET_MODE_MIN`] such substitutions it is written in leetspeak, and
/// short all-digit tokens (`4`, `70`, `15`: a, to, is) are folded too.
fn leet_units(units: &[Unit], sig: &mut Signals) -> Option<Vec<Unit>> {
    let before = sig.leet;
    let mut out = leet_pass(units, None, sig);
    if sig.leet - before >= LEET_MODE_MIN
        && let Some(o) = &mut out
    {
        let mut extra = Signals::default();
        if let Some(o2) = leet_pass(o, Some(MAX_LEET_DIGIT_WORD), &mut extra) {
            *o = o2;
            sig.leet += extra.leet;
        }
    }
    out
}

/// Substitutions that put a text in leetspeak mode.
const LEET_MODE_MIN: u32 = 3;
/// Longest all-digit token read as a leetspeak word in leetspeak mode.
const MAX_LEET_DIGIT_WORD: usize = 3;

/// One folding pass; `digit_words` also folds all-leet tokens up to that length.
fn leet_pass(units: &[Unit], digit_words: Option<usize>, sig: &mut Signals) -> Option<Vec<Unit>> {
    // Every fold below needs a leet character that is no letter; most texts have none.
    if !units
        .iter()
        .any(|u| leet_letter(u.c).is_some() && !u.c.is_alphabetic())
    {
        return None;
    }
    let is_tok = |c: char| c.is_alphanumeric() || leet_letter(c).is_some();
    let mut out: Option<Vec<Unit>> = None;
    let mut i = 0;
    while i < units.len() {
        if !is_tok(units[i].c) {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < units.len() && is_tok(units[j].c) {
            j += 1;
        }
        // Symbols that end a word ("nice!") are punctuation, not letters.
        let mut end = j;
        while end > i && matches!(units[end - 1].c, '!' | '|' | '+') {
            end -= 1;
        }
        let tok = &units[i..end];
        // Most tokens are plain words; leave them at the first look.
        // Long runs are encodings or identifiers, not words spelled in leetspeak.
        if tok.len() > MAX_LEET_TOKEN
            || !tok
                .iter()
                .any(|u| !u.c.is_alphabetic() && leet_letter(u.c).is_some())
        {
            i = j.max(i + 1);
            continue;
        }
        let letters = tok.iter().filter(|u| u.c.is_alphabetic()).count();
        let leets = tok
            .iter()
            .filter(|u| !u.c.is_alphabetic() && leet_letter(u.c).is_some())
            .count();
        let digit_word =
            digit_words.is_some_and(|max| letters == 0 && leets == tok.len() && tok.len() <= max);
        if (letters > 0 && leets > 0 && tok.len() > 1) || digit_word {
            let o = out.get_or_insert_with(|| units.to_vec());
            for (k, u) in tok.iter().enumerate() {
                if !u.c.is_alphabetic()
                    && let Some(l) = leet_letter(u.c)
                {
                    o[i + k].c = l;
                    sig.leet += 1;
                }
            }
        }
        i = j.max(i + 1);
    }
    out
}

fn is_spacer(c: char) -> bool {
    matches!(
        c,
        ' ' | '.' | '-' | '_' | '*' | '/' | '|' | '~' | ',' | '+' | '\'' | ':' | ';' | '·' | '•'
    )
}

/// Joins runs of single letters separated by single spacers (`n a k e d`, `n.a.k.e.d`).
///
/// Runs of [`MIN_SPACED_RUN`] letters are joined; once a text has one, shorter words
/// spaced the same way (`m y   e x`) are joined too.
fn collapse_units(units: &[Unit], sig: &mut Signals) -> Option<(Vec<Unit>, Glued)> {
    let (out, glued, runs) = collapse_pass(units, MIN_SPACED_RUN)?;
    match collapse_pass(units, 2) {
        Some((out2, glued2, runs2)) if runs2 > runs => {
            sig.spaced_runs += runs2;
            Some((out2, glued2))
        }
        _ => {
            sig.spaced_runs += runs;
            Some((out, glued))
        }
    }
}

/// Ranges of units that were joined from spaced letters.
type Glued = Vec<(usize, usize)>;
type Collapsed = (Vec<Unit>, Glued, u32);

fn collapse_pass(units: &[Unit], min_run: usize) -> Option<Collapsed> {
    let single_at = |k: usize| -> bool {
        units.get(k).is_some_and(|u| u.c.is_alphanumeric())
            && units.get(k + 1).is_none_or(|u| !u.c.is_alphanumeric())
            && (k == 0 || !units[k - 1].c.is_alphanumeric())
    };
    // Cheap look first: is there any "x y z" (letter, spacer, letter, spacer, letter)?
    // The equality test first: it fails at almost every position of ordinary text.
    let any = units.windows(5).any(|w| {
        w[3].c == w[1].c
            && is_spacer(w[1].c)
            && w[0].c.is_alphanumeric()
            && w[2].c.is_alphanumeric()
            && (w[4].c.is_alphanumeric() || min_run < MIN_SPACED_RUN)
    });
    if !any {
        return None;
    }
    // Made at the first run: until then it would only copy `units` (the cheap look passes
    // any text with a one-letter word between spaces, "is a book", and most have no run).
    let mut out: Option<Vec<Unit>> = None;
    let mut glued = Vec::new();
    let mut runs = 0u32;
    let mut i = 0;
    while i < units.len() {
        if single_at(i) {
            // Extend: letter, spacer, letter, spacer, ...
            // One separator throughout: "a n.a.k.e.d" joins only the dotted word.
            let sep = units.get(i + 1).map(|u| u.c);
            // The run's letters are at i, i + 2, ..., k: counted, not collected.
            let mut letters = 1usize;
            let mut k = i;
            while units
                .get(k + 1)
                .is_some_and(|u| is_spacer(u.c) && Some(u.c) == sep)
                && single_at(k + 2)
            {
                k += 2;
                letters += 1;
            }
            // A short run must stand alone: in "a n.a.k.e.d" the "a n" is no word.
            let alone = letters >= MIN_SPACED_RUN
                || units
                    .get(k + 1)
                    .is_none_or(|u| u.c.is_whitespace() || !is_spacer(u.c));
            if letters >= min_run && alone {
                runs += 1;
                let out = out.get_or_insert_with(|| {
                    let mut o = Vec::with_capacity(units.len());
                    o.extend_from_slice(units.get(..i).unwrap_or_default());
                    o
                });
                let s = out.len();
                out.extend((i..=k).step_by(2).filter_map(|l| units.get(l).copied()));
                glued.push((s, out.len()));
                i = k + 1;
                // "n u d e ," : the separator before trailing punctuation was the spacing's.
                if units.get(i).is_some_and(|u| Some(u.c) == sep)
                    && units
                        .get(i + 1)
                        .is_some_and(|u| !u.c.is_alphanumeric() && !u.c.is_whitespace())
                {
                    i += 1;
                }
                continue;
            }
        }
        if let Some(out) = &mut out {
            out.push(units[i]);
        }
        i += 1;
    }
    out.filter(|_| runs > 0).map(|out| (out, glued, runs))
}

/// Whether a word is a common English word (used to tell whether rot13 reads better).
fn is_stopword(w: &[u8]) -> bool {
    matches!(
        w,
        b"the"
            | b"and"
            | b"of"
            | b"to"
            | b"a"
            | b"in"
            | b"is"
            | b"it"
            | b"you"
            | b"that"
            | b"with"
            | b"for"
            | b"on"
            | b"this"
            | b"are"
            | b"be"
            | b"as"
            | b"at"
            | b"by"
            | b"from"
            | b"her"
            | b"his"
            | b"an"
            | b"or"
            | b"me"
            | b"my"
            | b"your"
            | b"was"
            | b"what"
            | b"how"
            | b"who"
            | b"all"
            | b"but"
            | b"not"
            | b"she"
            | b"he"
            | b"they"
            | b"we"
            | b"can"
            | b"do"
    )
}

/// Stopwords in the text and in its rot13 reading, and the word count, without allocating.
fn stopword_counts(s: &str) -> (usize, usize, usize) {
    let (mut plain, mut rotated, mut words) = (0, 0, 0);
    let bytes = s.as_bytes();
    let mut i = 0;
    // Words are the runs of ASCII letters, found by index rather than by a split iterator.
    while i < bytes.len() {
        if !bytes[i].is_ascii_alphabetic() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
            i += 1;
        }
        let w = &bytes[start..i];
        words += 1;
        // Every stopword is at most four letters.
        if w.len() > 4 {
            continue;
        }
        plain += usize::from(is_stopword(w));
        let mut buf = [0u8; 4];
        for (d, &b) in buf.iter_mut().zip(w) {
            *d = rot13(b as char) as u8;
        }
        rotated += usize::from(is_stopword(&buf[..w.len()]));
    }
    (plain, rotated, words)
}

/// Per byte, for [`vowel_shares`]: 1 for a lowercase ASCII letter, +2 for a vowel, +4 for
/// a letter whose rot13 is a vowel.
static LETTER_CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = b'a';
    while b <= b'z' {
        t[b as usize] =
            1 | if matches!(b, b'a' | b'e' | b'i' | b'o' | b'u') {
                2
            } else {
                0
            } | if matches!(b, b'n' | b'r' | b'v' | b'b' | b'h') {
                4
            } else {
                0
            };
        b += 1;
    }
    t
};

/// Share of vowels among ASCII letters in the text and in its rot13, and the letter count.
fn vowel_shares(s: &str) -> (f32, f32, usize) {
    let (mut v, mut vr, mut n) = (0usize, 0usize, 0usize);
    // One table look-up and three adds a byte, no branch: bit 0 lowercase ASCII, bit 1 a
    // vowel, bit 2 a letter whose rot13 is a vowel.
    for b in s.bytes() {
        let c = LETTER_CLASS[usize::from(b)];
        n += usize::from(c & 1);
        v += usize::from((c >> 1) & 1);
        vr += usize::from((c >> 2) & 1);
    }
    let d = n.max(1) as f32;
    (v as f32 / d, vr as f32 / d, n)
}

fn rot13(c: char) -> char {
    match c {
        'a'..='m' => ((c as u8) + 13) as char,
        'n'..='z' => ((c as u8) - 13) as char,
        _ => c,
    }
}

/// The rot13 reading, kept only when it reads more like English than the text does.
fn rot13_view(text: &View, sig: &mut Signals) -> Option<View> {
    let t = text.text();
    if !t.bytes().any(|b| b.is_ascii_lowercase()) {
        return None;
    }
    let (orig, rot, words) = stopword_counts(t);
    let by_words = rot > orig && (rot >= 2 || words <= 2);
    // Short prompts have few stopwords; vowels tell too: rot13 turns English's ~38% vowels
    // into ~21%, so a text that gains many vowels when rotated was rotated.
    let (vo, vr, letters) = vowel_shares(t);
    // The share tests first: they settle ordinary text without another pass over it.
    let by_vowels = letters >= 8
        && vr - vo > 0.1
        && vr > 0.3
        && letters * 10 >= t.chars().filter(|c| c.is_alphabetic()).count() * 9;
    if !(by_words || by_vowels) {
        return None;
    }
    let r: String = t.chars().map(rot13).collect();
    sig.rot13 += 1;
    Some(View {
        kind: ViewKind::Rot13,
        text: r,
        ..text.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn same_view(a: &View, b: &View) -> bool {
        let n = a.text.len();
        a.text == b.text
            && a.kind == b.kind
            && a.depth == b.depth
            && a.glued == b.glued
            && (0..n).all(|i| a.original_span(i..i + 1) == b.original_span(i..i + 1))
            && (0..=n).all(|i| a.original_span(0..i) == b.original_span(0..i))
            && a.original_span(n..n + 1) == b.original_span(n..n + 1)
    }

    proptest! {
        // The ASCII fast path's three shortcuts answer as the unit-based chain does.
        #[test]
        fn ascii_shortcuts_match_the_units(
            // A wide alphabet, and a narrow one where lone letters, spacers and leetspeak
            // characters meet often.
            t in prop_oneof![
                "[a-zA-Z0-9 .\\-_*/|~,+':;@$!\t\n\x0B\r%=]{0,48}",
                "[aB3 .|!+\n]{0,32}",
            ],
        ) {
            let mut sig = Signals::default();
            let units = fold_units(&t, &mut sig, &mut Hidden::default());
            prop_assert!(same_view(
                &emit_ascii(ViewKind::Text, 0, &t),
                &emit(ViewKind::Text, 0, &units, &[], None)
            ));
            prop_assert_eq!(ascii_may_leet(&t), leet_units(&units, &mut sig).is_some());
            prop_assert_eq!(
                ascii_may_collapse(&t),
                collapse_units(&units, &mut sig).is_some()
            );
        }
    }

    fn view(n: &Normalized, k: ViewKind) -> Option<&str> {
        n.views.iter().find(|v| v.kind == k).map(|v| v.text())
    }

    #[test]
    fn text_view_folds_width_case_and_marks() {
        let n = normalize("Ｎａïve   CAFÉ\u{200B}s");
        assert_eq!(view(&n, ViewKind::Text), Some("naive cafes"));
        assert_eq!(n.signals.ignorables_in_words, 1);
        assert!(n.signals.combining_marks >= 2);
    }

    #[test]
    fn stroked_latin_letters_fold() {
        let n = normalize("nøde łake");
        assert_eq!(view(&n, ViewKind::Text), Some("node lake"));
    }

    #[test]
    fn skeleton_maps_cyrillic_lookalikes() {
        let n = normalize("n\u{0430}k\u{0435}d");
        assert_eq!(view(&n, ViewKind::Skeleton), Some("naked"));
        assert_eq!(n.signals.mixed_script_words, 1);
    }

    #[test]
    fn skeleton_reads_lookalike_capitals_as_written() {
        // Capitals whose lowercase is no look-alike (`К` → `к`), and Greek `Ν`, whose
        // lowercase `ν` would read as `v`.
        let n =
            normalize("\u{0422}H\u{0415} \u{0412}ES\u{0422} \u{041C}A\u{041A}E \u{039D}EIGHBOR");
        assert_eq!(view(&n, ViewKind::Skeleton), Some("the best make neighbor"));
        assert_eq!(n.signals.mixed_script_words, 4);
        // Lowercase look-alikes fold as before; a word of another script stays as it is.
        let n = normalize("\u{0441}\u{043E}ok \u{043F}\u{0440}\u{0438}\u{0432}\u{0435}\u{0442}");
        assert_eq!(
            view(&n, ViewKind::Skeleton),
            Some("cook \u{43f}p\u{438}\u{432}e\u{442}")
        );
    }

    #[test]
    fn leet_and_spacing() {
        let n = normalize("n4k3d");
        assert_eq!(view(&n, ViewKind::Leet), Some("naked"));
        let n = normalize("a n.a.k.e.d figure");
        assert_eq!(view(&n, ViewKind::Collapsed), Some("a naked figure"));
        let n = normalize("n a k e d   w o m a n");
        assert_eq!(view(&n, ViewKind::Collapsed), Some("naked woman"));
    }

    #[test]
    fn spans_map_back_to_original() {
        let src = "x ｎａｋｅｄ y";
        let n = normalize(src);
        let v = &n.views[0];
        let at = v.text().find("naked").unwrap();
        let span = v.original_span(at..at + 5);
        assert_eq!(&src[span], "ｎａｋｅｄ");
    }

    #[test]
    fn hidden_tag_characters_are_read() {
        let payload: String = "secret words"
            .chars()
            .map(|c| char::from_u32(0xE0000 + c as u32).unwrap())
            .collect();
        let n = normalize(&format!("hello{payload}"));
        assert_eq!(view(&n, ViewKind::Hidden), Some("secret words"));
        assert_eq!(n.signals.tag_chars, 12);
    }

    #[test]
    fn flag_tags_are_not_hidden_text() {
        let n = normalize("go \u{1F3F4}\u{E0067}\u{E0062}\u{E0065}\u{E006E}\u{E0067}\u{E007F}");
        assert_eq!(n.signals.tag_chars, 0);
        assert!(view(&n, ViewKind::Hidden).is_none());
    }

    #[test]
    fn rot13_only_when_it_reads_better() {
        let n = normalize("gur png vf ba gur gnoyr");
        assert_eq!(view(&n, ViewKind::Rot13), Some("the cat is on the table"));
        let n = normalize("the cat is on the table");
        assert!(view(&n, ViewKind::Rot13).is_none());
    }

    #[test]
    fn base64_is_decoded_and_nested_depth_bounded() {
        let engine = base64::engine::general_purpose::STANDARD;
        let inner = "a quiet garden at dawn";
        let n = normalize(&format!("decode: {}", engine.encode(inner)));
        assert_eq!(view(&n, ViewKind::Base64), Some(inner));
        let mut s = inner.to_owned();
        for _ in 0..8 {
            s = engine.encode(s);
        }
        let n = normalize(&s);
        assert!(n.signals.decode_limited >= 1);
        assert!(n.views.len() <= 1 + 3 * 4);
    }
}
