//! Stormwall content safety: screening that holds up when prompts are rewritten to slip past
//! it. Pure and synchronous — no I/O, no runtime — so the gateway, the CLI and the tests
//! all run the same code.
//!
//! The pipeline, one module per stage:
//! 1. [`normalize`] — the text as several *views* (plain, look-alike skeleton, leetspeak
//!    folded, spacing collapsed, hidden tag-character payload, decoded base64/hex/URL/rot13),
//!    each mapping back to byte ranges of the original, with counts of what was undone.
//! 2. [`lexicon`] — category terms, jailbreak markers, rewrite-suppression phrases and a
//!    person gazetteer, all data files, matched over every view by one Aho-Corasick automaton.
//! 3. [`screen`] — scores per [`Category`], including the combinations Stormwall exists for
//!    (`real_person_sexual`, `sexual_minors`, `public_figure_likeness`, `filter_evasion`),
//!    plus an optional small [`model`] over hashed n-grams.
//! 4. [`policy`] — a [`Profile`] turns scores into an [`Action`] per endpoint [`Kind`].
//!
//! Streams are screened incrementally by an [`OutputScreener`]; external classifier scores
//! are merged with [`Verdict::merge_external`].
//!
//! ```
//! use stormwall_safety::{Action, Kind, Profile, Screener};
//!
//! let screener = Screener::builtin().unwrap();
//! let profile = Profile::default();
//! let v = screener.screen("a n.u.d.e figure, photorealistic", Kind::Image, &profile);
//! assert_eq!(v.action, Action::Block);
//! let v = screener.screen("a lighthouse at dusk, oil painting", Kind::Image, &profile);
//! assert_eq!(v.action, Action::Allow);
//! ```

pub mod benign;
pub mod cascade;
pub mod category;
pub mod decode;
pub mod encoder;
pub mod eval;
pub mod evasion;
pub mod lexicon;
pub mod model;
pub mod normalize;
pub mod policy;
pub mod screen;
pub mod split;
pub mod stream;
pub mod verdict;

#[cfg(test)]
mod pinned_tests;

pub use category::{CATEGORY_COUNT, Category, Kind};
pub use evasion::Transform;
pub use normalize::{Signals, ViewKind};
pub use policy::{Action, Profile, ProfileError, Rule};
pub use screen::{Analysis, SafetyError, Screener, ScreenerBuilder};
pub use stream::{OutputScreener, StreamDecision};
pub use verdict::{CategoryScore, Detector, Evidence, ExternalScore, Verdict};
