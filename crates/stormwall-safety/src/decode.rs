//! Finding and decoding embedded encoded spans: base64, hex and URL percent-encoding.
//!
//! Finding is cheap and conservative (long runs of the right alphabet); decoding keeps only
//! results that read as text, so ordinary long words cost one failed attempt at most.

use std::ops::Range;

use crate::normalize::ViewKind;

/// Shortest base64 run worth decoding (12 bytes of payload).
pub const MIN_BASE64_RUN: usize = 16;
/// Shortest base64 run recognised when it ends in `=` padding (9 encoded bytes).
pub const MIN_PADDED_BASE64_RUN: usize = 12;
/// Shortest hex run worth decoding (8 bytes of payload).
pub const MIN_HEX_RUN: usize = 16;
/// Fewest `%XX` escapes that make a span URL-encoded text rather than a stray percent sign.
pub const MIN_PERCENT_ESCAPES: usize = 3;
/// Most candidate spans examined in one text, so a text of many short runs stays cheap.
pub const MAX_CANDIDATES: usize = 32;

/// No candidate of any kind is shorter than this.
const MIN_SHORTEST_SPAN: usize = 3 * MIN_PERCENT_ESCAPES;

/// A span of the text that may be encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Which decoder to try.
    pub kind: ViewKind,
    /// Byte range in the text.
    pub range: Range<usize>,
}

const fn is_b64(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'-' | b'_' | b'=')
}

/// Bytes that may be part of a candidate span (base64 of either alphabet, hex, `%XX`): one
/// look-up per byte of every screened text instead of a chain of range tests.
static IN_SPAN: [bool; 256] = {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        t[b] = is_b64(b as u8) || b as u8 == b'%';
        b += 1;
    }
    t
};

/// Spans of `text` that may hold base64, hex or URL-encoded text.
pub fn candidates(text: &str) -> Vec<Candidate> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() && out.len() < MAX_CANDIDATES {
        if !IN_SPAN[usize::from(bytes[i])] {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && IN_SPAN[usize::from(bytes[i])] {
            i += 1;
        }
        let run = &bytes[start..i];
        // Ordinary words are shorter than any span below could be (three `%XX` escapes at
        // least): skip them without the per-byte tally.
        if run.len() < MIN_SHORTEST_SPAN {
            continue;
        }
        // One pass over the run for everything the decisions below need.
        let (mut upper, mut lower, mut digit, mut all_hex, mut pct, mut pad) =
            (false, false, false, true, false, 0usize);
        for &b in run {
            upper |= b.is_ascii_uppercase();
            lower |= b.is_ascii_lowercase();
            digit |= b.is_ascii_digit();
            all_hex &= b.is_ascii_hexdigit();
            pct |= b == b'%';
            pad += usize::from(b == b'=');
        }
        if pct {
            let escapes = run
                .windows(3)
                .filter(|w| w[0] == b'%' && w[1].is_ascii_hexdigit() && w[2].is_ascii_hexdigit())
                .count();
            if escapes >= MIN_PERCENT_ESCAPES {
                out.push(Candidate {
                    kind: ViewKind::Url,
                    range: start..i,
                });
            }
            continue;
        }
        if run.len() >= MIN_HEX_RUN && run.len().is_multiple_of(2) && all_hex && digit {
            out.push(Candidate {
                kind: ViewKind::Hex,
                range: start..i,
            });
            continue;
        }
        // Padding on a whole number of quads is base64's own mark: shorter encoded phrases
        // (a few words) count too.
        let padded = pad > 0 && run.len() >= MIN_PADDED_BASE64_RUN && run.len().is_multiple_of(4);
        if (run.len() - pad >= MIN_BASE64_RUN || padded) && upper && (lower || digit) {
            out.push(Candidate {
                kind: ViewKind::Base64,
                range: start..i,
            });
        }
    }
    out
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes a run of hex digit pairs.
pub fn hex(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    b.chunks_exact(2)
        .map(|p| Some(hex_val(p[0])? << 4 | hex_val(p[1])?))
        .collect()
}

/// Decodes URL percent-encoding (`+` as space); stray `%` signs are kept as they are.
pub fn percent(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex_val(b[i + 1]), hex_val(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    Some(out)
}

/// Whether decoded bytes read as text: mostly printable, with some letters.
pub fn looks_like_text(s: &str) -> bool {
    let mut total = 0usize;
    let mut bad = 0usize;
    let mut letters = 0usize;
    for c in s.chars() {
        total += 1;
        if c.is_control() && !matches!(c, '\n' | '\r' | '\t') || c == '\u{FFFD}' {
            bad += 1;
        }
        if c.is_alphabetic() {
            letters += 1;
        }
    }
    total >= 3 && letters >= 2 && bad * 20 <= total && letters * 2 >= total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_spans() {
        let c = candidates(
            "see 6e616b656420666967757265 and bmFrZWQgZmlndXJlIGhlcmU= and a%20b%20c%20d",
        );
        let kinds: Vec<_> = c.iter().map(|c| c.kind).collect();
        assert_eq!(kinds, [ViewKind::Hex, ViewKind::Base64, ViewKind::Url]);
    }

    #[test]
    fn decoders() {
        assert_eq!(hex("414243").unwrap(), b"ABC");
        assert!(hex("41zz").is_none());
        assert_eq!(percent("a%20b+c%").unwrap(), b"a b c%");
        assert!(looks_like_text("hello world"));
        assert!(!looks_like_text("\u{1}\u{2}\u{3}ab"));
    }

    #[test]
    fn short_padded_base64_is_a_candidate() {
        // "aaa aaa aaa": 11 bytes, 16 characters with padding.
        let c = candidates("decode this and follow it: YWFhIGFhYSBhYWE=");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].kind, ViewKind::Base64);
        // Without padding a run that short is an ordinary token.
        assert!(candidates("token AbCdEfGh1234").is_empty());
    }

    #[test]
    fn ordinary_words_are_not_candidates() {
        assert!(candidates("a photorealistic internationalization of everything").is_empty());
    }
}
