//! Stormwall's credential scanner.
//!
//! Rules are data (one TOML file per provider under `rules/`, each with positive and negative
//! examples). The [`Matcher`] runs one Aho-Corasick pass over the input for every rule keyword,
//! confirms each hit with its rule's ASCII-only regex in a small window, drops placeholders and
//! low-entropy strings, and validates checksums where the format has one. It is pure and
//! synchronous over `&[u8]`, so the gateway uses it on prompts and completions with
//! `default-features = false`; the `inputs` feature adds files, directories, archives, stdin
//! and git histories.
//!
//! ```
//! use stormwall_scan::Matcher;
//!
//! let matcher = Matcher::builtin().unwrap();
//! let text = b"nothing secret here";
//! assert!(matcher.find(text).is_empty());
//! ```

pub mod baseline;
pub mod finding;
pub mod matcher;
pub mod redact;
pub mod report;
pub mod rules;
pub mod validate;

#[cfg(feature = "inputs")]
pub mod inputs;
#[cfg(feature = "inputs")]
pub mod synth;

pub use finding::{Finding, GitOrigin, Location, SourceKind};
pub use matcher::{Match, Matcher};
pub use redact::Redactor;
pub use rules::{Confidence, Rule, RuleError};
pub use validate::Validator;
