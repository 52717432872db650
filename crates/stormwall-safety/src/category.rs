//! The categories a verdict scores (defined in `stormwall-types`, re-exported) and the
//! endpoint kinds a policy distinguishes.

use std::fmt;
use std::str::FromStr;

// The categories are Stormwall-wide vocabulary (events record them); they live in
// `stormwall-types` and are re-exported here so this crate's API keeps its paths.
pub use stormwall_types::safety::{CATEGORY_COUNT, Category, UnknownCategory};

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
