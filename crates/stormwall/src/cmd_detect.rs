//! `stormwall detect --events FILE`: run the detectors offline over exported events
//! (JSON lines, as `stormwall events export` writes them), on event time, so the same file
//! always gives the same alerts and actions. `stormwall detect --logs PATH…` reads cloud
//! logs instead (`cmd_detect_logs.rs`).

use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::sync::Arc;

use anyhow::Context;
use stormwall_detect::{DetectConfig, Engine, EngineConfig, ResponseConfig};
use stormwall_ipintel::{IpIntelConfig, SharedIpIntel};
use stormwall_types::{Action, Alert, UsageEvent};

/// Longest event line accepted (a line past this is an error, not an allocation).
const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;

/// Arguments of `stormwall detect`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Events as JSON lines (`-` for stdin).
    #[arg(long, required_unless_present = "logs", conflicts_with = "logs")]
    pub events: Option<PathBuf>,
    /// Cloud log files or folders (Azure, AWS, OpenAI, Google; gzip, JSON array, JSON lines,
    /// CloudTrail `Records`): see docs/cloud-logs.md.
    #[arg(long, num_args = 1..)]
    pub logs: Vec<PathBuf>,
    /// With `--logs`: the source of every record (`auto` recognises each record).
    #[arg(long, default_value = "auto", requires = "logs")]
    pub source: String,
    /// With `--logs`: ignore records before this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long, requires = "logs")]
    pub since: Option<String>,
    /// With `--logs`: ignore records at or after this time (RFC 3339 or YYYY-MM-DD).
    #[arg(long, requires = "logs")]
    pub until: Option<String>,
    /// With `--logs`: resume from this state file if it exists, and save the state there at
    /// the end (a daily batch continues yesterday's baselines).
    #[arg(long, requires = "logs")]
    pub state: Option<PathBuf>,
    /// With `--logs`: also evaluate the Sigma rules (`.yml`) under this folder over the raw
    /// records.
    #[arg(long, requires = "logs")]
    pub sigma: Option<PathBuf>,
    /// Config file whose `[detect]` and `[response]` sections are used (other sections are
    /// ignored here); defaults apply without one.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// IP databases (`.mmdb`, ip-location-db `.csv`, iptoasn `.tsv`) consulted after the
    /// config's `[ipdb]` files: they fill the network and country of events that lack them,
    /// and their flags (with the config's ASN, Tor exit and VPN lists) feed detector P3.
    #[arg(long)]
    pub ipdb: Vec<PathBuf>,
    /// One JSON object per alert on stdout: `{"alert": …, "action": …}`.
    #[arg(long)]
    pub json: bool,
}

/// The sections of `stormwall.toml` this command reads. Unknown keys inside them are
/// errors; other sections belong to other crates and are not looked at.
#[derive(Debug, Default, serde::Deserialize)]
struct Sections {
    #[serde(default)]
    detect: DetectConfig,
    #[serde(default)]
    response: ResponseConfig,
    #[serde(default)]
    ipdb: IpIntelConfig,
}

/// Builds the engine configuration from an optional config file and IP databases.
pub fn engine_config(config: Option<&Path>, ipdb: &[PathBuf]) -> anyhow::Result<EngineConfig> {
    let (cfg, _) = engine_and_intel(config, ipdb)?;
    Ok(cfg)
}

/// The engine configuration and the IP intelligence the offline run enriches events with:
/// the config file's `[ipdb]` section (when a config is given) plus `--ipdb` files, and the
/// shipped hosting ASN list unless `[ipdb] builtin_hosting_asns = false`.
pub(crate) fn engine_and_intel(
    config: Option<&Path>,
    ipdb: &[PathBuf],
) -> anyhow::Result<(EngineConfig, Arc<SharedIpIntel>)> {
    let sections: Sections = match config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read config file {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("invalid config file {}", p.display()))?
        }
        None => Sections::default(),
    };
    let mut intel_cfg = sections.ipdb;
    // `--ipdb` files are consulted after the config's own, in the order given.
    intel_cfg.reload_secs = 0;
    for p in ipdb {
        if intel_cfg.path.is_none() {
            intel_cfg.path = Some(p.clone());
        } else {
            intel_cfg.extra_paths.push(p.clone());
        }
    }
    let intel = Arc::new(SharedIpIntel::load(&intel_cfg)?);
    let cfg = stormwall_gateway::control::detection::engine_config(
        &sections.detect,
        &sections.response,
        Some(Arc::clone(&intel)),
    )?;
    Ok((cfg, intel))
}

/// Fills the network fields an event lacks (recorded without an IP database, or read from
/// another source) from the IP intelligence; fields it has are kept, so the file's own
/// record of the request wins.
pub(crate) fn enrich(event: &mut UsageEvent, intel: &SharedIpIntel) {
    if event.source_asn.is_some() && event.source_country.is_some() {
        return;
    }
    let net = intel.network(event.source_ip);
    if event.source_asn.is_none() {
        event.source_asn = net.asn;
        if event.source_as_org.is_none() {
            event.source_as_org = net.as_org.map(|s| s.to_string());
        }
    }
    if event.source_country.is_none() {
        event.source_country = net.country.map(|c| c.as_str().to_owned());
    }
}

#[derive(serde::Serialize)]
struct Line<'a> {
    alert: &'a Alert,
    action: Option<&'a Action>,
}

/// Runs `stormwall detect`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    if !args.logs.is_empty() {
        return crate::cmd_detect_logs::run(args);
    }
    let (cfg, intel) = engine_and_intel(args.config.as_deref(), &args.ipdb)?;
    let mut engine = Engine::new(cfg);
    let Some(events) = args.events.clone() else {
        anyhow::bail!("--events FILE or --logs PATH… is required");
    };
    let input: Box<dyn BufRead> = if events.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin().lock()))
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(&events)
                .with_context(|| format!("cannot open {}", events.display()))?,
        ))
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut alerts = Vec::new();
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    let mut actions = std::collections::BTreeMap::<String, u64>::new();
    let mut line = Vec::new();
    let mut reader = input;
    let mut n = 0usize;
    loop {
        line.clear();
        let read = (&mut reader)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .with_context(|| format!("cannot read {}", events.display()))?;
        if read == 0 {
            break;
        }
        n += 1;
        if line.len() > MAX_LINE_BYTES {
            anyhow::bail!("line {n}: longer than {MAX_LINE_BYTES} bytes");
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let mut event: UsageEvent = serde_json::from_slice(&line)
            .with_context(|| format!("line {n}: not a usage event"))?;
        enrich(&mut event, &intel);
        alerts.clear();
        engine.observe_into(&event, &mut alerts);
        for alert in &alerts {
            let action = engine.decide(alert);
            *counts
                .entry(alert.detector.as_str().to_owned())
                .or_default() += 1;
            if let Some(a) = &action {
                *actions.entry(a.kind.as_str().to_owned()).or_default() += 1;
            }
            if args.json {
                serde_json::to_writer(
                    &mut out,
                    &Line {
                        alert,
                        action: action.as_ref(),
                    },
                )?;
                out.write_all(b"\n")?;
            } else {
                write_text(&mut out, alert, action.as_ref())?;
            }
        }
    }
    out.flush()?;
    let stats = engine.stats();
    let by_detector: Vec<String> = counts.iter().map(|(d, c)| format!("{d}={c}")).collect();
    let by_action: Vec<String> = actions.iter().map(|(a, c)| format!("{a}={c}")).collect();
    eprintln!(
        "{} events, {} keys, {} alerts [{}], actions [{}]",
        stats.events,
        stats.keys,
        stats.alerts,
        by_detector.join(" "),
        by_action.join(" ")
    );
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn write_text(
    out: &mut impl Write,
    a: &Alert,
    action: Option<&Action>,
) -> std::io::Result<()> {
    let key = a.key_id.as_ref().map_or("-", |k| k.as_str());
    writeln!(
        out,
        "{}  {:<8} {}  key={} tenant={}  {}",
        stormwall_types::timefmt::format(a.at),
        a.severity.as_str(),
        a.detector,
        key,
        a.tenant.as_deref().unwrap_or("-"),
        a.explanation
    )?;
    let features: Vec<String> = a
        .features
        .iter()
        .map(|f| match f.threshold {
            Some(t) => format!("{}={:.3} (threshold {:.3})", f.name, f.value, t),
            None => format!("{}={:.3}", f.name, f.value),
        })
        .collect();
    writeln!(
        out,
        "    features: {}; evidence: {}",
        features.join(", "),
        a.evidence.join(" ")
    )?;
    if let Some(act) = action
        && act.kind != stormwall_types::ActionKind::Alert
    {
        writeln!(
            out,
            "    -> {} key {} (risk {:.0}{}){}",
            act.kind,
            act.key_id,
            act.risk_score,
            if act.kill_chain { ", kill chain" } else { "" },
            act.throttle_rpm
                .map_or(String::new(), |r| format!(" to {r} requests/minute"))
        )?;
    }
    Ok(())
}
