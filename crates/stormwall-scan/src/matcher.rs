//! The matcher core: one Aho-Corasick pass finds every rule keyword, then each hit is
//! confirmed by its rule's ASCII-only regex in a small window around it, filtered
//! (placeholders, entropy) and, where the format has one, checksum-validated.
//!
//! Pure and synchronous: it reads a `&[u8]` and returns spans, so the gateway runs the same
//! code on prompts and completions that `stormwall scan` runs on files.

use std::ops::Range;
use std::sync::OnceLock;

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind, Span, packed};
use regex::bytes::{Regex, RegexBuilder};

use crate::rules::{Confidence, Rule, RuleError, builtin_rules};

/// Largest compiled regex, per rule; generous for our small ASCII patterns.
const REGEX_SIZE_LIMIT: usize = 4 * 1024 * 1024;

/// Teddy, the SIMD literal searcher behind the prefilter, handles at most this many keywords;
/// past it the prefilter falls back to a much slower automaton.
pub const PREFILTER_KEYWORD_BUDGET: usize = 64;

/// A confirmed credential inside a haystack. Holds only a span, never the bytes.
#[derive(Debug, Clone, Copy)]
pub struct Match<'m> {
    rule: &'m Rule,
    start: usize,
    end: usize,
    validated: bool,
}

impl<'m> Match<'m> {
    /// The rule that matched.
    pub fn rule(&self) -> &'m Rule {
        self.rule
    }

    /// Byte range of the credential in the haystack.
    pub fn range(&self) -> Range<usize> {
        self.start..self.end
    }

    /// The credential bytes, borrowed from the haystack the match came from.
    pub fn secret<'h>(&self, haystack: &'h [u8]) -> &'h [u8] {
        haystack.get(self.start..self.end).unwrap_or_default()
    }

    /// True when an offline checksum confirmed the credential.
    pub fn validated(&self) -> bool {
        self.validated
    }

    fn rank(&self) -> (bool, Confidence) {
        (self.validated, self.rule.confidence)
    }
}

struct Compiled {
    /// The confirmation regex, compiled at the first hit of one of the rule's keywords: most
    /// rules never see theirs in a gateway's traffic, and a compiled regex holds its NFAs
    /// (20–490 KB a rule, 1.8 MB for the built-in set, two thirds in the two Bedrock rules'
    /// long counted repetitions). `None` only if a recompile that succeeded in
    /// [`Matcher::new`] failed, which the same pattern and options never do.
    regex: OnceLock<Option<Regex>>,
    /// The rule's pattern, compiled again (the same way) on first need.
    pattern: Box<str>,
    /// Capture index of the `secret` group, if the pattern has one.
    secret_group: Option<usize>,
    /// Bytes searched before the keyword hit.
    before: usize,
    /// Bytes searched after the keyword hit.
    after: usize,
    /// Keywords are context (anywhere nearby) rather than part of the credential.
    context: bool,
}

/// The keyword searcher: SIMD Teddy when the CPU and the keyword set allow it (several
/// GB/s on source code), an Aho-Corasick automaton otherwise.
enum Prefilter {
    Packed(packed::Searcher),
    Automaton(AhoCorasick),
}

impl Prefilter {
    /// Calls `hit(keyword, start, end)` for every keyword occurrence, overlapping ones
    /// included: one keyword may end inside another (`gsk_` and `sk_`), so the search
    /// resumes one byte after each hit's start rather than after its end.
    fn for_each(&self, hay: &[u8], mut hit: impl FnMut(usize, usize, usize)) {
        match self {
            Self::Packed(s) => {
                let mut at = 0;
                while at < hay.len() {
                    let Some(m) = s.find_in(hay, Span::from(at..hay.len())) else {
                        break;
                    };
                    hit(m.pattern().as_usize(), m.start(), m.end());
                    at = m.start() + 1;
                }
            }
            Self::Automaton(ac) => {
                for m in ac.find_overlapping_iter(hay) {
                    hit(m.pattern().as_usize(), m.start(), m.end());
                }
            }
        }
    }
}

/// A compiled rule set: the prefilter plus one confirmation regex per rule.
pub struct Matcher {
    rules: Vec<Rule>,
    compiled: Vec<Compiled>,
    prefilter: Prefilter,
    keywords: Vec<String>,
    /// For each keyword, the rules it triggers.
    by_keyword: Vec<Vec<usize>>,
}

impl std::fmt::Debug for Matcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Matcher")
            .field("rules", &self.rules.len())
            .field("keywords", &self.keywords.len())
            .finish()
    }
}

impl Matcher {
    /// Compiles the built-in rules (every supported provider).
    pub fn builtin() -> Result<Self, RuleError> {
        Self::new(builtin_rules()?)
    }

    /// Compiles a rule set; rule ids must be unique.
    pub fn new(rules: Vec<Rule>) -> Result<Self, RuleError> {
        let mut compiled = Vec::with_capacity(rules.len());
        let mut keywords: Vec<String> = Vec::new();
        let mut by_keyword: Vec<Vec<usize>> = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            if rules[..i].iter().any(|r| r.id == rule.id) {
                return Err(RuleError::Invalid {
                    rule: rule.id.clone(),
                    message: "duplicate rule id",
                });
            }
            compiled.push(compile(rule)?);
            for k in &rule.keywords {
                match keywords.iter().position(|x| x == k) {
                    Some(j) => {
                        if !by_keyword[j].contains(&i) {
                            by_keyword[j].push(i);
                        }
                    }
                    None => {
                        keywords.push(k.clone());
                        by_keyword.push(vec![i]);
                    }
                }
            }
        }
        // Leftmost-first reports one keyword per start position, so no keyword may be a
        // prefix of another (both would start at the same byte).
        for (i, a) in keywords.iter().enumerate() {
            if let Some(b) = keywords
                .iter()
                .enumerate()
                .find(|&(j, b)| i != j && b.starts_with(a.as_str()))
            {
                return Err(RuleError::Invalid {
                    rule: format!("keyword {:?} (starts with {a:?})", b.1),
                    message: "a keyword may not start with another rule's keyword",
                });
            }
        }
        let packed = packed::Config::new()
            .match_kind(packed::MatchKind::LeftmostFirst)
            .builder()
            .extend(&keywords)
            .build();
        let prefilter = match packed {
            Some(s) => Prefilter::Packed(s),
            None => Prefilter::Automaton(
                AhoCorasick::builder()
                    .match_kind(MatchKind::Standard)
                    .kind(Some(AhoCorasickKind::DFA))
                    .build(&keywords)
                    .map_err(|e| RuleError::Prefilter(e.to_string()))?,
            ),
        };
        Ok(Self {
            rules,
            compiled,
            prefilter,
            keywords,
            by_keyword,
        })
    }

    /// The rules, in load order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Looks a rule up by id.
    pub fn rule(&self, id: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.id == id)
    }

    /// The distinct prefilter keywords.
    pub fn keywords(&self) -> &[String] {
        &self.keywords
    }

    /// How many rules' confirmation regexes are compiled now: a rule's is compiled at the
    /// first hit of one of its keywords and kept.
    pub fn compiled_regexes(&self) -> usize {
        self.compiled
            .iter()
            .filter(|c| c.regex.get().is_some())
            .count()
    }

    /// True when the haystack holds at least one credential.
    pub fn is_match(&self, haystack: &[u8]) -> bool {
        !self.find(haystack).is_empty()
    }

    /// Every credential in the haystack, ordered by position, overlaps resolved in favour of
    /// checksum-validated then more distinctive rules. Allocates only when something matches.
    pub fn find(&self, haystack: &[u8]) -> Vec<Match<'_>> {
        let mut found = Vec::new();
        self.prefilter.for_each(haystack, |keyword, start, end| {
            if let Some(rules) = self.by_keyword.get(keyword) {
                for &ri in rules {
                    self.confirm(ri, haystack, start, end, &mut found);
                }
            }
        });
        resolve(found)
    }

    fn confirm<'m>(
        &'m self,
        ri: usize,
        hay: &[u8],
        hit_start: usize,
        hit_end: usize,
        out: &mut Vec<Match<'m>>,
    ) {
        let (Some(c), Some(rule)) = (self.compiled.get(ri), self.rules.get(ri)) else {
            return;
        };
        let ws = hit_start.saturating_sub(c.before);
        let we = hit_end.saturating_add(c.after).min(hay.len());
        let Some(window) = hay.get(..we) else {
            return;
        };
        let Some(regex) = c.regex.get_or_init(|| build_regex(&c.pattern).ok()) else {
            return;
        };
        let mut locs = regex.capture_locations();
        let mut pos = ws;
        while pos <= we {
            let Some(m) = regex.captures_read_at(&mut locs, window, pos) else {
                break;
            };
            let (ms, me) = (m.start(), m.end());
            let (ss, se) = c.secret_group.and_then(|g| locs.get(g)).unwrap_or((ms, me));
            // Resume at the end of the credential, not of the match: a trailing boundary
            // byte consumed here may be the leading boundary of the next credential.
            let next = se.max(ms + 1);
            if !c.context {
                if ms > hit_start {
                    break;
                }
                if !(ss <= hit_start && hit_end <= se) {
                    pos = next;
                    continue;
                }
            }
            if let Some(m) = accept(rule, hay, ss, se) {
                out.push(m);
            }
            if !c.context {
                break;
            }
            pos = next;
        }
    }
}

fn compile(rule: &Rule) -> Result<Compiled, RuleError> {
    let pattern_err = |message: String| RuleError::Pattern {
        rule: rule.id.clone(),
        message,
    };
    // Compiled here to report a bad pattern when the rules load and to find the secret
    // group, then dropped: `confirm` compiles it again at the rule's first keyword hit.
    let regex = build_regex(&rule.pattern).map_err(|e| pattern_err(e.to_string()))?;
    let hir = regex_syntax::ParserBuilder::new()
        .unicode(false)
        .utf8(false)
        .build()
        .parse(&rule.pattern)
        .map_err(|e| pattern_err(e.to_string()))?;
    let Some(max_len) = hir.properties().maximum_len() else {
        return Err(RuleError::Invalid {
            rule: rule.id.clone(),
            message: "pattern must have a bounded length",
        });
    };
    let secret_group = regex.capture_names().position(|n| n == Some("secret"));
    let (before, after, context) = match rule.context_window {
        // The credential lies within `w` bytes of the keyword either way; the regex may
        // also consume a little lead-in (`api_key = "`) and one boundary byte.
        Some(w) => (w + max_len, w + max_len, true),
        None => (max_len, max_len, false),
    };
    Ok(Compiled {
        regex: OnceLock::new(),
        pattern: rule.pattern.as_str().into(),
        secret_group,
        before,
        after,
        context,
    })
}

/// The one way a rule's pattern is compiled, at load and at first use alike.
fn build_regex(pattern: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(pattern)
        .unicode(false)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
}

/// Filters a candidate; returns the match when it survives.
fn accept<'m>(rule: &'m Rule, hay: &[u8], start: usize, end: usize) -> Option<Match<'m>> {
    let secret = hay.get(start..end)?;
    if secret.is_empty() {
        return None;
    }
    let validated = match rule.validator {
        Some(v) => {
            if !v.check(secret) {
                return None;
            }
            true
        }
        None => {
            if looks_like_placeholder(secret) {
                return None;
            }
            false
        }
    };
    if rule.not_hex && secret.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    if let Some(min) = rule.min_entropy
        && shannon_entropy(secret) < min
    {
        return None;
    }
    Some(Match {
        rule,
        start,
        end,
        validated,
    })
}

/// Sorts by position and drops overlapping weaker matches (and exact duplicates, which
/// arise when several keyword hits share a window).
fn resolve(mut found: Vec<Match<'_>>) -> Vec<Match<'_>> {
    if found.len() < 2 {
        return found;
    }
    found.sort_by(|a, b| {
        a.start
            .cmp(&b.start)
            .then(b.rank().cmp(&a.rank()))
            .then(b.end.cmp(&a.end))
    });
    let mut kept: Vec<Match<'_>> = Vec::with_capacity(found.len());
    for m in found {
        match kept.last_mut() {
            Some(last) if m.start < last.end => {
                if m.rank() > last.rank() {
                    *last = m;
                }
            }
            _ => kept.push(m),
        }
    }
    kept
}

/// Substrings that mark documentation placeholders rather than live credentials.
const PLACEHOLDER_MARKERS: &[&[u8]] = &[
    b"example",
    b"placeholder",
    b"your",
    b"dummy",
    b"sample",
    b"redacted",
    b"changeme",
    b"replace",
    b"123456",
    b"abcdef",
];

/// True for obviously made-up values: long runs of one character, periodic strings, and
/// the usual placeholder words. Random credentials trip none of these in practice.
pub fn looks_like_placeholder(secret: &[u8]) -> bool {
    let mut run = 1;
    for w in secret.windows(2) {
        if w[0] == w[1] {
            run += 1;
            if run >= 6 {
                return true;
            }
        } else {
            run = 1;
        }
    }
    for p in 1..=16 {
        if secret.len() >= 2 * p + 8 && secret[p..] == secret[..secret.len() - p] {
            return true;
        }
    }
    let lower = secret.to_ascii_lowercase();
    PLACEHOLDER_MARKERS
        .iter()
        .any(|m| memchr::memmem::find(&lower, m).is_some())
}

/// Shannon entropy of the bytes, in bits per byte.
pub fn shannon_entropy(bytes: &[u8]) -> f32 {
    if bytes.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for &b in bytes {
        counts[b as usize] += 1;
    }
    let n = bytes.len() as f32;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = c as f32 / n;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_recognised() {
        assert!(looks_like_placeholder(b"sk-xxxxxxxxxxxxxxxxxxxx"));
        assert!(looks_like_placeholder(b"AKIAIOSFODNN7EXAMPLE"));
        assert!(looks_like_placeholder(b"0123456789abcdef0123456789abcdef"));
        assert!(looks_like_placeholder(b"abcd1234abcd1234abcd1234abcd1234"));
        assert!(!looks_like_placeholder(b"9f2Kq7LmPzX1vB8nRt4WcY6hJd3GsE0a"));
    }

    #[test]
    fn entropy_of_simple_inputs() {
        assert_eq!(shannon_entropy(b""), 0.0);
        assert_eq!(shannon_entropy(b"aaaa"), 0.0);
        assert!((shannon_entropy(b"abcd") - 2.0).abs() < 1e-6);
    }

    #[test]
    fn matcher_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Matcher>();
    }

    #[test]
    fn builtin_rules_compile() {
        let m = Matcher::builtin().unwrap();
        assert!(m.rules().len() > 20);
        assert!(m.keywords().len() <= PREFILTER_KEYWORD_BUDGET);
    }

    #[test]
    fn a_rules_regex_is_compiled_at_its_first_keyword_hit_and_kept() {
        let m = Matcher::builtin().unwrap();
        assert_eq!(m.compiled_regexes(), 0);
        assert!(
            m.find(b"plain English with no credential keyword")
                .is_empty()
        );
        assert_eq!(m.compiled_regexes(), 0);
        let key = b"OPENAI_API_KEY=sk-proj-9f2Kq7LmPzX1vB8nRt4WcY6hJd3GsE0aT3BlbkFJ9f2Kq7LmPzX1vB8nRt4WcY6hJd3GsE0a";
        let first = m.find(key).len();
        let compiled = m.compiled_regexes();
        assert!(compiled >= 1 && compiled < m.rules().len());
        // Kept: the same input again compiles nothing more and finds the same.
        assert_eq!(m.find(key).len(), first);
        assert_eq!(m.compiled_regexes(), compiled);
    }

    #[test]
    fn a_bad_pattern_is_still_refused_when_the_rules_load() {
        let mut rules = builtin_rules().unwrap();
        rules[0].pattern = "(?P<secret>[a-z]+".into();
        assert!(matches!(
            Matcher::new(rules),
            Err(RuleError::Pattern { .. })
        ));
    }

    #[test]
    fn find_never_panics_on_edges() {
        let m = Matcher::builtin().unwrap();
        for hay in [
            &b""[..],
            b"sk-",
            b"swk_",
            b"T3BlbkFJ",
            b"JQQJ9",
            b"AZURE_OPENAI",
            &[0xff; 10],
        ] {
            assert!(m.find(hay).is_empty());
        }
    }
}
