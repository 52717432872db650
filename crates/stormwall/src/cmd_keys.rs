//! `stormwall keys create|list|show|suspend|resume|rotate|revoke`: key lifecycle
//! through a running gateway's admin API, so the gateway's cache changes at once; and
//! `keys create-bulk`, which writes many keys straight into the store (see [`crate::keys_bulk`]).

use std::process::ExitCode;

use anyhow::Context;
use http::Method;
use serde_json::{Value, json};

use crate::admin_client::{AdminClient, AdminTarget, encode, field as s};

/// Key commands.
#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Create a key; prints the secret once.
    Create(Box<CreateArgs>),
    /// Create many keys straight in the store (migrations, large platforms); writes the
    /// secrets once, to a new file.
    CreateBulk(Box<crate::keys_bulk::CreateBulkArgs>),
    /// List keys.
    List {
        #[command(flatten)]
        target: AdminTarget,
        /// Only keys of this tenant.
        #[arg(long)]
        tenant: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show one key.
    Show(IdArgs),
    /// Suspend a key (reversible).
    Suspend(ReasonArgs),
    /// Resume a suspended key.
    Resume(IdArgs),
    /// Revoke a key for good (it stays a tripwire).
    Revoke(ReasonArgs),
    /// Replace a key; the old one works for a grace period.
    Rotate {
        #[command(flatten)]
        id: IdArgs,
        /// Seconds the old key keeps working.
        #[arg(long, default_value_t = 3600)]
        grace_secs: u64,
    },
}

/// A key id and where the admin API is.
#[derive(Debug, clap::Args)]
pub struct IdArgs {
    /// Public key id.
    pub id: String,
    #[command(flatten)]
    target: AdminTarget,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// A key id and a reason.
#[derive(Debug, clap::Args)]
pub struct ReasonArgs {
    #[command(flatten)]
    id: IdArgs,
    /// Why (recorded on the key).
    #[arg(long)]
    reason: Option<String>,
}

/// `keys create` options: tenant, kind, label and scope.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    #[command(flatten)]
    target: AdminTarget,
    /// Owning tenant.
    #[arg(long)]
    tenant: String,
    /// `normal` or `canary`.
    #[arg(long, default_value = "normal")]
    kind: String,
    /// Free-form label.
    #[arg(long)]
    label: Option<String>,
    #[command(flatten)]
    scope: ScopeArgs,
    /// Print one JSON object (`key` is the secret, `id` the public id).
    #[arg(long)]
    json: bool,
}

/// A new key's scope options, shared by `keys create` and `keys create-bulk`.
#[derive(Debug, Default, clap::Args)]
pub struct ScopeArgs {
    /// Allowed model (repeat); none: every configured model.
    #[arg(long = "model")]
    models: Vec<String>,
    /// Allowed endpoint (repeat): chat_completions, completions, embeddings, images_generations, responses, models.
    #[arg(long = "endpoint")]
    endpoints: Vec<String>,
    /// Allowed client network (repeat), e.g. 203.0.113.0/24.
    #[arg(long = "cidr")]
    cidrs: Vec<ipnet::IpNet>,
    /// Not valid before (RFC 3339).
    #[arg(long)]
    not_before: Option<String>,
    /// Expires at (RFC 3339).
    #[arg(long)]
    expires_at: Option<String>,
    /// Requests per minute.
    #[arg(long)]
    rpm: Option<u32>,
    /// Tokens per minute.
    #[arg(long)]
    tpm: Option<u64>,
    /// Requests in flight at once.
    #[arg(long)]
    max_concurrency: Option<u32>,
    /// Spend per UTC day, USD.
    #[arg(long)]
    budget_daily_usd: Option<f64>,
    /// Spend per UTC month, USD.
    #[arg(long)]
    budget_monthly_usd: Option<f64>,
    /// Content-policy profile.
    #[arg(long)]
    policy_profile: Option<String>,
}

impl ScopeArgs {
    /// The scope as the admin API's JSON: only the options given.
    pub fn to_json(&self) -> serde_json::Map<String, Value> {
        let mut scope = serde_json::Map::new();
        let mut put = |k: &str, v: Value| {
            if !v.is_null() {
                scope.insert(k.to_owned(), v);
            }
        };
        if !self.models.is_empty() {
            put("models", json!(self.models));
        }
        if !self.endpoints.is_empty() {
            put("endpoints", json!(self.endpoints));
        }
        if !self.cidrs.is_empty() {
            put("cidrs", json!(self.cidrs));
        }
        put("not_before", json!(self.not_before));
        put("expires_at", json!(self.expires_at));
        put("rpm", json!(self.rpm));
        put("tpm", json!(self.tpm));
        put("max_concurrency", json!(self.max_concurrency));
        put("budget_daily_usd", json!(self.budget_daily_usd));
        put("budget_monthly_usd", json!(self.budget_monthly_usd));
        put("policy_profile", json!(self.policy_profile));
        scope
    }
}

/// Runs a key command.
pub async fn run(cmd: KeysCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCommand::Create(a) => create(*a).await,
        KeysCommand::CreateBulk(a) => crate::keys_bulk::run(*a).await,
        KeysCommand::List {
            target,
            tenant,
            json,
        } => {
            let client = AdminClient::new(&target)?;
            let path = match tenant {
                Some(t) => format!("/admin/keys?tenant={}", encode(&t)),
                None => "/admin/keys".to_owned(),
            };
            let v = client.call(Method::GET, &path, None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "{:<14} {:<20} {:<7} {:<10} {:<6} LABEL",
                    "ID", "TENANT", "KIND", "STATUS", "LAST4"
                );
                for k in v.as_array().into_iter().flatten() {
                    println!(
                        "{:<14} {:<20} {:<7} {:<10} {:<6} {}",
                        s(k, "id"),
                        s(k, "tenant"),
                        s(k, "kind"),
                        s(k, "status"),
                        s(k, "last4"),
                        s(k, "label")
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        KeysCommand::Show(a) => {
            simple(
                &a,
                Method::GET,
                format!("/admin/keys/{}", encode(&a.id)),
                None,
            )
            .await
        }
        KeysCommand::Suspend(a) => {
            let path = format!("/admin/keys/{}/suspend", encode(&a.id.id));
            simple(&a.id, Method::POST, path, Some(json!({"reason": a.reason}))).await
        }
        KeysCommand::Resume(a) => {
            simple(
                &a,
                Method::POST,
                format!("/admin/keys/{}/resume", encode(&a.id)),
                None,
            )
            .await
        }
        KeysCommand::Revoke(a) => {
            let path = format!("/admin/keys/{}/revoke", encode(&a.id.id));
            simple(&a.id, Method::POST, path, Some(json!({"reason": a.reason}))).await
        }
        KeysCommand::Rotate { id, grace_secs } => {
            let client = AdminClient::new(&id.target)?;
            let v = client
                .call(
                    Method::POST,
                    &format!("/admin/keys/{}/rotate", encode(&id.id)),
                    Some(json!({"grace_seconds": grace_secs})),
                )
                .await?;
            print_created(&v, id.json)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

async fn create(a: CreateArgs) -> anyhow::Result<ExitCode> {
    let client = AdminClient::new(&a.target)?;
    let scope = a.scope.to_json();
    let body = json!({"tenant": a.tenant, "kind": a.kind, "label": a.label, "scope": scope});
    let v = client.call(Method::POST, "/admin/keys", Some(body)).await?;
    print_created(&v, a.json)?;
    Ok(ExitCode::SUCCESS)
}

fn print_created(v: &Value, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(v)?);
    } else {
        let key = v
            .get("key")
            .and_then(Value::as_str)
            .context("admin API returned no key")?;
        println!("id:     {}", s(v, "id"));
        println!("tenant: {}", s(v, "tenant"));
        println!("key:    {key}");
        println!("\nThe key is shown only now; Stormwall stores only its hash.");
    }
    Ok(())
}

async fn simple(
    a: &IdArgs,
    method: Method,
    path: String,
    body: Option<Value>,
) -> anyhow::Result<ExitCode> {
    let client = AdminClient::new(&a.target)?;
    let v = client.call(method, &path, body).await?;
    if a.json {
        println!("{}", serde_json::to_string(&v)?);
    } else {
        println!("{}", serde_json::to_string_pretty(&v)?);
    }
    Ok(ExitCode::SUCCESS)
}
