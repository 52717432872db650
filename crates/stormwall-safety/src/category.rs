//! The categories a verdict scores and the endpoint kinds a policy distinguishes.

use std::fmt;
use std::str::FromStr;

/// Number of categories; arrays indexed by [`Category::index`] have this length.
pub const CATEGORY_COUNT: usize = 11;

/// A content category, aligned with the common moderation taxonomies plus Stormwall's own.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Category {
    /// Sexual content or nudity.
    Sexual,
    /// Sexual content involving minors.
    SexualMinors,
    /// Violence, including graphic or gory content.
    Violence,
    /// Hate against protected groups.
    Hate,
    /// Harassment, threats or abuse aimed at a person.
    Harassment,
    /// Self-harm, including encouragement.
    SelfHarm,
    /// Illicit activity: weapons, drugs, malware, fraud.
    Illicit,
    /// Jailbreak or prompt attack: attempts to switch off the model's rules.
    Jailbreak,
    /// Sexual or nudity intent about a named or described real person (the NCII rule).
    RealPersonSexual,
    /// The likeness of a named public figure (deepfakes, photorealistic depictions).
    PublicFigureLikeness,
    /// Signs of rewriting a prompt to slip past filters: hidden channels, encodings, look-alikes.
    FilterEvasion,
}

impl Category {
    /// Every category, in index order.
    pub const ALL: [Category; CATEGORY_COUNT] = [
        Category::Sexual,
        Category::SexualMinors,
        Category::Violence,
        Category::Hate,
        Category::Harassment,
        Category::SelfHarm,
        Category::Illicit,
        Category::Jailbreak,
        Category::RealPersonSexual,
        Category::PublicFigureLikeness,
        Category::FilterEvasion,
    ];

    /// Position of this category in [`Category::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Stable snake_case name used in JSON, TOML and events.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Sexual => "sexual",
            Category::SexualMinors => "sexual_minors",
            Category::Violence => "violence",
            Category::Hate => "hate",
            Category::Harassment => "harassment",
            Category::SelfHarm => "self_harm",
            Category::Illicit => "illicit",
            Category::Jailbreak => "jailbreak",
            Category::RealPersonSexual => "real_person_sexual",
            Category::PublicFigureLikeness => "public_figure_likeness",
            Category::FilterEvasion => "filter_evasion",
        }
    }

    /// Maps a category name from a common external taxonomy onto ours.
    ///
    /// Accepts our own names and those of the OpenAI moderation endpoint (`sexual/minors`,
    /// `hate/threatening`, `self-harm/intent`, `illicit/violent`), Azure AI Content Safety
    /// (`Sexual`, `Violence`, `Hate`, `SelfHarm`) and Llama Guard 3 hazard codes (`S1`..`S14`),
    /// so the gateway can merge external scores into a [`crate::Verdict`].
    pub fn from_taxonomy(name: &str) -> Option<Category> {
        let lower = name.trim().to_ascii_lowercase();
        if let Ok(c) = lower.parse::<Category>() {
            return Some(c);
        }
        let c = match lower.as_str() {
            "sexual/minors" | "sexual-minors" | "s4" => Category::SexualMinors,
            "sexual/explicit" | "s12" => Category::Sexual,
            "hate/threatening" | "s10" => Category::Hate,
            "harassment/threatening" | "s3" => Category::Harassment,
            "self-harm" | "self-harm/intent" | "self-harm/instructions" | "selfharm" | "s11" => {
                Category::SelfHarm
            }
            "violence/graphic" | "s1" | "s9" => Category::Violence,
            "illicit/violent" | "s2" | "s8" | "s14" => Category::Illicit,
            "jailbreak" | "prompt_attack" | "prompt-injection" | "userpromptattack" => {
                Category::Jailbreak
            }
            "s5" | "s7" => Category::Harassment,
            _ => return None,
        };
        Some(c)
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A category name was not recognised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown safety category {0:?}")]
pub struct UnknownCategory(pub String);

impl FromStr for Category {
    type Err = UnknownCategory;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Category::ALL
            .into_iter()
            .find(|c| c.as_str() == s)
            .ok_or_else(|| UnknownCategory(s.to_owned()))
    }
}

/// The kind of endpoint a text is headed for; image endpoints are screened more strictly.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Chat and text completions, embeddings, responses.
    #[default]
    Chat,
    /// Image generation (and an image model's revised prompt).
    Image,
}

impl Kind {
    /// Stable name: `chat` or `image`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Chat => "chat",
            Kind::Image => "image",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = UnknownCategory;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "chat" => Ok(Kind::Chat),
            "image" => Ok(Kind::Image),
            other => Err(UnknownCategory(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for c in Category::ALL {
            assert_eq!(c.as_str().parse::<Category>().unwrap(), c);
            assert_eq!(Category::ALL[c.index()], c);
        }
    }

    #[test]
    fn external_taxonomies_map() {
        assert_eq!(
            Category::from_taxonomy("sexual/minors"),
            Some(Category::SexualMinors)
        );
        assert_eq!(
            Category::from_taxonomy("SelfHarm"),
            Some(Category::SelfHarm)
        );
        assert_eq!(Category::from_taxonomy("S4"), Some(Category::SexualMinors));
        assert_eq!(Category::from_taxonomy("Sexual"), Some(Category::Sexual));
        assert_eq!(Category::from_taxonomy("nonsense"), None);
    }
}
