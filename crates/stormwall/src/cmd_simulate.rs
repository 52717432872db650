//! `stormwall simulate`: labelled traffic (legitimate tenants, noisy-but-legitimate shapes
//! and kill-chain attacks) run through the detection engine with the loop closed (actions
//! stop later requests); writes an event file for offline runs and evaluates the engine.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use stormwall_detect::Engine;
use stormwall_detect::sim::{Report, SimConfig, Simulation};
use stormwall_types::Severity;

/// Arguments of `stormwall simulate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seed (the same seed gives the same traffic and the same figures).
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Legitimate keys (keys no attacker touches).
    #[arg(long, default_value_t = 200)]
    pub legit_keys: usize,
    /// Days of event time.
    #[arg(long, default_value_t = 7)]
    pub days: u32,
    /// Days of legitimate traffic before the first attack.
    #[arg(long, default_value_t = 2)]
    pub warmup_days: u32,
    /// Instances of each attack scenario (0: legitimate traffic only).
    #[arg(long, default_value_t = 3)]
    pub attacks_per_scenario: usize,
    /// Scale of legitimate request rates.
    #[arg(long, default_value_t = 1.0)]
    pub rate_scale: f64,
    /// Config file whose `[detect]` and `[response]` sections are used.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Write every event as JSON lines here (plus `<FILE>.ipdb.tsv`, the simulated IP
    /// database, and `<FILE>.keys.jsonl`, the truth about each key).
    #[arg(long)]
    pub write_events: Option<PathBuf>,
    /// Print the evaluation (the default when no event file is written).
    #[arg(long)]
    pub evaluate: bool,
    /// Print the evaluation as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// Least severity an alert needs to count as a detection.
    #[arg(long, default_value = "medium", value_parser = parse_severity)]
    pub min_severity: Severity,
}

fn parse_severity(s: &str) -> Result<Severity, String> {
    serde_json::from_value(serde_json::Value::String(s.to_ascii_lowercase()))
        .map_err(|_| "expected info, low, medium, high or critical".to_owned())
}

/// Runs `stormwall simulate`.
pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    let sim = Simulation::new(SimConfig {
        seed: args.seed,
        legit_keys: args.legit_keys,
        days: args.days,
        warmup_days: args.warmup_days,
        attacks_per_scenario: args.attacks_per_scenario,
        rate_scale: args.rate_scale,
        ..SimConfig::default()
    })?;
    let mut cfg = crate::cmd_detect::engine_config(args.config.as_deref(), &[])?;
    // The simulated networks' flags play the IP database's part.
    cfg.egress
        .add_tsv(&sim.ipdb_tsv())
        .context("simulated IP database")?;
    let mut engine = Engine::new(cfg);
    let started = std::time::Instant::now();
    let report = match &args.write_events {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            let mut out = std::io::BufWriter::new(file);
            let mut failed: Option<std::io::Error> = None;
            let keys_path = sidecar(path, "keys.jsonl");
            let mut keys_out = std::io::BufWriter::new(
                std::fs::File::create(&keys_path)
                    .with_context(|| format!("cannot create {}", keys_path.display()))?,
            );
            for k in sim.keys() {
                serde_json::to_writer(
                    &mut keys_out,
                    &serde_json::json!({
                        "key.id": k.id,
                        "tenant.id": &*k.tenant,
                        "profile": k.profile,
                        "canary": k.canary,
                        "attack": k.scenario.is_some(),
                        "scenario": k.scenario.and_then(|s| stormwall_detect::sim::SCENARIOS.get(s)),
                    }),
                )?;
                keys_out.write_all(b"\n")?;
            }
            keys_out.flush()?;
            let ipdb_path = sidecar(path, "ipdb.tsv");
            std::fs::write(&ipdb_path, sim.ipdb_tsv())
                .with_context(|| format!("cannot write {}", ipdb_path.display()))?;
            let report = sim.run(&mut engine, args.min_severity, |e, _, _, _| {
                if failed.is_none()
                    && let Err(err) = serde_json::to_writer(&mut out, e)
                        .map_err(std::io::Error::other)
                        .and_then(|()| out.write_all(b"\n"))
                {
                    failed = Some(err);
                }
            });
            if let Some(err) = failed {
                return Err(err).with_context(|| format!("cannot write {}", path.display()));
            }
            out.flush()?;
            eprintln!(
                "wrote {} events to {} (IP database {}, key truth {})",
                report.events,
                path.display(),
                ipdb_path.display(),
                keys_path.display()
            );
            report
        }
        None => sim.run(&mut engine, args.min_severity, |_, _, _, _| {}),
    };
    let elapsed = started.elapsed();
    if args.evaluate || args.json || args.write_events.is_none() {
        let mut out = std::io::stdout().lock();
        if args.json {
            serde_json::to_writer(&mut out, &report)?;
            out.write_all(b"\n")?;
        } else {
            print_report(&mut out, &report)?;
        }
    }
    eprintln!(
        "simulated {} events in {:.1} s ({:.2} µs per event, generation included)",
        report.events,
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / report.events.max(1) as f64
    );
    Ok(ExitCode::SUCCESS)
}

fn sidecar(path: &std::path::Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".");
    s.push(suffix);
    PathBuf::from(s)
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".to_owned(), |v| format!("{v:.2}"))
}

fn print_report(out: &mut impl Write, r: &Report) -> std::io::Result<()> {
    writeln!(
        out,
        "simulated {} days, seed {}: {} tenants, {} legitimate keys, {} attack keys, {} events ({} from attackers), {} alerts",
        r.days,
        r.seed,
        r.tenants,
        r.legit_keys,
        r.attack_keys,
        r.events,
        r.attacker_events,
        r.alerts
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "overall (detection = a {}-or-worse alert with attacker evidence)",
        r.min_severity
    )?;
    writeln!(out, "  recall                           {:.3}", r.recall)?;
    writeln!(out, "  precision (keys)                 {:.3}", r.precision)?;
    writeln!(
        out,
        "  legitimate keys alerted          {}",
        r.legit_keys_alerted
    )?;
    writeln!(
        out,
        "  false suspensions                {}",
        r.false_suspensions
    )?;
    writeln!(
        out,
        "  legitimate keys throttled        {}",
        r.false_throttles
    )?;
    writeln!(
        out,
        "  attack keys stopped              {} / {}",
        r.attack_keys_stopped, r.attack_keys
    )?;
    writeln!(
        out,
        "  attacker requests served after abuse began: median {:.1}, p90 {:.1}, max {} (over {} keys)",
        r.median_attacker_requests_served,
        r.p90_attacker_requests_served,
        r.max_attacker_requests_served,
        r.keys_with_abuse_phase
    )?;
    writeln!(
        out,
        "  median seconds to detect (from first attacker request) {}",
        opt(r.median_seconds_to_detect)
    )?;
    writeln!(
        out,
        "  median seconds to stop (from abuse start)              {}",
        opt(r.median_seconds_to_stop)
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "per scenario                keys detected stopped median_served max_served detectors"
    )?;
    for (name, s) in &r.per_scenario {
        writeln!(
            out,
            "  {:<25} {:>4} {:>8} {:>7} {:>13} {:>10} {}",
            name,
            s.keys,
            s.detected,
            s.stopped,
            opt(s.median_served),
            s.max_served.map_or("-".to_owned(), |m| m.to_string()),
            s.detectors.join(",")
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "per detector   alerts  true  precision  attack_keys  recall  legit_keys"
    )?;
    for (d, f) in &r.per_detector {
        writeln!(
            out,
            "  {:<4} {:>10} {:>6} {:>10} {:>12} {:>7.3} {:>11}",
            d,
            f.alerts,
            f.true_alerts,
            opt(f.precision),
            f.attack_keys,
            f.recall,
            f.legit_keys
        )?;
    }
    Ok(())
}
