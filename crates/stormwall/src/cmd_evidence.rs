//! `stormwall evidence bundle|verify|keygen`: a signed case folder for an incident or a
//! cluster — events, cloud control events, alerts, actions, audit entries, graph excerpt,
//! summary, a manifest of
//! SHA-256 digests signed with Ed25519 — and its verification. The manifest and checks are
//! `stormwall_investigate::evidence`; this module reads the store and the files.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use stormwall_detect::incident::{Grouper, IncidentConfig};
use stormwall_investigate::evidence::{self, AUDIT, AuditHead, SigningKey};
use stormwall_investigate::graph::NodeKind;
use stormwall_investigate::{Harm, Role, RoleConfig};
use stormwall_store::{ActionQuery, AuditQuery, ControlEventQuery, EventQuery, verify_audit};
use stormwall_types::{ControlEvent, IncidentSubject, KeyId, UsageEvent};

use crate::cmd_investigate::{Source, load};
use crate::config::FileConfig;

/// The environment variable that may hold the signing key (64 hex digits).
pub const KEY_ENV: &str = "STORMWALL_EVIDENCE_KEY";
/// Most events put in one bundle.
const MAX_EVENTS: usize = 200_000;
/// The bundle file of control events (JSON lines), present when there are any.
const CONTROL_EVENTS: &str = "control_events.jsonl";
/// Margin around an incident's alerts for its events.
const MARGIN: time::Duration = time::Duration::hours(1);

/// Evidence commands.
#[derive(Debug, clap::Subcommand)]
pub enum EvidenceCommand {
    /// Write a signed case folder for an incident or a cluster.
    Bundle {
        #[command(flatten)]
        source: Source,
        /// The incident (as `stormwall alerts` groups them; e.g. `key:<id>@<time>`).
        #[arg(long, conflicts_with = "cluster", required_unless_present = "cluster")]
        incident: Option<String>,
        /// The cluster (`stormwall investigate roles`).
        #[arg(long)]
        cluster: Option<String>,
        /// File holding the Ed25519 signing key (32-byte seed, 64 hex digits); else
        /// $STORMWALL_EVIDENCE_KEY.
        #[arg(long)]
        key_file: Option<PathBuf>,
        /// The folder to write (must not exist or be empty).
        out: PathBuf,
    },
    /// Check a case folder: every digest, the signature, the audit chain.
    Verify {
        /// The folder.
        dir: PathBuf,
        /// The signer's public key (hex) the bundle must carry.
        #[arg(long)]
        public_key: Option<String>,
        /// Also check the audit entries against this config's store: the recorded head is
        /// in the log and the log still chains through it to its current head.
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
    },
    /// Make a signing key: write its seed to a file (mode 0600), print the public key.
    Keygen {
        /// The key file to create.
        #[arg(long, short = 'o')]
        out: PathBuf,
    },
}

fn signing_key(file: Option<&Path>) -> anyhow::Result<SigningKey> {
    let text = match file {
        Some(p) => std::fs::read_to_string(p)
            .with_context(|| format!("cannot read key file {}", p.display()))?,
        None => {
            std::env::var(KEY_ENV).with_context(|| format!("give --key-file or set {KEY_ENV}"))?
        }
    };
    Ok(SigningKey::from_seed_hex(&text)?)
}

/// Runs an evidence command.
pub async fn run(cmd: EvidenceCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        EvidenceCommand::Keygen { out } => {
            let (key, seed) = SigningKey::generate()?;
            write_private(&out, seed.as_bytes())?;
            println!("{}", key.public_key_hex());
            Ok(ExitCode::SUCCESS)
        }
        EvidenceCommand::Verify {
            dir,
            public_key,
            config,
        } => verify(&dir, public_key.as_deref(), config.as_deref()).await,
        EvidenceCommand::Bundle {
            source,
            incident,
            cluster,
            key_file,
            out,
        } => {
            let key = signing_key(key_file.as_deref())?;
            bundle(&source, incident, cluster, &key, &out).await
        }
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        o.mode(0o600);
    }
    let mut f = o
        .open(path)
        .with_context(|| format!("cannot create {} (it must not exist)", path.display()))?;
    f.write_all(bytes)?;
    f.write_all(b"\n")?;
    Ok(())
}

/// What a bundle is about: keys, optionally only from some networks, within a window.
struct Scope {
    subject: String,
    keys: BTreeSet<String>,
    networks: Option<BTreeSet<String>>,
    since: Option<time::OffsetDateTime>,
    until: Option<time::OffsetDateTime>,
    alert_ids: Option<BTreeSet<String>>,
    entities: BTreeSet<String>,
    description: Vec<String>,
}

async fn bundle(
    source: &Source,
    incident: Option<String>,
    cluster: Option<String>,
    key: &SigningKey,
    out: &Path,
) -> anyhow::Result<ExitCode> {
    if source.config.is_none() {
        bail!("evidence bundle reads the store: give --config");
    }
    if out.exists() && std::fs::read_dir(out)?.next().is_some() {
        bail!("{} exists and is not empty", out.display());
    }
    let l = load(source).await?;
    let Some(store) = l.store.clone() else {
        bail!("evidence bundle reads the store: give --config");
    };
    let g = &l.graph;
    let assessment = stormwall_investigate::assess(g, &RoleConfig::default(), &l.overrides);
    let actions_all = store.list_actions(&ActionQuery::default()).await?;
    let scope = if let Some(id) = incident {
        // Incidents: the alerts grouped the way the gateway groups them.
        let by_alert: BTreeMap<&str, &stormwall_types::Action> = actions_all
            .iter()
            .map(|r| (r.action.alert_id.as_str(), &r.action))
            .collect();
        let mut grouper = Grouper::new(IncidentConfig::default());
        let mut found = BTreeMap::new();
        for a in &l.alerts {
            if let Some(u) = grouper.add(&a.alert, by_alert.get(a.alert.id.as_str()).copied()) {
                found.insert(u.incident.id.clone(), u.incident);
            }
        }
        for i in grouper.drain() {
            found.insert(i.id.clone(), i);
        }
        let Some(inc) = found.remove(&id) else {
            let known: Vec<&String> = found.keys().take(20).collect();
            bail!("no incident {id}; incidents: {known:?}");
        };
        let (keys, networks) = match &inc.subject {
            IncidentSubject::Key(k) => ([k.clone()].into(), None),
            IncidentSubject::Network(n) => (BTreeSet::new(), Some([n.clone()].into())),
        };
        Scope {
            subject: format!("incident:{}", inc.id),
            entities: keys.iter().map(|k| format!("key:{k}")).collect(),
            keys,
            networks,
            since: Some(inc.opened_at - MARGIN),
            until: Some(inc.updated_at + MARGIN),
            alert_ids: Some(inc.timeline.iter().map(|t| t.alert_id.clone()).collect()),
            description: {
                let mut d = vec![
                    format!("Incident {} about {}", inc.id, inc.subject.label()),
                    format!(
                        "Severity {}, risk score {:.1}, stages: {}",
                        inc.severity.as_str(),
                        inc.risk_score,
                        inc.stages
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ];
                d.extend(inc.reasons.iter().cloned());
                d
            },
        }
    } else {
        let id = cluster.unwrap_or_default();
        let Some(c) = assessment.cluster(&id) else {
            let known: Vec<&str> = assessment.clusters.iter().map(|c| c.id.as_str()).collect();
            bail!("no cluster {id} with roles; clusters: {known:?}");
        };
        let providers: BTreeSet<usize> = assessment
            .roles
            .iter()
            .filter(|r| r.cluster == id && r.role == Role::Provider)
            .filter_map(|r| g.find(&r.entity))
            .collect();
        let mut keys = BTreeSet::new();
        for &p in &providers {
            for (k, _) in g.neighbours_of_kind(p, NodeKind::Key) {
                keys.insert(g.nodes()[k].label.clone());
            }
        }
        let networks: BTreeSet<String> = providers
            .iter()
            .map(|&p| g.nodes()[p].label.clone())
            .collect();
        Scope {
            subject: format!("cluster:{id}"),
            entities: c.members.iter().cloned().collect(),
            description: assessment
                .roles
                .iter()
                .filter(|r| r.cluster == id)
                .map(|r| {
                    format!(
                        "{} {} ({:.2}): {}",
                        r.role.as_str(),
                        r.entity,
                        r.confidence,
                        r.reasons.join("; ")
                    )
                })
                .collect(),
            keys,
            networks: (!networks.is_empty()).then_some(networks),
            since: None,
            until: None,
            alert_ids: None,
        }
    };

    // Events.
    let mut events: Vec<UsageEvent> = Vec::new();
    if scope.keys.is_empty() {
        // A network incident: every event in the window, filtered by network.
        let mut q = EventQuery {
            since: scope.since,
            until: scope.until,
            limit: Some(5000),
            ..EventQuery::default()
        };
        loop {
            let page = store.query_events(&q).await?;
            for e in &page {
                let net = stormwall_investigate::graph::network_of(e.source_ip);
                if scope.networks.as_ref().is_none_or(|n| n.contains(&net)) {
                    events.push(e.clone());
                }
            }
            match page.last() {
                Some(last) if page.len() == 5000 && events.len() < MAX_EVENTS => {
                    q.after_id = Some(last.id.clone())
                }
                _ => break,
            }
        }
    }
    for k in &scope.keys {
        let mut q = EventQuery {
            key_id: Some(KeyId::new(k).context("a key id in the graph is malformed")?),
            since: scope.since,
            until: scope.until,
            limit: Some(5000),
            ..EventQuery::default()
        };
        loop {
            let page = store.query_events(&q).await?;
            for e in &page {
                let net = stormwall_investigate::graph::network_of(e.source_ip);
                if scope.networks.as_ref().is_none_or(|n| n.contains(&net)) {
                    events.push(e.clone());
                }
            }
            match page.last() {
                Some(last) if page.len() == 5000 && events.len() < MAX_EVENTS => {
                    q.after_id = Some(last.id.clone())
                }
                _ => break,
            }
        }
    }
    events.truncate(MAX_EVENTS);
    events.sort_by(|a, b| (a.timestamp, &a.id).cmp(&(b.timestamp, &b.id)));

    // Control events: when a key is a cloud principal, its management calls read from
    // cloud logs (keys listed or regenerated, logging or guardrails changed) in the window.
    let mut controls: Vec<ControlEvent> = Vec::new();
    for k in &scope.keys {
        let mut q = ControlEventQuery {
            key_id: Some(KeyId::new(k).context("a key id in the graph is malformed")?),
            since: scope.since,
            until: scope.until,
            limit: Some(5000),
            ..ControlEventQuery::default()
        };
        loop {
            let page = store.query_control_events(&q).await?;
            controls.extend(page.iter().cloned());
            match page.last() {
                Some(last) if page.len() == 5000 && controls.len() < MAX_EVENTS => {
                    q.after_id = Some(last.id.clone())
                }
                _ => break,
            }
        }
    }
    controls.truncate(MAX_EVENTS);
    controls.sort_by(|a, b| (a.timestamp, &a.id).cmp(&(b.timestamp, &b.id)));

    // Alerts and actions.
    let alerts: Vec<_> = l
        .alerts
        .iter()
        .filter(|a| match &scope.alert_ids {
            Some(ids) => ids.contains(&a.alert.id),
            None => a
                .alert
                .key_id
                .as_ref()
                .is_some_and(|k| scope.keys.contains(k.as_str())),
        })
        .cloned()
        .collect();
    let alert_ids: BTreeSet<&str> = alerts.iter().map(|a| a.alert.id.as_str()).collect();
    let actions: Vec<_> = actions_all
        .iter()
        .filter(|r| {
            alert_ids.contains(r.action.alert_id.as_str())
                || (scope.alert_ids.is_none() && scope.keys.contains(r.action.key_id.as_str()))
        })
        .cloned()
        .collect();

    // Audit: from the first entry about the subject to the head.
    let log = store.list_audit(&AuditQuery::default()).await?;
    let relevant =
        |t: &str| scope.keys.contains(t) || alert_ids.contains(t) || scope.entities.contains(t);
    let first = log
        .iter()
        .position(|r| r.entry.target.as_deref().is_some_and(relevant))
        .or_else(|| log.len().checked_sub(1));
    let segment = first.map(|f| log[f..].to_vec()).unwrap_or_default();
    let head = segment.last().map(|r| AuditHead {
        seq: r.seq,
        hash: r.hash.clone(),
    });
    let cited: Vec<u64> = segment
        .iter()
        .filter(|r| r.entry.target.as_deref().is_some_and(relevant))
        .map(|r| r.seq)
        .collect();

    // Graph excerpt: the subject's entities and their neighbours.
    let mut seeds: Vec<usize> = scope.entities.iter().filter_map(|e| g.find(e)).collect();
    seeds.extend(
        scope
            .keys
            .iter()
            .filter_map(|k| g.find(&format!("key:{k}"))),
    );
    let excerpt = g.excerpt(&seeds);

    let mut harm = Harm::default();
    for e in &events {
        harm.add_event(e, &l.pricing);
    }
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut lines = Vec::new();
    for e in &events {
        lines.extend(serde_json::to_vec(e)?);
        lines.push(b'\n');
    }
    files.insert("events.jsonl".into(), lines);
    // Only when there are any: a bundle without cloud principals is unchanged.
    if !controls.is_empty() {
        let mut lines = Vec::new();
        for e in &controls {
            lines.extend(serde_json::to_vec(e)?);
            lines.push(b'\n');
        }
        files.insert(CONTROL_EVENTS.into(), lines);
    }
    files.insert("alerts.json".into(), serde_json::to_vec_pretty(&alerts)?);
    files.insert("actions.json".into(), serde_json::to_vec_pretty(&actions)?);
    if !segment.is_empty() {
        files.insert(AUDIT.into(), serde_json::to_vec_pretty(&segment)?);
    }
    files.insert("graph.json".into(), serde_json::to_vec_pretty(&excerpt)?);
    let created = stormwall_types::timefmt::format(stormwall_types::timefmt::now());
    let mut md = String::new();
    let _ = writeln!(md, "# Evidence: {}\n", scope.subject);
    let _ = writeln!(
        md,
        "Made {created}. Signed with Ed25519 public key `{}`.\n",
        key.public_key_hex()
    );
    for d in &scope.description {
        let _ = writeln!(md, "- {d}");
    }
    let _ = writeln!(
        md,
        "\n## Harm\n\n| requests | refused | tokens | images | est. cost (USD) | first | last | span (h) |\n|---|---|---|---|---|---|---|---|\n| {} | {} | {} | {} | {:.2} | {} | {} | {:.1} |\n",
        harm.requests,
        harm.denied,
        harm.input_tokens + harm.output_tokens,
        harm.images,
        harm.cost_usd(),
        harm.first
            .map(stormwall_types::timefmt::format)
            .unwrap_or_default(),
        harm.last
            .map(stormwall_types::timefmt::format)
            .unwrap_or_default(),
        harm.span_hours()
    );
    for (c, n) in &harm.policy_hits {
        let _ = writeln!(md, "- content-policy hits, {c}: {n}");
    }
    let _ = writeln!(
        md,
        "\n## Contents\n\n- events.jsonl: {} events\n- alerts.json: {} alerts\n- actions.json: {} actions\n- audit.json: audit records {} (entries about the subject: {:?}), ending at the log's head when this was made\n- graph.json: {} entities and {} relations around the subject",
        events.len(),
        alerts.len(),
        actions.len(),
        match (segment.first(), segment.last()) {
            (Some(a), Some(b)) => format!("{}..={}", a.seq, b.seq),
            _ => "none".into(),
        },
        cited,
        excerpt.nodes.len(),
        excerpt.edges.len()
    );
    if !controls.is_empty() {
        let _ = writeln!(
            md,
            "- {CONTROL_EVENTS}: {} management calls of the subject's cloud principals, from cloud logs",
            controls.len()
        );
    }
    let _ = writeln!(
        md,
        "\nCheck it: `stormwall evidence verify <this folder> [--public-key KEY] [--config stormwall.toml]`."
    );
    files.insert("summary.md".into(), md.into_bytes());
    let (manifest, sig) = evidence::seal(&scope.subject, &created, &files, head, key)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    for (name, bytes) in &files {
        std::fs::write(out.join(name), bytes)
            .with_context(|| format!("cannot write {}", out.join(name).display()))?;
    }
    std::fs::write(out.join(evidence::MANIFEST), &manifest)?;
    std::fs::write(out.join(evidence::SIGNATURE), format!("{sig}\n"))?;
    std::fs::write(
        out.join(evidence::PUBLIC_KEY),
        format!("{}\n", key.public_key_hex()),
    )?;
    // The bundle itself is audited: who made which case folder, with which key.
    store
        .append_audit(&stormwall_store::AuditEntry {
            at: stormwall_types::timefmt::now(),
            actor: "cli".to_owned(),
            action: "evidence.bundle".to_owned(),
            target: Some(scope.subject.clone()),
            tenant: None,
            detail: serde_json::json!({
                "manifest_sha256": evidence::sha256_hex(&manifest),
                "public_key": key.public_key_hex(),
            }),
        })
        .await?;
    eprintln!(
        "wrote {} ({} events, {} alerts, {} actions, {} audit records)",
        out.display(),
        events.len(),
        alerts.len(),
        actions.len(),
        segment.len()
    );
    println!("{}", key.public_key_hex());
    Ok(ExitCode::SUCCESS)
}

async fn verify(
    dir: &Path,
    public_key: Option<&str>,
    config: Option<&Path>,
) -> anyhow::Result<ExitCode> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !entry.file_type()?.is_file() {
            println!("FAILED: {name} is not a plain file (added)");
            return Ok(ExitCode::from(1));
        }
        files.insert(name, std::fs::read(entry.path())?);
    }
    let verified = match evidence::verify(&files, public_key) {
        Ok(v) => v,
        Err(e) => {
            println!("FAILED: {e}");
            return Ok(ExitCode::from(1));
        }
    };
    if let (Some(cfg), Some(head)) = (config, &verified.manifest.audit_head) {
        let file = FileConfig::load(cfg)?;
        let store = stormwall_store::open(&file.store)
            .await
            .context("cannot open the store")?;
        let from = head.seq.saturating_sub(1);
        let log = store
            .list_audit(&AuditQuery {
                after_seq: Some(from),
                ..AuditQuery::default()
            })
            .await?;
        match log.first() {
            Some(r) if r.seq == head.seq && r.hash == head.hash => {}
            _ => {
                println!(
                    "FAILED: the store's audit log has no record {} with the bundle's head hash",
                    head.seq
                );
                return Ok(ExitCode::from(1));
            }
        }
        if let Err(e) = verify_audit(&log, from, &log[0].prev_hash) {
            println!("FAILED: the store's audit log after the bundle's head: {e}");
            return Ok(ExitCode::from(1));
        }
    }
    println!(
        "OK: {} files, signature by {}, {} audit records chained to head {}",
        verified.manifest.files.len(),
        verified.manifest.public_key,
        verified.audit_records,
        verified
            .manifest
            .audit_head
            .as_ref()
            .map_or("(none)".to_owned(), |h| format!("{} {}", h.seq, h.hash))
    );
    Ok(ExitCode::SUCCESS)
}
