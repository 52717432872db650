//! Verdicts: what the screener decided, why, and where in the text — never the text itself.

use std::ops::Range;

use crate::category::{Category, Kind};
use crate::normalize::{Signals, ViewKind};
use crate::policy::{Action, Profile};

/// Categories scoring below this are left out of a verdict unless a rule fired on them.
pub const REPORT_FLOOR: f32 = 0.15;

/// Where a category's evidence was found: the view and the byte range in the original text.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Evidence {
    /// The view the match was made in (`text` for the plain text; otherwise the trick undone).
    pub view: ViewKind,
    /// Byte range in the screened text (for streams: in the whole output so far).
    pub span: Range<usize>,
}

/// Which part of the screener produced a score.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Detector {
    /// A lexicon term.
    Lexicon,
    /// Lexicon terms combined (sexual intent with a person or a minor).
    Combination,
    /// The statistical model.
    Model,
    /// Normalization signals (hidden channels, look-alikes, encodings).
    Signals,
    /// An external classifier merged in by the caller.
    External,
    /// The encoder tier's heads (the cascade).
    Encoder,
}

/// One category's score and what the profile does about it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CategoryScore {
    /// The category.
    pub category: Category,
    /// Score in 0..=1.
    pub score: f32,
    /// The action the profile takes at this score.
    pub action: Action,
    /// What produced the score.
    pub detector: Detector,
    /// Name of the external classifier, when `detector` is `external`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Where in the text, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
}

/// A score from an external classifier (Azure AI Content Safety, OpenAI moderation, a judge
/// model), to merge into a verdict with [`Verdict::merge_external`].
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalScore {
    /// Classifier name, e.g. `azure_content_safety`.
    pub source: String,
    /// Category, mapped with [`Category::from_taxonomy`].
    pub category: Category,
    /// Score in 0..=1 (severity levels scaled by the adapter).
    pub score: f32,
}

/// The outcome of screening one text under one profile.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Verdict {
    /// The strictest action any category reached.
    pub action: Action,
    /// The endpoint kind the profile was applied for.
    pub kind: Kind,
    /// Categories that scored, strictest action first, then highest score.
    pub categories: Vec<CategoryScore>,
    /// Obfuscation counts from normalization (for the evasion detector).
    pub signals: Signals,
}

impl Verdict {
    /// An empty verdict that allows (for texts not screened, or fail-open).
    pub fn allow(kind: Kind) -> Verdict {
        Verdict {
            action: Action::Allow,
            kind,
            categories: Vec::new(),
            signals: Signals::default(),
        }
    }

    /// Whether the verdict blocks.
    pub fn is_blocked(&self) -> bool {
        self.action == Action::Block
    }

    /// The category that decided the action (the first listed), if any rule fired.
    pub fn decisive(&self) -> Option<&CategoryScore> {
        self.categories.first().filter(|c| c.action > Action::Allow)
    }

    /// The score of a category, 0 when it did not score.
    pub fn score(&self, category: Category) -> f32 {
        self.categories
            .iter()
            .find(|c| c.category == category)
            .map_or(0.0, |c| c.score)
    }

    /// Merges external scores (keeping, per category, the higher score) and re-applies the
    /// profile, so an external classifier can only make a verdict stricter.
    pub fn merge_external(&mut self, scores: &[ExternalScore], profile: &Profile) {
        for e in scores {
            let score = if e.score.is_finite() {
                e.score.clamp(0.0, 1.0)
            } else {
                0.0
            };
            match self
                .categories
                .iter_mut()
                .find(|c| c.category == e.category)
            {
                Some(c) if c.score >= score => {}
                Some(c) => {
                    c.score = score;
                    c.detector = Detector::External;
                    c.source = Some(e.source.clone());
                }
                None => self.categories.push(CategoryScore {
                    category: e.category,
                    score,
                    action: Action::Allow,
                    detector: Detector::External,
                    source: Some(e.source.clone()),
                    evidence: None,
                }),
            }
        }
        self.reapply(profile);
    }

    /// Recomputes every category's action and the overall action under `profile`.
    pub fn reapply(&mut self, profile: &Profile) {
        for c in &mut self.categories {
            c.action = profile.action(self.kind, c.category, c.score);
        }
        self.categories
            .retain(|c| c.score >= REPORT_FLOOR || c.action > Action::Allow);
        self.categories.sort_by(|a, b| {
            b.action
                .cmp(&a.action)
                .then(b.score.total_cmp(&a.score))
                .then(a.category.cmp(&b.category))
        });
        self.action = self
            .categories
            .iter()
            .map(|c| c.action)
            .max()
            .unwrap_or(Action::Allow);
    }

    /// Merges another verdict of the same kind (e.g. another window of one stream): per
    /// category the higher score wins, signals add up.
    pub fn merge(&mut self, other: &Verdict, profile: &Profile) {
        for o in &other.categories {
            match self
                .categories
                .iter_mut()
                .find(|c| c.category == o.category)
            {
                Some(c) if c.score >= o.score => {}
                Some(c) => *c = o.clone(),
                None => self.categories.push(o.clone()),
            }
        }
        self.signals.add(&other.signals);
        self.reapply(profile);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn external_scores_only_tighten() {
        let p = Profile::default();
        let mut v = Verdict::allow(Kind::Image);
        v.merge_external(
            &[ExternalScore {
                source: "judge".into(),
                category: Category::Sexual,
                score: 0.95,
            }],
            &p,
        );
        assert_eq!(v.action, Action::Block);
        assert_eq!(v.decisive().unwrap().source.as_deref(), Some("judge"));
        v.merge_external(
            &[ExternalScore {
                source: "other".into(),
                category: Category::Sexual,
                score: 0.1,
            }],
            &p,
        );
        assert_eq!(v.action, Action::Block);
        assert!((v.score(Category::Sexual) - 0.95).abs() < 1e-6);
    }
}
