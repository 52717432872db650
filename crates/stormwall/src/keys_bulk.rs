//! `stormwall keys create-bulk`: many keys at once, written straight into the store a config
//! names — for an operator moving a platform's clients over from another gateway, or anyone
//! with more keys than one-by-one admin calls make practical.
//!
//! Every key is validated like the admin API's `POST /admin/keys` before any is stored; keys
//! are then stored in transactions of [`CHUNK`], each chunk's secrets appended to the output
//! file once its transaction committed, and each chunk recorded in the audit log. The secret
//! of each key is written this once, to a new file only its owner may read; the store keeps
//! only its hash. Running gateways load the new keys at their next key refresh
//! (`[server] key_refresh_secs`).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use stormwall_gateway::control::keys::{CreateKey, new_key, validate_new};
use stormwall_store::{AuditEntry, Store};
use stormwall_types::ApiKey;
use time::OffsetDateTime;

use crate::cmd_keys::ScopeArgs;
use crate::config::{FileConfig, env_var};

/// Keys stored per transaction (and per audit entry).
const CHUNK: usize = 10_000;
/// Most keys one run creates.
const MAX_COUNT: u64 = 100_000_000;
/// Audit actor for keys created by this command.
const ACTOR: &str = "cli";

/// How the new keys are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutFormat {
    /// One JSON object per line: `id`, `tenant`, `label`, `key` (the secret).
    Jsonl,
    /// The secret key alone, one per line (what `stormwall-loadgen --keys-file` reads).
    Keys,
}

/// `keys create-bulk` options.
#[derive(Debug, clap::Args)]
pub struct CreateBulkArgs {
    /// Config file: its `[store]` receives the keys; its `[safety]` profiles are the ones a
    /// key may name.
    #[arg(
        long,
        short = 'c',
        env = "STORMWALL_CONFIG",
        default_value = "stormwall.toml"
    )]
    config: PathBuf,
    /// Create this many keys alike: `--tenant`, `--kind`, `--label` and the scope options
    /// apply to each.
    #[arg(long, required_unless_present = "from", conflicts_with = "from")]
    count: Option<u64>,
    /// Create one key per line of this file (JSON lines, each an object like the body of
    /// `POST /admin/keys`: `tenant`, `kind`, `label`, `scope`).
    #[arg(long)]
    from: Option<PathBuf>,
    /// Owning tenant (with `--count`).
    #[arg(long, required_unless_present = "from", conflicts_with = "from")]
    tenant: Option<String>,
    /// `normal` (default) or `canary` (with `--count`).
    #[arg(long, conflicts_with = "from")]
    kind: Option<String>,
    /// Free-form label (with `--count`).
    #[arg(long, conflicts_with = "from")]
    label: Option<String>,
    #[command(flatten)]
    scope: ScopeArgs,
    /// The file the new keys (with their secrets) are written to: created with mode 0600;
    /// an existing file is refused.
    #[arg(long)]
    out: PathBuf,
    /// What each line of `--out` holds.
    #[arg(long, value_enum, default_value_t = OutFormat::Jsonl)]
    format: OutFormat,
}

/// Where the keys' parameters come from.
enum Source {
    /// `--count` alike.
    Repeat { req: Box<CreateKey>, count: u64 },
    /// `--from`, one per line.
    File(PathBuf),
}

/// Runs `keys create-bulk`.
pub async fn run(a: CreateBulkArgs) -> anyhow::Result<ExitCode> {
    let file = FileConfig::load(&a.config)?;
    let source = source(&a)?;
    // Everything is checked before anything is stored: a bad line 900,000 must not leave
    // a half-made batch behind.
    let (total, profiles) = match &source {
        Source::Repeat { req, count } => {
            check(req).context("invalid key parameters")?;
            (*count, profile_names(req).collect())
        }
        Source::File(path) => check_file(path)?,
    };
    check_profiles(&file, &profiles)?;
    let mut out = open_out(&a.out)?;
    let store = stormwall_store::open_with_env(&file.store, &env_var)
        .await
        .context("cannot open the store")?;
    let mut bulk = Bulk {
        store: store.as_ref(),
        out: &mut out,
        format: a.format,
        chunk: Vec::with_capacity(CHUNK),
        created: 0,
    };
    let result = match source {
        Source::Repeat { req, count } => {
            let mut r = Ok(());
            for _ in 0..count {
                r = bulk.push(&req).await;
                if r.is_err() {
                    break;
                }
            }
            r
        }
        Source::File(path) => from_file(&path, &mut bulk).await,
    };
    let result = match result {
        Ok(()) => bulk.flush().await,
        Err(e) => Err(e),
    };
    let created = bulk.created;
    let synced = out
        .flush()
        .and_then(|()| out.get_ref().sync_all())
        .context("cannot write the keys file");
    if let Err(e) = result.and(synced) {
        eprintln!(
            "stormwall: created {created} of {total} keys before the error; their secrets are in {}",
            a.out.display()
        );
        return Err(e);
    }
    println!(
        "created {created} keys; their secrets are in {} (shown only there: Stormwall stores only their hashes)",
        a.out.display()
    );
    println!("running gateways load them at their next key refresh ([server] key_refresh_secs)");
    Ok(ExitCode::SUCCESS)
}

/// What to create, from the options.
fn source(a: &CreateBulkArgs) -> anyhow::Result<Source> {
    if let Some(path) = &a.from {
        let scope = a.scope.to_json();
        if !scope.is_empty() {
            bail!("--from takes each key's scope from the file; scope options apply to --count");
        }
        return Ok(Source::File(path.clone()));
    }
    let (Some(count), Some(tenant)) = (a.count, &a.tenant) else {
        bail!("give --count and --tenant, or --from FILE");
    };
    if count == 0 || count > MAX_COUNT {
        bail!("--count must be 1 to {MAX_COUNT}");
    }
    let body = json!({
        "tenant": tenant,
        "kind": a.kind.as_deref().unwrap_or("normal"),
        "label": a.label,
        "scope": Value::Object(a.scope.to_json()),
    });
    // Parsed exactly as the admin API parses its body.
    let req: CreateKey = serde_json::from_value(body).context("invalid key parameters")?;
    Ok(Source::Repeat {
        req: Box::new(req),
        count,
    })
}

fn check(req: &CreateKey) -> anyhow::Result<()> {
    validate_new(req).map_err(|e| anyhow::anyhow!("{e}"))
}

fn profile_names(req: &CreateKey) -> impl Iterator<Item = String> + '_ {
    req.scope.policy_profile.iter().cloned()
}

/// Parses and validates every line of a `--from` file; returns how many keys it asks for
/// and the policy profiles it names.
fn check_file(path: &Path) -> anyhow::Result<(u64, Vec<String>)> {
    let mut total = 0u64;
    let mut profiles = std::collections::BTreeSet::new();
    for item in key_lines(path)? {
        let (n, req) = item?;
        check(&req).with_context(|| format!("{}:{n}: invalid key", path.display()))?;
        profiles.extend(profile_names(&req));
        total += 1;
    }
    if total == 0 {
        bail!("{} lists no keys", path.display());
    }
    if total > MAX_COUNT {
        bail!("{} lists more than {MAX_COUNT} keys", path.display());
    }
    Ok((total, profiles.into_iter().collect()))
}

/// The non-blank lines of a `--from` file, parsed, with their 1-based line numbers. Read
/// as a stream: a million lines are never all in memory.
fn key_lines(
    path: &Path,
) -> anyhow::Result<impl Iterator<Item = anyhow::Result<(usize, CreateKey)>>> {
    let file = File::open(path).with_context(|| format!("cannot read {}", path.display()))?;
    let shown = path.display().to_string();
    Ok(BufReader::new(file)
        .lines()
        .enumerate()
        .filter_map(move |(i, line)| {
            let n = i + 1;
            let line = match line {
                Ok(l) => l,
                Err(e) => {
                    return Some(Err(
                        anyhow::Error::new(e).context(format!("cannot read {shown}"))
                    ));
                }
            };
            if line.trim().is_empty() {
                return None;
            }
            Some(
                serde_json::from_str::<CreateKey>(&line)
                    .map(|req| (n, req))
                    .with_context(|| format!("{shown}:{n}: not a key object")),
            )
        }))
}

async fn from_file(path: &Path, bulk: &mut Bulk<'_>) -> anyhow::Result<()> {
    // Read again, now that every line was checked.
    for item in key_lines(path)? {
        let (_, req) = item?;
        bulk.push(&req).await?;
    }
    Ok(())
}

/// A policy profile named by a key must exist, as the admin API requires.
fn check_profiles(file: &FileConfig, names: &[String]) -> anyhow::Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    let Some(safety) =
        stormwall_gateway::data::safety::SafetyStage::from_config(&file.safety, &env_var)
            .context("invalid [safety] configuration")?
    else {
        // Content screening is off: the admin API accepts any name then too.
        return Ok(());
    };
    for name in names {
        if !safety.knows_profile(name) {
            bail!(
                "policy_profile {name:?} is not a configured profile (known: {})",
                safety.profile_names().join(", ")
            );
        }
    }
    Ok(())
}

/// Creates the output file: new, and readable by its owner only (it holds secrets).
fn open_out(path: &Path) -> anyhow::Result<BufWriter<File>> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(path).with_context(|| {
        format!(
            "cannot create {} (an existing file is never overwritten)",
            path.display()
        )
    })?;
    Ok(BufWriter::new(file))
}

/// Keys minted but not yet stored, and where they go.
struct Bulk<'a> {
    store: &'a dyn Store,
    out: &'a mut BufWriter<File>,
    format: OutFormat,
    chunk: Vec<(ApiKey, stormwall_types::KeyRecord)>,
    created: u64,
}

impl Bulk<'_> {
    /// Mints a key for `req`; stores the chunk once full.
    async fn push(&mut self, req: &CreateKey) -> anyhow::Result<()> {
        self.chunk.push(new_key(req, OffsetDateTime::now_utc()));
        if self.chunk.len() >= CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    /// Stores the pending keys in one transaction, then writes their secrets and audits them.
    async fn flush(&mut self) -> anyhow::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let records: Vec<_> = self.chunk.iter().map(|(_, r)| r.clone()).collect();
        // A public-id collision (1 in 62^12 per pair) fails the chunk; nothing of it is stored.
        self.store
            .insert_keys(&records)
            .await
            .context("cannot store the keys")?;
        let mut tenants: BTreeMap<&str, u64> = BTreeMap::new();
        for (key, record) in &self.chunk {
            *tenants.entry(record.tenant.as_str()).or_default() += 1;
            let line = match self.format {
                OutFormat::Keys => key.expose().to_owned(),
                OutFormat::Jsonl => serde_json::to_string(&json!({
                    "id": record.id,
                    "tenant": record.tenant,
                    "label": record.label,
                    "key": key.expose(),
                }))?,
            };
            writeln!(self.out, "{line}").context("cannot write the keys file")?;
        }
        self.out.flush().context("cannot write the keys file")?;
        let single = (tenants.len() == 1).then(|| records[0].tenant.clone());
        let entry = AuditEntry {
            at: OffsetDateTime::now_utc(),
            actor: ACTOR.to_owned(),
            action: "key.create_bulk".to_owned(),
            target: None,
            tenant: single,
            detail: json!({ "count": records.len(), "tenants": tenants }),
        };
        self.created += records.len() as u64;
        self.chunk.clear();
        // The keys are stored; a failed audit append is reported, not undone.
        if let Err(e) = self.store.append_audit(&entry).await {
            eprintln!("stormwall: warning: cannot append to the audit log: {e}");
        }
        Ok(())
    }
}
