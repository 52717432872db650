//! Sigma rules over raw cloud-log records: the parts of the specification cloud rules use.
//!
//! Supported: `logsource` (product/service, mapped to the sources Stormwall reads), named
//! selections (a map: every field matches; a list of maps: any does; a list of strings:
//! keywords anywhere in the record), field modifiers `contains`, `startswith`, `endswith`,
//! `re`, `cidr`, `all`, `exists`, `cased`, plain values with `*`/`?` wildcards, lists of
//! values (any, or every one with `all`), `null`; dotted field paths into nested objects
//! (any element of an array on the way); `condition` with `and`, `or`, `not`, parentheses,
//! `1 of X*`, `all of X*`, `1 of them`, `all of them` (or a list of conditions: any).
//! Matching is case-insensitive except with `re` or `cased`, as Sigma specifies.
//! Not supported (the rule is reported and skipped): aggregations (`| count()`),
//! correlation rules, `base64`/`windash` and other modifiers.

use std::net::IpAddr;
use std::path::Path;

use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

use stormwall_types::{Alert, AlertSubject, DetectorId, Severity, Stage};

use crate::{Record, Source};

/// A rule that could not be loaded, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {reason}")]
pub struct RuleError {
    /// File the rule came from.
    pub file: String,
    /// Why it was not loaded.
    pub reason: String,
}

/// How one field value is compared.
#[derive(Debug, Clone)]
enum Op {
    /// Whole value, with `*`/`?` wildcards.
    Glob(String),
    Contains(String),
    StartsWith(String),
    EndsWith(String),
    Re(regex::Regex),
    Cidr(ipnet::IpNet),
    /// `null`: absent or null.
    Null,
    /// `exists: true|false`.
    Exists(bool),
}

#[derive(Debug, Clone)]
struct FieldTest {
    path: Vec<String>,
    ops: Vec<Op>,
    all: bool,
    cased: bool,
}

#[derive(Debug, Clone)]
enum Selection {
    /// All field tests (one map).
    Map(Vec<FieldTest>),
    /// Any of several maps.
    AnyMap(Vec<Vec<FieldTest>>),
    /// Keywords: any appears anywhere in the record.
    Keywords(Vec<String>),
}

#[derive(Debug, Clone)]
enum Cond {
    Sel(usize),
    Not(Box<Cond>),
    And(Vec<Cond>),
    Or(Vec<Cond>),
    /// `1 of` (false) or `all of` (true) over selections.
    Of(bool, Vec<usize>),
}

/// One loaded rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// `id` (or the title when there is none).
    pub id: String,
    /// `title`.
    pub title: String,
    /// `level` (`informational`, `low`, `medium`, `high`, `critical`).
    pub level: String,
    /// Sources the rule's `logsource` selects.
    pub sources: Vec<Source>,
    /// File it came from.
    pub file: String,
    /// `tags` (`attack.defense-evasion`, …); they give its alerts a kill-chain stage.
    pub tags: Vec<String>,
    selections: Vec<(String, Selection)>,
    condition: Cond,
}

/// Where a matched record was read.
#[derive(Debug, Clone, Copy)]
pub struct MatchedAt<'a> {
    /// Its source.
    pub source: Source,
    /// File (as named by the caller).
    pub file: &'a str,
    /// 1-based line the record starts on.
    pub line: usize,
    /// Event time (the record's own when it parsed; else when it was read).
    pub at: time::OffsetDateTime,
}

impl Rule {
    /// The rule's `level` as a severity (an unknown level is medium).
    pub fn severity(&self) -> Severity {
        match self.level.to_ascii_lowercase().as_str() {
            "informational" | "info" => Severity::Info,
            "low" => Severity::Low,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            _ => Severity::Medium,
        }
    }

    /// The kill-chain stage its ATT&CK tags name (validation when none does).
    pub fn stage(&self) -> Stage {
        let has = |names: &[&str]| {
            self.tags.iter().any(|t| {
                let t = t.to_ascii_lowercase().replace('_', "-");
                names.iter().any(|n| t == *n)
            })
        };
        if has(&["attack.defense-evasion", "attack.impair-defenses"]) {
            Stage::Evasion
        } else if has(&["attack.credential-access", "attack.initial-access"]) {
            Stage::Exposure
        } else if has(&["attack.impact", "attack.resource-hijacking", "attack.t1496"]) {
            Stage::Resale
        } else {
            Stage::Validation
        }
    }

    /// The alert a match raises (detector S1): about the record's principal when the record
    /// parsed, with the rule's id, title and level as subjects. `score` is left at 0 for the
    /// caller's response policy to set.
    pub fn alert(&self, m: MatchedAt<'_>, record: Option<&Record>) -> Alert {
        let (cloud, ip, event_id) = match record {
            Some(Record::Usage(e)) => (
                e.cloud.as_deref(),
                e.cloud
                    .as_deref()
                    .is_none_or(|c| !c.ip_missing)
                    .then_some(e.source_ip),
                Some(e.id.as_str()),
            ),
            Some(Record::Control(c)) => (Some(&c.cloud), c.source_ip, Some(c.id.as_str())),
            None => (None, None, None),
        };
        let subj = |kind: &str, value: String| AlertSubject {
            kind: kind.to_owned(),
            value,
        };
        let mut subjects = Vec::new();
        if let Some(c) = cloud {
            subjects.push(subj("principal", c.principal.label()));
            subjects.push(subj(
                "credential_kind",
                c.principal.kind.as_str().to_owned(),
            ));
            subjects.push(subj("operation", c.operation.clone()));
        }
        subjects.push(subj("sigma_rule", self.id.clone()));
        subjects.push(subj("sigma_title", self.title.clone()));
        subjects.push(subj("sigma_level", self.level.clone()));
        subjects.push(subj("log", format!("{}:{}", m.file, m.line)));
        let evidence = event_id.map_or_else(|| format!("{}:{}", m.file, m.line), str::to_owned);
        Alert {
            id: format!("sigma-{}-{evidence}", self.id),
            detector: DetectorId::S1,
            stage: self.stage(),
            severity: self.severity(),
            at: m.at,
            key_id: cloud.map(|c| c.principal.key_id()),
            tenant: cloud.and_then(|c| c.principal.account.clone()),
            source_ip: ip,
            features: Vec::new(),
            subjects,
            explanation: format!(
                "Sigma rule {:?} ({}, level {}) matched a {} record ({}:{}).",
                self.title, self.id, self.level, m.source, m.file, m.line
            ),
            evidence: vec![evidence],
            score: 0.0,
        }
    }
}

/// The sources a Sigma `logsource` names.
fn sources_of(product: &str, service: &str) -> Vec<Source> {
    let p = product.to_ascii_lowercase();
    let s = service.to_ascii_lowercase();
    match (p.as_str(), s.as_str()) {
        ("aws", "cloudtrail") => vec![Source::Cloudtrail],
        ("aws", "bedrock") | ("aws", "bedrock_invocation") => vec![Source::BedrockInvocation],
        ("azure", "activitylogs") | ("azure", "activity") => vec![Source::AzureActivity],
        ("azure", "openai") | ("azure", "diagnostics") | ("azure", "cognitiveservices") => {
            vec![Source::AzureDiagnostics]
        }
        ("azure", "apim") | ("azure", "apimanagement") => vec![Source::AzureApim],
        ("gcp", "gcp.audit") | ("gcp", "audit") | ("gcp", "vertexai") => vec![Source::VertexAudit],
        ("openai", "audit") => vec![Source::OpenaiAudit],
        ("openai", "usage") => vec![Source::OpenaiUsage],
        ("aws", "") => vec![Source::Cloudtrail, Source::BedrockInvocation],
        ("azure", "") => vec![
            Source::AzureActivity,
            Source::AzureDiagnostics,
            Source::AzureApim,
        ],
        ("gcp", "") => vec![Source::VertexAudit],
        ("openai", "") => vec![Source::OpenaiAudit, Source::OpenaiUsage],
        _ => Vec::new(),
    }
}

fn ystr(y: &Yaml) -> Option<String> {
    match y {
        Yaml::String(s) | Yaml::Real(s) => Some(s.clone()),
        Yaml::Integer(i) => Some(i.to_string()),
        Yaml::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

fn field_test(key: &str, value: &Yaml) -> Result<FieldTest, String> {
    let mut parts = key.split('|');
    let field = parts.next().unwrap_or("");
    let mods: Vec<String> = parts.map(str::to_ascii_lowercase).collect();
    let mut all = false;
    let mut cased = false;
    let mut kind = "eq";
    for m in &mods {
        match m.as_str() {
            "all" => all = true,
            "cased" => cased = true,
            "contains" | "startswith" | "endswith" | "re" | "cidr" | "exists" => kind = m.as_str(),
            // Regex flags Sigma allows; `i` is the only one that changes matching here.
            "i" | "m" | "s" => {}
            other => return Err(format!("modifier {other:?} is not supported")),
        }
    }
    let values: Vec<&Yaml> = match value {
        Yaml::Array(a) => a.iter().collect(),
        v => vec![v],
    };
    let mut ops = Vec::new();
    for v in values {
        if matches!(v, Yaml::Null) {
            ops.push(Op::Null);
            continue;
        }
        let s = ystr(v).ok_or_else(|| format!("value of {key} is not a scalar"))?;
        ops.push(match kind {
            "contains" => Op::Contains(s),
            "startswith" => Op::StartsWith(s),
            "endswith" => Op::EndsWith(s),
            "re" => {
                let ci = mods.iter().any(|m| m == "i");
                let pat = if ci { format!("(?i){s}") } else { s };
                Op::Re(regex::Regex::new(&pat).map_err(|e| format!("bad regex in {key}: {e}"))?)
            }
            "cidr" => Op::Cidr(s.parse().map_err(|_| format!("bad CIDR {s:?} in {key}"))?),
            "exists" => Op::Exists(s.eq_ignore_ascii_case("true")),
            _ => Op::Glob(s),
        });
    }
    Ok(FieldTest {
        path: field.split('.').map(str::to_owned).collect(),
        ops,
        all,
        cased,
    })
}

fn map_tests(h: &yaml_rust2::yaml::Hash) -> Result<Vec<FieldTest>, String> {
    h.iter()
        .map(|(k, v)| {
            let key = ystr(k).ok_or("a field name is not a string")?;
            field_test(&key, v)
        })
        .collect()
}

fn selection(y: &Yaml) -> Result<Selection, String> {
    match y {
        Yaml::Hash(h) => Ok(Selection::Map(map_tests(h)?)),
        Yaml::Array(a) if a.iter().all(|x| matches!(x, Yaml::Hash(_))) => Ok(Selection::AnyMap(
            a.iter()
                .filter_map(|x| match x {
                    Yaml::Hash(h) => Some(map_tests(h)),
                    _ => None,
                })
                .collect::<Result<_, _>>()?,
        )),
        Yaml::Array(a) => Ok(Selection::Keywords(a.iter().filter_map(ystr).collect())),
        _ => Err("a selection is neither a map nor a list".into()),
    }
}

/// Condition parser (recursive descent over whitespace/parenthesis tokens).
struct CondParser<'a> {
    toks: Vec<String>,
    pos: usize,
    names: &'a [(String, Selection)],
}

impl CondParser<'_> {
    fn peek(&self) -> Option<&str> {
        self.toks.get(self.pos).map(String::as_str)
    }
    fn next(&mut self) -> Option<String> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn or(&mut self) -> Result<Cond, String> {
        let mut v = vec![self.and()?];
        while self.peek().is_some_and(|t| t.eq_ignore_ascii_case("or")) {
            self.pos += 1;
            v.push(self.and()?);
        }
        Ok(if v.len() == 1 {
            v.remove(0)
        } else {
            Cond::Or(v)
        })
    }
    fn and(&mut self) -> Result<Cond, String> {
        let mut v = vec![self.not()?];
        while self.peek().is_some_and(|t| t.eq_ignore_ascii_case("and")) {
            self.pos += 1;
            v.push(self.not()?);
        }
        Ok(if v.len() == 1 {
            v.remove(0)
        } else {
            Cond::And(v)
        })
    }
    fn not(&mut self) -> Result<Cond, String> {
        if self.peek().is_some_and(|t| t.eq_ignore_ascii_case("not")) {
            self.pos += 1;
            return Ok(Cond::Not(Box::new(self.not()?)));
        }
        self.atom()
    }
    fn atom(&mut self) -> Result<Cond, String> {
        let t = self.next().ok_or("condition ends early")?;
        if t == "(" {
            let c = self.or()?;
            if self.next().as_deref() != Some(")") {
                return Err("unbalanced parentheses in condition".into());
            }
            return Ok(c);
        }
        if t == "|" {
            return Err("aggregations (| count() …) are not supported".into());
        }
        let quantifier = t.to_ascii_lowercase();
        if matches!(quantifier.as_str(), "1" | "all" | "any")
            && self.peek().is_some_and(|x| x.eq_ignore_ascii_case("of"))
        {
            self.pos += 1;
            let target = self.next().ok_or("`of` without a target")?;
            let idx: Vec<usize> = if target.eq_ignore_ascii_case("them") {
                (0..self.names.len())
                    .filter(|i| self.names.get(*i).is_some_and(|(n, _)| !n.starts_with('_')))
                    .collect()
            } else {
                (0..self.names.len())
                    .filter(|i| {
                        self.names
                            .get(*i)
                            .is_some_and(|(n, _)| glob(&target, n, true))
                    })
                    .collect()
            };
            if idx.is_empty() {
                return Err(format!("`of {target}` names no selection"));
            }
            return Ok(Cond::Of(quantifier == "all", idx));
        }
        let i = self
            .names
            .iter()
            .position(|(n, _)| *n == t)
            .ok_or_else(|| format!("condition names unknown selection {t:?}"))?;
        Ok(Cond::Sel(i))
    }
}

fn tokens(s: &str) -> Vec<String> {
    let spaced = s
        .replace('(', " ( ")
        .replace(')', " ) ")
        .replace('|', " | ");
    spaced.split_whitespace().map(str::to_owned).collect()
}

fn parse_condition(text: &str, names: &[(String, Selection)]) -> Result<Cond, String> {
    let mut p = CondParser {
        toks: tokens(text),
        pos: 0,
        names,
    };
    let c = p.or()?;
    if p.pos != p.toks.len() {
        return Err(format!(
            "unexpected {:?} in condition",
            p.toks.get(p.pos).cloned().unwrap_or_default()
        ));
    }
    Ok(c)
}

impl Rule {
    /// Parses one rule document.
    pub fn parse(file: &str, text: &str) -> Result<Rule, RuleError> {
        let err = |reason: String| RuleError {
            file: file.to_owned(),
            reason,
        };
        let docs = YamlLoader::load_from_str(text).map_err(|e| err(format!("YAML: {e}")))?;
        let doc = docs.first().ok_or_else(|| err("empty file".into()))?;
        let title = ystr(&doc["title"]).ok_or_else(|| err("no title".into()))?;
        let id = ystr(&doc["id"]).unwrap_or_else(|| title.clone());
        let level = ystr(&doc["level"]).unwrap_or_else(|| "medium".into());
        let ls = &doc["logsource"];
        let product = ystr(&ls["product"]).unwrap_or_default();
        let service = ystr(&ls["service"]).unwrap_or_default();
        let sources = sources_of(&product, &service);
        if sources.is_empty() {
            return Err(err(format!(
                "logsource product {product:?} service {service:?} is not a source Stormwall reads"
            )));
        }
        let Yaml::Hash(det) = &doc["detection"] else {
            return Err(err("no detection".into()));
        };
        let mut selections = Vec::new();
        let mut condition = None;
        for (k, v) in det {
            let name = ystr(k).unwrap_or_default();
            if name == "condition" {
                condition = Some(v.clone());
                continue;
            }
            if name == "timeframe" {
                return Err(err("timeframe (aggregation) is not supported".into()));
            }
            selections.push((
                name.clone(),
                selection(v).map_err(|r| err(format!("{name}: {r}")))?,
            ));
        }
        let condition = match condition {
            Some(Yaml::String(s)) => parse_condition(&s, &selections).map_err(err)?,
            Some(Yaml::Array(list)) => Cond::Or(
                list.iter()
                    .map(|c| {
                        ystr(c)
                            .ok_or_else(|| "a condition is not a string".to_owned())
                            .and_then(|s| parse_condition(&s, &selections))
                    })
                    .collect::<Result<_, _>>()
                    .map_err(err)?,
            ),
            _ => return Err(err("no condition".into())),
        };
        let tags = match &doc["tags"] {
            Yaml::Array(list) => list.iter().filter_map(ystr).collect(),
            _ => Vec::new(),
        };
        Ok(Rule {
            id,
            title,
            level,
            sources,
            file: file.to_owned(),
            tags,
            selections,
            condition,
        })
    }

    /// Whether a record (raw JSON, of `source`) matches.
    pub fn matches(&self, source: Source, record: &Value, raw: &str) -> bool {
        self.sources.contains(&source) && self.eval(&self.condition, record, raw)
    }

    fn eval(&self, c: &Cond, record: &Value, raw: &str) -> bool {
        match c {
            Cond::Sel(i) => self
                .selections
                .get(*i)
                .is_some_and(|(_, s)| sel_matches(s, record, raw)),
            Cond::Not(x) => !self.eval(x, record, raw),
            Cond::And(v) => v.iter().all(|x| self.eval(x, record, raw)),
            Cond::Or(v) => v.iter().any(|x| self.eval(x, record, raw)),
            Cond::Of(all, idx) => {
                let mut it = idx.iter().map(|i| {
                    self.selections
                        .get(*i)
                        .is_some_and(|(_, s)| sel_matches(s, record, raw))
                });
                if *all { it.all(|b| b) } else { it.any(|b| b) }
            }
        }
    }
}

fn sel_matches(s: &Selection, record: &Value, raw: &str) -> bool {
    match s {
        Selection::Map(tests) => tests.iter().all(|t| test_matches(t, record)),
        Selection::AnyMap(maps) => maps
            .iter()
            .any(|tests| tests.iter().all(|t| test_matches(t, record))),
        Selection::Keywords(words) => {
            let lower = raw.to_ascii_lowercase();
            words
                .iter()
                .any(|w| glob(&format!("*{}*", w.to_ascii_lowercase()), &lower, true))
        }
    }
}

/// The values at a dotted path (any element of an array on the way); a literal dotted key
/// is tried first.
fn values_at<'a>(record: &'a Value, path: &[String]) -> Vec<&'a Value> {
    let joined = path.join(".");
    let mut cur = vec![record];
    if let Some(v) = record.get(&joined) {
        cur = vec![v];
    } else {
        cur = walk(cur, path);
    }
    // A list at the end: each element is a value.
    cur.into_iter()
        .flat_map(|v| match v {
            Value::Array(a) => a.iter().collect(),
            other => vec![other],
        })
        .collect()
}

fn walk<'a>(mut cur: Vec<&'a Value>, path: &[String]) -> Vec<&'a Value> {
    for p in path {
        let mut next = Vec::new();
        for v in cur {
            match v {
                Value::Object(o) => {
                    if let Some(x) = o.get(p) {
                        next.push(x);
                    }
                }
                Value::Array(a) => {
                    for e in a {
                        if let Some(x) = e.get(p) {
                            next.push(x);
                        }
                    }
                }
                _ => {}
            }
        }
        cur = next;
    }
    cur
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn test_matches(t: &FieldTest, record: &Value) -> bool {
    let found = values_at(record, &t.path);
    let one = |op: &Op| -> bool {
        match op {
            Op::Null => found.is_empty() || found.iter().all(|v| v.is_null()),
            Op::Exists(e) => (!found.is_empty() && !found.iter().all(|v| v.is_null())) == *e,
            _ => found.iter().filter_map(|v| as_text(v)).any(|text| {
                let (a, b) = if t.cased {
                    (text.clone(), op_text(op))
                } else {
                    (text.to_lowercase(), op_text(op).to_lowercase())
                };
                match op {
                    Op::Glob(_) => glob(&b, &a, true),
                    Op::Contains(_) => a.contains(&b),
                    Op::StartsWith(_) => a.starts_with(&b),
                    Op::EndsWith(_) => a.ends_with(&b),
                    Op::Re(r) => r.is_match(&text),
                    Op::Cidr(net) => text.parse::<IpAddr>().is_ok_and(|ip| net.contains(&ip)),
                    Op::Null | Op::Exists(_) => false,
                }
            }),
        }
    };
    if t.all {
        t.ops.iter().all(one)
    } else {
        t.ops.iter().any(one)
    }
}

fn op_text(op: &Op) -> String {
    match op {
        Op::Glob(s) | Op::Contains(s) | Op::StartsWith(s) | Op::EndsWith(s) => s.clone(),
        _ => String::new(),
    }
}

/// Sigma wildcard match: `*` any run, `?` one character, `\` escapes.
fn glob(pattern: &str, text: &str, _ci: bool) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    // Iterative matcher with backtracking on the last `*`.
    let (mut pi, mut ti) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some('\\') if p.get(pi + 1).is_some_and(|c| Some(c) == t.get(ti)) => {
                pi += 2;
                ti += 1;
            }
            Some('*') => {
                star = Some((pi, ti));
                pi += 1;
            }
            Some('?') => {
                pi += 1;
                ti += 1;
            }
            Some(c) if Some(c) == t.get(ti) => {
                pi += 1;
                ti += 1;
            }
            _ => match star {
                Some((sp, st)) => {
                    pi = sp + 1;
                    ti = st + 1;
                    star = Some((sp, st + 1));
                }
                None => return false,
            },
        }
    }
    while p.get(pi) == Some(&'*') {
        pi += 1;
    }
    pi == p.len()
}

/// Every `.yml`/`.yaml` rule under a folder (recursively): the rules that loaded, and the
/// ones that did not with their reasons.
pub fn load_dir(dir: &Path) -> std::io::Result<(Vec<Rule>, Vec<RuleError>)> {
    let mut files = Vec::new();
    collect(dir, &mut files)?;
    files.sort();
    let mut rules = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f)?;
        match Rule::parse(&f.display().to_string(), &text) {
            Ok(r) => rules.push(r),
            Err(e) => errors.push(e),
        }
    }
    Ok((rules, errors))
}

fn collect(p: &Path, out: &mut Vec<std::path::PathBuf>) -> std::io::Result<()> {
    if p.is_dir() {
        for e in std::fs::read_dir(p)? {
            collect(&e?.path(), out)?;
        }
    } else if p
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("yml") || e.eq_ignore_ascii_case("yaml"))
    {
        out.push(p.to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> Rule {
        Rule::parse("t.yml", text).unwrap()
    }

    #[test]
    fn wildcards_and_case() {
        assert!(glob("*bedrock*", "x.bedrock.amazonaws.com", true));
        assert!(glob("delete?uardrail", "deleteguardrail", true));
        assert!(!glob("a*c", "abd", true));
        assert!(glob("a\\*c", "a*c", true));
    }

    #[test]
    fn a_cloudtrail_rule_with_modifiers_lists_and_of() {
        let r = rule(
            r#"
title: Bedrock guardrail removed
id: 00000000-0000-4000-8000-000000000001
level: high
logsource:
  product: aws
  service: cloudtrail
detection:
  selection_source:
    eventSource: bedrock.amazonaws.com
  selection_name:
    eventName|startswith:
      - DeleteGuardrail
      - UpdateGuardrail
  filter_admin:
    userIdentity.arn|endswith: ':role/SecurityAdmin'
  filter_net:
    sourceIPAddress|cidr: 192.0.2.0/24
  condition: all of selection_* and not 1 of filter_*
"#,
        );
        let hit: Value = serde_json::json!({"eventSource": "bedrock.amazonaws.com", "eventName": "DeleteGuardrail",
            "sourceIPAddress": "203.0.113.9", "userIdentity": {"arn": "arn:aws:iam::1:user/x"}});
        assert!(r.matches(Source::Cloudtrail, &hit, ""));
        assert!(
            !r.matches(Source::AzureActivity, &hit, ""),
            "logsource filter"
        );
        let mut admin = hit.clone();
        admin["userIdentity"]["arn"] = serde_json::json!("arn:aws:iam::1:ROLE/securityadmin");
        assert!(
            !r.matches(Source::Cloudtrail, &admin, ""),
            "matching is case-insensitive"
        );
        admin["userIdentity"]["arn"] = serde_json::json!("arn:aws:iam::1:role/SecurityAdminX");
        assert!(r.matches(Source::Cloudtrail, &admin, ""));
        let mut office = hit.clone();
        office["sourceIPAddress"] = serde_json::json!("192.0.2.77");
        assert!(!r.matches(Source::Cloudtrail, &office, ""));
    }

    #[test]
    fn list_of_maps_keywords_re_all_null_and_parentheses() {
        let r = rule(
            r#"
title: t
logsource: {product: azure, service: activitylogs}
detection:
  keys:
    - operationName|contains: LISTKEYS
    - operationName|re: '(?i)regeneratekey/action$'
  words:
    - 'publicNetworkAccess'
  both:
    tags|all: [a, b]
  nothing:
    claims: null
  condition: (keys or words) and not (both and nothing)
"#,
        );
        let v = serde_json::json!({"operationName": "MICROSOFT.COGNITIVESERVICES/ACCOUNTS/REGENERATEKEY/ACTION"});
        assert!(r.matches(Source::AzureActivity, &v, &v.to_string()));
        let w = serde_json::json!({"operationName": "x", "properties": {"requestbody": "{\"publicNetworkAccess\":\"Enabled\"}"}});
        assert!(r.matches(Source::AzureActivity, &w, &w.to_string()));
        let t = serde_json::json!({"operationName": "LISTKEYS", "tags": ["a", "b"]});
        assert!(
            !r.matches(Source::AzureActivity, &t, &t.to_string()),
            "both and nothing"
        );
    }

    #[test]
    fn unsupported_rules_are_errors_not_panics() {
        for text in [
            "title: t\nlogsource: {product: windows}\ndetection: {s: {a: 1}, condition: s}",
            "title: t\nlogsource: {product: aws, service: cloudtrail}\ndetection: {s: {a: 1}, condition: s | count() > 5}",
            "title: t\nlogsource: {product: aws, service: cloudtrail}\ndetection: {s: {a|base64: 1}, condition: s}",
            "title: t\nlogsource: {product: aws, service: cloudtrail}\ndetection: {s: {a: 1}, condition: (s}",
            "title: t\nlogsource: {product: aws, service: cloudtrail}\ndetection: {s: {a: 1}, condition: t}",
            "not: [yaml",
        ] {
            assert!(Rule::parse("x.yml", text).is_err(), "{text}");
        }
    }
}
