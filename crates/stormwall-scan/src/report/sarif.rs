//! SARIF 2.1.0, as GitHub code scanning accepts it: one run, every rule in the driver with
//! its help text and a `security-severity`, one result per finding with a physical location
//! and a partial fingerprint built from the keyed secret hash (never the secret).

use std::collections::BTreeMap;
use std::io::{self, Write};

use serde::Serialize;

use crate::finding::Finding;
use crate::rules::{Confidence, Rule};

/// Schema URI written in `$schema`.
pub const SARIF_SCHEMA: &str = "https://json.schemastore.org/sarif-2.1.0.json";

/// Key of the partial fingerprint in every result.
pub const FINGERPRINT_KEY: &str = "stormwallSecret/v1";

/// The tool's identity in the log.
#[derive(Debug, Clone)]
pub struct ToolInfo {
    /// Driver name.
    pub name: String,
    /// Driver version.
    pub version: String,
    /// Where to read about the tool.
    pub information_uri: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Log<'a> {
    #[serde(rename = "$schema")]
    schema: &'static str,
    version: &'static str,
    runs: Vec<Run<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Run<'a> {
    tool: Tool<'a>,
    column_kind: &'static str,
    results: Vec<SarifResult>,
}

#[derive(Serialize)]
struct Tool<'a> {
    driver: Driver<'a>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Driver<'a> {
    name: &'a str,
    version: &'a str,
    semantic_version: &'a str,
    information_uri: &'a str,
    rules: Vec<ReportingDescriptor<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ReportingDescriptor<'a> {
    id: &'a str,
    name: String,
    short_description: Message,
    full_description: Message,
    help: Message,
    default_configuration: Configuration,
    properties: RuleProperties,
}

#[derive(Serialize)]
struct Message {
    text: String,
}

#[derive(Serialize)]
struct Configuration {
    level: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "kebab-case")]
struct RuleProperties {
    tags: Vec<String>,
    precision: &'static str,
    security_severity: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SarifResult {
    rule_id: String,
    rule_index: usize,
    level: &'static str,
    message: Message,
    locations: Vec<ResultLocation>,
    partial_fingerprints: BTreeMap<&'static str, String>,
    properties: BTreeMap<&'static str, serde_json::Value>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ResultLocation {
    physical_location: PhysicalLocation,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PhysicalLocation {
    artifact_location: ArtifactLocation,
    region: Region,
}

#[derive(Serialize)]
struct ArtifactLocation {
    uri: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Region {
    start_line: u64,
    start_column: u64,
    end_line: u64,
    end_column: u64,
}

/// Builds the SARIF log as a JSON value.
pub fn to_value(findings: &[Finding], rules: &[Rule], tool: &ToolInfo) -> serde_json::Value {
    let descriptors = rules.iter().map(descriptor).collect();
    let results = findings
        .iter()
        .map(|f| result(f, rules.iter().position(|r| r.id() == f.rule).unwrap_or(0)))
        .collect();
    let log = Log {
        schema: SARIF_SCHEMA,
        version: "2.1.0",
        runs: vec![Run {
            tool: Tool {
                driver: Driver {
                    name: &tool.name,
                    version: &tool.version,
                    semantic_version: &tool.version,
                    information_uri: &tool.information_uri,
                    rules: descriptors,
                },
            },
            column_kind: "unicodeCodePoints",
            results,
        }],
    };
    serde_json::to_value(&log).unwrap_or(serde_json::Value::Null)
}

/// Writes the SARIF log, pretty-printed.
pub fn write(
    out: &mut dyn Write,
    findings: &[Finding],
    rules: &[Rule],
    tool: &ToolInfo,
) -> io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, &to_value(findings, rules, tool))?;
    out.write_all(b"\n")
}

fn descriptor(rule: &Rule) -> ReportingDescriptor<'_> {
    let (precision, severity) = match (rule.validator().is_some(), rule.confidence()) {
        (true, _) => ("very-high", "9.0"),
        (false, Confidence::High) => ("high", "8.5"),
        (false, Confidence::Medium) => ("medium", "7.5"),
    };
    let about = rule
        .description()
        .map_or_else(|| rule.name().to_owned(), str::to_owned);
    ReportingDescriptor {
        id: rule.id(),
        name: pascal_case(rule.id()),
        short_description: Message {
            text: rule.name().to_owned(),
        },
        full_description: Message {
            text: about.clone(),
        },
        help: Message {
            text: format!(
                "{about} Treat the credential as compromised: revoke it with its provider \
                 first, then remove it from the code and history."
            ),
        },
        default_configuration: Configuration { level: "error" },
        properties: RuleProperties {
            tags: vec![
                "security".to_owned(),
                "secret".to_owned(),
                "credential".to_owned(),
                format!("provider/{}", rule.provider()),
            ],
            precision,
            security_severity: severity,
        },
    }
}

fn result(f: &Finding, rule_index: usize) -> SarifResult {
    let l = &f.location;
    let mut properties = BTreeMap::new();
    properties.insert("provider", serde_json::Value::from(f.provider.clone()));
    properties.insert("redacted", serde_json::Value::from(f.redacted.clone()));
    properties.insert("validated", serde_json::Value::from(f.validated));
    properties.insert(
        "source",
        serde_json::to_value(l.source).unwrap_or(serde_json::Value::Null),
    );
    if let Some(b) = &l.blob {
        properties.insert("blob", serde_json::Value::from(b.clone()));
    }
    if let Some(g) = &l.git {
        properties.insert("commit", serde_json::Value::from(g.commit.clone()));
        properties.insert("author", serde_json::Value::from(g.author.clone()));
        properties.insert("authorEmail", serde_json::Value::from(g.email.clone()));
        properties.insert("authorTime", serde_json::Value::from(g.time));
    }
    if let Some(id) = &f.key_id {
        properties.insert("stormwallKeyId", serde_json::Value::from(id.clone()));
    }
    let commit = l
        .git
        .as_ref()
        .map(|g| {
            format!(
                " (introduced in commit {})",
                g.commit.get(..12).unwrap_or(&g.commit)
            )
        })
        .unwrap_or_default();
    SarifResult {
        rule_id: f.rule.clone(),
        rule_index,
        level: "error",
        message: Message {
            text: format!("{} found: {}{commit}", f.rule_name, f.redacted),
        },
        locations: vec![ResultLocation {
            physical_location: PhysicalLocation {
                artifact_location: ArtifactLocation {
                    uri: uri_of(&l.path),
                },
                region: Region {
                    start_line: l.line,
                    start_column: l.column,
                    end_line: l.line,
                    end_column: l.end_column,
                },
            },
        }],
        partial_fingerprints: BTreeMap::from([(FINGERPRINT_KEY, f.fingerprint.clone())]),
        properties,
    }
}

/// `openai-project-key` → `OpenaiProjectKey`.
fn pascal_case(id: &str) -> String {
    id.split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

/// A relative URI reference for a path: `/`-separated, with everything outside RFC 3986's
/// unreserved and path characters percent-encoded (a `:` too, so no segment reads as a
/// scheme).
pub fn uri_of(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for &b in path.trim_start_matches("./").as_bytes() {
        let keep = b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/' | b'!' | b'@');
        if keep {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_are_escaped() {
        assert_eq!(uri_of("src/a b.rs"), "src/a%20b.rs");
        assert_eq!(uri_of("./c:d/é"), "c%3Ad/%C3%A9");
        assert_eq!(uri_of("x.zip!y/z"), "x.zip!y/z");
        assert_eq!(pascal_case("openai-project-key"), "OpenaiProjectKey");
    }
}
