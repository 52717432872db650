//! `stormwall migrate`: apply pending schema migrations to the store a config names.
//!
//! Safe to run while replicas are starting or serving: PostgreSQL migrations run under an
//! advisory lock and each applies once; SQLite's run in an immediate transaction.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::config::{FileConfig, env_var};

/// `migrate` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Config file (its `[store]` is read).
    #[arg(
        long,
        short = 'c',
        env = "STORMWALL_CONFIG",
        default_value = "stormwall.toml"
    )]
    pub config: PathBuf,
}

/// Applies pending migrations and says what ran.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let file = FileConfig::load(&args.config)?;
    let report = stormwall_store::migrate(&file.store, &env_var)
        .await
        .context("migration failed")?;
    if report.applied.is_empty() {
        println!(
            "{}: schema already at version {}; nothing to apply",
            report.backend, report.version
        );
    } else {
        for name in &report.applied {
            println!("{}: applied {name}", report.backend);
        }
        println!("{}: schema at version {}", report.backend, report.version);
    }
    Ok(ExitCode::SUCCESS)
}
