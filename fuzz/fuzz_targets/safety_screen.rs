//! `stormwall_safety`: normalization views, screening of both kinds, and the stream screener
//! with the text split at arbitrary points. Never panics; every score is in 0..=1; every
//! evidence span and view mapping lies inside the text; an unblocked stream screener sees
//! every byte.
//!
//! Input layout: byte 0 = number of split points (mod 8), then that many bytes of split
//! offsets (each taken mod the text length), then the text (lossy UTF-8).
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use stormwall_safety::normalize::{MAX_DECODE_DEPTH, normalize};
use stormwall_safety::{Category, Kind, Profile, Screener, StreamDecision};

fn screener() -> &'static Screener {
    static S: OnceLock<Screener> = OnceLock::new();
    S.get_or_init(|| Screener::builtin().expect("built-in screener"))
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = (n % 8) as usize;
    if rest.len() < n {
        return;
    }
    let (cuts, raw) = rest.split_at(n);
    let text = String::from_utf8_lossy(raw);
    let text = text.as_ref();

    let norm = normalize(text);
    for v in &norm.views {
        assert!(v.depth() <= MAX_DECODE_DEPTH);
        let span = v.whole_span();
        assert!(span.start <= span.end && span.end <= text.len(), "{span:?}");
    }
    let _ = stormwall_safety::normalize::fold(text);

    let s = screener();
    let profile = Profile::default();
    let a = s.analyze(text);
    for c in Category::ALL {
        let score = a.score(c);
        assert!((0.0..=1.0).contains(&score), "{c}: {score}");
        if let Some(e) = a.evidence(c) {
            assert!(e.span.start <= e.span.end && e.span.end <= text.len(), "{e:?}");
        }
    }
    for kind in [Kind::Chat, Kind::Image] {
        let v = s.screen(text, kind, &profile);
        assert_eq!(v, a.decide(kind, &profile));
    }

    // The stream screener, fed the text in pieces cut at char boundaries.
    let mut offsets: Vec<usize> = cuts
        .iter()
        .map(|&c| c as usize % (text.len() + 1))
        .map(|mut o| {
            while !text.is_char_boundary(o) {
                o -= 1;
            }
            o
        })
        .collect();
    offsets.push(text.len());
    offsets.sort_unstable();
    let mut out = s.output_screener(Kind::Chat, &profile);
    let mut at = 0;
    for o in offsets {
        let Some(piece) = text.get(at..o) else {
            continue;
        };
        if let StreamDecision::Block(v) = out.push(piece) {
            assert!(v.is_blocked());
        }
        at = o;
    }
    let end = out.finish();
    // A blocked stream stops taking bytes; otherwise every byte was seen.
    if !end.is_blocked() {
        assert_eq!(out.bytes_seen(), text.len());
    }
});
