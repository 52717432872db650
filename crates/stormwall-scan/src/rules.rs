//! Credential rules as data: one TOML file per provider under `rules/`, each rule with its
//! prefilter keywords, an ASCII-only confirmation regex, optional checksum validator and
//! entropy floor, and positive and negative examples that a test checks.
//!
//! A rule file looks like this:
//!
//! ```toml
//! provider = "Groq"
//!
//! [[rule]]
//! id = "groq-api-key"
//! name = "Groq API key"
//! keywords = ["gsk_"]
//! pattern = '(?:^|[^A-Za-z0-9_])(?P<secret>gsk_[A-Za-z0-9]{52})(?:$|[^A-Za-z0-9_])'
//! positive = ["GROQ_API_KEY=gsk_…"]
//! negative = ["gsk_short"]
//! ```
//!
//! `keywords` feed the Aho-Corasick prefilter and must be literal, case-sensitive and at least
//! three bytes long. The regex runs only in a window around each keyword hit; the `secret`
//! group, when present, is the credential, otherwise the whole match is. A rule with
//! `context_window` treats its keywords as context (an endpoint, a variable name) and looks
//! for the credential anywhere within that many bytes of it.

use serde::{Deserialize, Serialize};

use crate::validate::Validator;

/// How sure a match is, from weakest to strongest; used to rank overlapping matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Confidence {
    /// Needs context (a keyword nearby) because the format itself is generic.
    Medium,
    /// A distinctive prefix or marker.
    High,
}

/// Why a rule set could not be loaded or compiled.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// The TOML of a rule file does not parse or has unknown fields.
    #[error("rule file {file}: {message}")]
    Parse {
        /// Rule file name.
        file: String,
        /// Parser message.
        message: String,
    },
    /// A rule's regex does not compile.
    #[error("rule {rule}: pattern does not compile: {message}")]
    Pattern {
        /// Rule id.
        rule: String,
        /// Compiler message.
        message: String,
    },
    /// A rule breaks a structural requirement (keywords, bounded length, unique id).
    #[error("rule {rule}: {message}")]
    Invalid {
        /// Rule id.
        rule: String,
        /// What is wrong.
        message: &'static str,
    },
    /// The prefilter automaton could not be built.
    #[error("prefilter: {0}")]
    Prefilter(String),
}

/// The rule files compiled into the binary, in a stable order.
pub const BUILTIN_RULE_FILES: &[(&str, &str)] = &[
    ("stormwall.toml", include_str!("../rules/stormwall.toml")),
    ("openai.toml", include_str!("../rules/openai.toml")),
    (
        "azure-openai.toml",
        include_str!("../rules/azure-openai.toml"),
    ),
    ("anthropic.toml", include_str!("../rules/anthropic.toml")),
    ("google.toml", include_str!("../rules/google.toml")),
    ("aws.toml", include_str!("../rules/aws.toml")),
    (
        "huggingface.toml",
        include_str!("../rules/huggingface.toml"),
    ),
    ("groq.toml", include_str!("../rules/groq.toml")),
    ("replicate.toml", include_str!("../rules/replicate.toml")),
    ("openrouter.toml", include_str!("../rules/openrouter.toml")),
    ("perplexity.toml", include_str!("../rules/perplexity.toml")),
    ("xai.toml", include_str!("../rules/xai.toml")),
    ("deepseek.toml", include_str!("../rules/deepseek.toml")),
    ("mistral.toml", include_str!("../rules/mistral.toml")),
    ("cohere.toml", include_str!("../rules/cohere.toml")),
    ("together.toml", include_str!("../rules/together.toml")),
    ("fireworks.toml", include_str!("../rules/fireworks.toml")),
    ("elevenlabs.toml", include_str!("../rules/elevenlabs.toml")),
    ("stability.toml", include_str!("../rules/stability.toml")),
    ("langsmith.toml", include_str!("../rules/langsmith.toml")),
    ("cloudflare.toml", include_str!("../rules/cloudflare.toml")),
    ("github.toml", include_str!("../rules/github.toml")),
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    /// Display name of the provider every rule in the file belongs to.
    provider: String,
    /// The rules.
    #[serde(default, rename = "rule")]
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    /// Stable identifier, kebab-case, unique across all rule files.
    id: String,
    /// Human name.
    name: String,
    /// Literal prefilter keywords (case-sensitive, at least three bytes).
    keywords: Vec<String>,
    /// ASCII-only regex; a `secret` group marks the credential inside the match.
    pattern: String,
    /// How distinctive the format is.
    #[serde(default = "default_confidence")]
    confidence: Confidence,
    /// Checksum the credential must carry.
    #[serde(default)]
    validator: Option<Validator>,
    /// Keywords are context: search this many bytes either side of them.
    #[serde(default)]
    context_window: Option<usize>,
    /// Minimum Shannon entropy (bits per byte) of the credential.
    #[serde(default)]
    min_entropy: Option<f32>,
    /// Reject credentials made only of hex digits (digests look like that).
    #[serde(default)]
    not_hex: bool,
    /// Longer explanation and remediation, shown in SARIF help.
    #[serde(default)]
    description: Option<String>,
    /// Texts that must yield exactly one finding of this rule.
    #[serde(default)]
    positive: Vec<String>,
    /// Texts that must yield no finding of this rule.
    #[serde(default)]
    negative: Vec<String>,
}

fn default_confidence() -> Confidence {
    Confidence::High
}

/// One credential rule, loaded from data and checked for structure.
#[derive(Debug, Clone)]
pub struct Rule {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) provider: String,
    pub(crate) keywords: Vec<String>,
    pub(crate) pattern: String,
    pub(crate) confidence: Confidence,
    pub(crate) validator: Option<Validator>,
    pub(crate) context_window: Option<usize>,
    pub(crate) min_entropy: Option<f32>,
    pub(crate) not_hex: bool,
    pub(crate) description: Option<String>,
    pub(crate) positive: Vec<String>,
    pub(crate) negative: Vec<String>,
}

impl Rule {
    /// Stable identifier, e.g. `openai-project-key`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Human name, e.g. "OpenAI project API key".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Provider display name, e.g. "OpenAI".
    pub fn provider(&self) -> &str {
        &self.provider
    }

    /// How distinctive the format is.
    pub fn confidence(&self) -> Confidence {
        self.confidence
    }

    /// The checksum its matches carry, if the format has one.
    pub fn validator(&self) -> Option<Validator> {
        self.validator
    }

    /// Longer explanation, if the rule file gives one.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// Example texts that must match.
    pub fn positive_examples(&self) -> &[String] {
        &self.positive
    }

    /// Example texts that must not match.
    pub fn negative_examples(&self) -> &[String] {
        &self.negative
    }

    /// The prefilter keywords.
    pub fn keywords(&self) -> &[String] {
        &self.keywords
    }

    /// The confirmation regex source.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }

    /// The keyword-to-credential search distance for context rules.
    pub fn context_window(&self) -> Option<usize> {
        self.context_window
    }
}

/// Parses one rule file.
pub fn parse_rule_file(file: &str, text: &str) -> Result<Vec<Rule>, RuleError> {
    let parsed: RuleFile = toml::from_str(text).map_err(|e| RuleError::Parse {
        file: file.to_owned(),
        message: e.to_string(),
    })?;
    parsed
        .rules
        .into_iter()
        .map(|r| {
            let rule = Rule {
                id: r.id,
                name: r.name,
                provider: parsed.provider.clone(),
                keywords: r.keywords,
                pattern: r.pattern,
                confidence: r.confidence,
                validator: r.validator,
                context_window: r.context_window,
                min_entropy: r.min_entropy,
                not_hex: r.not_hex,
                description: r.description,
                positive: r.positive,
                negative: r.negative,
            };
            check_structure(&rule)?;
            Ok(rule)
        })
        .collect()
}

/// All built-in rules, in file order.
pub fn builtin_rules() -> Result<Vec<Rule>, RuleError> {
    let mut all = Vec::new();
    for (file, text) in BUILTIN_RULE_FILES {
        all.extend(parse_rule_file(file, text)?);
    }
    Ok(all)
}

/// Largest context window a rule may ask for; bounds the work per keyword hit.
pub const MAX_CONTEXT_WINDOW: usize = 2048;

fn check_structure(rule: &Rule) -> Result<(), RuleError> {
    let invalid = |message| RuleError::Invalid {
        rule: rule.id.clone(),
        message,
    };
    if rule.id.is_empty()
        || !rule
            .id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(invalid("id must be non-empty kebab-case ASCII"));
    }
    if rule.keywords.is_empty() {
        return Err(invalid("needs at least one keyword"));
    }
    if rule.keywords.iter().any(|k| k.len() < 3 || !k.is_ascii()) {
        return Err(invalid("keywords must be ASCII and at least three bytes"));
    }
    if rule.context_window.is_some_and(|w| w > MAX_CONTEXT_WINDOW) {
        return Err(invalid("context_window is larger than MAX_CONTEXT_WINDOW"));
    }
    Ok(())
}
