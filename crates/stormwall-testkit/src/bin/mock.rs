//! `stormwall-mock`: runs the testkit's mock OpenAI / Azure upstream until SIGTERM or Ctrl-C.
//!
//! Used by `bench/load.sh` and for trying the gateway by hand. The first line on stdout is
//! `listening on http://ADDR`, so a script can pass `--listen 127.0.0.1:0` and read the port.

// A command-line tool reports on stdout and stderr by design.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;

use clap::Parser;
use stormwall_testkit::{MockConfig, MockUpstream};

/// Runs a mock OpenAI / Azure OpenAI upstream (no request recording, so memory stays flat).
#[derive(Debug, Parser)]
#[command(name = "stormwall-mock", version)]
struct Args {
    /// Address to listen on; port 0 picks a free port (printed on the first stdout line).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Runtime worker threads (default: one per core).
    #[arg(long)]
    threads: Option<usize>,
    /// Model listed by GET /v1/models (repeatable; default: the examples/local.toml set).
    #[arg(long = "model")]
    models: Vec<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match try_main(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("stormwall-mock: {e}");
            ExitCode::from(2)
        }
    }
}

fn try_main(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(threads) = args.threads {
        runtime.worker_threads(threads.max(1));
    }
    runtime.build()?.block_on(run(args))
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = MockConfig {
        listen: args.listen,
        record_requests: false,
        ..MockConfig::default()
    };
    if !args.models.is_empty() {
        config.models = args.models;
    }
    let upstream = MockUpstream::start_with(config).await?;
    println!("listening on {}", upstream.url());
    std::io::stdout().flush()?;

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = terminate.recv() => {}
    }
    let served = upstream.request_count();
    upstream.shutdown().await;
    eprintln!("stormwall-mock: stopped after {served} requests");
    Ok(())
}
