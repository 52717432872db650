//! The `stormwall` binary: one command per verb, each in its own module (`cmd_*.rs`).
#![allow(clippy::print_stdout)] // the binary is the one place that prints to stdout

mod admin_client;
#[cfg(test)]
mod architecture;
mod cmd_alerts;
mod cmd_audit;
mod cmd_config;
mod cmd_demo;
mod cmd_detect;
mod cmd_detect_logs;
mod cmd_events;
mod cmd_evidence;
mod cmd_incidents;
mod cmd_investigate;
mod cmd_ip;
mod cmd_keys;
mod cmd_leak_reports;
mod cmd_migrate;
mod cmd_safety;
mod cmd_safety_model;
mod cmd_scan;
mod cmd_serve;
mod cmd_simulate;
mod config;
mod keys_bulk;
mod memory;
mod sim_live;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Stormwall: a gateway and toolkit that defends generative-AI APIs against credential
/// theft, resale and misuse.
#[derive(Debug, Parser)]
#[command(name = "stormwall", version, about, long_about = None)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway (proxy and admin listeners).
    Serve(cmd_serve::Args),
    /// Manage keys through a running gateway's admin API.
    #[command(subcommand)]
    Keys(cmd_keys::KeysCommand),
    /// Detection alerts through a running gateway's admin API: list, show, ack, false-positive.
    #[command(subcommand)]
    Alerts(cmd_alerts::AlertsCommand),
    /// Incidents (alerts grouped by key and episode): list, show, ack, false-positive, resolve.
    #[command(subcommand)]
    Incidents(cmd_incidents::IncidentsCommand),
    /// The audit log of changes to keys and alerts: list, verify its hash chain.
    #[command(subcommand)]
    Audit(cmd_audit::AuditCommand),
    /// Read events from the store.
    #[command(subcommand)]
    Events(cmd_events::EventsCommand),
    /// Apply pending schema migrations to the configured store (SQLite or PostgreSQL).
    Migrate(cmd_migrate::Args),
    /// Configuration tools.
    #[command(subcommand)]
    Config(cmd_config::ConfigCommand),
    /// Leaked-key reports: refresh the reporters' signing keys.
    #[command(subcommand)]
    LeakReports(cmd_leak_reports::LeakReportsCommand),
    /// Find AI-provider credentials in files, archives, git history or stdin (exit 1 on findings).
    Scan(cmd_scan::Args),
    /// Content safety: screen a text, evaluate on labelled sets, train the model.
    #[command(subcommand)]
    Safety(cmd_safety::SafetyCommand),
    /// Run the detectors offline over exported events (JSON lines).
    Detect(cmd_detect::Args),
    /// Simulate labelled legitimate and attack traffic; write events; evaluate detection.
    Simulate(cmd_simulate::Args),
    /// Run a self-contained demonstration: gateway, mock upstream, a key, some requests.
    Demo(cmd_demo::Args),
    /// IP intelligence: what the gateway knows of an address.
    #[command(subcommand)]
    Ip(cmd_ip::IpCommand),
    /// Investigation: the entity graph, clusters and roles, exports (STIX, MISP, CSV), report.
    #[command(subcommand)]
    Investigate(cmd_investigate::InvestigateCommand),
    /// Evidence: signed case folders for an incident or a cluster, and their verification.
    #[command(subcommand)]
    Evidence(cmd_evidence::EvidenceCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match try_main(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Most threads in the gateway's blocking pool.
const SERVE_BLOCKING_THREADS: usize = 8;

fn try_main(cli: Cli) -> anyhow::Result<ExitCode> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Command::Serve(args) = &cli.command {
        if let Some(n) = cmd_serve::worker_threads(args) {
            builder.worker_threads(n);
        }
        // The blocking pool runs SQLite calls, which share three connections: more threads
        // only wait on their locks, and glibc gives each new thread an arena it keeps (the
        // soak's RSS grew with the pool to ~40 threads; bench/README.md "Memory").
        builder.max_blocking_threads(SERVE_BLOCKING_THREADS);
    }
    let runtime = builder.enable_all().build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(a) => cmd_serve::run(a).await,
            Command::Keys(c) => cmd_keys::run(c).await,
            Command::Alerts(c) => cmd_alerts::run(c).await,
            Command::Incidents(c) => cmd_incidents::run(c).await,
            Command::Audit(c) => cmd_audit::run(c).await,
            Command::Events(c) => cmd_events::run(c).await,
            Command::Migrate(a) => cmd_migrate::run(a).await,
            Command::Config(c) => cmd_config::run(c),
            Command::LeakReports(c) => cmd_leak_reports::run(c).await,
            Command::Demo(a) => cmd_demo::run(a).await,
            Command::Detect(a) => cmd_detect::run(a),
            Command::Simulate(a) => cmd_simulate::run(a),
            Command::Scan(a) => cmd_scan::run(a).await,
            Command::Safety(c) => cmd_safety::run(c),
            Command::Ip(c) => cmd_ip::run(c),
            Command::Investigate(c) => cmd_investigate::run(c).await,
            Command::Evidence(c) => cmd_evidence::run(c).await,
        }
    })
}

fn init_logging(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter =
        EnvFilter::try_from_env("STORMWALL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}
