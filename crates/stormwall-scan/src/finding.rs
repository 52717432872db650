//! A finding: where a credential was seen, which rule matched, and a redacted form of it.
//! A finding never holds the secret itself, so it may be printed, logged and stored.

use serde::{Deserialize, Serialize};

use crate::matcher::Match;
use crate::redact::Redactor;
use crate::rules::Confidence;
use crate::validate::Validator;

/// Marker that suppresses findings on its line, e.g. in a test fixture:
/// `key = "…"  # stormwall:allow`.
pub const ALLOW_MARKER: &[u8] = b"stormwall:allow";

/// Where the scanned bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A file in the working tree.
    File,
    /// A blob in a git repository's object database.
    Git,
    /// A member of an archive (zip, tar, gzip).
    Archive,
    /// Standard input.
    Stdin,
    /// A caller-supplied buffer.
    Text,
}

/// The commit that introduced a blob, for findings in git history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitOrigin {
    /// Commit id (hex).
    pub commit: String,
    /// Author name.
    pub author: String,
    /// Author email.
    pub email: String,
    /// Author time, seconds since the Unix epoch.
    pub time: i64,
}

/// Position of a finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Location {
    /// Path as given or relative to the scanned root, `/`-separated; archive members are
    /// `archive.zip!member`.
    pub path: String,
    /// 1-based line.
    pub line: u64,
    /// 1-based column, in Unicode code points.
    pub column: u64,
    /// 1-based column just past the credential.
    pub end_column: u64,
    /// Kind of input.
    pub source: SourceKind,
    /// Git blob id, for findings in history.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blob: Option<String>,
    /// Commit that introduced the blob, when known.
    #[serde(default, skip_serializing_if = "Option::is_none", flatten)]
    pub git: Option<GitOrigin>,
}

/// One credential found. Serialises as the `--format jsonl` line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// Where.
    #[serde(flatten)]
    pub location: Location,
    /// Provider display name.
    pub provider: String,
    /// Rule id.
    pub rule: String,
    /// Rule name.
    pub rule_name: String,
    /// How distinctive the format is.
    pub confidence: Confidence,
    /// True when an offline checksum confirmed the credential.
    pub validated: bool,
    /// Head and tail of the credential, middle elided.
    pub redacted: String,
    /// Keyed hash of the credential (dedup and baselines).
    pub fingerprint: String,
    /// Public id of a Stormwall key (not secret), so it can be revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

impl Finding {
    /// Builds a finding from a match in `hay`; `line` and `column` locate its start.
    pub fn from_match(m: &Match<'_>, hay: &[u8], redactor: &Redactor, location: Location) -> Self {
        let rule = m.rule();
        let secret = m.secret(hay);
        let key_id = (rule.validator() == Some(Validator::Stormwall))
            .then(|| std::str::from_utf8(secret).ok())
            .flatten()
            .and_then(stormwall_types::key::id_of)
            .map(str::to_owned);
        Self {
            location,
            provider: rule.provider().to_owned(),
            rule: rule.id().to_owned(),
            rule_name: rule.name().to_owned(),
            confidence: rule.confidence(),
            validated: m.validated(),
            redacted: redactor.redact(rule, secret),
            fingerprint: redactor.fingerprint(secret),
            key_id,
        }
    }

    /// Sort key for stable output: path, line, column, rule.
    pub fn sort_key(&self) -> (&str, u64, u64, &str, Option<&str>) {
        (
            &self.location.path,
            self.location.line,
            self.location.column,
            &self.rule,
            self.location.blob.as_deref(),
        )
    }
}

/// Line and column (both 1-based, column in code points) of `offset` in `hay`, counting
/// lines from `first_line` at `hay[0]`.
pub fn line_col(hay: &[u8], offset: usize, first_line: u64) -> (u64, u64) {
    let offset = offset.min(hay.len());
    let before = &hay[..offset];
    let newlines = memchr::memchr_iter(b'\n', before).count() as u64;
    let line_start = memchr::memrchr(b'\n', before).map_or(0, |i| i + 1);
    let column = code_points(&before[line_start..]) + 1;
    (first_line + newlines, column)
}

/// Number of code points in possibly invalid UTF-8 (each non-continuation byte counts).
pub fn code_points(bytes: &[u8]) -> u64 {
    bytes.iter().filter(|&&b| (b & 0xc0) != 0x80).count() as u64
}

/// True when the line holding `offset` carries the inline allow marker.
pub fn is_allowed(hay: &[u8], offset: usize) -> bool {
    let offset = offset.min(hay.len());
    let start = memchr::memrchr(b'\n', &hay[..offset]).map_or(0, |i| i + 1);
    let end = memchr::memchr(b'\n', &hay[offset..]).map_or(hay.len(), |i| offset + i);
    memchr::memmem::find(&hay[start..end], ALLOW_MARKER).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column() {
        let hay = "ab\ncdé x\nyz".as_bytes();
        assert_eq!(line_col(hay, 0, 1), (1, 1));
        assert_eq!(line_col(hay, 3, 1), (2, 1));
        let x = hay.iter().position(|&b| b == b'x').unwrap();
        assert_eq!(line_col(hay, x, 1), (2, 5));
        assert_eq!(line_col(hay, 999, 10), (12, 3));
    }

    #[test]
    fn allow_marker_is_per_line() {
        let hay = b"a = 1 # stormwall:allow\nb = 2\n";
        assert!(is_allowed(hay, 2));
        assert!(!is_allowed(hay, 26));
    }
}
