//! `stormwall audit list|verify`: the gateway's hash-chained audit log of changes to keys
//! and alerts, through the admin API.

use std::process::ExitCode;

use http::Method;
use serde_json::Value;

use crate::admin_client::{AdminClient, AdminTarget, encode, field};

/// Audit commands.
#[derive(Debug, clap::Subcommand)]
pub enum AuditCommand {
    /// List audit records in order (who changed what, when and why).
    List {
        #[command(flatten)]
        target: AdminTarget,
        /// Only records about this object (a key, alert or incident id).
        #[arg(long = "object")]
        object: Option<String>,
        /// Only records after this sequence number.
        #[arg(long)]
        after: Option<u64>,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the log's hash chain; exit 1 if a record was removed, reordered or changed.
    Verify {
        #[command(flatten)]
        target: AdminTarget,
        /// Print the API's JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Runs an audit command.
pub async fn run(cmd: AuditCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AuditCommand::List {
            target,
            object,
            after,
            limit,
            json,
        } => {
            let client = AdminClient::new(&target)?;
            let mut query = vec![format!("limit={limit}")];
            if let Some(o) = &object {
                query.push(format!("target={}", encode(o)));
            }
            if let Some(a) = after {
                query.push(format!("after={a}"));
            }
            let v = client
                .call(
                    Method::GET,
                    &format!("/admin/audit?{}", query.join("&")),
                    None,
                )
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:>6} {:<25} {:<22} {:<20} {:<14} DETAIL",
                "SEQ", "AT", "ACTOR", "ACTION", "TARGET"
            );
            for e in v
                .get("entries")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                println!(
                    "{:>6} {:<25} {:<22} {:<20} {:<14} {}",
                    e.get("seq").and_then(Value::as_u64).unwrap_or(0),
                    field(e, "at"),
                    field(e, "actor"),
                    field(e, "action"),
                    field(e, "target"),
                    e.get("detail").map(Value::to_string).unwrap_or_default(),
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Verify { target, json } => {
            let client = AdminClient::new(&target)?;
            let v = client
                .call(Method::GET, "/admin/audit/verify", None)
                .await?;
            let ok = v.get("ok").and_then(Value::as_bool).unwrap_or(false);
            if json {
                println!("{}", serde_json::to_string(&v)?);
            } else if ok {
                println!(
                    "audit log ok: {} records, head {}",
                    v.get("records").and_then(Value::as_u64).unwrap_or(0),
                    field(&v, "head")
                );
            } else {
                println!(
                    "audit log BROKEN at record {}: {}",
                    v.get("broken_at").and_then(Value::as_u64).unwrap_or(0),
                    field(&v, "reason")
                );
            }
            Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
    }
}
