//! A small client for a running gateway's admin API, used by the `keys` and `alerts` commands.

use std::path::PathBuf;

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full, Limited};
use secrecy::{ExposeSecret, SecretString};

use crate::config::{FileConfig, env_var};

/// Largest admin response read.
const MAX_RESPONSE: usize = 64 * 1024 * 1024;

/// Where the admin API is and how to authenticate.
#[derive(Debug, clap::Args)]
pub struct AdminTarget {
    /// Config file of the running gateway (its admin listener and token variable are used).
    #[arg(long, short = 'c', env = "STORMWALL_CONFIG")]
    pub config: Option<PathBuf>,
    /// Admin API base URL (overrides the config file), e.g. http://127.0.0.1:8081.
    #[arg(long)]
    pub admin_url: Option<String>,
}

/// A connected admin client.
pub struct AdminClient {
    base: String,
    token: SecretString,
    http: stormwall_gateway::upstream::HttpClient,
}

impl AdminClient {
    /// Resolves the admin URL and token from flags, config and environment.
    pub fn new(target: &AdminTarget) -> anyhow::Result<Self> {
        let config = match &target.config {
            Some(p) => Some(FileConfig::load(p)?),
            None => None,
        };
        let server = config
            .as_ref()
            .map(|c| c.server.clone())
            .unwrap_or_default();
        let base = match &target.admin_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => {
                let mut addr = server.admin_listen;
                if addr.ip().is_unspecified() {
                    addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                format!("http://{addr}")
            }
        };
        let token = env_var(&server.admin_token_env)
            .filter(|t| !t.is_empty())
            .with_context(|| {
                format!(
                    "set the admin token in the {} environment variable",
                    server.admin_token_env
                )
            })?;
        Ok(Self {
            base,
            token: SecretString::from(token),
            http: stormwall_gateway::upstream::http_client(&Default::default()),
        })
    }

    /// Sends a request; returns the JSON body of a 2xx answer, or an error with the API's message.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        let bytes = match &body {
            Some(v) => Bytes::from(serde_json::to_vec(v)?),
            None => Bytes::new(),
        };
        let req = Request::builder()
            .method(method)
            .uri(&url)
            .header(
                header::AUTHORIZATION,
                format!("Bearer {}", self.token.expose_secret()),
            )
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes))?;
        let resp = self
            .http
            .request(req)
            .await
            .with_context(|| format!("cannot reach the admin API at {}", self.base))?;
        let status = resp.status();
        #[allow(clippy::disallowed_methods)] // bounded by Limited
        let body = Limited::new(resp.into_body(), MAX_RESPONSE)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading admin response: {e}"))?
            .to_bytes();
        let json: serde_json::Value =
            serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        if !status.is_success() {
            let msg = json
                .pointer("/error/message")
                .and_then(|m| m.as_str())
                .unwrap_or("no message");
            bail!("admin API answered {status}: {msg}");
        }
        Ok(json)
    }
}

/// A string field of a JSON object, or `""`.
pub fn field<'a>(v: &'a serde_json::Value, k: &str) -> &'a str {
    v.get(k).and_then(serde_json::Value::as_str).unwrap_or("")
}

/// Percent-encodes a path segment or query value.
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// An alert's or incident's id and where the admin API is.
#[derive(Debug, clap::Args)]
pub struct IdArgs {
    /// The id.
    pub id: String,
    #[command(flatten)]
    pub target: AdminTarget,
    /// Print the API's JSON.
    #[arg(long)]
    pub json: bool,
}

/// An id and a note.
#[derive(Debug, clap::Args)]
pub struct NoteArgs {
    #[command(flatten)]
    pub id: IdArgs,
    /// Why (kept with what it changes).
    #[arg(long)]
    pub note: Option<String>,
}

/// `limit=N` and `name=value` for each filter that is set, URL-encoded.
pub fn filter_query(limit: usize, filters: &[(&str, &Option<String>)]) -> String {
    let mut query = vec![format!("limit={limit}")];
    for (name, value) in filters {
        if let Some(v) = value {
            query.push(format!("{name}={}", encode(v)));
        }
    }
    query.join("&")
}

/// `GET {collection}/{id}`: prints the JSON when asked, else hands it to `print`.
pub async fn show(
    collection: &str,
    a: &IdArgs,
    print: fn(&serde_json::Value),
) -> anyhow::Result<std::process::ExitCode> {
    let client = AdminClient::new(&a.target)?;
    let path = format!("{collection}/{}", encode(&a.id));
    let v = client.call(http::Method::GET, &path, None).await?;
    if a.json {
        println!("{}", serde_json::to_string(&v)?);
    } else {
        print(&v);
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `POST {collection}/{id}/{action}` with the note: prints the JSON when asked, else hands
/// the answer to `print`.
pub async fn set_status(
    collection: &str,
    a: &NoteArgs,
    action: &str,
    print: fn(&serde_json::Value),
) -> anyhow::Result<std::process::ExitCode> {
    let client = AdminClient::new(&a.id.target)?;
    let path = format!("{collection}/{}/{action}", encode(&a.id.id));
    let body = serde_json::json!({ "note": a.note });
    let v = client.call(http::Method::POST, &path, Some(body)).await?;
    if a.id.json {
        println!("{}", serde_json::to_string(&v)?);
    } else {
        print(&v);
    }
    Ok(std::process::ExitCode::SUCCESS)
}
