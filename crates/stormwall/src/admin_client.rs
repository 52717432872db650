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
