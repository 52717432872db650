//! `stormwall simulate`: labelled traffic (legitimate tenants, noisy-but-legitimate shapes
//! and kill-chain attacks) run through the detection engine with the loop closed (actions
//! stop later requests); writes an event file for offline runs and evaluates the engine.
//! With `--live`, the same traffic is replayed as real HTTP against a running gateway
//! (`sim_live.rs`) and the gateway's own key statuses and alerts are evaluated.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use stormwall_detect::Engine;
use stormwall_sim::{Report, SimConfig, Simulation};
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
    /// Draw the young-key attack variants from the held-out grid (report figures on seeds
    /// and variants the detectors were not tuned on).
    #[arg(long)]
    pub holdout: bool,
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
    /// Write the IP database (ip-to-ASN TSV with flags) that maps the simulated networks'
    /// loopback /24s, for the live gateway's `[ipdb] path`.
    #[arg(long, value_name = "FILE")]
    pub write_ipdb: Option<PathBuf>,
    /// Write the `[detect.egress]` section (the simulated anonymising ASNs) for the live
    /// gateway's config file.
    #[arg(long, value_name = "FILE")]
    pub write_egress: Option<PathBuf>,
    /// Replay the traffic as real HTTP against this proxy base URL (e.g. http://127.0.0.1:8080).
    #[arg(long, value_name = "URL", requires = "admin")]
    pub live: Option<String>,
    /// The live gateway's admin base URL (keys are created and read back through it).
    #[arg(long, value_name = "URL")]
    pub admin: Option<String>,
    /// Environment variable holding the admin token.
    #[arg(long, value_name = "VAR", default_value = "STORMWALL_ADMIN_TOKEN")]
    pub admin_token_env: String,
    /// Live: seconds of wall-clock replay.
    #[arg(long, default_value_t = 60.0)]
    pub live_secs: f64,
    /// Live: simulated seconds per live second inside an attack (waits are also capped
    /// at `--max-gap-ms`).
    #[arg(long, default_value_t = 120.0)]
    pub speed: f64,
    /// Live: legitimate requests per second over all legitimate keys, paced steadily.
    #[arg(long, default_value_t = 5.0)]
    pub legit_rps: f64,
    /// Live: share of the window with legitimate traffic only, before the first attack
    /// (default 0.1 with imported history, 0.3 without).
    #[arg(long)]
    pub live_warmup: Option<f64>,
    /// Live: longest gap between two requests of one attacker, milliseconds.
    #[arg(long, default_value_t = 3000)]
    pub max_gap_ms: i64,
    /// Live: seconds to wait after the replay before reading statuses and alerts back.
    #[arg(long, default_value_t = 3.0)]
    pub settle_secs: f64,
    /// Live: days of legitimate history (the simulation's legitimate actors, attacked
    /// keys' owners included) imported through `POST /admin/events` before the replay, so
    /// the gateway's baselines know the tenants (0: none).
    #[arg(long, default_value_t = 2)]
    pub history_days: u32,
    /// Live: write the created keys (gateway id, tenant, profile, canary, attack, scenario)
    /// as JSON lines here.
    #[arg(long, value_name = "FILE")]
    pub write_keys: Option<PathBuf>,
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
        holdout: args.holdout,
        ..SimConfig::default()
    })?;
    let wrote_gateway_files = write_gateway_files(&args, &sim)?;
    if args.live.is_some() {
        return run_live(args, sim);
    }
    if wrote_gateway_files && !args.evaluate && !args.json && args.write_events.is_none() {
        return Ok(ExitCode::SUCCESS);
    }
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
                        "scenario": k.scenario.and_then(|s| stormwall_sim::SCENARIOS.get(s)),
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

/// Writes `--write-ipdb` and `--write-egress`; whether any was asked for.
fn write_gateway_files(args: &Args, sim: &Simulation) -> anyhow::Result<bool> {
    if args.write_ipdb.is_none() && args.write_egress.is_none() {
        return Ok(false);
    }
    let map = crate::sim_live::NetMap::new(sim.networks_in_use())?;
    if let Some(p) = &args.write_ipdb {
        std::fs::write(p, map.ipdb_tsv())
            .with_context(|| format!("cannot write {}", p.display()))?;
        eprintln!("wrote the live IP database to {}", p.display());
    }
    if let Some(p) = &args.write_egress {
        std::fs::write(p, map.egress_toml())
            .with_context(|| format!("cannot write {}", p.display()))?;
        eprintln!("wrote the [detect.egress] section to {}", p.display());
    }
    Ok(true)
}

fn run_live(args: Args, sim: Simulation) -> anyhow::Result<ExitCode> {
    if !(args.live_secs.is_finite() && args.live_secs > 0.0 && args.live_secs <= 86_400.0) {
        anyhow::bail!("--live-secs must be in (0, 86400]");
    }
    if !(args.speed.is_finite() && args.speed > 0.0) {
        anyhow::bail!("--speed must be a positive number");
    }
    if !(args.legit_rps.is_finite() && args.legit_rps > 0.0 && args.legit_rps <= 10_000.0) {
        anyhow::bail!("--legit-rps must be in (0, 10000]");
    }
    let live_warmup = args
        .live_warmup
        .unwrap_or(if args.history_days > 0 { 0.1 } else { 0.3 });
    if !(0.0..0.9).contains(&live_warmup) {
        anyhow::bail!("--live-warmup must be in [0, 0.9)");
    }
    let token = crate::config::env_var(&args.admin_token_env)
        .filter(|t| !t.is_empty())
        .with_context(|| {
            format!(
                "set the admin token in the {} environment variable",
                args.admin_token_env
            )
        })?;
    let target = crate::sim_live::Target {
        proxy: args.live.clone().unwrap_or_default(),
        admin: args.admin.clone().unwrap_or_default(),
        token: secrecy::SecretString::from(token),
        settle: std::time::Duration::from_secs_f64(args.settle_secs.clamp(0.0, 600.0)),
        history_days: args.history_days.min(args.days),
    };
    let opts = stormwall_sim::LiveOptions {
        duration_ms: (args.live_secs * 1000.0) as i64,
        warmup_share: live_warmup,
        attacks_by_share: (live_warmup + 0.25).min(0.95),
        legit_rps: args.legit_rps,
        speed: args.speed,
        max_gap_ms: args.max_gap_ms.max(1),
        ..Default::default()
    };
    let truth = sim.keys().to_vec();
    let started = std::time::Instant::now();
    let run = tokio::task::block_in_place(|| {
        tokio::runtime::Handle::current().block_on(crate::sim_live::run(
            sim,
            opts,
            &target,
            args.seed,
            args.days,
            args.min_severity,
        ))
    })?;
    if let Some(p) = &args.write_keys {
        let mut out = std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        );
        for (i, (k, live)) in truth.iter().zip(&run.keys).enumerate() {
            let used = run.attacker_use.get(i).copied().unwrap_or_default();
            serde_json::to_writer(
                &mut out,
                &serde_json::json!({
                    "key.id": live.id,
                    "tenant.id": live.tenant,
                    "profile": k.profile,
                    "canary": k.canary,
                    "attack": k.scenario.is_some(),
                    "scenario": k.scenario.and_then(|s| stormwall_sim::SCENARIOS.get(s)),
                    "attacker_requests": used.requests,
                    "abuse_requests": used.abuse_requests,
                    "abuse_served": used.abuse_served,
                }),
            )?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
    }
    if !run.alerts_available {
        eprintln!("the gateway has no GET /admin/alerts: detection figures are empty");
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &run.report)?;
        out.write_all(b"\n")?;
    } else {
        print_report(&mut out, &run.report)?;
    }
    eprintln!(
        "live replay: {} requests ({} from attackers, {} without an answer) after {} events of imported history, in {:.1} s",
        run.report.events,
        run.report.attacker_events,
        run.failed_requests,
        run.history_events,
        started.elapsed().as_secs_f64()
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
