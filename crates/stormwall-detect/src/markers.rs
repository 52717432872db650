//! Role-play front-end markers (detector R2), for the gateway to call on prompt text while
//! it parses a request: events never carry the text, so the gateway records a finding as a
//! safety verdict with category [`VerdictCategory::RoleplayMarkers`].
//!
//! ```
//! use stormwall_detect::markers::roleplay_markers;
//! assert!(roleplay_markers("You are {{char}}. Stay in character with {{user}}."));
//! assert!(!roleplay_markers("Summarise the quarterly report."));
//! ```

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

/// Whether the text carries role-play front-end markers.
pub fn roleplay_markers(text: &str) -> bool {
    let bytes = text.as_bytes();
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
