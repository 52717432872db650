//! Role-play front-end markers (detector R2), for the gateway to call on prompt text while
//! it parses a request: events never carry the text, so the gateway records a finding as a
//! safety verdict with category [`VerdictCategory::RoleplayMarkers`].
//!
//! ```
//! use stormwall_detect::markers::roleplay_markers;
//! assert!(roleplay_markers("You are {{char}}. Stay in character with {{user}}."));
//! assert!(!roleplay_markers("Summarise the quarterly report."));
//! ```

use std::sync::LazyLock;

use aho_corasick::AhoCorasick;
use stormwall_types::safety::Action;
use stormwall_types::{SafetyStage, SafetyVerdict, VerdictCategory};

/// Placeholders and headings that role-play front-ends (character-card tools) put in
/// prompts. Matched case-insensitively.
const MARKERS: &[&str] = &[
    "{{char}}",
    "{{user}}",
    "<char>",
    "[character(",
    "char_persona",
    "world_scenario",
    "mes_example",
    "<start>",
];

/// One automaton over every marker, built on first use: the gateway asks this of every
/// prompt, and one pass with a SIMD prefilter costs a fraction of a scan per marker.
static MATCHER: LazyLock<Option<AhoCorasick>> = LazyLock::new(|| {
    AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build(MARKERS)
        .ok()
});

/// Whether the text carries role-play front-end markers.
pub fn roleplay_markers(text: &str) -> bool {
    match MATCHER.as_ref() {
        Some(ac) => ac.is_match(text),
        // The fixed markers always build; should that ever change, the slow scan still answers.
        None => scan_each_marker(text.as_bytes()),
    }
}

/// The marker test without the automaton: one case-insensitive scan per marker.
fn scan_each_marker(bytes: &[u8]) -> bool {
    MARKERS.iter().any(|m| {
        let m = m.as_bytes();
        bytes.windows(m.len()).any(|w| w.eq_ignore_ascii_case(m))
    })
}

/// The verdict the gateway records when [`roleplay_markers`] holds.
pub fn roleplay_verdict() -> SafetyVerdict {
    SafetyVerdict {
        category: VerdictCategory::RoleplayMarkers,
        action: Action::Log,
        score: 1.0,
        stage: SafetyStage::Input,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The automaton answers exactly as one scan per marker does, whatever the case, the
    /// position or the text around a marker.
    #[test]
    fn the_automaton_agrees_with_a_scan_per_marker() {
        let fillers = ["", "x", "Hello, ", "é日本 ", "{{", "<", "char", "{{ch"];
        for marker in MARKERS {
            for filler in fillers {
                for text in [
                    format!("{filler}{marker}{filler}"),
                    format!("{filler}{}", marker.to_ascii_uppercase()),
                    format!("{filler}{}", &marker[..marker.len() - 1]),
                ] {
                    assert_eq!(
                        roleplay_markers(&text),
                        scan_each_marker(text.as_bytes()),
                        "{text:?}"
                    );
                }
            }
        }
        assert!(roleplay_markers("Stay as {{CHAR}} please"));
        assert!(!roleplay_markers("{{cha r}} <cha> char persona"));
        assert!(!roleplay_markers(""));
    }
}
