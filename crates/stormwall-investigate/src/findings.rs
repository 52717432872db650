//! `stormwall scan` findings as exposure locations: the scanner's JSON-lines report
//! (`stormwall scan --format jsonl`), read strictly, and what of it the graph keeps.
//!
//! A finding names a Stormwall key by its public id (`key_id`, set only when the key's
//! checksum held), the same id a leaked-key report is matched by before its hash is checked;
//! the scanner's `fingerprint` is an HMAC of the secret under the scanner's own key, which
//! the gateway (holding only hashes) cannot recompute, so it is kept as a fact, not a join.
//! The redacted head and tail of the secret and the git author's name and email never
//! enter the graph.

use stormwall_scan::{Finding, SourceKind};
use stormwall_types::KeyId;

/// Characters of a commit id shown in an exposure location.
const SHORT_COMMIT: usize = 12;

/// Parses the JSON-lines output of `stormwall scan --format jsonl`. Blank lines are
/// skipped; a SARIF log, a JSON array, the human format or a line that is not a finding is
/// an error naming the line. Nothing of a refused line is echoed (it could hold a secret).
pub fn parse_scan_findings(text: &str) -> Result<Vec<Finding>, crate::Error> {
    let bad = |msg: String| crate::Error::Findings(msg);
    let head = text.trim_start();
    if head.starts_with('[') {
        return Err(bad(
            "a JSON array, not the JSON lines `stormwall scan --format jsonl` writes".to_owned(),
        ));
    }
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let n = n + 1;
        let value: serde_json::Value = serde_json::from_str(line).map_err(|_| {
            bad(format!(
                "line {n} is not JSON: give the output of `stormwall scan --format jsonl` (the human format is not read)"
            ))
        })?;
        let Some(obj) = value.as_object() else {
            return Err(bad(format!("line {n} is not a JSON object")));
        };
        if obj.contains_key("runs") || obj.contains_key("$schema") {
            return Err(bad(
                "a SARIF log: give the output of `stormwall scan --format jsonl` instead"
                    .to_owned(),
            ));
        }
        let f: Finding = serde_json::from_value(value).map_err(|e| {
            bad(format!(
                "line {n} is not a `stormwall scan --format jsonl` finding: {}",
                field_error(&e)
            ))
        })?;
        check(&f).map_err(|why| bad(format!("line {n}: {why}")))?;
        out.push(f);
    }
    Ok(out)
}

/// serde_json's message when it names only a field; its other messages quote the value.
fn field_error(e: &serde_json::Error) -> String {
    let s = e.to_string();
    let s = s.find(" at line ").map_or(s.as_str(), |i| &s[..i]);
    if s.starts_with("missing field") {
        s.to_owned()
    } else {
        "a field has a type or value the scanner does not write".to_owned()
    }
}

/// What the scanner always writes: a 128-bit hex fingerprint, a well-formed key id, a hex
/// commit. Anything else did not come from the scanner (and could carry a secret).
fn check(f: &Finding) -> Result<(), String> {
    let hex = |s: &str| s.bytes().all(|b| b.is_ascii_hexdigit());
    if f.fingerprint.len() != 32 || !hex(&f.fingerprint) {
        return Err("fingerprint is not the scanner's 32 hex digits".to_owned());
    }
    if let Some(id) = &f.key_id
        && KeyId::new(id).is_err()
    {
        return Err("key_id is not a Stormwall key id".to_owned());
    }
    if let Some(g) = &f.location.git
        && (g.commit.len() > 64 || !hex(&g.commit))
    {
        return Err("commit is not a hex commit id".to_owned());
    }
    if f.location.path.is_empty() {
        return Err("path is empty".to_owned());
    }
    if let Some(b) = &f.location.blob
        && (b.len() > 64 || !hex(b))
    {
        return Err("blob is not a hex object id".to_owned());
    }
    // Free text goes into the hash-chained audit log for good: bounded, and no control
    // characters that could forge a line in a log or a report.
    let text = |name: &str, s: &str, max: usize| {
        if s.len() > max || s.chars().any(char::is_control) {
            Err(format!(
                "{name} is longer than {max} bytes or holds control characters"
            ))
        } else {
            Ok(())
        }
    };
    text("path", &f.location.path, MAX_PATH)?;
    text("provider", &f.provider, MAX_LABEL)?;
    text("rule", &f.rule, MAX_LABEL)?;
    text("rule_name", &f.rule_name, MAX_LABEL)?;
    Ok(())
}

/// Longest finding path accepted (the longest a common file system takes).
const MAX_PATH: usize = 4096;
/// Longest provider, rule id or rule name accepted; the scanner's are a few dozen bytes.
const MAX_LABEL: usize = 128;

/// The Stormwall key a finding names: its public id, when the key's checksum held (an id
/// cut from a string that only looks like a key names nothing).
pub fn key_of(f: &Finding) -> Option<&str> {
    f.key_id.as_deref().filter(|_| f.validated)
}

/// The exposure location of a finding, as the scanner reports it: `scan:<path>:<line>`,
/// with `@<commit>` (its first 12 digits) for a finding in git history.
pub fn location_of(f: &Finding) -> String {
    let l = &f.location;
    let mut s = format!("scan:{}:{}", l.path, l.line);
    if let Some(g) = &l.git {
        s.push('@');
        s.push_str(g.commit.get(..SHORT_COMMIT).unwrap_or(&g.commit));
    }
    s
}

/// The scanner's name for the kind of input.
pub fn source_name(k: SourceKind) -> &'static str {
    match k {
        SourceKind::File => "file",
        SourceKind::Git => "git",
        SourceKind::Archive => "archive",
        SourceKind::Stdin => "stdin",
        SourceKind::Text => "text",
    }
}

/// Audit action of a scan finding submitted to the admin API
/// (`POST /admin/investigation/scan-findings`): the audit log is where such findings are
/// kept, so each one is on the hash chain with who submitted it and when.
pub const AUDIT_ACTION: &str = "investigate.scan_finding";

/// The finding as it may be kept: the redacted head and tail of the secret and the git
/// author's name and email are blanked (they are never part of the graph either).
pub fn scrub(f: &Finding) -> Finding {
    let mut out = f.clone();
    out.redacted.clear();
    if let Some(g) = out.location.git.as_mut() {
        g.author.clear();
        g.email.clear();
    }
    out
}

/// What identifies a finding in the graph (its fingerprint and location): the same
/// finding submitted twice is recorded once.
pub fn identity(f: &Finding) -> String {
    format!("{}:{}", f.fingerprint, location_of(f))
}

/// The scan finding an audit entry records, if it records one (action [`AUDIT_ACTION`],
/// a detail that reads as a finding naming a Stormwall key), with when it was recorded.
pub fn from_audit(entry: &stormwall_store::AuditEntry) -> Option<(Finding, time::OffsetDateTime)> {
    if entry.action != AUDIT_ACTION {
        return None;
    }
    let f: Finding = serde_json::from_value(entry.detail.clone()).ok()?;
    check(&f).ok()?;
    key_of(&f)?;
    Some((f, entry.at))
}
