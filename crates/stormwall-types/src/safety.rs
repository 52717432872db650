//! Content-safety vocabulary shared by the screener, the gateway, the detectors and the
//! simulator: the categories a verdict scores, the policy actions, the stage a text was
//! screened at, and the category a recorded [`SafetyVerdict`](crate::SafetyVerdict) carries.
//!
//! Every name here is the stable snake_case string events are stored and exported with;
//! these types only give the strings a type, the serialised form is unchanged.
//!
//! ```
//! use stormwall_types::safety::{Category, VerdictCategory};
//! assert_eq!("sexual".parse::<Category>().unwrap(), Category::Sexual);
//! assert_eq!(VerdictCategory::from_name("sexual"), VerdictCategory::Content(Category::Sexual));
//! assert_eq!(VerdictCategory::from_name("vendor_x").as_str(), "vendor_x");
//! ```

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
    /// so the gateway can merge external classifiers' scores into the screener's verdict.
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

/// What to do about a category that reached a threshold. Ordered from mildest to strictest.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Let it through, record nothing beyond the usual event.
    #[default]
    Allow,
    /// Let it through and record the verdict.
    Log,
    /// Let it through, record the verdict and raise it for review and the detectors.
    Flag,
    /// Refuse the request (or cut the stream).
    Block,
}

impl Action {
    /// Stable name: `allow`, `log`, `flag` or `block`.
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Log => "log",
            Action::Flag => "flag",
            Action::Block => "block",
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which text a verdict is about: the request's prompt or the upstream's answer.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum SafetyStage {
    /// The prompt, screened before forwarding.
    #[default]
    Input,
    /// The answer, screened while it is relayed.
    Output,
}

impl SafetyStage {
    /// Stable name: `input` or `output` (also the metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            SafetyStage::Input => "input",
            SafetyStage::Output => "output",
        }
    }
}

impl fmt::Display for SafetyStage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The category a recorded verdict carries: one of ours, one of the gateway's own findings,
/// or a name from elsewhere kept as it was.
///
/// Serialised as its plain name (`sexual`, `roleplay_markers`, `classifier_timeout`, ...).
/// [`VerdictCategory::from_name`] (and deserialisation) picks the typed variant for every
/// name we know, so `Other` only ever holds a name that is none of the others; build it
/// through `from_name` rather than by hand.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum VerdictCategory {
    /// A content category the screener (or an external classifier mapped onto ours) scored.
    Content(Category),
    /// The prompt carries role-play front-end markers (`{{char}}`, character cards).
    RoleplayMarkers,
    /// An external classifier did not answer within its timeout.
    ClassifierTimeout,
    /// An external classifier answered with an error, or could not be reached.
    ClassifierError,
    /// Any other name, e.g. an external classifier's category that maps onto none of ours,
    /// or a category a later version added.
    Other(String),
}

impl VerdictCategory {
    /// The name for [`VerdictCategory::RoleplayMarkers`].
    const ROLEPLAY_MARKERS: &'static str = "roleplay_markers";
    /// The name for [`VerdictCategory::ClassifierTimeout`].
    const CLASSIFIER_TIMEOUT: &'static str = "classifier_timeout";
    /// The name for [`VerdictCategory::ClassifierError`].
    const CLASSIFIER_ERROR: &'static str = "classifier_error";

    /// The category with this exact name; names we do not know become `Other`.
    pub fn from_name(name: &str) -> VerdictCategory {
        VerdictCategory::known(name).unwrap_or_else(|| VerdictCategory::Other(name.to_owned()))
    }

    /// The typed variant for a name we know.
    fn known(name: &str) -> Option<VerdictCategory> {
        match name {
            Self::ROLEPLAY_MARKERS => Some(VerdictCategory::RoleplayMarkers),
            Self::CLASSIFIER_TIMEOUT => Some(VerdictCategory::ClassifierTimeout),
            Self::CLASSIFIER_ERROR => Some(VerdictCategory::ClassifierError),
            other => other.parse().ok().map(VerdictCategory::Content),
        }
    }

    /// The stable name stored on events.
    pub fn as_str(&self) -> &str {
        match self {
            VerdictCategory::Content(c) => c.as_str(),
            VerdictCategory::RoleplayMarkers => Self::ROLEPLAY_MARKERS,
            VerdictCategory::ClassifierTimeout => Self::CLASSIFIER_TIMEOUT,
            VerdictCategory::ClassifierError => Self::CLASSIFIER_ERROR,
            VerdictCategory::Other(s) => s,
        }
    }

    /// The content category, when it is one.
    pub fn content(&self) -> Option<Category> {
        match self {
            VerdictCategory::Content(c) => Some(*c),
            _ => None,
        }
    }
}

impl Default for VerdictCategory {
    /// The empty name (what an unset category serialised as when it was a plain string).
    fn default() -> Self {
        VerdictCategory::Other(String::new())
    }
}

impl From<Category> for VerdictCategory {
    fn from(c: Category) -> Self {
        VerdictCategory::Content(c)
    }
}

impl From<&str> for VerdictCategory {
    fn from(name: &str) -> Self {
        VerdictCategory::from_name(name)
    }
}

impl From<String> for VerdictCategory {
    fn from(name: String) -> Self {
        VerdictCategory::known(&name).unwrap_or(VerdictCategory::Other(name))
    }
}

impl PartialEq<Category> for VerdictCategory {
    fn eq(&self, other: &Category) -> bool {
        matches!(self, VerdictCategory::Content(c) if c == other)
    }
}

impl fmt::Display for VerdictCategory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for VerdictCategory {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for VerdictCategory {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Name;
        impl serde::de::Visitor<'_> for Name {
            type Value = VerdictCategory;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a safety category name")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(VerdictCategory::from_name(v))
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(VerdictCategory::from(v))
            }
        }
        d.deserialize_str(Name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json<T: serde::Serialize>(v: &T) -> String {
        serde_json::to_string(v).unwrap()
    }

    fn parse<T: serde::de::DeserializeOwned>(s: &str) -> T {
        serde_json::from_str(s).unwrap()
    }

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

    #[test]
    fn categories_actions_and_stages_serialise_as_their_old_names() {
        let categories = [
            (Category::Sexual, "sexual"),
            (Category::SexualMinors, "sexual_minors"),
            (Category::Violence, "violence"),
            (Category::Hate, "hate"),
            (Category::Harassment, "harassment"),
            (Category::SelfHarm, "self_harm"),
            (Category::Illicit, "illicit"),
            (Category::Jailbreak, "jailbreak"),
            (Category::RealPersonSexual, "real_person_sexual"),
            (Category::PublicFigureLikeness, "public_figure_likeness"),
            (Category::FilterEvasion, "filter_evasion"),
        ];
        assert_eq!(categories.len(), CATEGORY_COUNT);
        for (c, name) in categories {
            assert_eq!(c.as_str(), name);
            assert_eq!(json(&c), format!("\"{name}\""));
            assert_eq!(parse::<Category>(&json(&c)), c);
        }
        for (a, name) in [
            (Action::Allow, "allow"),
            (Action::Log, "log"),
            (Action::Flag, "flag"),
            (Action::Block, "block"),
        ] {
            assert_eq!(a.as_str(), name);
            assert_eq!(json(&a), format!("\"{name}\""));
            assert_eq!(parse::<Action>(&json(&a)), a);
        }
        for (s, name) in [
            (SafetyStage::Input, "input"),
            (SafetyStage::Output, "output"),
        ] {
            assert_eq!(s.as_str(), name);
            assert_eq!(json(&s), format!("\"{name}\""));
            assert_eq!(parse::<SafetyStage>(&json(&s)), s);
        }
        assert!(serde_json::from_str::<Action>("\"nuke\"").is_err());
        assert!(serde_json::from_str::<SafetyStage>("\"middle\"").is_err());
    }

    #[test]
    fn every_verdict_category_round_trips_as_its_old_string() {
        let mut cases: Vec<(VerdictCategory, String)> = Category::ALL
            .into_iter()
            .map(|c| (VerdictCategory::Content(c), c.as_str().to_owned()))
            .collect();
        cases.extend([
            (VerdictCategory::RoleplayMarkers, "roleplay_markers".into()),
            (
                VerdictCategory::ClassifierTimeout,
                "classifier_timeout".into(),
            ),
            (VerdictCategory::ClassifierError, "classifier_error".into()),
            (VerdictCategory::Other("vendor_x".into()), "vendor_x".into()),
            (VerdictCategory::Other(String::new()), String::new()),
        ]);
        for (v, name) in cases {
            assert_eq!(v.as_str(), name);
            assert_eq!(json(&v), json(&name));
            let back: VerdictCategory = parse(&json(&name));
            assert_eq!(back, v);
            // The typed variant, not an `Other` spelling the same name.
            assert_eq!(
                std::mem::discriminant(&back),
                std::mem::discriminant(&v),
                "{name}"
            );
        }
    }

    #[test]
    fn unknown_names_are_kept_as_other() {
        for name in [
            "Sexual",
            "hate/threatening",
            "S4",
            "sexual ",
            "custom_vendor",
        ] {
            let v: VerdictCategory = parse(&json(&name));
            assert_eq!(v, VerdictCategory::Other(name.to_owned()));
            assert!(matches!(v, VerdictCategory::Other(_)), "{name}");
            assert_eq!(json(&v), json(&name));
        }
        assert!(serde_json::from_str::<VerdictCategory>("17").is_err());
    }

    #[test]
    fn conversions_pick_the_typed_variant() {
        assert_eq!(
            VerdictCategory::from("sexual".to_owned()),
            VerdictCategory::Content(Category::Sexual)
        );
        assert_eq!(
            VerdictCategory::from("classifier_error"),
            VerdictCategory::ClassifierError
        );
        assert_eq!(VerdictCategory::from(Category::Hate), Category::Hate);
        assert_eq!(
            VerdictCategory::from("hate").content(),
            Some(Category::Hate)
        );
        assert_eq!(VerdictCategory::RoleplayMarkers.content(), None);
        assert_ne!(VerdictCategory::RoleplayMarkers, Category::Jailbreak);
        assert_eq!(VerdictCategory::default().as_str(), "");
    }
}
