//! `stormwall events export`: usage events as JSON lines (OpenTelemetry `gen_ai.*` and ECS
//! field names), read straight from the store so it works with the gateway stopped.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use stormwall_store::EventQuery;
use stormwall_types::KeyId;

use crate::config::FileConfig;

/// Events read per store query.
const PAGE: usize = 5_000;

/// Event commands.
#[derive(Debug, clap::Subcommand)]
pub enum EventsCommand {
    /// Write events as JSON lines, oldest first.
    Export {
        /// Config file (its `[store]` is read).
        #[arg(
            long,
            short = 'c',
            env = "STORMWALL_CONFIG",
            default_value = "stormwall.toml"
        )]
        config: PathBuf,
        /// Only events at or after this time (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only events before this time (RFC 3339).
        #[arg(long)]
        until: Option<String>,
        /// Only events of this key id.
        #[arg(long)]
        key: Option<String>,
        /// Only events of this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Write here instead of stdout.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
}

/// Runs an event command.
pub async fn run(cmd: EventsCommand) -> anyhow::Result<ExitCode> {
    let EventsCommand::Export {
        config,
        since,
        until,
        key,
        tenant,
        output,
    } = cmd;
    let file = FileConfig::load(&config)?;
    let store = stormwall_store::open(&file.store)
        .await
        .context("cannot open the store")?;
    let time = |s: Option<String>, what: &str| {
        s.map(|v| {
            stormwall_types::timefmt::parse(&v)
                .with_context(|| format!("--{what} must be RFC 3339"))
        })
        .transpose()
    };
    let mut query = EventQuery {
        key_id: key
            .map(|k| KeyId::new(&k).context("--key must be a public key id"))
            .transpose()?,
        tenant,
        since: time(since, "since")?,
        until: time(until, "until")?,
        after_id: None,
        limit: Some(PAGE),
    };
    let mut out: Box<dyn Write> = match &output {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let mut total = 0usize;
    loop {
        let page = store.query_events(&query).await?;
        for e in &page {
            let written = serde_json::to_writer(&mut out, e)
                .map_err(std::io::Error::from)
                .and_then(|()| out.write_all(b"\n"));
            match written {
                Ok(()) => {}
                // `events export | head` is a normal way to stop reading.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                    return Ok(ExitCode::SUCCESS);
                }
                Err(e) => return Err(e.into()),
            }
        }
        total += page.len();
        match page.last() {
            Some(last) if page.len() == PAGE => query.after_id = Some(last.id.clone()),
            _ => break,
        }
    }
    match out.flush() {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(ExitCode::SUCCESS),
        other => other?,
    }
    if output.is_some() {
        eprintln!("exported {total} events");
    }
    Ok(ExitCode::SUCCESS)
}
