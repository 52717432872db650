//! Baselines: accepted findings, kept in a JSON file in the repository so a scan reports
//! only what is new. Entries hold the rule and the keyed fingerprint, never the secret, and
//! match regardless of line so unrelated edits do not resurrect them.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::finding::Finding;

/// Current baseline file version.
pub const BASELINE_VERSION: u32 = 1;

/// Why a baseline file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    /// Not valid baseline JSON.
    #[error("baseline is not valid: {0}")]
    Parse(#[from] serde_json::Error),
    /// Written by a newer version.
    #[error("baseline version {0} is not supported (expected {BASELINE_VERSION})")]
    Version(u32),
}

/// One accepted finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineEntry {
    /// Rule id.
    pub rule: String,
    /// Keyed fingerprint of the secret (see [`crate::Redactor::fingerprint`]).
    pub fingerprint: String,
    /// Where it was seen when accepted (informational).
    pub path: String,
    /// Why it was accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A set of accepted findings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    /// File format version.
    pub version: u32,
    /// Accepted findings.
    pub entries: Vec<BaselineEntry>,
}

impl Baseline {
    /// A baseline accepting every given finding.
    pub fn from_findings(findings: &[Finding]) -> Self {
        let mut seen = HashSet::new();
        let entries = findings
            .iter()
            .filter(|f| {
                seen.insert((
                    f.rule.clone(),
                    f.fingerprint.clone(),
                    f.location.path.clone(),
                ))
            })
            .map(|f| BaselineEntry {
                rule: f.rule.clone(),
                fingerprint: f.fingerprint.clone(),
                path: f.location.path.clone(),
                note: None,
            })
            .collect();
        Self {
            version: BASELINE_VERSION,
            entries,
        }
    }

    /// Parses a baseline file.
    pub fn parse(text: &str) -> Result<Self, BaselineError> {
        let b: Self = serde_json::from_str(text)?;
        if b.version != BASELINE_VERSION {
            return Err(BaselineError::Version(b.version));
        }
        Ok(b)
    }

    /// Pretty JSON for the file.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default() + "\n"
    }

    /// Drops the findings this baseline accepts (same rule and fingerprint).
    pub fn filter(&self, findings: Vec<Finding>) -> Vec<Finding> {
        let accepted: HashSet<(&str, &str)> = self
            .entries
            .iter()
            .map(|e| (e.rule.as_str(), e.fingerprint.as_str()))
            .collect();
        findings
            .into_iter()
            .filter(|f| !accepted.contains(&(f.rule.as_str(), f.fingerprint.as_str())))
            .collect()
    }
}
