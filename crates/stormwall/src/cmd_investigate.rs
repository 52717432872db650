//! `stormwall investigate graph|roles|override|export|report|evaluate`: the entity graph
//! behind the abuse, its clusters and roles, the analyst's decisions, STIX/MISP/CSV
//! exports, the HTML report, and the role-assignment figures on the simulator's network
//! scenario. Reads the store (events, alerts, actions, incidents, control events, and the
//! audit log's analyst decisions and scan findings) or a JSON-lines file of events, and
//! `stormwall scan`'s findings; the logic is `stormwall-investigate`.

use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use stormwall_investigate::evaluate::{Evaluation, Truth, evaluate};
use stormwall_investigate::export::ExportOptions;
use stormwall_investigate::findings::{self, parse_scan_findings};
use stormwall_investigate::graph::{Graph, GraphState, ScanOutcome, fingerprint};
use stormwall_investigate::{Assessment, Override, OverrideOp, Overrides, Role, RoleConfig};
use stormwall_ipintel::SharedIpIntel;
use stormwall_sim::network::{NetworkConfig, network_scenario};
use stormwall_store::{
    ActionQuery, AlertQuery, AuditEntry, AuditQuery, ControlEventQuery, EventQuery, IncidentQuery,
    Store, StoredAlert,
};
use stormwall_types::UsageEvent;
use stormwall_types::pricing::Pricing;

use crate::config::FileConfig;

/// Appends a line to the output buffer (printed once, at the end).
macro_rules! outln {
    ($o:expr, $($arg:tt)*) => {{
        use std::fmt::Write as _;
        let _ = writeln!($o, $($arg)*);
    }};
}

/// Prints the command's output; a closed pipe (`| head`) is a normal way to stop reading.
fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Events read per store query.
const PAGE: usize = 5_000;

/// Where the graph's data comes from, and where the graph and decisions are kept.
#[derive(Debug, Clone, clap::Args)]
pub struct Source {
    /// Config file: its `[store]` is read (events, alerts, actions; the audit log is
    /// written), its `[ipdb]` gives networks hosting/VPN/Tor flags, `[pricing]` the prices.
    #[arg(long, short = 'c', env = "STORMWALL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Read events from this JSON-lines file (`stormwall events export`'s format) instead
    /// of the store.
    #[arg(long)]
    pub events: Option<PathBuf>,
    /// Saved graph: read first, only newer events added, written back (incremental).
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// The analyst's decisions (JSON; `investigate override` appends to it).
    #[arg(long, default_value = "investigation-overrides.json")]
    pub overrides: PathBuf,
    /// More IP databases (as `stormwall detect --ipdb`).
    #[arg(long)]
    pub ipdb: Vec<PathBuf>,
    /// Findings of `stormwall scan --format jsonl` (repeatable): each Stormwall key found
    /// becomes an exposure location linked to the key; other credentials are skipped.
    #[arg(long = "scan-findings", value_name = "FILE")]
    pub scan_findings: Vec<PathBuf>,
}

/// Investigation commands.
#[derive(Debug, clap::Subcommand)]
pub enum InvestigateCommand {
    /// Build (or, with --state, update) the entity graph and print its size.
    Graph {
        #[command(flatten)]
        source: Source,
        /// Print the whole graph as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Clusters and roles with their reasons and harm.
    Roles {
        #[command(flatten)]
        source: Source,
        /// Print the assessment as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Record an analyst decision (kept in --overrides, written to the audit log).
    Override {
        /// The analyst's handle (recorded in the audit log; redacted from exports).
        #[arg(long)]
        analyst: String,
        /// Config file whose store's audit log records the decision.
        #[arg(long, short = 'c', env = "STORMWALL_CONFIG")]
        config: PathBuf,
        /// The decisions file.
        #[arg(long, default_value = "investigation-overrides.json")]
        overrides: PathBuf,
        #[command(subcommand)]
        op: OverrideCmd,
    },
    /// Share: STIX 2.1 bundle, MISP event, CSV.
    Export {
        #[command(flatten)]
        source: Source,
        /// Write a STIX 2.1 bundle here.
        #[arg(long)]
        stix: Option<PathBuf>,
        /// Write a MISP event here.
        #[arg(long)]
        misp: Option<PathBuf>,
        /// Write CSV here.
        #[arg(long)]
        csv: Option<PathBuf>,
        #[command(flatten)]
        share: ShareArgs,
    },
    /// Write the self-contained HTML report.
    Report {
        #[command(flatten)]
        source: Source,
        /// Output file.
        #[arg(long, short = 'o')]
        out: PathBuf,
        #[command(flatten)]
        share: ShareArgs,
    },
    /// Role-assignment precision and recall on the simulator's network scenario.
    Evaluate {
        /// Seeds (tuned on 1, 2, 3; report held-out 101, 102, 103).
        #[arg(long, num_args = 1.., default_values_t = [101u64, 102, 103])]
        seed: Vec<u64>,
        /// `harder` (default) adds a relay fronting a single key, buyers switching relays,
        /// a creator's tool changing version and an integrator serving shared templates;
        /// `base` is the scenario without them.
        #[arg(long, default_value = "harder", value_parser = ["harder", "base"])]
        scenario: String,
        /// Legitimate keys in the population.
        #[arg(long, default_value_t = 200)]
        legit_keys: usize,
        /// Also write the (first seed's) scenario events here as JSON lines.
        #[arg(long)]
        events_out: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Options of what leaves the organisation.
#[derive(Debug, Clone, clap::Args)]
pub struct ShareArgs {
    /// The reporting organisation's name.
    #[arg(long, default_value = "Stormwall operator")]
    pub org_name: String,
    /// TLP 2.0 level: clear, green, amber, amber+strict, red.
    #[arg(long, default_value = "amber")]
    pub tlp: String,
    /// Keep victims' tenant and key ids, end-user ids and exposure locations (recorded in
    /// the audit log; needs --config).
    #[arg(long)]
    pub include_personal_data: bool,
}

impl ShareArgs {
    /// `--include-personal-data` is audited, so it needs the store.
    fn check(&self, source: &Source) -> anyhow::Result<()> {
        if self.include_personal_data && source.config.is_none() {
            bail!(
                "--include-personal-data is audited: give --config so the store's audit log records it"
            );
        }
        Ok(())
    }
}

/// An analyst decision.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum OverrideCmd {
    /// The entity has the role.
    Confirm {
        /// Node id (e.g. `network:203.0.113.0/24`).
        entity: String,
        /// provider, creator, user or victim.
        role: String,
    },
    /// The entity does not have the role.
    Reject {
        /// Node id.
        entity: String,
        /// provider, creator, user or victim.
        role: String,
    },
    /// One cluster: the other entity's cluster joins the first's.
    Merge {
        /// Node id.
        entity: String,
        /// Node id.
        with: String,
    },
    /// The entity stands in a cluster of its own.
    Split {
        /// Node id.
        entity: String,
    },
    /// A note on the entity.
    Annotate {
        /// Node id.
        entity: String,
        /// The note.
        note: String,
    },
}

/// The loaded investigation.
pub(crate) struct Loaded {
    pub graph: Graph,
    pub store: Option<Arc<dyn Store>>,
    pub alerts: Vec<StoredAlert>,
    pub overrides: Overrides,
    pub pricing: Pricing,
}

fn read_overrides(path: &Path) -> anyhow::Result<Overrides> {
    match std::fs::read_to_string(path) {
        Ok(t) => Overrides::from_json(&t).with_context(|| format!("in {}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Overrides::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}

/// Writes beside the target and renames, so a reader never sees half a file.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot replace {}", path.display()))
}

/// Reads the graph's sources and builds (or continues) it.
pub(crate) async fn load(src: &Source) -> anyhow::Result<Loaded> {
    let file = src.config.as_deref().map(FileConfig::load).transpose()?;
    let pricing = file
        .as_ref()
        .map(|f| Pricing::new(&f.pricing))
        .unwrap_or_default();
    let intel: Option<Arc<SharedIpIntel>> = if src.config.is_some() || !src.ipdb.is_empty() {
        Some(crate::cmd_detect::engine_and_intel(src.config.as_deref(), &src.ipdb)?.1)
    } else {
        None
    };
    let mut graph = match &src.state {
        Some(p) if p.exists() => {
            let text = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
            let state: GraphState = serde_json::from_slice(&text)
                .with_context(|| format!("{} is not a saved graph", p.display()))?;
            Graph::from_state(state, pricing.clone())?
        }
        _ => Graph::new(pricing.clone()),
    };
    let add = |g: &mut Graph, e: &UsageEvent| {
        let flags: Vec<&str> = intel
            .as_ref()
            .map(|i| i.flags(e.source_ip, e.source_asn).names().collect())
            .unwrap_or_default();
        g.add_event(e, &flags);
    };
    let mut store = None;
    let mut alerts = Vec::new();
    if let Some(path) = &src.events {
        let f =
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let cursor = graph.cursor().map(str::to_owned);
        for (n, line) in std::io::BufReader::new(f).lines().enumerate() {
            let line = line.with_context(|| format!("reading {}", path.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            let e: UsageEvent = serde_json::from_str(&line)
                .with_context(|| format!("{}:{}: not an event", path.display(), n + 1))?;
            if cursor.as_deref().is_some_and(|c| e.id.as_str() <= c) {
                continue;
            }
            add(&mut graph, &e);
        }
    } else if let Some(file) = &file {
        let s = stormwall_store::open(&file.store)
            .await
            .context("cannot open the store")?;
        // Incidents first: the events that follow count toward their harm.
        for inc in s.list_incidents(&IncidentQuery::default()).await? {
            graph.add_incident(&inc);
        }
        let mut query = EventQuery {
            after_id: graph.cursor().map(str::to_owned),
            limit: Some(PAGE),
            ..EventQuery::default()
        };
        loop {
            let page = s.query_events(&query).await?;
            for e in &page {
                add(&mut graph, e);
            }
            match page.last() {
                Some(last) if page.len() == PAGE => query.after_id = Some(last.id.clone()),
                _ => break,
            }
        }
        alerts = s.list_alerts(&AlertQuery::default()).await?;
        alerts.reverse();
        for a in &alerts {
            graph.add_alert(&a.alert);
        }
        for r in s.list_actions(&ActionQuery::default()).await? {
            graph.add_action(&r.action);
        }
        // Management calls from cloud logs: each is added once (by id), so all are read.
        let mut query = ControlEventQuery {
            limit: Some(PAGE),
            ..ControlEventQuery::default()
        };
        loop {
            let page = s.query_control_events(&query).await?;
            for c in &page {
                let flags: Vec<&str> = match (&intel, c.source_ip) {
                    (Some(i), Some(ip)) => i.flags(ip, None).names().collect(),
                    _ => Vec::new(),
                };
                graph.add_control_event(c, &flags);
            }
            match page.last() {
                Some(last) if page.len() == PAGE => query.after_id = Some(last.id.clone()),
                _ => break,
            }
        }
        store = Some(s);
    } else {
        bail!("give --config (read the store) or --events FILE");
    }
    add_scan_findings(&mut graph, &src.scan_findings, store.as_deref()).await?;
    let mut overrides = read_overrides(&src.overrides)?;
    if let Some(s) = &store {
        // The admin API keeps decisions in the audit log only; the CLI's own are in both.
        let mut entries = Vec::new();
        let mut after_seq = None;
        loop {
            let page = s
                .list_audit(&AuditQuery {
                    after_seq,
                    target: None,
                    limit: Some(PAGE),
                })
                .await?;
            after_seq = page.last().map(|r| r.seq);
            let full = page.len() == PAGE;
            entries.extend(page.into_iter().map(|r| r.entry));
            if !full {
                break;
            }
        }
        overrides.merge_audit(&entries);
        // Scan findings submitted to the admin API are kept in the audit log too.
        for (f, at) in entries.iter().filter_map(findings::from_audit) {
            graph.add_scan_finding(&f, at);
        }
    }
    if let Some(p) = &src.state {
        write_atomic(p, &serde_json::to_vec(graph.state())?)?;
    }
    Ok(Loaded {
        graph,
        store,
        alerts,
        overrides,
        pricing,
    })
}

/// Adds `stormwall scan` findings files to the graph as exposure locations. A key that no
/// event or alert named and the store does not hold (minted by another deployment, or not
/// yet used when there is no store) is skipped, as `scan --revoke` skips it, and is taken
/// when the same file is given again after it appears; what was added and skipped is said
/// on standard error.
async fn add_scan_findings(
    graph: &mut Graph,
    files: &[PathBuf],
    store: Option<&dyn Store>,
) -> anyhow::Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    let (mut added, mut seen, mut other, mut unknown) = (0usize, 0usize, 0usize, 0usize);
    for path in files {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let list = parse_scan_findings(&text).with_context(|| format!("in {}", path.display()))?;
        // A finding in the working tree carries no date of its own: the scan's is the
        // report's modification time.
        let at = std::fs::metadata(path)
            .and_then(|m| m.modified())
            .map(time::OffsetDateTime::from)
            .unwrap_or_else(|_| time::OffsetDateTime::now_utc());
        for f in &list {
            if let Some(id) = findings::key_of(f)
                && graph.find(&format!("key:{id}")).is_none()
            {
                // Neither an event nor an alert named it: only the store can say it is
                // this gateway's key.
                let known = match (store, stormwall_types::KeyId::new(id)) {
                    (Some(s), Ok(k)) => s.get_key(&k).await?.is_some(),
                    _ => false,
                };
                if !known {
                    unknown += 1;
                    continue;
                }
            }
            match graph.add_scan_finding(f, at) {
                ScanOutcome::Added => added += 1,
                ScanOutcome::Seen => seen += 1,
                ScanOutcome::NoKey => other += 1,
            }
        }
    }
    eprintln!(
        "scan findings: {added} exposure(s) of Stormwall keys added, {seen} already in the graph, \
         {other} naming no Stormwall key skipped, {unknown} of keys this graph and store do not know skipped"
    );
    Ok(())
}

async fn audit(
    store: &Option<Arc<dyn Store>>,
    actor: &str,
    action: &str,
    target: Option<&str>,
    detail: serde_json::Value,
) -> anyhow::Result<()> {
    let Some(s) = store else {
        bail!("{action} is audited: give --config so the store's audit log records it")
    };
    s.append_audit(&AuditEntry {
        at: stormwall_types::timefmt::now(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        target: target.map(str::to_owned),
        tenant: None,
        detail,
    })
    .await?;
    Ok(())
}

fn operator() -> String {
    std::env::var("USER").unwrap_or_else(|_| "operator".to_owned())
}

/// Export options, with `--include-personal-data` recorded in the audit log.
pub(crate) async fn share_options(
    share: &ShareArgs,
    store: &Option<Arc<dyn Store>>,
    what: &str,
) -> anyhow::Result<ExportOptions> {
    if share.include_personal_data {
        audit(
            store,
            &format!("cli:{}", operator()),
            "investigate.include_personal_data",
            None,
            serde_json::json!({"export": what}),
        )
        .await?;
    }
    Ok(ExportOptions {
        org_name: share.org_name.clone(),
        include_personal_data: share.include_personal_data,
        tlp: share.tlp.clone(),
    })
}

/// Runs an investigate command.
pub async fn run(cmd: InvestigateCommand) -> anyhow::Result<ExitCode> {
    let mut o = String::new();
    match cmd {
        InvestigateCommand::Graph { source, json } => {
            let l = load(&source).await?;
            if json {
                outln!(o, "{}", serde_json::to_string(l.graph.state())?);
            } else {
                let mut kinds = std::collections::BTreeMap::new();
                for n in l.graph.nodes() {
                    *kinds.entry(n.kind.as_str()).or_insert(0usize) += 1;
                }
                outln!(
                    o,
                    "{} events, {} nodes, {} edges",
                    l.graph.events(),
                    l.graph.nodes().len(),
                    l.graph.edges().len()
                );
                for (k, n) in kinds {
                    outln!(o, "  {k:12} {n}");
                }
            }
        }
        InvestigateCommand::Roles { source, json } => {
            let l = load(&source).await?;
            let a = stormwall_investigate::assess(&l.graph, &RoleConfig::default(), &l.overrides);
            if json {
                outln!(o, "{}", serde_json::to_string_pretty(&a)?);
            } else {
                print_roles(&a, &mut o);
            }
        }
        InvestigateCommand::Override {
            analyst,
            config,
            overrides,
            op,
        } => {
            let role = |r: &str| {
                Role::parse(r)
                    .with_context(|| format!("unknown role {r}: provider, creator, user or victim"))
            };
            let op = match op {
                OverrideCmd::Confirm { entity, role: r } => OverrideOp::Confirm {
                    entity,
                    role: role(&r)?,
                },
                OverrideCmd::Reject { entity, role: r } => OverrideOp::Reject {
                    entity,
                    role: role(&r)?,
                },
                OverrideCmd::Merge { entity, with } => OverrideOp::Merge { entity, with },
                OverrideCmd::Split { entity } => OverrideOp::Split { entity },
                OverrideCmd::Annotate { entity, note } => OverrideOp::Annotate { entity, note },
            };
            if !op.entity().contains(':') {
                bail!("an entity is a node id such as network:203.0.113.0/24 or tenant:acme");
            }
            let file = FileConfig::load(&config)?;
            let store = Some(
                stormwall_store::open(&file.store)
                    .await
                    .context("cannot open the store")?,
            );
            let mut list = read_overrides(&overrides)?;
            let entry = Override {
                at: stormwall_types::timefmt::now(),
                analyst: analyst.clone(),
                op,
            };
            audit(
                &store,
                &format!("analyst:{analyst}"),
                entry.op.audit_action(),
                Some(entry.op.entity()),
                serde_json::to_value(&entry.op)?,
            )
            .await?;
            list.entries.push(entry);
            write_atomic(&overrides, &serde_json::to_vec_pretty(&list)?)?;
            outln!(
                o,
                "recorded; {} decisions in {}",
                list.entries.len(),
                overrides.display()
            );
        }
        InvestigateCommand::Export {
            source,
            stix,
            misp,
            csv,
            share,
        } => {
            if stix.is_none() && misp.is_none() && csv.is_none() {
                bail!("give at least one of --stix, --misp, --csv");
            }
            share.check(&source)?;
            let l = load(&source).await?;
            let opts = share_options(&share, &l.store, "export").await?;
            let a = stormwall_investigate::assess(&l.graph, &RoleConfig::default(), &l.overrides);
            if let Some(p) = stix {
                let b = stormwall_investigate::export::stix::bundle(&l.graph, &a, &opts)?;
                write_atomic(&p, &serde_json::to_vec_pretty(&b)?)?;
                eprintln!("wrote STIX 2.1 bundle to {}", p.display());
            }
            if let Some(p) = misp {
                let e = stormwall_investigate::export::misp::event(&l.graph, &a, &opts);
                write_atomic(&p, &serde_json::to_vec_pretty(&e)?)?;
                eprintln!("wrote MISP event to {}", p.display());
            }
            if let Some(p) = csv {
                let text = stormwall_investigate::export::csv::csv(&l.graph, &a, &opts);
                write_atomic(&p, text.as_bytes())?;
                eprintln!("wrote CSV to {}", p.display());
            }
        }
        InvestigateCommand::Report { source, out, share } => {
            share.check(&source)?;
            let l = load(&source).await?;
            let opts = share_options(&share, &l.store, "report").await?;
            let a = stormwall_investigate::assess(&l.graph, &RoleConfig::default(), &l.overrides);
            let html = stormwall_investigate::report::html(
                &l.graph,
                &a,
                &opts,
                "Stormwall investigation report",
            );
            write_atomic(&out, html.as_bytes())?;
            eprintln!("wrote {}", out.display());
        }
        InvestigateCommand::Evaluate {
            seed,
            scenario,
            legit_keys,
            events_out,
            json,
        } => {
            return run_evaluate(
                &seed,
                scenario == "harder",
                legit_keys,
                events_out.as_deref(),
                json,
            );
        }
    }
    emit(&o)?;
    Ok(ExitCode::SUCCESS)
}

fn print_roles(a: &Assessment, o: &mut String) {
    for c in &a.clusters {
        outln!(
            o,
            "{}: {} members, {} requests through its relays, {:.2} USD",
            c.id,
            c.members.len(),
            c.harm.requests,
            c.harm.cost_usd()
        );
        for r in a.roles.iter().filter(|r| r.cluster == c.id) {
            outln!(
                o,
                "  {:8} {} ({:.2})",
                r.role.as_str(),
                r.entity,
                r.confidence
            );
            for why in &r.reasons {
                outln!(o, "           - {why}");
            }
        }
    }
}

/// One seed's figures.
#[derive(serde::Serialize)]
struct SeedFigures {
    seed: u64,
    events: usize,
    evaluation: Evaluation,
}

/// The scenario's truth in node ids.
pub(crate) fn truth_of(t: &stormwall_sim::network::NetworkTruth) -> Truth {
    let mut truth = Truth::default();
    let set = |v: Vec<String>| v.into_iter().collect::<std::collections::BTreeSet<_>>();
    truth.roles.insert(
        Role::Provider,
        set(t.providers.iter().map(|p| format!("network:{p}")).collect()),
    );
    truth.roles.insert(
        Role::Creator,
        set(t
            .creators
            .iter()
            .map(|c| {
                let f = fingerprint(
                    Some(&c.user_agent),
                    &c.header_names,
                    c.empty_origin,
                    c.forwarded,
                );
                format!("fingerprint:{}", f.id)
            })
            // A tool's own TLS stack is its signature too.
            .chain(t.creator_tls.iter().map(|fp| format!("tls:{fp}")))
            .collect()),
    );
    truth.roles.insert(
        Role::User,
        set(t
            .users
            .iter()
            .map(|u| format!("style:sys:{}", u.chars().take(16).collect::<String>()))
            .collect()),
    );
    truth.roles.insert(
        Role::Victim,
        set(t.victims.iter().map(|v| format!("tenant:{v}")).collect()),
    );
    truth.legit_tenants = t.legit_tenants.iter().cloned().collect();
    truth
}

fn run_evaluate(
    seeds: &[u64],
    harder: bool,
    legit_keys: usize,
    events_out: Option<&Path>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let mut o = String::new();
    let mut figures = Vec::new();
    for (n, &seed) in seeds.iter().enumerate() {
        let sc = network_scenario(&NetworkConfig {
            seed,
            legit_keys,
            harder,
            ..NetworkConfig::default()
        })?;
        if n == 0
            && let Some(p) = events_out
        {
            let mut w = std::io::BufWriter::new(
                std::fs::File::create(p)
                    .with_context(|| format!("cannot create {}", p.display()))?,
            );
            for e in &sc.events {
                serde_json::to_writer(&mut w, e)?;
                w.write_all(b"\n")?;
            }
            w.flush()?;
        }
        let mut g = Graph::new(Pricing::default());
        for e in &sc.events {
            g.add_event(e, &[]);
        }
        let a = stormwall_investigate::assess(&g, &RoleConfig::default(), &Overrides::default());
        figures.push(SeedFigures {
            seed,
            events: sc.events.len(),
            evaluation: evaluate(&g, &a, &truth_of(&sc.truth)),
        });
    }
    let worst_p = figures
        .iter()
        .map(|f| f.evaluation.overall.precision)
        .fold(1.0, f64::min);
    let worst_r = figures
        .iter()
        .map(|f| f.evaluation.overall.recall)
        .fold(1.0, f64::min);
    let legit: usize = figures
        .iter()
        .map(|f| f.evaluation.legit_with_role.len())
        .sum();
    if json {
        outln!(
            o,
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "seeds": figures,
                "worst_precision": worst_p,
                "worst_recall": worst_r,
                "legit_with_role": legit,
            }))?
        );
    } else {
        for f in &figures {
            let e = &f.evaluation;
            outln!(
                o,
                "seed {}: {} events; precision {:.3} recall {:.3}; legitimate entities with a role: {}",
                f.seed,
                f.events,
                e.overall.precision,
                e.overall.recall,
                e.legit_with_role.len()
            );
            for (role, s) in &e.per_role {
                outln!(
                    o,
                    "  {:8} tp {:3} fp {:3} fn {:3}  precision {:.3} recall {:.3}",
                    role.as_str(),
                    s.true_positives,
                    s.false_positives,
                    s.false_negatives,
                    s.precision,
                    s.recall
                );
            }
        }
        outln!(
            o,
            "worst precision {worst_p:.3}, worst recall {worst_r:.3}, legitimate with a role {legit}"
        );
    }
    emit(&o)?;
    Ok(ExitCode::SUCCESS)
}
