//! `stormwall serve`: run the gateway until SIGTERM or Ctrl-C, then drain and flush.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use secrecy::SecretString;

use crate::config::{FileConfig, env_var};

/// `serve` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Config file.
    #[arg(
        long,
        short = 'c',
        env = "STORMWALL_CONFIG",
        default_value = "stormwall.toml"
    )]
    pub config: PathBuf,
    /// Proxy listen address (overrides `[server] listen`).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Admin listen address (overrides `[server] admin_listen`).
    #[arg(long)]
    pub admin_listen: Option<SocketAddr>,
    /// Event journal directory (overrides `[journal] dir`; one per process).
    #[arg(long)]
    pub journal_dir: Option<PathBuf>,
}

/// The `[server] worker_threads` the config asks for, read before the runtime is built
/// (`None`: one per core; an unreadable config is reported later by `run`).
pub fn worker_threads(args: &Args) -> Option<usize> {
    FileConfig::load(&args.config)
        .ok()
        .map(|f| f.server.worker_threads)
        .filter(|&n| n > 0)
}

/// Runs the gateway.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let mut file = FileConfig::load(&args.config)?;
    if let Some(a) = args.listen {
        file.server.listen = a;
    }
    if let Some(a) = args.admin_listen {
        file.server.admin_listen = a;
    }
    if let Some(d) = args.journal_dir {
        file.journal.dir = Some(d);
    }
    let token = env_var(&file.server.admin_token_env)
        .filter(|t| !t.is_empty())
        .with_context(|| {
            format!(
                "the admin token variable {} is not set",
                file.server.admin_token_env
            )
        })?;
    let store = stormwall_store::open(&file.store)
        .await
        .context("cannot open the store")?;
    let counters = match &file.counters {
        stormwall_store::CountersConfig::Local => None,
        shared => Some(
            stormwall_store::open_counters(shared)
                .await
                .context("cannot set up the shared counters")?,
        ),
    };
    let running = stormwall_gateway::start_with(
        file.gateway(),
        store,
        counters,
        &file.events,
        SecretString::from(token),
        &env_var,
    )
    .await?;
    let trimmer = crate::memory::spawn_trimmer();
    eprintln!(
        "stormwall: proxy on http://{}  admin on http://{}",
        running.proxy_addr, running.admin_addr
    );
    wait_for_signal().await;
    tracing::info!("shutting down: draining requests and flushing events");
    running.shutdown().await;
    trimmer.abort();
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
