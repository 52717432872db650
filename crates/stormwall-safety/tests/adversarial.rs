//! Property tests with hostile inputs: deeply nested encodings, megabytes of combining
//! marks, and dense mixes of invisible and encoding characters. Work is checked as the
//! amount of text normalization produces (bounded and linear in the input), never by a
//! clock; `benches/screen.rs` measures time.

use std::sync::OnceLock;

use base64::Engine as _;
use proptest::prelude::*;
use stormwall_safety::normalize::{MAX_DECODE_DEPTH, MAX_DECODED_BYTES, Normalized, normalize};
use stormwall_safety::{Category, Kind, Profile, Screener, Verdict};

/// Largest growth of one character under compatibility folding (U+FDFA is 18 characters).
const MAX_FOLD_GROWTH: usize = 18 * 4;
/// Views made from one text (plain, skeleton, leet, collapsed, hidden, rot13) and slack.
const VIEWS_PER_TEXT: usize = 8;

fn screener() -> &'static Screener {
    static S: OnceLock<Screener> = OnceLock::new();
    S.get_or_init(|| Screener::builtin().unwrap_or_else(|e| panic!("screener: {e}")))
}

/// Bytes of all views together: the work every later stage does is linear in this.
fn view_bytes(n: &Normalized) -> usize {
    n.views.iter().map(|v| v.text().len()).sum()
}

/// The work bound: every view of the text, and every view of what was decoded under the
/// decoding budget, at most `MAX_FOLD_GROWTH` times larger.
fn work_bound(input: usize) -> usize {
    VIEWS_PER_TEXT * MAX_FOLD_GROWTH * (input + MAX_DECODED_BYTES)
}

fn check_verdict(v: &Verdict, text: &str) -> Result<(), TestCaseError> {
    for c in &v.categories {
        prop_assert!(
            (0.0..=1.0).contains(&c.score),
            "{}: {}",
            c.category,
            c.score
        );
        if let Some(e) = &c.evidence {
            prop_assert!(e.span.start <= e.span.end && e.span.end <= text.len());
            prop_assert!(text.get(e.span.clone()).is_some(), "{:?}", e.span);
        }
    }
    Ok(())
}

fn nest(text: &str, depth: usize) -> String {
    let mut s = text.to_owned();
    for _ in 0..depth {
        s = base64::engine::general_purpose::STANDARD.encode(s);
    }
    s
}

/// Characters filters choke on: invisibles, tags, variation selectors, bidi controls,
/// combining marks, fullwidth and look-alike letters, and the alphabets of the decoders.
fn hostile_char() -> impl Strategy<Value = char> {
    prop_oneof![
        prop::sample::select(vec![
            '\u{200B}',
            '\u{200D}',
            '\u{00AD}',
            '\u{2060}',
            '\u{FEFF}',
            '\u{202E}',
            '\u{2066}',
            '\u{FE0F}',
            '\u{FE01}',
            '\u{E0041}',
            '\u{E0061}',
            '\u{E007F}',
            '\u{0301}',
            '\u{0336}',
            '\u{20DD}',
            'ａ',
            'Ｚ',
            'а',
            'е',
            'ο',
            '𝐧',
            'ﬁ',
            '\u{FDFA}',
            '%',
            '=',
            '+',
            '/',
            ' ',
            '.',
            '4',
            '3',
            '0',
            '1',
            '$',
            '@',
        ]),
        prop::char::range('a', 'z'),
        prop::char::range('A', 'F'),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Base64 nested far past the decoding depth: decoding stops at the bound, the
    /// decoded text stays within the budget, and the verdict is well formed.
    #[test]
    fn deeply_nested_base64_is_bounded(
        words in "[a-z]{4,10}( [a-z]{4,10}){2,8}",
        depth in 0usize..18,
        pad in 0usize..4,
    ) {
        let text = format!("{}{}", " ".repeat(pad), nest(&words, depth));
        let n = normalize(&text);
        prop_assert!(n.views.iter().all(|v| v.depth() <= MAX_DECODE_DEPTH));
        let decoded: usize = n.views.iter().filter(|v| v.depth() > 0).map(|v| v.text().len()).sum();
        prop_assert!(decoded <= VIEWS_PER_TEXT * MAX_DECODED_BYTES, "{decoded}");
        prop_assert!(view_bytes(&n) <= work_bound(text.len()));
        if (1..=usize::from(MAX_DECODE_DEPTH)).contains(&depth) {
            // Within the bound, the innermost text is read.
            let plain = normalize(&words).views[0].text().to_owned();
            prop_assert!(n.views.iter().any(|v| v.text().contains(&plain)));
        }
        for kind in [Kind::Chat, Kind::Image] {
            check_verdict(&screener().screen(&text, kind, &Profile::default()), &text)?;
        }
    }

    /// Dense mixes of hostile characters: no panic, spans inside the text, linear work.
    #[test]
    fn hostile_mixes_are_bounded(chars in prop::collection::vec(hostile_char(), 0..3000)) {
        let text: String = chars.into_iter().collect();
        let n = normalize(&text);
        prop_assert!(view_bytes(&n) <= work_bound(text.len()));
        for v in &n.views {
            let span = v.whole_span();
            prop_assert!(span.start <= span.end && span.end <= text.len());
        }
        let a = screener().analyze(&text);
        for c in Category::ALL {
            prop_assert!((0.0..=1.0).contains(&a.score(c)));
        }
        check_verdict(&a.decide(Kind::Image, &Profile::default()), &text)?;
    }
}

proptest! {
    // Megabyte inputs: few cases.
    #![proptest_config(ProptestConfig { cases: 4, ..ProptestConfig::default() })]

    /// Megabytes of combining marks stacked on a few letters: the marks are dropped, so the
    /// views are no larger than the letters under them, and screening completes.
    #[test]
    fn megabytes_of_combining_marks_are_dropped(
        base in "[a-z]{1,8}",
        marks in 200_000usize..700_000,
        mark in prop::sample::select(vec!['\u{0301}', '\u{0336}', '\u{20DD}', '\u{1AB0}']),
    ) {
        let per = marks / base.len();
        let text: String = base
            .chars()
            .flat_map(|c| std::iter::once(c).chain(std::iter::repeat_n(mark, per)))
            .collect();
        prop_assert!(text.len() >= 400_000);
        let n = normalize(&text);
        prop_assert!(n.signals.combining_marks as usize >= per);
        for v in &n.views {
            prop_assert!(v.text().len() <= 4 * base.len() + 8, "{:?}: {}", v.kind(), v.text().len());
        }
        check_verdict(&screener().screen(&text, Kind::Chat, &Profile::default()), &text)?;
    }
}
