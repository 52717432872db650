//! `stormwall leak-reports refresh-keys`: fetch the public keys a reporter (GitHub's secret
//! scanning partner programme by default) signs leaked-key reports with, check them, and
//! write the file `[leak_reports] keys_file` names. The gateway re-reads that file when a
//! report names a key it does not know yet, so no restart is needed.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use http::{Request, header};
use http_body_util::{BodyExt, Full, Limited};

/// GitHub's published secret-scanning signing keys.
pub const GITHUB_KEYS_URL: &str = "https://api.github.com/meta/public_keys/secret_scanning";
/// Largest key document accepted.
const MAX_DOCUMENT: usize = 1024 * 1024;

/// Leaked-key report commands.
#[derive(Debug, clap::Subcommand)]
pub enum LeakReportsCommand {
    /// Fetch and verify a reporter's public keys, and write them for the gateway.
    RefreshKeys {
        /// Where the keys are published.
        #[arg(long, default_value = GITHUB_KEYS_URL)]
        url: String,
        /// The file to write (the gateway's `[leak_reports] keys_file`).
        #[arg(long, short = 'o')]
        out: PathBuf,
    },
}

#[derive(serde::Deserialize, serde::Serialize)]
struct KeyDocument {
    public_keys: Vec<KeyEntry>,
}

#[derive(serde::Deserialize, serde::Serialize)]
struct KeyEntry {
    key_identifier: String,
    key: String,
    #[serde(default)]
    is_current: bool,
}

/// Runs a leak-reports command.
pub async fn run(cmd: LeakReportsCommand) -> anyhow::Result<ExitCode> {
    let LeakReportsCommand::RefreshKeys { url, out } = cmd;
    let client = stormwall_gateway::upstream::http_client(&Default::default());
    let req = Request::get(&url)
        .header(
            header::USER_AGENT,
            concat!("stormwall/", env!("CARGO_PKG_VERSION")),
        )
        .header(header::ACCEPT, "application/json")
        .body(Full::default())?;
    let resp = client
        .request(req)
        .await
        .with_context(|| format!("cannot fetch {url}"))?;
    let status = resp.status();
    #[allow(clippy::disallowed_methods)] // bounded by Limited
    let body = Limited::new(resp.into_body(), MAX_DOCUMENT)
        .collect()
        .await
        .map_err(|e| anyhow::anyhow!("reading {url}: {e}"))?
        .to_bytes();
    if !status.is_success() {
        bail!("{url} answered {status}");
    }
    let doc: KeyDocument = serde_json::from_slice(&body)
        .with_context(|| format!("{url} did not return a key document"))?;
    if doc.public_keys.is_empty() {
        bail!("{url} lists no keys; keeping the old file");
    }
    for k in &doc.public_keys {
        stormwall_gateway::control::leak_report::parse_public_key(&k.key_identifier, &k.key)?;
    }
    // Write beside the target and rename, so the gateway never reads a half-written file.
    let tmp = out.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(&doc)?)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, &out).with_context(|| format!("cannot replace {}", out.display()))?;
    println!("wrote {} keys to {}", doc.public_keys.len(), out.display());
    Ok(ExitCode::SUCCESS)
}
