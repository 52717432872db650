//! `stormwall demo`: a self-contained tour on the embedded default. Starts a gateway on
//! loopback with a temporary SQLite store and the built-in mock upstream, creates keys
//! through the admin API, sends real HTTP requests — allowed, streamed, Azure-style, out of
//! scope, rate-limited, revoked and canary — and prints what happened and the events recorded.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use bytes::Bytes;
use http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full, Limited};
use secrecy::SecretString;
use serde_json::{Value, json};
use stormwall_gateway::config::{GatewayConfig, IpDbConfig, UpstreamConfig};
use stormwall_gateway::upstream::HttpClient;
use stormwall_store::{EventQuery, EventsConfig, StoreConfig};

/// `demo` options.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Keep the SQLite database here instead of a temporary directory.
    #[arg(long)]
    pub db: Option<PathBuf>,
}

struct Demo {
    http: HttpClient,
    proxy: String,
    admin: String,
    token: String,
}

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Bytes,
}

impl Demo {
    async fn send(
        &self,
        method: Method,
        url: String,
        headers: &[(&str, &str)],
        body: Option<Value>,
    ) -> anyhow::Result<Reply> {
        let mut req = Request::builder().method(method).uri(url);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        let req = req
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes))?;
        let resp = self.http.request(req).await?;
        let (parts, body) = resp.into_parts();
        #[allow(clippy::disallowed_methods)] // bounded by Limited
        let body = Limited::new(body, 16 << 20)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading response: {e}"))?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    async fn admin(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let auth = format!("Bearer {}", self.token);
        let r = self
            .send(
                method,
                format!("{}{path}", self.admin),
                &[("authorization", &auth)],
                body,
            )
            .await?;
        anyhow::ensure!(r.status.is_success(), "admin API answered {}", r.status);
        Ok(serde_json::from_slice(&r.body)?)
    }

    async fn chat(&self, key: &str, model: &str, stream: bool) -> anyhow::Result<Reply> {
        let auth = format!("Bearer {key}");
        let body = json!({
            "model": model,
            "stream": stream,
            "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null },
            "messages": [
                {"role": "system", "content": "You are a helpful assistant for a travel company."},
                {"role": "user", "content": "Suggest a quiet lakeside town for a weekend trip."}
            ]
        });
        self.send(
            Method::POST,
            format!("{}/v1/chat/completions", self.proxy),
            &[
                ("authorization", &auth),
                ("user-agent", "stormwall-demo/1.0"),
            ],
            Some(body),
        )
        .await
    }
}

fn error_code(r: &Reply) -> String {
    serde_json::from_slice::<Value>(&r.body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/code")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

/// Runs the demo.
pub async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let dir = tempdir()?;
    let db = args.db.clone().unwrap_or_else(|| dir.join("demo.db"));
    let token = format!("demo-{}", uuid_like());
    let store = stormwall_store::open(&StoreConfig::Sqlite { path: db.clone() }).await?;
    let ipdb = PathBuf::from("tests/data/ip2asn-test.tsv");
    let config = GatewayConfig {
        server: stormwall_gateway::config::ServerConfig {
            listen: "127.0.0.1:0".parse()?,
            admin_listen: "127.0.0.1:0".parse()?,
            shutdown_grace_secs: 5,
            ..Default::default()
        },
        ipdb: IpDbConfig {
            path: ipdb.exists().then_some(ipdb),
            extra_paths: vec![],
        },
        upstreams: vec![UpstreamConfig::Mock {
            name: "mock".into(),
            models: [
                "gpt-4o-mini",
                "gpt-4o",
                "text-embedding-3-small",
                "dall-e-3",
            ]
            .map(String::from)
            .to_vec(),
        }],
        ..Default::default()
    };
    let running = stormwall_gateway::start(
        config,
        Arc::clone(&store),
        &EventsConfig {
            flush_interval_ms: 20,
            ..Default::default()
        },
        SecretString::from(token.clone()),
        &|_| None,
    )
    .await?;
    let d = Demo {
        http: stormwall_gateway::upstream::http_client(&Default::default()),
        proxy: format!("http://{}", running.proxy_addr),
        admin: format!("http://{}", running.admin_addr),
        token,
    };
    println!(
        "Stormwall demo — gateway on {} (admin {}), SQLite at {}\n",
        d.proxy,
        d.admin,
        db.display()
    );

    let created = d
        .admin(
            Method::POST,
            "/admin/keys",
            Some(json!({"tenant": "acme-travel", "label": "web backend",
                         "scope": {"models": ["gpt-4o-mini", "text-embedding-3-small"], "rpm": 60}})),
        )
        .await?;
    let key = created["key"]
        .as_str()
        .context("no key returned")?
        .to_owned();
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    println!(
        "1. Created key {id} for tenant acme-travel (models gpt-4o-mini, text-embedding-3-small; 60 rpm)."
    );
    println!(
        "   The secret is shown once: {}…{} (stored only as a hash)\n",
        &key[..8],
        &key[key.len() - 4..]
    );

    let r = d.chat(&key, "gpt-4o-mini", false).await?;
    let v: Value = serde_json::from_slice(&r.body).unwrap_or_default();
    println!(
        "2. Chat completion: {} — {:?} (usage: {} tokens; remaining requests this minute: {})",
        r.status,
        v.pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .unwrap_or(""),
        v.pointer("/usage/total_tokens")
            .and_then(Value::as_u64)
            .unwrap_or(0),
        r.headers
            .get("x-ratelimit-remaining-requests")
            .and_then(|h| h.to_str().ok())
            .unwrap_or("-"),
    );
    let r = d.chat(&key, "gpt-4o-mini", true).await?;
    let events = r.body.windows(6).filter(|w| w == b"data: ").count();
    println!(
        "3. Streamed chat completion: {} — {events} server-sent events relayed chunk by chunk",
        r.status
    );

    let auth = key.clone();
    let r = d
        .send(
            Method::POST,
            format!(
                "{}/openai/deployments/text-embedding-3-small/embeddings?api-version=2024-10-21",
                d.proxy
            ),
            &[("api-key", &auth)],
            Some(json!({"input": ["lakeside", "mountain"]})),
        )
        .await?;
    println!(
        "4. Azure-style embeddings call (api-key header, deployment in the path): {}",
        r.status
    );

    let r = d.chat(&key, "gpt-4o", false).await?;
    println!(
        "5. Same key asks for gpt-4o (outside its scope): {} {}",
        r.status,
        error_code(&r)
    );

    let forged = format!("{}x", &key[..key.len() - 1]);
    let r = d.chat(&forged, "gpt-4o-mini", false).await?;
    println!(
        "6. A mistyped key: {} {} (rejected by checksum, no database look-up)",
        r.status,
        error_code(&r)
    );

    let limited = d
        .admin(
            Method::POST,
            "/admin/keys",
            Some(json!({"tenant": "acme-travel", "scope": {"rpm": 2}})),
        )
        .await?;
    let lk = limited["key"].as_str().unwrap_or_default().to_owned();
    let mut statuses = Vec::new();
    let mut retry_after = String::new();
    for _ in 0..3 {
        let r = d.chat(&lk, "gpt-4o-mini", false).await?;
        if r.status == StatusCode::TOO_MANY_REQUESTS {
            retry_after = r
                .headers
                .get("retry-after")
                .and_then(|h| h.to_str().ok())
                .unwrap_or("")
                .to_owned();
        }
        statuses.push(r.status.as_u16().to_string());
    }
    println!(
        "7. A key limited to 2 requests/minute, three requests: {} (Retry-After: {retry_after}s)",
        statuses.join(", ")
    );

    d.admin(
        Method::POST,
        &format!("/admin/keys/{id}/revoke"),
        Some(json!({"reason": "demo: leaked in a public repo"})),
    )
    .await?;
    let r = d.chat(&key, "gpt-4o-mini", false).await?;
    println!(
        "8. Key {id} revoked; the thief retries: {} {} — recorded as a tripwire hit",
        r.status,
        error_code(&r)
    );

    let canary = d
        .admin(
            Method::POST,
            "/admin/keys",
            Some(json!({"tenant": "acme-travel", "kind": "canary", "label": "bait in a CI log"})),
        )
        .await?;
    let ck = canary["key"].as_str().unwrap_or_default().to_owned();
    let r = d.chat(&ck, "gpt-4o-mini", false).await?;
    println!(
        "9. Canary key used: {} {} — same answer as an unknown key, never served\n",
        r.status,
        error_code(&r)
    );

    let state = Arc::clone(&running.state);
    running.shutdown().await;
    drop(state);
    let events = store.query_events(&EventQuery::default()).await?;
    println!("Events recorded ({}), one per request:", events.len());
    println!(
        "  {:<6} {:<19} {:<9} {:<20} {:<14} {:>6} {:>10}",
        "STATUS", "ENDPOINT", "DECISION", "REASON", "KEY", "TOKENS", "COST USD"
    );
    for e in &events {
        println!(
            "  {:<6} {:<19} {:<9} {:<20} {:<14} {:>6} {:>10.6}",
            e.status,
            e.endpoint.map_or("-", |x| x.as_str()),
            format!("{:?}", e.decision).to_lowercase(),
            e.reject_reason.map_or("-", |r| r.as_str()),
            e.key_id.as_ref().map_or("-", |k| k.as_str()),
            e.input_tokens.unwrap_or(0) + e.output_tokens.unwrap_or(0),
            e.cost_usd,
        );
    }
    println!(
        "\nEach event also carries the client's address, network (ASN, country), user agent, header shape"
    );
    println!(
        "and prompt digests (never the text): `stormwall events export` writes them as JSON lines."
    );
    if args.db.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(ExitCode::SUCCESS)
}

fn uuid_like() -> String {
    stormwall_types::ApiKey::generate().id_str().to_owned()
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("stormwall-demo-{}", uuid_like()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}
