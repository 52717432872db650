//! `stormwall alerts list|show|ack|false-positive`: the detectors' alerts through a running
//! gateway's admin API, with the actions they caused.

use std::process::ExitCode;

use http::Method;
use serde_json::Value;

use crate::admin_client::{
    AdminClient, AdminTarget, IdArgs, NoteArgs, field, filter_query, set_status, show,
};

/// Alert commands.
#[derive(Debug, clap::Subcommand)]
pub enum AlertsCommand {
    /// List alerts, newest first.
    List(Box<ListArgs>),
    /// Show one alert: features, explanation, evidence and the actions it caused.
    Show(IdArgs),
    /// Acknowledge an alert (looked at; it stands).
    Ack(NoteArgs),
    /// Mark an alert false-positive (the key's baseline learns from it).
    FalsePositive(NoteArgs),
}

/// `alerts list` filters.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    target: AdminTarget,
    /// Only alerts about this public key id.
    #[arg(long)]
    key: Option<String>,
    /// Only alerts of this tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// Only alerts of this detector, e.g. P1.
    #[arg(long)]
    detector: Option<String>,
    /// Only alerts with this status: open, acknowledged, false_positive.
    #[arg(long)]
    status: Option<String>,
    /// Only alerts at or after this instant (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// Only alerts before this instant (RFC 3339).
    #[arg(long)]
    until: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Print the API's JSON.
    #[arg(long)]
    json: bool,
}

/// Runs an alert command.
pub async fn run(cmd: AlertsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AlertsCommand::List(a) => list(*a).await,
        AlertsCommand::Show(a) => show("/admin/alerts", &a, print_detail).await,
        AlertsCommand::Ack(a) => set_status("/admin/alerts", &a, "ack", print_status).await,
        AlertsCommand::FalsePositive(a) => {
            set_status("/admin/alerts", &a, "false-positive", print_status).await
        }
    }
}

async fn list(a: ListArgs) -> anyhow::Result<ExitCode> {
    let client = AdminClient::new(&a.target)?;
    let query = filter_query(
        a.limit,
        &[
            ("key", &a.key),
            ("tenant", &a.tenant),
            ("detector", &a.detector),
            ("status", &a.status),
            ("since", &a.since),
            ("until", &a.until),
        ],
    );
    let v = client
        .call(Method::GET, &format!("/admin/alerts?{query}"), None)
        .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<25} {:<4} {:<9} {:<14} {:<16} {:<15} EXPLANATION",
        "AT", "DET", "SEVERITY", "KEY", "TENANT", "STATUS"
    );
    for al in v
        .get("alerts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        println!(
            "{:<25} {:<4} {:<9} {:<14} {:<16} {:<15} {}",
            field(al, "at"),
            field(al, "detector"),
            field(al, "severity"),
            field(al, "key_id"),
            field(al, "tenant"),
            field(al, "status"),
            first_sentence(field(al, "explanation")),
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(v: &Value) {
    println!("{} {}", field(v, "id"), field(v, "status"));
}

fn print_detail(v: &Value) {
    println!("id:          {}", field(v, "id"));
    println!(
        "detector:    {} ({}), severity {}, score {}",
        field(v, "detector"),
        field(v, "stage"),
        field(v, "severity"),
        v.get("score").and_then(Value::as_f64).unwrap_or(0.0)
    );
    println!("at:          {}", field(v, "at"));
    println!(
        "key:         {}  tenant: {}",
        field(v, "key_id"),
        field(v, "tenant")
    );
    println!("status:      {}", field(v, "status"));
    println!("explanation: {}", field(v, "explanation"));
    for f in v
        .get("features")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let value = f.get("value").and_then(Value::as_f64).unwrap_or(0.0);
        match f.get("threshold").and_then(Value::as_f64) {
            Some(t) => println!("  feature {} = {value} (threshold {t})", field(f, "name")),
            None => println!("  feature {} = {value}", field(f, "name")),
        }
    }
    for s in v
        .get("subjects")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        println!("  {}: {}", field(s, "kind"), field(s, "value"));
    }
    let evidence: Vec<&str> = v
        .get("evidence")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    println!(
        "evidence:    {} event(s) {}",
        evidence.len(),
        evidence.join(" ")
    );
    for act in v
        .get("actions")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let a = act.get("action").unwrap_or(&Value::Null);
        println!(
            "action:      {} {} at {} (risk {}): {}",
            field(a, "kind"),
            field(act, "outcome"),
            field(act, "applied_at"),
            a.get("risk_score").and_then(Value::as_f64).unwrap_or(0.0),
            field(a, "reason")
        );
    }
}

/// The explanation's first sentence, for one table row.
fn first_sentence(s: &str) -> &str {
    match s.find(". ") {
        Some(i) => &s[..=i],
        None => s,
    }
}
