//! `stormwall detect --logs PATH…`: the detectors over the logs a cloud already writes
//! (Azure, AWS, OpenAI, Google), for keys no gateway fronts. Files and folders are read,
//! every record parsed into the one event model (bad records counted with file and line,
//! never fatal), sorted by event time and judged by the data-plane engine and the
//! control-plane detectors together. Alerts print as JSON lines (`--json`) or text; a
//! summary goes to stderr; `--state FILE` resumes and saves the detectors' state.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use stormwall_cloudlogs::{BadRecord, Record, Source};
use stormwall_detect::cloud::{CloudRun, Finding, Snapshot};
use stormwall_ipintel::SharedIpIntel;
use stormwall_types::{Severity, UsageEvent};
use time::OffsetDateTime;

use crate::cmd_detect::Args;

/// Most bad records listed one by one in the summary (all are counted).
const MAX_LISTED_BAD: usize = 20;

/// Every file under the paths (folders recursively, hidden entries skipped), sorted.
fn files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        walk(p, &mut out).with_context(|| format!("cannot read {}", p.display()))?;
    }
    Ok(out)
}

fn walk(p: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if p.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|x| {
                x.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| !n.starts_with('.'))
            })
            .collect();
        entries.sort();
        for e in entries {
            walk(&e, out)?;
        }
    } else {
        std::fs::metadata(p)?;
        out.push(p.to_owned());
    }
    Ok(())
}

/// A time bound: RFC 3339, or a date (midnight UTC).
fn bound(s: &str) -> anyhow::Result<OffsetDateTime> {
    if let Ok(t) = stormwall_types::timefmt::parse(s) {
        return Ok(t);
    }
    stormwall_types::timefmt::parse(&format!("{s}T00:00:00Z"))
        .with_context(|| format!("{s:?} is not an RFC 3339 time or a YYYY-MM-DD date"))
}

/// Adds the client network's ASN and country from the IP intelligence (the logs carry only
/// addresses; the proxy detectors judge networks), unless the source masked the address.
fn enrich(e: &mut UsageEvent, intel: &SharedIpIntel) {
    if e.cloud.as_deref().is_some_and(|c| c.ip_missing) {
        return;
    }
    crate::cmd_detect::enrich(e, intel);
}

#[derive(serde::Serialize)]
struct Line<'a> {
    alert: &'a stormwall_types::Alert,
    action: Option<&'a stormwall_types::Action>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recommendation: Option<&'a stormwall_detect::detectors::cloud::Recommendation>,
    /// The rule, for a Sigma match's alert.
    #[serde(skip_serializing_if = "Option::is_none")]
    sigma: Option<&'a SigmaHit>,
}

/// Runs `stormwall detect --logs`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let (cfg, intel) = crate::cmd_detect::engine_and_intel(args.config.as_deref(), &args.ipdb)?;
    let forced = match args.source.as_str() {
        "auto" => None,
        s => Some(s.parse::<Source>()?),
    };
    let since = args.since.as_deref().map(bound).transpose()?;
    let until = args.until.as_deref().map(bound).transpose()?;

    let mut run = match &args.state {
        Some(p) if p.exists() => {
            let bytes = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            let snap: Snapshot = serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is not a detect state file", p.display()))?;
            CloudRun::resume(cfg, snap)
        }
        Some(_) => CloudRun::new(cfg),
        None => CloudRun::without_state(cfg),
    };

    let (rules, rule_errors) = match &args.sigma {
        Some(dir) => stormwall_cloudlogs::sigma::load_dir(dir)
            .with_context(|| format!("cannot read Sigma rules under {}", dir.display()))?,
        None => (Vec::new(), Vec::new()),
    };
    let mut sigma_hits: Vec<SigmaHit> = Vec::new();
    let mut records = Vec::new();
    let mut bad: Vec<BadRecord> = Vec::new();
    let mut per_source = BTreeMap::<Source, u64>::new();
    let list = files(&args.logs)?;
    let mut skipped_time = 0u64;
    for f in &list {
        let bytes = std::fs::read(f).with_context(|| format!("cannot read {}", f.display()))?;
        let name = f.display().to_string();
        stormwall_cloudlogs::for_each_record(&name, &bytes, forced, &mut per_source, &mut |r| {
            match r {
                Ok(rec) => {
                    let t = rec.timestamp();
                    if since.is_some_and(|s| t < s) || until.is_some_and(|u| t >= u) {
                        skipped_time += 1;
                    } else {
                        records.push(rec);
                    }
                }
                Err(b) => bad.push(b),
            }
        });
        if !rules.is_empty() {
            sigma_file(
                &rules,
                &name,
                &bytes,
                forced,
                (since, until),
                &mut sigma_hits,
            );
        }
    }
    // Detectors judge on event time: one ordered stream over every file and source.
    stormwall_cloudlogs::sort_by_time(&mut records);

    // A rule's match on a record a resumed state already judged was reported then.
    sigma_hits.retain(|h| !h.record.as_deref().is_some_and(|id| run.judged(id)));
    sigma_hits.sort_by_key(|h| h.alert.at);
    let mut report = Report {
        out: std::io::BufWriter::new(std::io::stdout().lock()),
        json: args.json,
        by_detector: BTreeMap::new(),
        worst: BTreeMap::new(),
        commands: BTreeMap::new(),
    };
    let mut findings: Vec<Finding> = Vec::new();
    let events = records.len();
    let mut hits = sigma_hits.into_iter().peekable();
    let mut sigma_counts = BTreeMap::<String, u64>::new();
    for rec in records {
        // Matches are judged in event time with the records, after the record they are on
        // (whose event names the principal fully).
        while let Some(h) = hits.next_if(|h| h.alert.at < rec.timestamp()) {
            *sigma_counts.entry(h.rule.clone()).or_default() += 1;
            findings.clear();
            run.observe_alert(h.alert.clone(), &mut findings);
            report.emit(&run, &findings, Some(&h))?;
        }
        findings.clear();
        match rec {
            Record::Usage(mut e) => {
                enrich(&mut e, &intel);
                run.observe_usage(e, &mut findings);
            }
            Record::Control(c) => run.observe_control(&c, &mut findings),
        }
        report.emit(&run, &findings, None)?;
    }
    for h in hits {
        *sigma_counts.entry(h.rule.clone()).or_default() += 1;
        findings.clear();
        run.observe_alert(h.alert.clone(), &mut findings);
        report.emit(&run, &findings, Some(&h))?;
    }
    let Report {
        mut out,
        by_detector,
        worst,
        commands,
        ..
    } = report;
    out.flush()?;
    if let Some(p) = &args.state {
        let tmp = p.with_extension("tmp");
        let bytes = serde_json::to_vec(&run.snapshot())?;
        std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, p).with_context(|| format!("cannot write {}", p.display()))?;
    }

    let sources: Vec<String> = per_source.iter().map(|(s, n)| format!("{s}={n}")).collect();
    let detectors: Vec<String> = by_detector
        .iter()
        .map(|(d, n)| format!("{d}={n}"))
        .collect();
    eprintln!(
        "{} files, {} records [{}], {} events judged, {} bad, {} outside --since/--until, {} already judged (state)",
        list.len(),
        per_source.values().sum::<u64>(),
        sources.join(" "),
        events,
        bad.len(),
        skipped_time,
        run.duplicates
    );
    for b in bad.iter().take(MAX_LISTED_BAD) {
        eprintln!("  bad record {b}");
    }
    if bad.len() > MAX_LISTED_BAD {
        eprintln!("  … and {} more bad records", bad.len() - MAX_LISTED_BAD);
    }
    if args.sigma.is_some() {
        let counts: Vec<String> = sigma_counts
            .iter()
            .map(|(r, n)| format!("{r}={n}"))
            .collect();
        eprintln!(
            "sigma: {} rules loaded, {} skipped, {} matches [{}]",
            rules.len(),
            rule_errors.len(),
            sigma_counts.values().sum::<u64>(),
            counts.join(" ")
        );
        for e in &rule_errors {
            eprintln!("  skipped rule {e}");
        }
    }
    let stats = run.engine().stats();
    eprintln!(
        "{} principals, {} alerts [{}]",
        stats.keys.max(worst.len()),
        by_detector.values().sum::<u64>(),
        detectors.join(" ")
    );
    let mut flagged: Vec<(&String, &Severity)> = worst
        .iter()
        .filter(|(_, s)| **s >= Severity::Medium)
        .collect();
    flagged.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    for (who, sev) in flagged {
        eprintln!("  {sev:<8} {who}");
        if let Some(c) = commands.get(who) {
            eprintln!("           recommended: {c}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// One Sigma rule matching one record.
#[derive(Debug, serde::Serialize)]
struct SigmaHit {
    /// Rule id.
    rule: String,
    title: String,
    level: String,
    file: String,
    line: usize,
    source: &'static str,
    /// Record time, when the record parses.
    at: String,
    /// The alert the match raises (detector S1).
    #[serde(skip)]
    alert: stormwall_types::Alert,
    /// The record's event id, when it parsed.
    #[serde(skip)]
    record: Option<String>,
}

/// Alerts printed so far and what the summary needs of them.
struct Report<W: Write> {
    out: W,
    json: bool,
    by_detector: BTreeMap<&'static str, u64>,
    worst: BTreeMap<String, Severity>,
    commands: BTreeMap<String, String>,
}

impl<W: Write> Report<W> {
    /// Prints findings (a Sigma match's with its rule) and tallies them.
    fn emit(
        &mut self,
        run: &CloudRun,
        findings: &[Finding],
        sigma: Option<&SigmaHit>,
    ) -> anyhow::Result<()> {
        for f in findings {
            *self
                .by_detector
                .entry(f.alert.detector.as_str())
                .or_default() += 1;
            let who = f
                .alert
                .key_id
                .as_ref()
                .and_then(|k| run.principal(k))
                .map_or_else(
                    || {
                        f.alert
                            .key_id
                            .as_ref()
                            .map_or("-".to_owned(), |k| k.to_string())
                    },
                    |p| p.label(),
                );
            let w = self.worst.entry(who.clone()).or_insert(f.alert.severity);
            *w = (*w).max(f.alert.severity);
            if let Some(r) = &f.recommendation {
                self.commands.insert(who, r.command.clone());
            }
            if self.json {
                serde_json::to_writer(
                    &mut self.out,
                    &Line {
                        alert: &f.alert,
                        action: f.action.as_ref(),
                        recommendation: f.recommendation.as_ref(),
                        sigma,
                    },
                )?;
                self.out.write_all(b"\n")?;
            } else {
                crate::cmd_detect::write_text(&mut self.out, &f.alert, f.action.as_ref())?;
                if let Some(h) = sigma {
                    writeln!(
                        self.out,
                        "    sigma {} {}:{} ({})  {}",
                        h.rule, h.file, h.line, h.source, h.title
                    )?;
                }
                if let Some(r) = &f.recommendation {
                    writeln!(self.out, "    recommended: {}", r.command)?;
                }
            }
        }
        Ok(())
    }
}

/// Evaluates the rules over a file's raw records (their own field names, as Sigma rules
/// expect), within the time bounds.
fn sigma_file(
    rules: &[stormwall_cloudlogs::sigma::Rule],
    file: &str,
    bytes: &[u8],
    forced: Option<Source>,
    (since, until): (Option<OffsetDateTime>, Option<OffsetDateTime>),
    hits: &mut Vec<SigmaHit>,
) {
    let _ = stormwall_cloudlogs::container::records(bytes, &mut |line, text| {
        let Some(source) = forced.or_else(|| stormwall_cloudlogs::sniff(text)) else {
            return;
        };
        let Ok(value) = serde_json::from_str::<serde_json::Value>(text) else {
            return;
        };
        let parsed = stormwall_cloudlogs::parse_record(source, text).ok();
        let record = parsed.as_ref().and_then(|r| r.first());
        let at = record.map(Record::timestamp);
        if let Some(t) = at
            && (since.is_some_and(|s| t < s) || until.is_some_and(|u| t >= u))
        {
            return;
        }
        for r in rules.iter().filter(|r| r.matches(source, &value, text)) {
            let m = stormwall_cloudlogs::sigma::MatchedAt {
                source,
                file,
                line,
                // A record that does not parse has no time of its own: when it was read.
                at: at.unwrap_or_else(OffsetDateTime::now_utc),
            };
            hits.push(SigmaHit {
                alert: r.alert(m, record),
                record: record.map(|x| x.id().to_owned()),
                rule: r.id.clone(),
                title: r.title.clone(),
                level: r.level.clone(),
                file: file.to_owned(),
                line,
                source: source.as_str(),
                at: at.map(stormwall_types::timefmt::format).unwrap_or_default(),
            });
        }
    });
}
