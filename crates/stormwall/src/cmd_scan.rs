//! `stormwall scan [PATH…]`: find AI-provider credentials in files, directories, archives,
//! git histories and standard input; report them as text, JSON lines or SARIF; optionally
//! revoke the Stormwall keys found through a running gateway's admin API.
//!
//! Exit code 1 when findings remain after the baseline, 0 when none, 2 on error.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use http::Method;
use serde_json::json;
use stormwall_scan::baseline::Baseline;
use stormwall_scan::inputs::{
    DEFAULT_MAX_FILE_SIZE, ScanOptions, ScanSummary, Scanner, merge_findings,
};
use stormwall_scan::report::{self, sarif};
use stormwall_scan::rules::{builtin_rules, parse_rule_file};
use stormwall_scan::{Finding, Matcher, Redactor, Rule, SourceKind};

use crate::admin_client::{AdminClient, AdminTarget};
use crate::config::env_var;

/// Environment variable holding the key of finding fingerprints.
const HASH_KEY_ENV: &str = "STORMWALL_SCAN_HASH_KEY";

/// How often the progress line is redrawn.
const PROGRESS_TICK: Duration = Duration::from_millis(120);

/// Output formats.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum OutputFormat {
    /// Readable text.
    Human,
    /// One JSON object per finding per line.
    Jsonl,
    /// SARIF 2.1.0 (GitHub code scanning).
    Sarif,
}

/// `stormwall scan` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Files or directories to scan; `-` reads standard input. Default: the current directory.
    pub paths: Vec<PathBuf>,
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value_t = OutputFormat::Human)]
    pub format: OutputFormat,
    /// Write the report to this file instead of standard output.
    #[arg(long, short = 'o')]
    pub output: Option<PathBuf>,
    /// Do not scan the history of git repositories found under the paths.
    #[arg(long)]
    pub no_history: bool,
    /// Do not open zip, tar and gzip archives.
    #[arg(long)]
    pub no_archives: bool,
    /// Scan files that .gitignore, .ignore and git's exclude files would skip.
    #[arg(long)]
    pub no_ignore: bool,
    /// Skip files, archive members and blobs larger than this many bytes.
    #[arg(long, default_value_t = DEFAULT_MAX_FILE_SIZE)]
    pub max_file_size: u64,
    /// Worker threads (default: one per core).
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// Suppress the findings accepted in this baseline file.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// Write every finding of this scan to a baseline file (and exit 0).
    #[arg(long)]
    pub write_baseline: Option<PathBuf>,
    /// Extra rule files (TOML, same format as the built-in rules).
    #[arg(long = "rules")]
    pub rule_files: Vec<PathBuf>,
    /// Never draw the progress line.
    #[arg(long)]
    pub no_progress: bool,
    /// Revoke every Stormwall key found, through the gateway's admin API.
    #[arg(long)]
    pub revoke: bool,
    #[command(flatten)]
    pub target: AdminTarget,
}

/// Runs the scan, writes the report, and revokes if asked.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    // Build the admin client first, so a missing token fails before a long scan.
    let admin = if args.revoke {
        Some(AdminClient::new(&args.target)?)
    } else {
        None
    };
    #[allow(clippy::disallowed_methods)] // a CLI command, awaited at once: file and git reads block
    let (args, scanned, elapsed) = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let started = Instant::now();
        let scanned = scan(&args)?;
        Ok((args, scanned, started.elapsed()))
    })
    .await
    .context("scan worker stopped")??;

    if let Some(path) = &args.write_baseline {
        let findings = &scanned.findings;
        std::fs::write(path, Baseline::from_findings(findings).to_json())
            .with_context(|| format!("writing baseline {}", path.display()))?;
        eprintln!(
            "wrote {} finding(s) to baseline {}",
            findings.len(),
            path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }

    let Scanned {
        findings,
        summary,
        rules,
    } = scanned;
    write_report(&args, &findings, &rules)?;
    if matches!(args.format, OutputFormat::Human) || args.output.is_some() {
        eprintln!(
            "scanned {} file(s), {} git blob(s), {:.1} MB in {:.2}s ({} binary and {} oversized skipped, {} unreadable)",
            summary.files,
            summary.blobs,
            summary.bytes as f64 / 1e6,
            elapsed.as_secs_f64(),
            summary.skipped_binary,
            summary.skipped_large,
            summary.errors,
        );
    }

    let mut revoke_failed = false;
    if let Some(client) = admin {
        revoke_failed = revoke(&client, &findings).await;
    }
    Ok(if revoke_failed {
        ExitCode::from(2)
    } else if findings.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// What a scan produced.
struct Scanned {
    findings: Vec<Finding>,
    summary: ScanSummary,
    rules: Vec<Rule>,
}

fn scan(args: &Args) -> anyhow::Result<Scanned> {
    let mut rules = builtin_rules()?;
    for file in &args.rule_files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading rule file {}", file.display()))?;
        rules.extend(parse_rule_file(&file.to_string_lossy(), &text)?);
    }
    let matcher = Matcher::new(rules)?;
    let rules = matcher.rules().to_vec();
    let redactor = match env_var(HASH_KEY_ENV).filter(|k| !k.is_empty()) {
        Some(key) => Redactor::new(key.as_bytes()),
        None => Redactor::default(),
    };
    let options = ScanOptions {
        max_file_size: args.max_file_size,
        threads: args.threads,
        history: !args.no_history,
        archives: !args.no_archives,
        respect_ignore: !args.no_ignore,
        ..ScanOptions::default()
    };
    let scanner = Scanner::new(matcher, redactor, options);
    let paths = if args.paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        args.paths.clone()
    };

    let progress = (!args.no_progress && std::io::stderr().is_terminal())
        .then(|| ProgressLine::start(&scanner));
    let found = Mutex::new(Vec::new());
    let sink = |f: Finding| {
        found.lock().unwrap_or_else(|e| e.into_inner()).push(f);
    };
    let mut summary = ScanSummary::default();
    let result = (|| -> anyhow::Result<()> {
        for path in &paths {
            summary = if path.as_os_str() == "-" {
                let stdin = std::io::stdin();
                let mut lock = stdin.lock();
                scanner.scan_reader("<stdin>", SourceKind::Stdin, &mut lock, &sink)?
            } else {
                scanner.scan_path(path, &sink)?
            };
        }
        Ok(())
    })();
    if let Some(p) = progress {
        p.finish();
    }
    result?;
    let mut findings = merge_findings(found.into_inner().unwrap_or_else(|e| e.into_inner()));
    if let Some(path) = &args.baseline {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading baseline {}", path.display()))?;
        findings = Baseline::parse(&text)?.filter(findings);
    }
    Ok(Scanned {
        findings,
        summary,
        rules,
    })
}

fn write_report(args: &Args, findings: &[Finding], rules: &[Rule]) -> anyhow::Result<()> {
    let mut out: Box<dyn Write> = match &args.output {
        Some(path) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    match args.format {
        OutputFormat::Human => report::write_human(&mut out, findings)?,
        OutputFormat::Jsonl => report::write_jsonl(&mut out, findings)?,
        OutputFormat::Sarif => {
            let tool = sarif::ToolInfo {
                name: "stormwall".to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                information_uri: "https://example.invalid/stormwall".to_owned(),
            };
            sarif::write(&mut out, findings, rules, &tool)?;
        }
    }
    out.flush()?;
    Ok(())
}

/// Revokes each Stormwall key found once; true when any revocation failed.
async fn revoke(client: &AdminClient, findings: &[Finding]) -> bool {
    let mut keys: BTreeMap<&str, &Finding> = BTreeMap::new();
    for f in findings.iter().filter(|f| f.validated) {
        if let Some(id) = &f.key_id {
            keys.entry(id.as_str()).or_insert(f);
        }
    }
    let mut failed = false;
    for (id, f) in keys {
        let reason = format!(
            "leaked: found by stormwall scan at {}:{}",
            f.location.path, f.location.line
        );
        let path = format!("/admin/keys/{}/revoke", encode_path(id));
        match client
            .call(Method::POST, &path, Some(json!({ "reason": reason })))
            .await
        {
            Ok(_) => eprintln!("revoked Stormwall key {id}"),
            // A key minted by another deployment is not this gateway's to revoke.
            Err(e) if format!("{e:#}").contains("404") => {
                eprintln!("Stormwall key {id} is not known to this gateway; not revoked");
            }
            Err(e) => {
                failed = true;
                eprintln!("could not revoke Stormwall key {id}: {e:#}");
            }
        }
    }
    failed
}

/// Key ids are base62, but encode anyway so a hostile file cannot shape the admin path.
fn encode_path(id: &str) -> String {
    id.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A one-line progress display on standard error, redrawn by its own thread.
struct ProgressLine {
    bar: indicatif::ProgressBar,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ProgressLine {
    fn start(scanner: &Scanner) -> Self {
        let bar =
            indicatif::ProgressBar::with_draw_target(None, indicatif::ProgressDrawTarget::stderr());
        if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}") {
            bar.set_style(style);
        }
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let progress = scanner.progress();
        let (bar2, stop2) = (bar.clone(), std::sync::Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                bar2.set_message(format!(
                    "{:.1} MB, {} files, {} blobs, {} findings",
                    progress.bytes.load(Ordering::Relaxed) as f64 / 1e6,
                    progress.files.load(Ordering::Relaxed),
                    progress.blobs.load(Ordering::Relaxed),
                    progress.findings.load(Ordering::Relaxed),
                ));
                bar2.tick();
                std::thread::sleep(PROGRESS_TICK);
            }
        });
        Self {
            bar,
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.bar.finish_and_clear();
    }
}
