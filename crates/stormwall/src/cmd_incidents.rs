//! `stormwall incidents list|show|ack|false-positive|resolve`: incidents (the alerts about
//! one key or source network within an episode) through a running gateway's admin API.

use std::process::ExitCode;

use http::Method;
use serde_json::Value;

use crate::admin_client::{
    AdminClient, AdminTarget, IdArgs, NoteArgs, field, filter_query, set_status, show,
};

/// Incident commands.
#[derive(Debug, clap::Subcommand)]
pub enum IncidentsCommand {
    /// List incidents, latest alert first.
    List(Box<ListArgs>),
    /// Show one incident: stages, risk score and reasons, timeline, evidence and its alerts.
    Show(IdArgs),
    /// Acknowledge an incident and its open alerts.
    Ack(NoteArgs),
    /// Mark an incident and every alert of it false-positive (the detectors learn).
    FalsePositive(NoteArgs),
    /// Resolve an incident (its open alerts are acknowledged).
    Resolve(NoteArgs),
}

/// `incidents list` filters.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    #[command(flatten)]
    target: AdminTarget,
    /// Only incidents with this status: open, acknowledged, false_positive, resolved.
    #[arg(long)]
    status: Option<String>,
    /// Only incidents of at least this severity: info, low, medium, high, critical.
    #[arg(long)]
    severity: Option<String>,
    /// Only incidents about this public key id.
    #[arg(long)]
    key: Option<String>,
    /// Only incidents of this tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// Only incidents whose latest alert is at or after this instant (RFC 3339).
    #[arg(long)]
    since: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 100)]
    limit: usize,
    /// Print the API's JSON.
    #[arg(long)]
    json: bool,
}

/// Runs an incident command.
pub async fn run(cmd: IncidentsCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        IncidentsCommand::List(a) => list(*a).await,
        IncidentsCommand::Show(a) => show("/admin/incidents", &a, print_detail).await,
        IncidentsCommand::Ack(a) => set_status("/admin/incidents", &a, "ack", print_status).await,
        IncidentsCommand::FalsePositive(a) => {
            set_status("/admin/incidents", &a, "false-positive", print_status).await
        }
        IncidentsCommand::Resolve(a) => {
            set_status("/admin/incidents", &a, "resolve", print_status).await
        }
    }
}

async fn list(a: ListArgs) -> anyhow::Result<ExitCode> {
    let client = AdminClient::new(&a.target)?;
    let query = filter_query(
        a.limit,
        &[
            ("status", &a.status),
            ("severity", &a.severity),
            ("key", &a.key),
            ("tenant", &a.tenant),
            ("since", &a.since),
        ],
    );
    let v = client
        .call(Method::GET, &format!("/admin/incidents?{query}"), None)
        .await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<25} {:<9} {:<15} {:<6} {:<7} {:<26} {:<16} ID",
        "UPDATED", "SEVERITY", "STATUS", "ALERTS", "RISK", "SUBJECT", "STAGES"
    );
    for inc in v
        .get("incidents")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        println!(
            "{:<25} {:<9} {:<15} {:<6} {:<7.1} {:<26} {:<16} {}",
            field(inc, "updated_at"),
            field(inc, "severity"),
            field(inc, "status"),
            inc.get("alert_ids")
                .and_then(Value::as_array)
                .map_or(0, Vec::len),
            inc.get("risk_score").and_then(Value::as_f64).unwrap_or(0.0),
            subject(inc),
            strings(inc, "stages").join(","),
            field(inc, "id"),
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(v: &Value) {
    println!(
        "{} {} ({} alerts)",
        field(v, "id"),
        field(v, "status"),
        strings(v, "alert_ids").len()
    );
}

/// `key:<id>` or `network:<cidr>`.
fn subject(v: &Value) -> String {
    let s = v.get("subject").unwrap_or(&Value::Null);
    format!("{}:{}", field(s, "kind"), field(s, "value"))
}

/// A string-array field, or empty.
fn strings<'a>(v: &'a Value, k: &str) -> Vec<&'a str> {
    v.get(k)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn print_detail(v: &Value) {
    println!("id:        {}", field(v, "id"));
    println!("subject:   {}  tenant: {}", subject(v), field(v, "tenant"));
    println!(
        "severity:  {}, risk score {:.1}, status {}",
        field(v, "severity"),
        v.get("risk_score").and_then(Value::as_f64).unwrap_or(0.0),
        field(v, "status")
    );
    println!(
        "episode:   {} .. {}",
        field(v, "opened_at"),
        field(v, "updated_at")
    );
    println!("stages:    {}", strings(v, "stages").join(" → "));
    if let Some(action) = v.get("action").and_then(Value::as_str) {
        println!("action:    {action}");
    }
    if let Some(note) = v.get("note").and_then(Value::as_str) {
        println!("note:      {note}");
    }
    for r in strings(v, "reasons") {
        println!("reason:    {r}");
    }
    println!("timeline:");
    for t in v
        .get("timeline")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let action = t.get("action").and_then(Value::as_str).unwrap_or("");
        println!(
            "  {} {:<3} {:<10} {:<8} {} {}",
            field(t, "at"),
            field(t, "detector"),
            field(t, "stage"),
            field(t, "severity"),
            field(t, "summary"),
            if action.is_empty() {
                String::new()
            } else {
                format!("[{action}]")
            }
        );
    }
    let evidence = strings(v, "evidence");
    println!(
        "evidence:  {} event(s) {}",
        evidence.len(),
        evidence.join(" ")
    );
    println!("alerts:    {}", strings(v, "alert_ids").len());
    for a in v
        .get("alerts")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        println!(
            "  {} {} {} {}",
            field(a, "id"),
            field(a, "detector"),
            field(a, "severity"),
            field(a, "status")
        );
    }
}
