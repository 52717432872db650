//! The gateway end to end: the real server on loopback sockets, a real SQLite store, and the
//! testkit's mock upstream that can stream, stall, cut and rate-limit. One test binary.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use secrecy::SecretString;
use serde_json::{Value, json};
use stormwall_gateway::config::{GatewayConfig, IpDbConfig, ServerConfig, UpstreamConfig};
use stormwall_gateway::{RunningGateway, start};
use stormwall_store::{
    ActionQuery, ActionRecord, AlertQuery, AlertStatus, AlertStore, AuditEntry, AuditQuery,
    AuditRecord, AuditStore, EventQuery, EventStore, EventsConfig, IncidentQuery, IncidentStore,
    KeyFilter, KeyStore, SqliteStore, Store, StoreError, StoredAlert, StoredIncident,
};
use stormwall_testkit::{Fault, MockUpstream, TestClient, TestResponse, http_request, http_stream};
use stormwall_types::{Alert, KeyId, KeyRecord, RejectReason, StreamOutcome, UsageEvent};

const ADMIN_TOKEN: &str = "test-admin-token";
const UPSTREAM_KEY: &str = "sk-upstream-secret-for-tests";
const AZURE_KEY: &str = "azure-upstream-secret-for-tests";
const HOOK_SECRET: &str = "webhook-hmac-secret-for-tests";
const READ_ONLY_TOKEN: &str = "test-read-only-token";

/// Counts store calls, to prove the request path never touches the store; can refuse
/// event writes, as an unreachable database would.
struct CountingStore {
    inner: SqliteStore,
    key_reads: AtomicU64,
    /// Event writes fail while set (a store outage, for the journal's bound).
    events_down: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl KeyStore for CountingStore {
    async fn insert_key(&self, r: &KeyRecord) -> Result<(), StoreError> {
        self.inner.insert_key(r).await
    }
    async fn get_key(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        self.key_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.get_key(id).await
    }
    async fn list_keys(&self, f: &KeyFilter) -> Result<Vec<KeyRecord>, StoreError> {
        self.key_reads.fetch_add(1, Ordering::SeqCst);
        self.inner.list_keys(f).await
    }
    async fn update_key(&self, r: &KeyRecord) -> Result<(), StoreError> {
        self.inner.update_key(r).await
    }
}

#[async_trait]
impl EventStore for CountingStore {
    async fn insert_events(&self, e: &[UsageEvent]) -> Result<(), StoreError> {
        if self.events_down.load(Ordering::SeqCst) {
            return Err(StoreError::Database("event writes down (test)".into()));
        }
        self.inner.insert_events(e).await
    }
    async fn query_events(&self, q: &EventQuery) -> Result<Vec<UsageEvent>, StoreError> {
        self.inner.query_events(q).await
    }
    async fn spend_since(&self, k: &KeyId, s: time::OffsetDateTime) -> Result<f64, StoreError> {
        self.inner.spend_since(k, s).await
    }
    async fn count_events(&self) -> Result<u64, StoreError> {
        self.inner.count_events().await
    }
    async fn delete_events_before(
        &self,
        before: time::OffsetDateTime,
        limit: usize,
    ) -> Result<u64, StoreError> {
        self.inner.delete_events_before(before, limit).await
    }
}

#[async_trait]
impl AlertStore for CountingStore {
    async fn insert_alert(&self, a: &Alert, incident: &str) -> Result<bool, StoreError> {
        self.inner.insert_alert(a, incident).await
    }
    async fn get_alert(&self, id: &str) -> Result<Option<StoredAlert>, StoreError> {
        self.inner.get_alert(id).await
    }
    async fn list_alerts(&self, q: &AlertQuery) -> Result<Vec<StoredAlert>, StoreError> {
        self.inner.list_alerts(q).await
    }
    async fn set_alert_status(
        &self,
        id: &str,
        status: AlertStatus,
        note: Option<&str>,
        at: time::OffsetDateTime,
    ) -> Result<StoredAlert, StoreError> {
        self.inner.set_alert_status(id, status, note, at).await
    }
    async fn record_action(&self, r: &ActionRecord) -> Result<(), StoreError> {
        self.inner.record_action(r).await
    }
    async fn list_actions(&self, q: &ActionQuery) -> Result<Vec<ActionRecord>, StoreError> {
        self.inner.list_actions(q).await
    }
}

#[async_trait]
impl IncidentStore for CountingStore {
    async fn open_incident(
        &self,
        i: &stormwall_types::Incident,
        alert_ids: &[String],
        gap_secs: u32,
    ) -> Result<stormwall_store::Opened, StoreError> {
        self.inner.open_incident(i, alert_ids, gap_secs).await
    }
    async fn upsert_incident(
        &self,
        i: &stormwall_types::Incident,
        alert_ids: &[String],
        reopen: bool,
    ) -> Result<StoredIncident, StoreError> {
        self.inner.upsert_incident(i, alert_ids, reopen).await
    }
    async fn get_incident(&self, id: &str) -> Result<Option<StoredIncident>, StoreError> {
        self.inner.get_incident(id).await
    }
    async fn list_incidents(&self, q: &IncidentQuery) -> Result<Vec<StoredIncident>, StoreError> {
        self.inner.list_incidents(q).await
    }
    async fn set_incident_status(
        &self,
        id: &str,
        status: stormwall_types::IncidentStatus,
        note: Option<&str>,
        at: time::OffsetDateTime,
    ) -> Result<StoredIncident, StoreError> {
        self.inner.set_incident_status(id, status, note, at).await
    }
    async fn close_quiet_incidents(
        &self,
        quiet_since: time::OffsetDateTime,
        at: time::OffsetDateTime,
    ) -> Result<u64, StoreError> {
        self.inner.close_quiet_incidents(quiet_since, at).await
    }
}

#[async_trait]
impl AuditStore for CountingStore {
    async fn append_audit(&self, e: &AuditEntry) -> Result<AuditRecord, StoreError> {
        self.inner.append_audit(e).await
    }
    async fn list_audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        self.inner.list_audit(q).await
    }
}

#[async_trait]
impl stormwall_store::ControlEventStore for CountingStore {
    async fn insert_control_events(
        &self,
        e: &[stormwall_types::ControlEvent],
    ) -> Result<u64, StoreError> {
        self.inner.insert_control_events(e).await
    }
    async fn query_control_events(
        &self,
        q: &stormwall_store::ControlEventQuery,
    ) -> Result<Vec<stormwall_types::ControlEvent>, StoreError> {
        self.inner.query_control_events(q).await
    }
    async fn delete_control_events_before(
        &self,
        before: time::OffsetDateTime,
        limit: usize,
    ) -> Result<u64, StoreError> {
        self.inner.delete_control_events_before(before, limit).await
    }
}

#[async_trait]
impl stormwall_store::LeaseStore for CountingStore {
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<stormwall_store::Lease, StoreError> {
        self.inner.acquire_lease(name, holder, ttl).await
    }
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        self.inner.release_lease(name, holder).await
    }
    async fn save_lease_state(
        &self,
        name: &str,
        holder: &str,
        state: &str,
    ) -> Result<bool, StoreError> {
        self.inner.save_lease_state(name, holder, state).await
    }
    async fn lease_state(&self, name: &str) -> Result<Option<String>, StoreError> {
        self.inner.lease_state(name).await
    }
}

struct Harness {
    gw: Option<RunningGateway>,
    config: GatewayConfig,
    alerts_path: Option<std::path::PathBuf>,
    upstream: MockUpstream,
    store: Arc<CountingStore>,
    proxy: String,
    admin: String,
    _dir: tempfile::TempDir,
}

fn env(name: &str) -> Option<String> {
    match name {
        "UP_KEY" => Some(UPSTREAM_KEY.to_owned()),
        "AZ_KEY" => Some(AZURE_KEY.to_owned()),
        "HOOK_SECRET" => Some(HOOK_SECRET.to_owned()),
        "STORMWALL_READONLY_TOKEN" => Some(READ_ONLY_TOKEN.to_owned()),
        _ => None,
    }
}

async fn harness() -> Harness {
    harness_with(|_| {}).await
}

async fn harness_with(customize: impl FnOnce(&mut GatewayConfig)) -> Harness {
    let upstream = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(CountingStore {
        inner: SqliteStore::open(&dir.path().join("gw.db")).await.unwrap(),
        key_reads: AtomicU64::new(0),
        events_down: std::sync::atomic::AtomicBool::new(false),
    });
    let mut deployments = BTreeMap::new();
    deployments.insert("azure-mini".to_owned(), "mini-deployment".to_owned());
    let mut config = GatewayConfig {
        server: ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            admin_listen: "127.0.0.1:0".parse().unwrap(),
            shutdown_grace_secs: 10,
            ..Default::default()
        },
        ipdb: test_ipdb(),
        upstreams: vec![
            UpstreamConfig::Openai {
                name: "openai-mock".into(),
                base_url: format!("{}/v1", upstream.url()),
                api_key_env: "UP_KEY".into(),
                models: [
                    "gpt-4o-mini",
                    "gpt-4o",
                    "text-embedding-3-small",
                    "dall-e-3",
                ]
                .map(String::from)
                .to_vec(),
                organization: None,
            },
            UpstreamConfig::Azure {
                name: "azure-mock".into(),
                endpoint: upstream.url(),
                api_version: "2024-10-21".into(),
                api_key_env: "AZ_KEY".into(),
                deployments,
            },
            UpstreamConfig::Mock {
                name: "builtin".into(),
                models: vec!["builtin-model".into()],
            },
        ],
        ..Default::default()
    };
    config.limits.upstream_idle_timeout_ms = 400;
    // Every harness test runs with the event journal on, as the binary does by default.
    config.journal.dir = Some(dir.path().join("journal"));
    customize(&mut config);
    let alerts_path = config.alerts.jsonl_path.clone();
    let events = EventsConfig {
        flush_interval_ms: 10,
        ..Default::default()
    };
    let gw = start(
        config.clone(),
        Arc::clone(&store) as Arc<dyn Store>,
        &events,
        SecretString::from(ADMIN_TOKEN),
        &env,
    )
    .await
    .unwrap();
    Harness {
        config,
        alerts_path,
        proxy: format!("http://{}", gw.proxy_addr),
        admin: format!("http://{}", gw.admin_addr),
        gw: Some(gw),
        upstream,
        store,
        _dir: dir,
    }
}

fn chat_body(model: &str, stream: bool) -> String {
    json!({
        "model": model,
        "stream": stream,
        "messages": [
            {"role": "system", "content": "You are a concise assistant for a bakery."},
            {"role": "user", "content": "What bread goes well with soup?"}
        ]
    })
    .to_string()
}

/// The synthetic IP database the tests' loopback source addresses are looked up in.
fn test_ipdb() -> IpDbConfig {
    IpDbConfig {
        path: Some(
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/data/ip2asn-test.tsv"
            )
            .into(),
        ),
        ..IpDbConfig::default()
    }
}

impl Harness {
    async fn admin_call(&self, method: &str, path: &str, body: Value) -> TestResponse {
        let auth = format!("Bearer {ADMIN_TOKEN}");
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        http_request(
            method,
            &format!("{}{path}", self.admin),
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body,
            None,
        )
        .await
        .unwrap()
    }

    /// An admin GET's JSON body.
    async fn admin_get(&self, path: &str) -> Value {
        self.admin_call("GET", path, Value::Null)
            .await
            .json()
            .unwrap()
    }

    /// Creates a key; returns (secret, id).
    async fn key(&self, body: Value) -> (String, String) {
        let r = self.admin_call("POST", "/admin/keys", body).await;
        assert_eq!(r.status, 201, "{}", r.text());
        let v = r.json().unwrap();
        (
            v["key"].as_str().unwrap().to_owned(),
            v["id"].as_str().unwrap().to_owned(),
        )
    }

    async fn post(&self, path: &str, key: &str, body: &str, from: Option<IpAddr>) -> TestResponse {
        let auth = format!("Bearer {key}");
        http_request(
            "POST",
            &format!("{}{path}", self.proxy),
            &[
                ("authorization", &auth),
                ("content-type", "application/json"),
            ],
            body.to_owned(),
            from,
        )
        .await
        .unwrap()
    }

    /// Starts a streamed chat completion and returns as soon as the headers arrive.
    async fn stream_chat(&self, key: &str) -> stormwall_testkit::StreamingResponse {
        let auth = format!("Bearer {key}");
        http_stream(
            "POST",
            &format!("{}/v1/chat/completions", self.proxy),
            &[("authorization", &auth)],
            chat_body("gpt-4o-mini", true),
            None,
        )
        .await
        .unwrap()
    }

    async fn chat(&self, key: &str, model: &str) -> TestResponse {
        self.post("/v1/chat/completions", key, &chat_body(model, false), None)
            .await
    }

    /// Waits until the store holds `n` events and returns them.
    async fn events(&self, n: usize) -> Vec<UsageEvent> {
        for _ in 0..500 {
            let events = self
                .store
                .query_events(&EventQuery::default())
                .await
                .unwrap();
            if events.len() >= n {
                return events;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let got = self
            .store
            .query_events(&EventQuery::default())
            .await
            .unwrap();
        panic!("expected {n} events, store has {}: {got:#?}", got.len());
    }

    async fn shutdown(&mut self) {
        if let Some(gw) = self.gw.take() {
            gw.shutdown().await;
        }
    }
}

fn code(r: &TestResponse) -> String {
    r.json()
        .ok()
        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_openai_endpoint_is_proxied_with_the_gateway_credential() {
    let h = harness().await;
    let (key, id) = h.key(json!({"tenant": "bakery"})).await;
    let cases = [
        (
            "/v1/chat/completions",
            chat_body("gpt-4o-mini", false),
            "chat.completion",
        ),
        (
            "/v1/completions",
            json!({"model": "gpt-4o-mini", "prompt": "Say hi"}).to_string(),
            "text_completion",
        ),
        (
            "/v1/embeddings",
            json!({"model": "text-embedding-3-small", "input": ["a", "b"]}).to_string(),
            "list",
        ),
        (
            "/v1/images/generations",
            json!({"model": "dall-e-3", "prompt": "a lighthouse at dawn"}).to_string(),
            "",
        ),
        (
            "/v1/responses",
            json!({"model": "gpt-4o-mini", "input": "Hello"}).to_string(),
            "response",
        ),
    ];
    for (path, body, object) in &cases {
        let r = h.post(path, &key, body, None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert!(r.header("x-request-id").is_some());
        let v = r.json().unwrap();
        if !object.is_empty() {
            assert_eq!(v["object"], *object, "{path}");
        }
        let seen = h.upstream.last_request().unwrap();
        assert_eq!(
            seen.header("authorization"),
            Some(format!("Bearer {UPSTREAM_KEY}").as_str())
        );
        assert!(!String::from_utf8_lossy(&seen.body).contains(&key));
    }
    let auth = format!("Bearer {key}");
    let models = http_request(
        "GET",
        &format!("{}/v1/models", h.proxy),
        &[("authorization", &auth)],
        "",
        None,
    )
    .await
    .unwrap();
    assert_eq!(models.status, 200);
    let ids: Vec<String> = models.json().unwrap()["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(ids.contains(&"gpt-4o-mini".to_owned()) && ids.contains(&"builtin-model".to_owned()));

    let events = h.events(6).await;
    assert_eq!(events.len(), 6);
    assert!(
        events
            .iter()
            .all(|e| e.key_id.as_ref().map(KeyId::as_str) == Some(id.as_str()))
    );
    assert!(events.iter().all(|e| e.tenant.as_deref() == Some("bakery")));
    let chat = &events[0];
    assert_eq!(chat.model.as_deref(), Some("gpt-4o-mini"));
    assert!(chat.input_tokens.unwrap() > 0 && chat.output_tokens.unwrap() > 0);
    assert!(chat.cost_usd > 0.0);
    assert!(chat.system_prompt_hash.is_some() && chat.prompt_simhash.is_some());
    assert_eq!(chat.source_asn, Some(64500));
    assert_eq!(chat.upstream.as_deref(), Some("openai-mock"));
    let image = &events[3];
    assert_eq!(image.images, Some(1));
    assert!((image.cost_usd - 0.04).abs() < 1e-9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_dialect_reaches_openai_and_azure_upstreams() {
    let h = harness().await;
    let (key, _) = h.key(json!({"tenant": "t"})).await;
    let body = json!({"messages": [{"role": "user", "content": "hi"}]}).to_string();
    // Azure client → OpenAI-compatible upstream: the deployment becomes the body's model.
    let r = http_request(
        "POST",
        &format!(
            "{}/openai/deployments/gpt-4o-mini/chat/completions?api-version=2024-10-21",
            h.proxy
        ),
        &[("api-key", &key), ("content-type", "application/json")],
        body.clone(),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = h.upstream.last_request().unwrap();
    assert_eq!(seen.path, "/v1/chat/completions");
    assert_eq!(seen.json().unwrap()["model"], "gpt-4o-mini");

    // OpenAI client → Azure upstream: deployment map, api-version and api-key upstream.
    let r = h
        .post(
            "/v1/chat/completions",
            &key,
            &chat_body("azure-mini", false),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = h.upstream.last_request().unwrap();
    assert_eq!(
        seen.path,
        "/openai/deployments/mini-deployment/chat/completions?api-version=2024-10-21"
    );
    assert_eq!(seen.header("api-key"), Some(AZURE_KEY));
    assert!(seen.header("authorization").is_none());

    let events = h.events(2).await;
    assert_eq!(events[0].api_version.as_deref(), Some("2024-10-21"));
    assert_eq!(events[1].system.as_deref(), Some("az.ai.openai"));
}

/// An Azure-dialect call with the `api-key` header.
async fn azure_call(h: &Harness, key: &str, method: &str, path_and_query: &str) -> TestResponse {
    let body = json!({"model": "gpt-4o-mini", "input": "hi",
                      "messages": [{"role": "user", "content": "hi"}]});
    http_request(
        method,
        &format!("{}{path_and_query}", h.proxy),
        &[("api-key", key), ("content-type", "application/json")],
        if method == "GET" {
            String::new()
        } else {
            body.to_string()
        },
        None,
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_dated_routes_refuse_a_missing_or_malformed_api_version() {
    let h = harness().await;
    let (key, _) = h.key(json!({"tenant": "t"})).await;
    let chat = "/openai/deployments/gpt-4o-mini/chat/completions";
    let refused = [
        ("POST", chat.to_owned()),
        ("POST", format!("{chat}?api-version=")),
        ("POST", format!("{chat}?api-version=latest-and-greatest")),
        ("POST", format!("{chat}?api-version=2024-13-45")),
        ("GET", "/openai/models".to_owned()),
        ("GET", "/openai/deployments".to_owned()),
        ("POST", "/openai/responses".to_owned()),
        (
            "POST",
            "/openai/responses?api-version=%3Cscript%3E".to_owned(),
        ),
    ];
    for (method, path) in &refused {
        let r = azure_call(&h, &key, method, path).await;
        assert_eq!(r.status, 400, "{method} {path}: {}", r.text());
        let v = r.json().unwrap();
        assert_eq!(v["error"]["code"], "BadRequest", "Azure's code");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains("api-version"), "{message}");
        assert!(!message.contains("script"), "the value is not echoed");
    }
    assert_eq!(h.upstream.request_count(), 0);
    // A dated version passes, and the /openai/v1 surface takes none.
    for (method, path) in [
        ("POST", format!("{chat}?api-version=2025-04-01-preview")),
        ("GET", "/openai/models?api-version=2024-10-21".to_owned()),
        ("POST", "/openai/v1/responses".to_owned()),
    ] {
        let r = azure_call(&h, &key, method, &path).await;
        assert_eq!(r.status, 200, "{method} {path}: {}", r.text());
    }
    let events = h.events(refused.len() + 3).await;
    for e in &events[..refused.len()] {
        assert_eq!(e.status, 400);
        assert_eq!(e.reject_reason, Some(RejectReason::BadRequest));
        assert_eq!(e.error_code.as_deref(), Some("BadRequest"));
        assert_eq!(e.api_version, None);
    }
    assert_eq!(
        events[refused.len()].api_version.as_deref(),
        Some("2025-04-01-preview")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_default_api_version_fills_in_a_missing_one() {
    let h = harness_with(|c| {
        c.server.azure_default_api_version = Some("2024-10-21".into());
    })
    .await;
    let (key, _) = h.key(json!({"tenant": "t"})).await;
    let chat = "/openai/deployments/gpt-4o-mini/chat/completions";
    let r = azure_call(&h, &key, "POST", chat).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Only a missing one: a malformed version is still the client's error.
    let r = azure_call(&h, &key, "POST", &format!("{chat}?api-version=v2")).await;
    assert_eq!(r.status, 400);
    let events = h.events(2).await;
    assert_eq!(events[0].api_version.as_deref(), Some("2024-10-21"));

    let mut config = h.config.clone();
    for bad in ["", "2024-10", "yesterday", "2024-10-21 "] {
        config.server.azure_default_api_version = Some(bad.into());
        let err = stormwall_gateway::check_config(&config, &env).unwrap_err();
        assert!(
            err.to_string().contains("azure_default_api_version"),
            "{bad:?}: {err}"
        );
    }
    config.server.azure_default_api_version = Some("2025-04-01-preview".into());
    stormwall_gateway::check_config(&config, &env).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_are_relayed_with_usage_from_the_final_chunk() {
    let h = harness().await;
    let (key, _) = h.key(json!({"tenant": "t"})).await;
    let body =
        json!({"model": "gpt-4o-mini", "stream": true, "stream_options": {"include_usage": true},
                      "messages": [{"role": "user", "content": "Tell me about rye."}]})
        .to_string();
    let r = h.post("/v1/chat/completions", &key, &body, None).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = stormwall_testkit::parse_sse(&r.body);
    assert!(events.last().unwrap().is_done());
    let usage = events
        .iter()
        .rev()
        .find_map(|e| e.json().ok().filter(|v| v["usage"].is_object()))
        .unwrap();
    let recorded = &h.events(1).await[0];
    assert_eq!(
        recorded.input_tokens,
        usage["usage"]["prompt_tokens"].as_u64()
    );
    assert_eq!(
        recorded.output_tokens,
        usage["usage"]["completion_tokens"].as_u64()
    );
    assert_eq!(recorded.stream_outcome, Some(StreamOutcome::Completed));
    assert!(recorded.stream);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_upstream_connection_serves_whole_and_streamed_answers_in_turn() {
    let h = harness().await;
    let (key, _) = h.key(json!({"tenant": "t"})).await;
    for stream in [false, true, false, true, true] {
        let r = h
            .post(
                "/v1/chat/completions",
                &key,
                &chat_body("gpt-4o-mini", stream),
                None,
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        if stream {
            let events = stormwall_testkit::parse_sse(&r.body);
            assert!(events.last().unwrap().is_done());
        }
    }
    // The request's task drives its upstream connection; once an answer has been read to
    // its end the connection goes back to the pool for the next request.
    assert_eq!(h.upstream.connections_accepted(), 1);
    // A stream the client leaves mid-way closes its connection (cancelling the upstream);
    // the next request makes a new one.
    h.upstream.push_fault(Fault::Stall { after_events: 1 });
    let mut s = h.stream_chat(&key).await;
    assert!(s.next_chunk().await.is_some());
    drop(s);
    let r = h
        .post(
            "/v1/chat/completions",
            &key,
            &chat_body("gpt-4o-mini", false),
            None,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(h.upstream.connections_accepted(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_stream_is_relayed_then_ended_by_the_idle_timeout() {
    let h = harness().await;
    let (key, _) = h.key(json!({"tenant": "t"})).await;
    h.upstream.push_fault(Fault::Stall { after_events: 2 });
    let mut s = h.stream_chat(&key).await;
    // The first events arrive while the upstream is still "generating": no whole-body buffering.
    let first = s.next_event().await.unwrap().unwrap();
    assert!(first.json().is_ok());
    let mut rest = Vec::new();
    while let Some(ev) = tokio::time::timeout(Duration::from_secs(5), s.next_event())
        .await
        .unwrap()
    {
        rest.push(ev.unwrap());
    }
    let last = rest.last().unwrap().json().unwrap();
    assert_eq!(last["error"]["code"], "upstream_timeout");
    let e = &h.events(1).await[0];
    assert_eq!(e.stream_outcome, Some(StreamOutcome::IdleTimeout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_upstream_stream_ends_with_an_error_event() {
    let h = harness().await;
    let (key, _) = h.key(json!({"tenant": "t"})).await;
    h.upstream.push_fault(Fault::Cut { after_events: 2 });
    let r = h
        .post(
            "/v1/chat/completions",
            &key,
            &chat_body("gpt-4o-mini", true),
            None,
        )
        .await;
    let events = stormwall_testkit::parse_sse(&r.body);
    assert_eq!(events.len(), 3, "{events:?}");
    assert_eq!(
        events[2].json().unwrap()["error"]["code"],
        "upstream_stream_interrupted"
    );
    let e = &h.events(1).await[0];
    assert_eq!(e.stream_outcome, Some(StreamOutcome::UpstreamCut));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_cancels_the_upstream_request() {
    let h = harness().await;
    let (key, _) = h.key(json!({"tenant": "t"})).await;
    h.upstream
        .push_fault(Fault::ChunkDelay(Duration::from_millis(150)));
    let mut s = h.stream_chat(&key).await;
    s.next_event().await.unwrap().unwrap();
    drop(s);
    assert!(
        h.upstream
            .wait_for_cancelled_streams(1, Duration::from_secs(5))
            .await
    );
    let e = &h.events(1).await[0];
    assert_eq!(e.stream_outcome, Some(StreamOutcome::ClientDisconnected));
    assert_eq!(e.status, 499);
}

/// Reads a stream to its end (bounded: a stream still open after `secs` fails the test);
/// returns its events.
async fn drain_within(
    s: &mut stormwall_testkit::StreamingResponse,
    secs: u64,
) -> Vec<stormwall_testkit::SseEvent> {
    let read = async {
        let mut events = Vec::new();
        while let Some(ev) = s.next_event().await {
            events.push(ev.unwrap());
        }
        events
    };
    tokio::time::timeout(Duration::from_secs(secs), read)
        .await
        .expect("the stream did not end")
}

/// Asserts a stream was cut for its key: the last event is the 401 error a request with the
/// key now gets, and no `[DONE]` claims the answer complete.
fn assert_cut_for_the_key(events: &[stormwall_testkit::SseEvent]) {
    assert!(events.iter().all(|e| !e.is_done()), "{events:?}");
    let last = events.last().unwrap().json().unwrap();
    assert_eq!(last["error"]["code"], "invalid_api_key", "{last}");
    assert_eq!(last["error"]["type"], "invalid_request_error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_a_key_ends_its_open_streams() {
    // The idle timeout is far off: only the revocation can end these streams in time.
    let h = harness_with(|c| c.limits.upstream_idle_timeout_ms = 120_000).await;
    let (key, id) = h.key(json!({"tenant": "t"})).await;
    // Slow streams, and one upstream that goes silent after its first event.
    h.upstream
        .set_default_fault(Some(Fault::ChunkDelay(Duration::from_secs(2))));
    h.upstream.push_fault(Fault::Stall { after_events: 1 });
    let mut streams = Vec::new();
    for _ in 0..4 {
        let mut s = h.stream_chat(&key).await;
        assert_eq!(s.status, 200);
        assert!(s.next_event().await.unwrap().unwrap().json().is_ok());
        streams.push(s);
    }
    let r = h
        .admin_call(
            "POST",
            &format!("/admin/keys/{id}/revoke"),
            json!({"reason": "leaked"}),
        )
        .await;
    assert_eq!(r.status, 200);
    for s in &mut streams {
        assert_cut_for_the_key(&drain_within(s, 5).await);
    }
    assert!(
        h.upstream
            .wait_for_cancelled_streams(4, Duration::from_secs(5))
            .await,
        "every upstream request was cancelled"
    );
    let events = h.events(4).await;
    for e in &events {
        assert_eq!(e.stream_outcome, Some(StreamOutcome::KeyRevoked), "{e:?}");
        assert_eq!(e.error_code.as_deref(), Some("invalid_api_key"));
        assert_eq!(e.key_id.as_ref().unwrap().as_str(), id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspending_a_key_here_or_on_another_replica_ends_its_open_streams() {
    let h = harness_with(|c| {
        c.limits.upstream_idle_timeout_ms = 120_000;
        c.server.key_refresh_secs = 1;
    })
    .await;
    let (here, here_id) = h.key(json!({"tenant": "t"})).await;
    let (there, there_id) = h.key(json!({"tenant": "t"})).await;
    h.upstream
        .set_default_fault(Some(Fault::Stall { after_events: 1 }));
    let mut open = Vec::new();
    for k in [&here, &here, &there] {
        let mut s = h.stream_chat(k).await;
        assert!(s.next_event().await.unwrap().unwrap().json().is_ok());
        open.push(s);
    }
    let r = h
        .admin_call(
            "POST",
            &format!("/admin/keys/{here_id}/suspend"),
            Value::Null,
        )
        .await;
    assert_eq!(r.status, 200);
    for s in &mut open[..2] {
        assert_cut_for_the_key(&drain_within(s, 5).await);
    }
    // Another replica suspends the other key: this one learns it from the store, through
    // the periodic refresh (the key-change announcement lands in the same cache update).
    let mut record = h
        .store
        .inner
        .get_key(&KeyId::new(&there_id).unwrap())
        .await
        .unwrap()
        .unwrap();
    record.status = stormwall_types::KeyStatus::Suspended;
    h.store.inner.update_key(&record).await.unwrap();
    assert_cut_for_the_key(&drain_within(&mut open[2], 10).await);
    assert!(
        h.upstream
            .wait_for_cancelled_streams(3, Duration::from_secs(5))
            .await
    );
    let events = h.events(3).await;
    assert!(
        events
            .iter()
            .all(|e| e.stream_outcome == Some(StreamOutcome::KeySuspended)),
        "{events:#?}"
    );
    // Resumed, the key streams to the end again.
    let r = h
        .admin_call(
            "POST",
            &format!("/admin/keys/{here_id}/resume"),
            Value::Null,
        )
        .await;
    assert_eq!(r.status, 200);
    h.upstream.set_default_fault(None);
    let mut s = h.stream_chat(&here).await;
    assert!(drain_within(&mut s, 10).await.last().unwrap().is_done());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_errors_pass_through_and_credential_failures_do_not() {
    let h = harness().await;
    let (key, _) = h.key(json!({"tenant": "t"})).await;
    h.upstream.push_fault(Fault::rate_limited());
    let r = h.chat(&key, "gpt-4o-mini").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), Some("1"));
    h.upstream.push_fault(Fault::server_error());
    assert_eq!(h.chat(&key, "gpt-4o-mini").await.status, 500);
    // A 401 from upstream means the gateway's own credential failed: never relay its body,
    // which may echo part of the provider key.
    h.upstream.push_fault(Fault::Status(
        401,
        json!({"error": {"message": "Incorrect API key provided: sk-upst****ests"}}).to_string(),
    ));
    let r = h.chat(&key, "gpt-4o-mini").await;
    assert_eq!(r.status, 502);
    assert!(!r.text().contains("sk-upst"));
    let events = h.events(3).await;
    assert_eq!(events[0].upstream_status, Some(429));
    assert_eq!(
        events[2].error_code.as_deref(),
        Some("upstream_auth_failed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_or_slow_upstream_is_a_clean_error() {
    let h = harness_with(|c| {
        c.limits.upstream_first_byte_timeout_ms = 300;
        c.upstreams.push(UpstreamConfig::Openai {
            name: "dead".into(),
            base_url: "http://127.0.0.1:9/v1".into(),
            api_key_env: "UP_KEY".into(),
            models: vec!["dead-model".into()],
            organization: None,
        });
    })
    .await;
    let (key, _) = h.key(json!({"tenant": "t"})).await;
    let r = h.chat(&key, "dead-model").await;
    assert_eq!(r.status, 502);
    assert_eq!(code(&r), "upstream_unavailable");
    h.upstream
        .push_fault(Fault::SlowFirstByte(Duration::from_secs(3)));
    let r = h.chat(&key, "gpt-4o-mini").await;
    assert_eq!(r.status, 504);
    assert_eq!(code(&r), "upstream_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scope_limits_models_endpoints_and_the_model_list() {
    let h = harness().await;
    let (key, _) = h
        .key(json!({"tenant": "t", "scope": {"models": ["gpt-4o-mini"], "endpoints": ["chat_completions", "models"]}}))
        .await;
    assert_eq!(h.chat(&key, "gpt-4o-mini").await.status, 200);
    let r = h.chat(&key, "gpt-4o").await;
    assert_eq!(
        (r.status.as_u16(), code(&r).as_str()),
        (403, "model_not_allowed")
    );
    let r = h
        .post(
            "/v1/embeddings",
            &key,
            r#"{"model":"gpt-4o-mini","input":"x"}"#,
            None,
        )
        .await;
    assert_eq!(
        (r.status.as_u16(), code(&r).as_str()),
        (403, "endpoint_not_allowed")
    );
    let r = h.chat(&key, "no-such-model").await;
    assert_eq!(
        r.status, 403,
        "scope is checked before routing, so nothing leaks about routes"
    );
    let auth = format!("Bearer {key}");
    let models = http_request(
        "GET",
        &format!("{}/v1/models", h.proxy),
        &[("authorization", &auth)],
        "",
        None,
    )
    .await
    .unwrap();
    let data = models.json().unwrap()["data"].as_array().unwrap().clone();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["id"], "gpt-4o-mini");
    let (open, _) = h.key(json!({"tenant": "t"})).await;
    let r = h.chat(&open, "no-such-model").await;
    assert_eq!(
        (r.status.as_u16(), code(&r).as_str()),
        (404, "model_not_found")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_is_retrieved_only_within_the_keys_scope() {
    let h = harness().await;
    let (key, _) = h
        .key(json!({"tenant": "t", "scope": {"models": ["gpt-4o-mini", "builtin-model"]}}))
        .await;
    let get = |path: String, key: String| {
        let url = format!("{}{path}", h.proxy);
        async move {
            let auth = format!("Bearer {key}");
            http_request("GET", &url, &[("authorization", &auth)], "", None)
                .await
                .unwrap()
        }
    };
    let r = get("/v1/models/gpt-4o-mini".into(), key.clone()).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json().unwrap();
    assert_eq!(v["id"], "gpt-4o-mini");
    assert_eq!(v["object"], "model");
    assert!(v["created"].is_i64() && v["owned_by"].is_string());
    assert!(r.header("x-request-id").is_some());
    assert_eq!(
        get("/v1/models/builtin-model".into(), key.clone())
            .await
            .status,
        200
    );
    // Routed but out of scope, and not routed at all: one answer, as OpenAI gives.
    let out_of_scope = get("/v1/models/gpt-4o".into(), key.clone()).await;
    let unknown = get("/v1/models/no-such-model".into(), key.clone()).await;
    for r in [&out_of_scope, &unknown] {
        assert_eq!(
            (r.status.as_u16(), code(r).as_str()),
            (404, "model_not_found")
        );
        assert_eq!(r.json().unwrap()["error"]["type"], "invalid_request_error");
    }
    assert_eq!(out_of_scope.body, unknown.body);
    let (listing_only, _) = h
        .key(json!({"tenant": "t", "scope": {"endpoints": ["chat_completions"]}}))
        .await;
    let r = get("/v1/models/gpt-4o-mini".into(), listing_only).await;
    assert_eq!(
        (r.status.as_u16(), code(&r).as_str()),
        (403, "endpoint_not_allowed")
    );
    // Azure's "Models - Get" gets the same answer, and wants its dated api-version.
    let azure = get(
        "/openai/models/gpt-4o-mini?api-version=2024-10-21".into(),
        key.clone(),
    )
    .await;
    assert_eq!(azure.status, 200, "{}", azure.text());
    assert_eq!(azure.json().unwrap()["id"], "gpt-4o-mini");
    let undated = get("/openai/models/gpt-4o-mini".into(), key.clone()).await;
    assert_eq!(undated.status, 400, "{}", undated.text());
    assert_eq!(h.upstream.request_count(), 0, "answered locally");
    let events = h.events(5).await;
    assert_eq!(events[0].model.as_deref(), Some("gpt-4o-mini"));
    assert_eq!(events[0].status, 200);
    assert_eq!(events[2].reject_reason, Some(RejectReason::NoRoute));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cidr_binding_admits_only_the_bound_network() {
    let h = harness().await;
    let (key, _) = h
        .key(json!({"tenant": "t", "scope": {"cidrs": ["127.0.1.0/24"]}}))
        .await;
    let inside: IpAddr = "127.0.1.5".parse().unwrap();
    let outside: IpAddr = "127.0.2.5".parse().unwrap();
    let body = chat_body("gpt-4o-mini", false);
    assert_eq!(
        h.post("/v1/chat/completions", &key, &body, Some(inside))
            .await
            .status,
        200
    );
    let r = h
        .post("/v1/chat/completions", &key, &body, Some(outside))
        .await;
    assert_eq!(
        (r.status.as_u16(), code(&r).as_str()),
        (403, "ip_not_allowed")
    );
    let events = h.events(2).await;
    assert_eq!(events[0].source_ip, inside);
    assert_eq!(
        (events[0].source_asn, events[0].source_country.as_deref()),
        (Some(64501), Some("DE"))
    );
    assert_eq!(events[1].source_ip, outside);
    assert_eq!(events[1].source_asn, Some(64502));
    assert_eq!(
        events[1].reject_reason,
        Some(RejectReason::NetworkNotAllowed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_headers_count_only_from_trusted_proxies() {
    let h =
        harness_with(|c| c.server.trusted_proxies = vec!["127.0.0.9/32".parse().unwrap()]).await;
    let (key, _) = h.key(json!({"tenant": "t"})).await;
    let auth = format!("Bearer {key}");
    let send = |from: &str| {
        let from: IpAddr = from.parse().unwrap();
        let url = format!("{}/v1/chat/completions", h.proxy);
        let auth = auth.clone();
        async move {
            http_request(
                "POST",
                &url,
                &[("authorization", &auth), ("x-forwarded-for", "127.0.4.4")],
                chat_body("gpt-4o-mini", false),
                Some(from),
            )
            .await
            .unwrap()
        }
    };
    send("127.0.0.9").await;
    send("127.0.0.8").await;
    let events = h.events(2).await;
    assert_eq!(events[0].source_ip.to_string(), "127.0.4.4");
    assert_eq!(events[0].source_country.as_deref(), Some("BR"));
    assert_eq!(events[1].source_ip.to_string(), "127.0.0.8");
    assert!(events[1].forwarded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_token_rate_limits_answer_429_with_openai_headers() {
    let h = harness().await;
    let (key, _) = h.key(json!({"tenant": "t", "scope": {"rpm": 3}})).await;
    for i in 0..3 {
        let r = h.chat(&key, "gpt-4o-mini").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some("3"));
        assert_eq!(
            r.header("x-ratelimit-remaining-requests"),
            Some((2 - i).to_string().as_str())
        );
    }
    let r = h.chat(&key, "gpt-4o-mini").await;
    assert_eq!(r.status, 429);
    assert_eq!(code(&r), "rate_limit_exceeded");
    assert_eq!(r.json().unwrap()["error"]["type"], "requests");
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=120).contains(&retry));
    assert_eq!(r.header("x-ratelimit-remaining-requests"), Some("0"));

    let (tkey, _) = h.key(json!({"tenant": "t", "scope": {"tpm": 60}})).await;
    assert_eq!(h.chat(&tkey, "gpt-4o-mini").await.status, 200);
    // The first call's real usage (from upstream) was reconciled in: the window is now full.
    let r = h.chat(&tkey, "gpt-4o-mini").await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json().unwrap()["error"]["type"], "tokens");
    assert_eq!(h.upstream.request_count(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limit_refuses_the_request_over_the_limit() {
    let h = harness().await;
    let (key, _) = h
        .key(json!({"tenant": "t", "scope": {"max_concurrency": 1}}))
        .await;
    h.upstream
        .push_fault(Fault::SlowFirstByte(Duration::from_millis(600)));
    let slow = {
        let proxy = h.proxy.clone();
        let key = key.clone();
        async move {
            http_request(
                "POST",
                &format!("{proxy}/v1/chat/completions"),
                &[("authorization", &format!("Bearer {key}"))],
                chat_body("gpt-4o-mini", false),
                None,
            )
            .await
            .unwrap()
        }
    };
    let fast = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        h.chat(&key, "gpt-4o-mini").await
    };
    let (a, b) = tokio::join!(slow, fast);
    assert_eq!(a.status, 200);
    assert_eq!(
        (b.status.as_u16(), code(&b).as_str()),
        (429, "concurrency_limit_exceeded")
    );
    assert_eq!(
        h.chat(&key, "gpt-4o-mini").await.status,
        200,
        "slot released"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_stops_a_key_that_has_spent_its_allowance() {
    let h = harness().await;
    // One image costs $0.04: a $0.05 daily budget allows one, not two.
    let (key, _) = h
        .key(json!({"tenant": "t", "scope": {"budget_daily_usd": 0.05}}))
        .await;
    let img = json!({"model": "dall-e-3", "prompt": "a quiet harbour"}).to_string();
    assert_eq!(
        h.post("/v1/images/generations", &key, &img, None)
            .await
            .status,
        200
    );
    let r = h.post("/v1/images/generations", &key, &img, None).await;
    assert_eq!(
        (r.status.as_u16(), code(&r).as_str()),
        (429, "insufficient_quota")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_the_old_key_valid_for_the_grace_period() {
    let h = harness().await;
    let (old, old_id) = h.key(json!({"tenant": "t", "label": "svc"})).await;
    let r = h
        .admin_call(
            "POST",
            &format!("/admin/keys/{old_id}/rotate"),
            json!({"grace_seconds": 1}),
        )
        .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let v = r.json().unwrap();
    let new = v["key"].as_str().unwrap().to_owned();
    assert_eq!(v["rotated_from"], old_id.as_str());
    assert_eq!(v["label"], "svc");
    assert_eq!(h.chat(&old, "gpt-4o-mini").await.status, 200);
    assert_eq!(h.chat(&new, "gpt-4o-mini").await.status, 200);
    // An absurd grace period is refused before anything is written (it used to overflow).
    let (_, other) = h.key(json!({"tenant": "t"})).await;
    let r = h
        .admin_call(
            "POST",
            &format!("/admin/keys/{other}/rotate"),
            json!({"grace_seconds": u64::MAX}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let listed = h.admin_get("/admin/keys").await;
    assert_eq!(
        listed.as_array().unwrap().len(),
        3,
        "no half-rotated key left behind"
    );
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(h.chat(&old, "gpt-4o-mini").await.status, 401);
    assert_eq!(h.chat(&new, "gpt-4o-mini").await.status, 200);
    let events = h.events(4).await;
    assert_eq!(events[2].reject_reason, Some(RejectReason::ExpiredKey));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_canary_and_unknown_keys_look_the_same_and_trip_wires() {
    let h = harness().await;
    let (revoked, revoked_id) = h.key(json!({"tenant": "victim"})).await;
    let (canary, canary_id) = h.key(json!({"tenant": "victim", "kind": "canary"})).await;
    let r = h
        .admin_call(
            "POST",
            &format!("/admin/keys/{revoked_id}/revoke"),
            json!({"reason": "leaked"}),
        )
        .await;
    assert_eq!(r.status, 200);
    let unknown = stormwall_types::ApiKey::generate();
    let body = chat_body("gpt-4o-mini", false);
    let from: IpAddr = "127.0.2.7".parse().unwrap();
    let mut bodies = Vec::new();
    for k in [revoked.as_str(), canary.as_str(), unknown.expose()] {
        let r = h.post("/v1/chat/completions", k, &body, Some(from)).await;
        assert_eq!(r.status, 401);
        assert!(!r.text().contains(k));
        bodies.push(r.json().unwrap());
    }
    assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");
    assert_eq!(h.upstream.request_count(), 0, "never served");
    let events = h.events(3).await;
    let revoked_ev = &events[0];
    assert_eq!(revoked_ev.reject_reason, Some(RejectReason::RevokedKey));
    assert_eq!(revoked_ev.key_id.as_ref().unwrap().as_str(), revoked_id);
    assert_eq!(revoked_ev.tenant.as_deref(), Some("victim"));
    assert_eq!(revoked_ev.source_ip, from);
    assert_eq!(revoked_ev.source_asn, Some(64502));
    // Full capture of what the thief asked for (digests, never text).
    assert_eq!(revoked_ev.model.as_deref(), Some("gpt-4o-mini"));
    assert!(revoked_ev.system_prompt_hash.is_some());
    assert_eq!(events[1].reject_reason, Some(RejectReason::CanaryKey));
    assert_eq!(events[1].key_id.as_ref().unwrap().as_str(), canary_id);
    assert_eq!(events[2].reject_reason, Some(RejectReason::UnknownKey));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_unknown_keys_never_reach_the_store() {
    let h = harness().await;
    let (key, id) = h.key(json!({"tenant": "t"})).await;
    let reads_before = h.store.key_reads.load(Ordering::SeqCst);
    let mut bad = key.clone();
    bad.replace_range(10..11, if &key[10..11] == "A" { "B" } else { "A" });
    for k in [
        bad.as_str(),
        "sk-proj-not-ours",
        "",
        "swk_short",
        stormwall_types::ApiKey::generate().expose(),
    ] {
        let r = h.chat(k, "gpt-4o-mini").await;
        assert_eq!(r.status, 401, "{k}");
    }
    let r = http_request(
        "POST",
        &format!("{}/v1/chat/completions", h.proxy),
        &[],
        chat_body("x", false),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        (r.status.as_u16(), code(&r).as_str()),
        (401, "missing_api_key")
    );
    assert_eq!(h.store.key_reads.load(Ordering::SeqCst), reads_before);
    let events = h.events(6).await;
    assert_eq!(events[0].reject_reason, Some(RejectReason::MalformedKey));
    assert!(
        events[0].key_id.is_none(),
        "a malformed key's id is not trusted"
    );
    assert_ne!(
        events[0].key_id.as_ref().map(KeyId::as_str),
        Some(id.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_openai_shaped_errors() {
    let h = harness_with(|c| c.limits.max_request_body_bytes = 4096).await;
    let (key, _) = h.key(json!({"tenant": "t"})).await;
    let r = h
        .post("/v1/chat/completions", &key, "{not json", None)
        .await;
    assert_eq!(
        (r.status.as_u16(), code(&r).as_str()),
        (400, "invalid_request")
    );
    let r = h
        .post("/v1/chat/completions", &key, r#"{"messages":[]}"#, None)
        .await;
    assert_eq!(r.status, 400);
    let big = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x".repeat(10_000)}]}).to_string();
    let r = h.post("/v1/chat/completions", &key, &big, None).await;
    assert_eq!(
        (r.status.as_u16(), code(&r).as_str()),
        (413, "request_too_large")
    );
    let r = h.post("/v1/nope", &key, "{}", None).await;
    assert_eq!((r.status.as_u16(), code(&r).as_str()), (404, "unknown_url"));
    assert_eq!(
        h.events(4).await.len(),
        4,
        "every request becomes one event"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declared_length_over_the_cap_is_refused_before_the_body_arrives() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = harness_with(|c| c.limits.max_request_body_bytes = 4096).await;
    let (key, _) = h.key(json!({"tenant": "t"})).await;
    let mut conn = tokio::net::TcpStream::connect(h.proxy.trim_start_matches("http://"))
        .await
        .unwrap();
    // Headers only: the promised gigabyte never comes.
    let head = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: gateway\r\nauthorization: Bearer {key}\r\n\
         content-type: application/json\r\ncontent-length: 1000000000\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // Upper bound on the wait, far below the 60 s body read timeout.
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = conn.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(read.is_ok(), "no answer while the body was still owed");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    let e = &h.events(1).await[0];
    assert_eq!(e.status, 413);
    assert_eq!(e.reject_reason, Some(RejectReason::BadRequest));
    assert_eq!(e.error_code.as_deref(), Some("request_too_large"));
    assert_eq!(h.upstream.request_count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_range_counts_are_refused_naming_the_field_and_cost_nothing() {
    let h = harness().await;
    let (key, _) = h.key(json!({"tenant": "t"})).await;
    let hi = json!([{"role": "user", "content": "hi"}]);
    let cases = [
        (
            "/v1/images/generations",
            json!({"model": "dall-e-3", "prompt": "a lighthouse", "n": 2}),
            "'n'",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "gpt-4o-mini", "n": 129, "messages": hi}),
            "'n'",
        ),
        (
            "/v1/completions",
            json!({"model": "gpt-4o-mini", "prompt": "hi", "best_of": 21}),
            "'best_of'",
        ),
        (
            "/v1/embeddings",
            json!({"model": "text-embedding-3-small", "input": vec!["x"; 2049]}),
            "'input'",
        ),
        (
            "/v1/images/generations",
            json!({"model": "builtin-model", "prompt": "a lighthouse", "n": 0}),
            "'n'",
        ),
        // The built-in mock would build two million images.
        (
            "/v1/images/generations",
            json!({"model": "builtin-model", "prompt": "a lighthouse", "n": 2_000_000}),
            "'n'",
        ),
    ];
    for (path, body, field) in &cases {
        let r = tokio::time::timeout(
            Duration::from_secs(10),
            h.post(path, &key, &body.to_string(), None),
        )
        .await
        .expect("answered");
        assert_eq!(
            (r.status.as_u16(), code(&r).as_str()),
            (400, "invalid_request"),
            "{path}: {}",
            r.text()
        );
        let v = r.json().unwrap();
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(field),
            "{}",
            r.text()
        );
    }
    assert_eq!(h.upstream.request_count(), 0, "nothing reached an upstream");
    // In range still passes; one token array is one embeddings input, however long.
    let tokens = json!({"model": "text-embedding-3-small", "input": vec![1; 3000]});
    let r = h
        .post("/v1/embeddings", &key, &tokens.to_string(), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ten = json!({"model": "builtin-model", "prompt": "a lighthouse", "n": 10});
    let r = h
        .post("/v1/images/generations", &key, &ten.to_string(), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json().unwrap()["data"].as_array().unwrap().len(), 10);
    let events = h.events(cases.len() + 2).await;
    for e in &events[..cases.len()] {
        assert_eq!(e.status, 400);
        assert_eq!(e.reject_reason, Some(RejectReason::BadRequest));
        assert_eq!(e.cost_usd, 0.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_are_charged_for_what_the_answer_holds() {
    let h = harness_with(|c| {
        if let UpstreamConfig::Openai { models, .. } = &mut c.upstreams[0] {
            models.push("dall-e-2".into());
        }
    })
    .await;
    let (key, _) = h.key(json!({"tenant": "t"})).await;
    let three = json!({"model": "dall-e-2", "prompt": "a quiet harbour", "n": 3}).to_string();
    // The upstream made one of the three images asked for ($0.02 each).
    h.upstream.push_fault(Fault::Response {
        status: 200,
        headers: vec![("content-type".into(), "application/json".into())],
        body: json!({"created": 1, "data": [{"url": "https://images.example/1.png"}]}).to_string(),
    });
    let r = h.post("/v1/images/generations", &key, &three, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // An upstream error serves nothing and costs nothing.
    h.upstream.push_fault(Fault::server_error());
    let r = h.post("/v1/images/generations", &key, &three, None).await;
    assert_eq!(r.status, 500);
    let r = h.post("/v1/images/generations", &key, &three, None).await;
    assert_eq!(r.json().unwrap()["data"].as_array().unwrap().len(), 3);
    let events = h.events(3).await;
    assert!(
        (events[0].cost_usd - 0.02).abs() < 1e-9,
        "charged {}",
        events[0].cost_usd
    );
    assert_eq!(events[0].images, Some(3), "the event keeps what was asked");
    assert_eq!(events[1].cost_usd, 0.0);
    assert!((events[2].cost_usd - 0.06).abs() < 1e-9);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspend_and_resume_take_effect_on_the_next_request() {
    let h = harness().await;
    let (key, id) = h.key(json!({"tenant": "t"})).await;
    assert_eq!(
        h.admin_call("POST", &format!("/admin/keys/{id}/suspend"), Value::Null)
            .await
            .status,
        200
    );
    assert_eq!(h.chat(&key, "gpt-4o-mini").await.status, 401);
    assert_eq!(
        h.admin_call("POST", &format!("/admin/keys/{id}/resume"), Value::Null)
            .await
            .status,
        200
    );
    assert_eq!(h.chat(&key, "gpt-4o-mini").await.status, 200);
    assert_eq!(
        h.admin_call("POST", &format!("/admin/keys/{id}/revoke"), Value::Null)
            .await
            .status,
        200
    );
    let r = h
        .admin_call("POST", &format!("/admin/keys/{id}/resume"), Value::Null)
        .await;
    assert_eq!(r.status, 409, "revocation is final");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_requires_the_token_and_serves_keys_events_metrics() {
    let h = harness().await;
    let r = http_request("GET", &format!("{}/admin/keys", h.admin), &[], "", None)
        .await
        .unwrap();
    assert_eq!(r.status, 401);
    let r = http_request(
        "GET",
        &format!("{}/admin/keys", h.admin),
        &[("authorization", "Bearer wrong")],
        "",
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);
    let (key, id) = h
        .key(json!({"tenant": "acme", "label": "l1", "scope": {"rpm": 10}}))
        .await;
    let r = h
        .admin_call("GET", "/admin/keys?tenant=acme", Value::Null)
        .await;
    let list = r.json().unwrap();
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert!(
        !r.text().contains(&key),
        "secrets are shown only at creation"
    );
    assert!(list[0].get("hash").is_none());
    let r = h
        .admin_call(
            "PATCH",
            &format!("/admin/keys/{id}"),
            json!({"label": "l2"}),
        )
        .await;
    assert_eq!(r.json().unwrap()["label"], "l2");
    let r = h
        .admin_call("POST", "/admin/keys", json!({"tenant": "bad tenant!"}))
        .await;
    assert_eq!(r.status, 400);
    let r = h
        .admin_call(
            "POST",
            "/admin/keys",
            json!({"tenant": "t", "scope": {"modles": []}}),
        )
        .await;
    assert_eq!(r.status, 400, "unknown scope fields are refused");
    assert_eq!(
        h.admin_call("GET", "/admin/keys/000000000000", Value::Null)
            .await
            .status,
        404
    );
    for _ in 0..3 {
        h.chat(&key, "gpt-4o-mini").await;
    }
    h.events(3).await;
    let r = h
        .admin_call(
            "GET",
            &format!("/admin/events?key={id}&limit=2"),
            Value::Null,
        )
        .await;
    let page = r.json().unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 2);
    let after = page["next_after"].as_str().unwrap().to_owned();
    let r = h
        .admin_call(
            "GET",
            &format!("/admin/events?key={id}&limit=2&after={after}"),
            Value::Null,
        )
        .await;
    assert_eq!(r.json().unwrap()["events"].as_array().unwrap().len(), 1);
    assert_eq!(
        h.admin_call("GET", "/admin/events?since=yesterday", Value::Null)
            .await
            .status,
        400
    );

    let m = http_request("GET", &format!("{}/metrics", h.admin), &[], "", None)
        .await
        .unwrap();
    let text = m.text();
    for needle in [
        "stormwall_requests_total{endpoint=\"chat_completions\",status=\"200\"} 3",
        "stormwall_request_duration_seconds_bucket",
        "stormwall_upstream_duration_seconds_bucket",
        "stormwall_events_dropped_total 0",
        "stormwall_keys_cached 1",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            http_request("GET", &format!("{}{path}", h.admin), &[], "", None)
                .await
                .unwrap()
                .status,
            200
        );
    }
    let ready = http_request("GET", &format!("{}/readyz", h.admin), &[], "", None)
        .await
        .unwrap();
    assert!(
        ready.text().contains("safety: fast tier only"),
        "{}",
        ready.text()
    );
    let doc = http_request(
        "GET",
        &format!("{}/admin/openapi.json", h.admin),
        &[],
        "",
        None,
    )
    .await
    .unwrap();
    assert_eq!(doc.status, 200);
    doc.json().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_events_refuse_a_malformed_after_cursor() {
    let h = harness().await;
    let (key, _) = h.key(json!({"tenant": "t"})).await;
    h.chat(&key, "gpt-4o-mini").await;
    h.events(1).await;
    let long = "0".repeat(129);
    for bad in [
        "",
        "%20",
        "0194bd2e%207a1b",
        "a%0Ab",
        "caf%C3%A9",
        long.as_str(),
    ] {
        let r = h
            .admin_call("GET", &format!("/admin/events?after={bad}"), Value::Null)
            .await;
        assert_eq!(r.status, 400, "after={bad}: {}", r.text());
        let v = r.json().unwrap();
        assert_eq!(v["error"]["code"], "invalid_request");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .starts_with("after "),
            "{}",
            r.text()
        );
    }
    // Imported events keep their own ids; each is a valid cursor, so paging never refuses
    // its own next_after.
    let at = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    let imported: Vec<UsageEvent> = ["hist-0001", "hist-0002"]
        .into_iter()
        .enumerate()
        .map(|(i, id)| {
            UsageEvent::new(
                id.into(),
                at + time::Duration::seconds(i as i64),
                "127.0.0.9".parse().unwrap(),
                "POST",
                "/v1/chat/completions",
            )
        })
        .collect();
    let r = h
        .admin_call("POST", "/admin/events", json!({ "events": imported }))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let page = h.admin_get("/admin/events?limit=1").await;
    assert_eq!(page["next_after"], "hist-0001");
    let page = h.admin_get("/admin/events?limit=1&after=hist-0001").await;
    assert_eq!(page["events"][0]["event.id"], "hist-0002", "{page}");
    // An id no cursor could name is refused at import.
    let spaced = UsageEvent::new(
        "hist 0003".into(),
        at,
        "127.0.0.9".parse().unwrap(),
        "POST",
        "/v1/chat/completions",
    );
    let r = h
        .admin_call("POST", "/admin/events", json!({ "events": [spaced] }))
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_streams_and_flushes_events() {
    let mut h = harness().await;
    let (key, _) = h.key(json!({"tenant": "t"})).await;
    h.upstream
        .push_fault(Fault::ChunkDelay(Duration::from_millis(40)));
    let mut s = h.stream_chat(&key).await;
    s.next_event().await.unwrap().unwrap();
    let reader = async {
        let mut last = None;
        while let Some(ev) = s.next_event().await {
            last = Some(ev.unwrap());
        }
        last
    };
    let (last, ()) = tokio::join!(reader, h.shutdown());
    assert!(last.unwrap().is_done(), "the in-flight stream finished");
    let events = h.store.query_events(&EventQuery::default()).await.unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].stream_outcome, Some(StreamOutcome::Completed));
    assert!(
        http_request("GET", &format!("{}/v1/models", h.proxy), &[], "", None)
            .await
            .is_err(),
        "listener closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::disallowed_methods)] // collects the gateway's small replies, under a timeout
async fn http2_with_prior_knowledge_serves_completions_and_streams() {
    use http_body_util::{BodyExt, Full};
    let h = harness().await;
    let (key, _) = h.key(json!({"tenant": "t"})).await;
    // Like `curl --http2-prior-knowledge`: HTTP/2 from the first byte, no upgrade.
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<bytes::Bytes>>();
    let auth = format!("Bearer {key}");
    let call = |body: String| {
        let req = http::Request::post(format!("{}/v1/chat/completions", h.proxy))
            .header("authorization", &auth)
            .header("content-type", "application/json")
            .body(Full::new(bytes::Bytes::from(body)))
            .unwrap();
        let client = client.clone();
        async move {
            let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
                .await
                .expect("no answer over HTTP/2")
                .expect("HTTP/2 request failed");
            let (parts, body) = resp.into_parts();
            let body = tokio::time::timeout(Duration::from_secs(10), body.collect())
                .await
                .unwrap()
                .unwrap()
                .to_bytes();
            (parts, body)
        }
    };
    let (parts, body) = call(chat_body("gpt-4o-mini", false)).await;
    assert_eq!(parts.version, http::Version::HTTP_2);
    assert_eq!(parts.status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["object"], "chat.completion", "{v}");
    assert!(parts.headers.contains_key("x-request-id"));

    // A stream, relayed over the same connection.
    let (parts, body) = call(chat_body("gpt-4o-mini", true)).await;
    assert_eq!(parts.version, http::Version::HTTP_2);
    assert_eq!(parts.status, 200);
    assert!(
        parts.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let events = stormwall_testkit::parse_sse(&body);
    assert!(events.len() > 2, "{events:?}");
    assert!(events.last().unwrap().is_done());
    assert!(
        events[..events.len() - 1]
            .iter()
            .all(|e| e.json().unwrap()["object"] == "chat.completion.chunk")
    );
    // Refusals keep their shape too.
    let req = http::Request::get(format!("{}/v1/models", h.proxy))
        .body(Full::new(bytes::Bytes::new()))
        .unwrap();
    let r = client.request(req).await.unwrap();
    assert_eq!(
        (r.version(), r.status().as_u16()),
        (http::Version::HTTP_2, 401)
    );
    // HTTP/2's header list is capped at `max_header_bytes`, as an HTTP/1 head is: under it
    // is served (hyper's own default is far lower), over it is refused (by the server, or
    // by the client honouring the limit the server announced).
    let cap = h.config.limits.max_header_bytes;
    let models = |filler: usize| {
        http::Request::get(format!("{}/v1/models", h.proxy))
            .header("authorization", &auth)
            .header("x-filler", "f".repeat(filler))
            .body(Full::new(bytes::Bytes::new()))
            .unwrap()
    };
    let r = client.request(models(cap / 2)).await.unwrap();
    assert_eq!(r.status(), 200);
    match client.request(models(cap + 1024)).await {
        Ok(r) => assert_eq!(r.status(), 431),
        Err(e) => assert!(!e.is_connect(), "{e}"),
    }
    let events = h.events(3).await;
    assert_eq!(events[1].stream_outcome, Some(StreamOutcome::Completed));
    assert_eq!(h.upstream.request_count(), 2);

    // Shutting down lets an HTTP/2 stream in flight finish.
    h.upstream
        .push_fault(Fault::ChunkDelay(Duration::from_millis(40)));
    let req = http::Request::post(format!("{}/v1/chat/completions", h.proxy))
        .header("authorization", &auth)
        .body(Full::new(bytes::Bytes::from(chat_body(
            "gpt-4o-mini",
            true,
        ))))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let read = async {
        tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes()
    };
    let mut h = h;
    let (body, ()) = tokio::join!(read, h.shutdown());
    let events = stormwall_testkit::parse_sse(&body);
    assert!(
        events.last().unwrap().is_done(),
        "the in-flight stream finished"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_sends_no_request_is_closed_after_the_header_read_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = harness_with(|c| c.limits.header_read_timeout_secs = 1).await;
    let addr = h.proxy.trim_start_matches("http://").to_owned();
    // Silent; half an HTTP/2 preface; half an HTTP/1 request head.
    for sent in [
        &b""[..],
        b"PRI * HTTP/2.0\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\n",
    ] {
        let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
        conn.write_all(sent).await.unwrap();
        let mut buf = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut buf)).await;
        assert!(
            read.is_ok(),
            "connection that sent {:?} still open",
            String::from_utf8_lossy(sent)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_connection_answers_a_small_request_without_a_delayed_ack_stall() {
    // Not a benchmark: a missing TCP_NODELAY on either leg shows up as ~40 ms per request
    // (Nagle + delayed ACK); the bound is several times what a working gateway needs.
    let h = harness().await;
    let (key, _) = h.key(json!({"tenant": "t"})).await;
    let client = TestClient::new(None);
    let auth = format!("Bearer {key}");
    let url = format!("{}/v1/chat/completions", h.proxy);
    let mut times = Vec::new();
    for _ in 0..21 {
        let t = std::time::Instant::now();
        let r = client
            .request(
                "POST",
                &url,
                &[("authorization", &auth)],
                chat_body("gpt-4o-mini", false),
            )
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        times.push(t.elapsed());
    }
    times.sort();
    assert!(
        times[10] < Duration::from_millis(35),
        "median {:?}",
        times[10]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_in_mock_upstream_serves_without_a_network() {
    let h = harness().await;
    let (key, _) = h.key(json!({"tenant": "t"})).await;
    let r = h.chat(&key, "builtin-model").await;
    assert_eq!(r.status, 200);
    assert_eq!(h.upstream.request_count(), 0);
    let r = h
        .post(
            "/v1/chat/completions",
            &key,
            &chat_body("builtin-model", true),
            None,
        )
        .await;
    assert!(
        stormwall_testkit::parse_sse(&r.body)
            .last()
            .unwrap()
            .is_done()
    );
    let events = h.events(2).await;
    assert_eq!(events[1].system.as_deref(), Some("mock"));
    assert_eq!(events[1].stream_outcome, Some(StreamOutcome::Completed));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn built_in_mock_embeddings_honour_base64_and_dimensions() {
    use base64::Engine as _;
    let h = harness().await;
    let (key, _) = h.key(json!({"tenant": "t"})).await;
    let embed = |extra: Value| {
        let mut body = json!({"model": "builtin-model", "input": ["first", "second"]});
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        let key = key.clone();
        let h = &h;
        async move {
            let r = h
                .post("/v1/embeddings", &key, &body.to_string(), None)
                .await;
            assert_eq!(r.status, 200, "{}", r.text());
            r.json().unwrap()
        }
    };
    let plain = embed(json!({})).await;
    let as_floats = |v: &Value| -> Vec<f32> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect()
    };
    let floats = as_floats(&plain["data"][1]["embedding"]);
    assert_eq!(floats.len(), 1536);
    assert!(floats.iter().all(|x| *x != 0.0));
    // What the npm SDK sends by default, and decodes as little-endian f32s.
    let b64 = embed(json!({"encoding_format": "base64"})).await;
    assert_eq!(b64["data"].as_array().unwrap().len(), 2);
    let text = b64["data"][1]["embedding"]
        .as_str()
        .expect("a base64 string");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(decoded, floats);
    let explicit = embed(json!({"encoding_format": "float", "dimensions": 256})).await;
    assert_eq!(as_floats(&explicit["data"][0]["embedding"]).len(), 256);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_or_prompt_text_reaches_the_logs() {
    use std::io::Write;
    #[derive(Clone, Default)]
    struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Buf::default();
    let writer = buf.clone();
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .try_init();
    let h = harness().await;
    let (key, id) = h.key(json!({"tenant": "t", "kind": "canary"})).await;
    let (normal, nid) = h.key(json!({"tenant": "t", "scope": {"rpm": 1}})).await;
    let secret_prompt = "my-private-prompt-text-7731";
    let body =
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": secret_prompt}]})
            .to_string();
    for k in [key.as_str(), normal.as_str(), normal.as_str()] {
        h.post("/v1/chat/completions", k, &body, None).await;
    }
    // A canary beside a valid key is logged by id too, and neither secret is.
    let (beside, _) = h.key(json!({"tenant": "t"})).await;
    let auth = format!("Bearer {beside}");
    http_request(
        "POST",
        &format!("{}/v1/chat/completions", h.proxy),
        &[("authorization", &auth), ("api-key", &key)],
        body.clone(),
        None,
    )
    .await
    .unwrap();
    h.admin_call("POST", &format!("/admin/keys/{nid}/revoke"), Value::Null)
        .await;
    h.post("/v1/chat/completions", &normal, &body, None).await;
    h.events(5).await;
    let logs = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    assert!(
        logs.contains(&id),
        "tripwire use is logged by key id:\n{logs}"
    );
    assert_eq!(
        logs.matches("tripwire key used").count(),
        3,
        "the canary twice, the revoked key once:\n{logs}"
    );
    for secret in [
        key.as_str(),
        normal.as_str(),
        beside.as_str(),
        secret_prompt,
        UPSTREAM_KEY,
        ADMIN_TOKEN,
    ] {
        assert!(!logs.contains(secret), "{secret} leaked into logs");
    }
}

#[path = "gateway/detection.rs"]
mod detection;
#[path = "gateway/incidents.rs"]
mod incidents;
#[path = "gateway/investigation.rs"]
mod investigation;
#[path = "gateway/journal.rs"]
mod journal;
#[path = "gateway/tls_fingerprint.rs"]
mod tls_fingerprint;

mod leak_reports {
    use super::*;
    use base64::Engine as _;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, KeyPair};
    use sha2::{Digest, Sha256};
    use stormwall_gateway::control::leak_report::{LeakReportsConfig, ReporterKey};

    const SPKI_PREFIX: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];

    struct Reporter {
        pair: EcdsaKeyPair,
        rng: SystemRandom,
    }

    impl Reporter {
        fn new() -> Self {
            let rng = SystemRandom::new();
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng)
                    .unwrap();
            Self { pair, rng }
        }
        fn public_key_b64(&self) -> String {
            let mut spki = SPKI_PREFIX.to_vec();
            spki.extend_from_slice(self.pair.public_key().as_ref());
            base64::engine::general_purpose::STANDARD.encode(spki)
        }
        fn sign(&self, body: &[u8]) -> String {
            base64::engine::general_purpose::STANDARD
                .encode(self.pair.sign(&self.rng, body).unwrap())
        }
    }

    async fn gateway(reporter: &Reporter) -> Harness {
        let key = reporter.public_key_b64();
        let alerts = std::env::temp_dir().join(format!(
            "stormwall-alerts-{}.jsonl",
            stormwall_types::ApiKey::generate().id_str()
        ));
        harness_with(move |c| {
            c.alerts.jsonl_path = Some(alerts);
            // The per-alert path: these tests read each alert from the file.
            c.alerts.notify = stormwall_gateway::control::alerts::NotifyMode::Alerts;
            c.leak_reports = LeakReportsConfig {
                enabled: true,
                keys: vec![ReporterKey {
                    identifier: "test-key-1".into(),
                    public_key: key,
                    reporter: "github".into(),
                }],
                ..Default::default()
            };
        })
        .await
    }

    async fn report(h: &Harness, body: &str, signature: &str) -> TestResponse {
        http_request(
            "POST",
            &format!("{}/stormwall/leaked-keys", h.proxy),
            &[
                ("content-type", "application/json"),
                ("github-public-key-identifier", "test-key-1"),
                ("github-public-key-signature", signature),
            ],
            body.to_owned(),
            None,
        )
        .await
        .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_signed_report_revokes_our_keys_and_labels_every_token() {
        let reporter = Reporter::new();
        let h = gateway(&reporter).await;
        let (leaked, leaked_id) = h.key(json!({"tenant": "victim"})).await;
        let (safe, _) = h.key(json!({"tenant": "victim"})).await;
        let stranger = stormwall_types::ApiKey::generate();
        let body = json!([
            {"token": leaked, "type": "stormwall_api_key", "url": "https://example.invalid/repo/blob/main/.env", "source": "content"},
            {"token": stranger.expose(), "type": "stormwall_api_key", "url": "https://example.invalid/x", "source": "commit"},
            {"token": "sk-not-ours", "type": "other", "url": "https://example.invalid/y", "source": "content"}
        ])
        .to_string();
        let r = report(&h, &body, &reporter.sign(body.as_bytes())).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(
            !r.text().contains(&leaked) && !r.text().contains(stranger.expose()),
            "never echo a token"
        );
        let labels = r.json().unwrap();
        let hash = |t: &str| {
            Sha256::digest(t.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        };
        assert_eq!(
            labels[0],
            json!({"token_hash": hash(&leaked), "token_type": "stormwall_api_key", "label": "true_positive"})
        );
        assert_eq!(labels[1]["label"], "false_positive");
        assert_eq!(labels[2]["label"], "false_positive");
        // Revoked at once, kept as a tripwire, with the exposure recorded.
        assert_eq!(h.chat(&leaked, "gpt-4o-mini").await.status, 401);
        assert_eq!(h.chat(&safe, "gpt-4o-mini").await.status, 200);
        let rec = h.admin_get(&format!("/admin/keys/{leaked_id}")).await;
        assert_eq!(rec["status"], "revoked");
        assert!(
            rec["status_reason"]
                .as_str()
                .unwrap()
                .contains("https://example.invalid/repo/blob/main/.env")
        );
        let events = h.events(3).await;
        assert_eq!(
            events[0].path, "/stormwall/leaked-keys",
            "the report itself is an event"
        );
        assert_eq!(events[1].reject_reason, Some(RejectReason::RevokedKey));
        // One E1 alert, with the report event as evidence and no token in it (and D1 for
        // the retry with the revoked key).
        let path = h.alerts_path.clone().unwrap();
        let mut text = String::new();
        for _ in 0..200 {
            text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() >= 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = std::fs::remove_file(&path);
        let all: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert!(all.iter().any(|a| a["detector"] == "D1"), "{text}");
        let alerts: Vec<&Value> = all.iter().filter(|a| a["detector"] == "E1").collect();
        assert_eq!(alerts.len(), 1, "{text}");
        assert_eq!(alerts[0]["detector"], "E1");
        assert_eq!(alerts[0]["key_id"], leaked_id.as_str());
        assert_eq!(alerts[0]["evidence"][0], events[0].id.as_str());
        assert!(!text.contains(&leaked), "no token in alerts");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_bad_signature_revokes_nothing() {
        let reporter = Reporter::new();
        let impostor = Reporter::new();
        let h = gateway(&reporter).await;
        let (leaked, _) = h.key(json!({"tenant": "victim"})).await;
        let body =
            json!([{"token": leaked, "type": "t", "url": "u", "source": "content"}]).to_string();
        let r = report(&h, &body, &impostor.sign(body.as_bytes())).await;
        assert_eq!(r.status, 401);
        // Signed, then altered by one byte in transit.
        let sig = reporter.sign(body.as_bytes());
        let altered = body.replacen("content", "kontent", 1);
        assert_eq!(report(&h, &altered, &sig).await.status, 401);
        let r = http_request(
            "POST",
            &format!("{}/stormwall/leaked-keys", h.proxy),
            &[],
            body.clone(),
            None,
        )
        .await
        .unwrap();
        assert_eq!(r.status, 401, "unsigned");
        assert_eq!(
            h.chat(&leaked, "gpt-4o-mini").await.status,
            200,
            "still active"
        );
        let r = report(
            &h,
            "{\"not\":\"an array\"}",
            &reporter.sign(b"{\"not\":\"an array\"}"),
        )
        .await;
        assert_eq!(r.status, 400);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_report_of_many_tokens_is_handled_in_one_call() {
        let reporter = Reporter::new();
        let h = gateway(&reporter).await;
        let mut ours = Vec::new();
        for _ in 0..100 {
            ours.push(h.key(json!({"tenant": "bulk"})).await.0);
        }
        let mut tokens: Vec<Value> = ours
            .iter()
            .map(|k| json!({"token": k, "type": "t", "url": "u", "source": "content"}))
            .collect();
        for _ in 0..1900 {
            tokens.push(json!({"token": stormwall_types::ApiKey::generate().expose(), "type": "t", "url": "u", "source": "content"}));
        }
        let body = Value::Array(tokens).to_string();
        let r = report(&h, &body, &reporter.sign(body.as_bytes())).await;
        assert_eq!(r.status, 200);
        let labels = r.json().unwrap();
        assert_eq!(labels.as_array().unwrap().len(), 2000);
        assert_eq!(
            labels
                .as_array()
                .unwrap()
                .iter()
                .filter(|l| l["label"] == "true_positive")
                .count(),
            100
        );
        let listed = h.admin_get("/admin/keys?tenant=bulk").await;
        assert!(
            listed
                .as_array()
                .unwrap()
                .iter()
                .all(|k| k["status"] == "revoked")
        );
    }
}

/// Several replicas on one PostgreSQL and one Redis. Runs when `STORMWALL_TEST_POSTGRES_URL`
/// and `STORMWALL_TEST_REDIS_URL` are set (as `.ci/run` does), and then fails if either
/// service is unreachable; skips only when they are unset.
mod scale_out {
    use super::*;
    use stormwall_store::{CountersConfig, PostgresConfig, PostgresStore, RedisConfig};

    fn urls() -> Option<(String, String)> {
        let pg = std::env::var("STORMWALL_TEST_POSTGRES_URL")
            .ok()
            .filter(|s| !s.is_empty());
        let redis = std::env::var("STORMWALL_TEST_REDIS_URL")
            .ok()
            .filter(|s| !s.is_empty());
        match (pg, redis) {
            (Some(p), Some(r)) => Some((p, r)),
            _ => {
                eprintln!(
                    "skipped: STORMWALL_TEST_POSTGRES_URL and STORMWALL_TEST_REDIS_URL are not both set"
                );
                None
            }
        }
    }

    fn unique(prefix: &str) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        format!(
            "{prefix}_{}_{}_{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
    }

    struct Cluster {
        replicas: Vec<RunningGateway>,
        proxies: Vec<String>,
        admins: Vec<String>,
        pg_url: String,
        schema: String,
        _upstream: MockUpstream,
    }

    impl Cluster {
        async fn start(n: usize, redis_url: &str) -> Option<Self> {
            Self::start_via(n, redis_url, None).await
        }

        /// Starts replicas whose PostgreSQL connections go through `pg_via` (a URL) when given.
        async fn start_via(n: usize, redis_url: &str, pg_via: Option<&str>) -> Option<Self> {
            Self::start_in(n, redis_url, pg_via, unique("swgw"), |_| {}).await
        }

        /// Starts replicas on an existing (or new) schema, with a config tweak.
        async fn start_in(
            n: usize,
            redis_url: &str,
            pg_via: Option<&str>,
            schema: String,
            tweak: fn(&mut GatewayConfig),
        ) -> Option<Self> {
            let (pg_url, default_redis) = urls()?;
            let own_redis = redis_url.is_empty();
            let redis_url = if own_redis {
                default_redis
            } else {
                redis_url.to_owned()
            };
            let upstream = MockUpstream::start().await.unwrap();
            let prefix = format!("{}:", unique("swgw"));
            let mut replicas = Vec::new();
            for _ in 0..n {
                let mut pg = PostgresConfig::from_url(pg_via.unwrap_or(&pg_url));
                pg.schema = Some(schema.clone());
                pg.pool_size = 4;
                let store: Arc<dyn Store> =
                    Arc::new(PostgresStore::open(&pg).await.unwrap_or_else(|e| {
                        panic!("STORMWALL_TEST_POSTGRES_URL is set but PostgreSQL is unusable: {e}")
                    }));
                let mut rc = RedisConfig::from_url(&redis_url);
                rc.prefix = prefix.clone();
                rc.retry_interval_ms = 200;
                if own_redis {
                    // The machine's own Redis is up: a reply slower than the 250 ms default
                    // (a loaded CI machine) must not send a replica to its local fallback and
                    // make an exact limit inexact. Tests of outages pass their own proxy URL.
                    rc.op_timeout_ms = 5_000;
                }
                let counters = stormwall_store::open_counters(&CountersConfig::Redis(rc))
                    .await
                    .unwrap();
                let mut config = GatewayConfig {
                    server: ServerConfig {
                        listen: "127.0.0.1:0".parse().unwrap(),
                        admin_listen: "127.0.0.1:0".parse().unwrap(),
                        key_refresh_secs: 3600, // only pub/sub may spread changes in these tests
                        key_cache_max_stale_secs: 0,
                        ..Default::default()
                    },
                    ipdb: test_ipdb(),
                    upstreams: vec![UpstreamConfig::Openai {
                        name: "openai-mock".into(),
                        base_url: format!("{}/v1", upstream.url()),
                        api_key_env: "UP_KEY".into(),
                        models: vec!["gpt-4o-mini".into()],
                        organization: None,
                    }],
                    ..Default::default()
                };
                tweak(&mut config);
                let events = EventsConfig {
                    flush_interval_ms: 10,
                    ..Default::default()
                };
                let gw = stormwall_gateway::start_with(
                    config,
                    store,
                    Some(counters),
                    &events,
                    SecretString::from(ADMIN_TOKEN),
                    &env,
                )
                .await
                .unwrap();
                replicas.push(gw);
            }
            Some(Self {
                proxies: replicas
                    .iter()
                    .map(|g| format!("http://{}", g.proxy_addr))
                    .collect(),
                admins: replicas
                    .iter()
                    .map(|g| format!("http://{}", g.admin_addr))
                    .collect(),
                replicas,
                pg_url,
                schema,
                _upstream: upstream,
            })
        }

        async fn key(&self, replica: usize, body: Value) -> (String, String) {
            let r = http_request(
                "POST",
                &format!("{}/admin/keys", self.admins[replica]),
                &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
                body.to_string(),
                None,
            )
            .await
            .unwrap();
            assert_eq!(r.status, 201, "{}", r.text());
            let v = r.json().unwrap();
            (
                v["key"].as_str().unwrap().to_owned(),
                v["id"].as_str().unwrap().to_owned(),
            )
        }

        /// An admin POST without a body through one replica; it must succeed.
        async fn admin_post(&self, replica: usize, path: &str) {
            let r = http_request(
                "POST",
                &format!("{}{path}", self.admins[replica]),
                &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
                String::new(),
                None,
            )
            .await
            .unwrap();
            assert_eq!(r.status, 200, "{path}: {}", r.text());
        }

        /// A chat request from `source` (the default loopback address with `None`),
        /// whatever its status.
        async fn chat_from_any(&self, replica: usize, key: &str, source: Option<&str>) -> u16 {
            http_request(
                "POST",
                &format!("{}/v1/chat/completions", self.proxies[replica]),
                &[("authorization", &format!("Bearer {key}"))],
                chat_body("gpt-4o-mini", false),
                source.map(|s| s.parse().unwrap()),
            )
            .await
            .unwrap()
            .status
            .as_u16()
        }

        async fn chat(&self, replica: usize, key: &str) -> u16 {
            self.chat_from_any(replica, key, None).await
        }

        async fn stop(self) -> Vec<UsageEvent> {
            let store = PostgresStore::open(&{
                let mut pg = PostgresConfig::from_url(&self.pg_url);
                pg.schema = Some(self.schema.clone());
                pg
            })
            .await
            .unwrap();
            for r in self.replicas {
                r.shutdown().await;
            }
            let events = store.query_events(&EventQuery::default()).await.unwrap();
            let (client, conn) = tokio_postgres::connect(&self.pg_url, tokio_postgres::NoTls)
                .await
                .unwrap();
            #[allow(clippy::disallowed_methods)]
            let task = tokio::spawn(conn);
            client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema))
                .await
                .unwrap();
            drop(client);
            let _ = task.await;
            events
        }
    }

    /// Two replicas on a schema that already holds one key with a week of office history
    /// (one network, one country, about two requests an hour, ending two hours ago), so the
    /// replicas' warm start gives each the key's baseline and the current hour is empty.
    async fn warm_pair() -> Option<(Cluster, PostgresStore, KeyRecord, String)> {
        warm_pair_with(|_| {}).await
    }

    /// [`warm_pair`] with a config tweak for both replicas.
    async fn warm_pair_with(
        tweak: fn(&mut GatewayConfig),
    ) -> Option<(Cluster, PostgresStore, KeyRecord, String)> {
        let (pg_url, _) = urls()?;
        let schema = unique("swgw");
        let mut pg = PostgresConfig::from_url(&pg_url);
        pg.schema = Some(schema.clone());
        let store = PostgresStore::open(&pg).await.unwrap();
        let key = stormwall_types::ApiKey::generate();
        let now = time::OffsetDateTime::now_utc();
        let record = KeyRecord {
            id: key.id(),
            tenant: "acme".into(),
            kind: stormwall_types::KeyKind::Normal,
            status: stormwall_types::KeyStatus::Active,
            hash: key.hash(),
            last4: key.last4().to_owned(),
            label: None,
            scope: Default::default(),
            created_at: now - time::Duration::days(7),
            updated_at: now - time::Duration::days(7),
            status_reason: None,
            rotated_from: None,
            rotated_to: None,
        };
        store.insert_key(&record).await.unwrap();
        let history: Vec<UsageEvent> = (0..200)
            .map(|i| {
                // Ends two hours ago, so the current hour holds only the relay's requests.
                let at = now - time::Duration::hours(2) - time::Duration::minutes(30 * (200 - i));
                let mut e = UsageEvent::new(
                    format!("00000000-0000-7000-8000-{i:012}"),
                    at,
                    "127.0.0.10".parse().unwrap(),
                    "POST",
                    "/v1/chat/completions",
                );
                e.key_id = Some(record.id.clone());
                e.tenant = Some("acme".into());
                e.source_asn = Some(64500);
                e.source_country = Some("US".into());
                e.user_agent = Some("OpenAI/Python 1.51.0".into());
                e.endpoint = Some(stormwall_types::Endpoint::ChatCompletions);
                e.model = Some("gpt-4o-mini".into());
                e.status = 200;
                e
            })
            .collect();
        store.insert_events(&history).await.unwrap();
        let c = Cluster::start_in(2, "", None, schema, tweak).await?;
        Some((c, store, record, key.expose().to_owned()))
    }

    async fn alerts_of(
        store: &PostgresStore,
        key: &KeyRecord,
        detector: stormwall_types::DetectorId,
    ) -> Vec<StoredAlert> {
        store
            .list_alerts(&AlertQuery {
                key_id: Some(key.id.clone()),
                detector: Some(detector),
                ..Default::default()
            })
            .await
            .unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_spread_over_replicas_is_seen_whole_and_raised_once() {
        let Some((c, store, record, secret)) = warm_pair().await else {
            return;
        };
        let p1 = || alerts_of(&store, &record, stormwall_types::DetectorId::P1);
        // A relay's clients in three countries. Replica 1 sees one network of its own
        // (under P1's threshold of two countries an hour); only the shared count shows two.
        // Then replica 0 sees a second country itself: the same incident, not a new alert.
        let sources = [("127.0.1.7", 0), ("127.0.2.7", 1), ("127.0.3.7", 0)];
        for (n, (src, replica)) in sources.into_iter().enumerate() {
            chat_from(&c, replica, &secret, src).await;
            // Each replica's detection task takes the event before the next request.
            tokio::time::sleep(Duration::from_millis(200)).await;
            if n == 1 {
                let found = wait_alerts(&store, &record, stormwall_types::DetectorId::P1, 1).await;
                assert_eq!(found.len(), 1, "P1 from the global view: {found:#?}");
                let countries = found[0]
                    .alert
                    .features
                    .iter()
                    .find(|f| f.name == "distinct_countries_hour")
                    .unwrap();
                assert!(countries.value >= 2.0, "{:?}", found[0].alert.features);
                assert!(found[0].alert.explanation.contains("every gateway replica"));
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(p1().await.len(), 1, "one P1 alert for the incident");
        c.stop().await;
    }

    /// Two replicas like [`warm_pair`], with a one-second alert window and no automatic
    /// actions, so a detector can alert again on the next second's traffic.
    async fn warm_pair_alert_only() -> Option<(Cluster, PostgresStore, KeyRecord, String)> {
        warm_pair_with(|c| {
            c.detect.alert_cooldown_secs = 1;
            c.response.rules.clear();
        })
        .await
    }

    async fn chat_from(c: &Cluster, replica: usize, secret: &str, source: &str) {
        assert_eq!(
            c.chat_from_any(replica, secret, Some(source)).await,
            200,
            "{source}"
        );
    }

    /// Polls (up to two seconds) until the key has at least `n` alerts of `detector`.
    async fn wait_alerts(
        store: &PostgresStore,
        key: &KeyRecord,
        detector: stormwall_types::DetectorId,
        n: usize,
    ) -> Vec<StoredAlert> {
        let mut found = Vec::new();
        for _ in 0..500 {
            found = alerts_of(store, key, detector).await;
            if found.len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        found
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_false_positive_marked_on_one_replica_teaches_the_others() {
        let Some((c, store, record, secret)) = warm_pair_alert_only().await else {
            return;
        };
        let p1 = || alerts_of(&store, &record, stormwall_types::DetectorId::P1);
        // A team member travelling: the key used from Germany and Brazil within the hour,
        // through replica 0, which raises P1 (two countries; the key usually has one).
        for src in ["127.0.1.7", "127.0.4.7"] {
            chat_from(&c, 0, &secret, src).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let found = wait_alerts(&store, &record, stormwall_types::DetectorId::P1, 1).await;
        assert_eq!(found.len(), 1, "P1 on replica 0: {found:#?}");
        // The operator says it was fine, through replica 0's admin API.
        c.admin_post(
            0,
            &format!("/admin/alerts/{}/false-positive", found[0].alert.id),
        )
        .await;
        // Past the alert window, the same trip seen by replica 1 (new networks to it, the
        // shared count says two countries): it learned the verdict, so no new alert.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        for src in ["127.0.1.8", "127.0.4.8"] {
            chat_from(&c, 1, &secret, src).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let after = p1().await;
        assert_eq!(
            after.len(),
            1,
            "replica 1 alerted again after the verdict: {after:#?}"
        );
        c.stop().await;
    }

    async fn key_status(store: &PostgresStore, key: &KeyRecord) -> stormwall_types::KeyStatus {
        store.get_key(&key.id).await.unwrap().unwrap().status
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_resume_on_one_replica_clears_the_risk_the_others_hold() {
        // Suspend at 25 risk points (two medium alerts), actions repeatable after a second.
        let Some((c, store, record, secret)) = warm_pair_with(|c| {
            c.detect.alert_cooldown_secs = 1;
            c.response.action_cooldown_secs = 1;
            c.response.rules = vec![stormwall_detect::PolicyRule {
                min_score: Some(25.0),
                ..stormwall_detect::PolicyRule::new(stormwall_types::ActionKind::Suspend)
            }];
        })
        .await
        else {
            return;
        };
        // Replica 1 sees the key jump from its usual US office to Germany and Brazil
        // (impossible travel, then two countries in the hour) and suspends it.
        for src in ["127.0.1.7", "127.0.4.7"] {
            // The second may already be refused: the suspension can come at once.
            c.chat_from_any(1, &secret, Some(src)).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for _ in 0..500 {
            if key_status(&store, &record).await == stormwall_types::KeyStatus::Suspended {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(
            key_status(&store, &record).await,
            stormwall_types::KeyStatus::Suspended
        );
        let raised = || async {
            store
                .list_alerts(&AlertQuery {
                    key_id: Some(record.id.clone()),
                    ..Default::default()
                })
                .await
                .unwrap()
                .len()
        };
        let before = raised().await;
        // The operator checks and resumes it on replica 0.
        c.admin_post(0, &format!("/admin/keys/{}/resume", record.id))
            .await;
        tokio::time::sleep(Duration::from_millis(1500)).await;
        // One more medium alert on replica 1 (the unfamiliar client again). Its engine was
        // told of the resumption, so the old points are gone and 15 stays under 25.
        chat_from(&c, 1, &secret, "127.0.1.9").await;
        for _ in 0..500 {
            if raised().await > before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(raised().await > before, "the last request raised an alert");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            key_status(&store, &record).await,
            stormwall_types::KeyStatus::Active,
            "replica 1 re-suspended the key on points from before the resumption"
        );
        c.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn without_a_verdict_the_other_replica_alerts_again() {
        // The control for the test above: the same traffic with no verdict alerts twice,
        // so the single alert there is the verdict's doing.
        let Some((c, store, record, secret)) = warm_pair_alert_only().await else {
            return;
        };
        for src in ["127.0.1.7", "127.0.4.7"] {
            chat_from(&c, 0, &secret, src).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        for src in ["127.0.1.8", "127.0.4.8"] {
            chat_from(&c, 1, &secret, src).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let found = wait_alerts(&store, &record, stormwall_types::DetectorId::P1, 2).await;
        // Event time is counted in whole seconds, so the one-second cooldown can let replica
        // 1 alert on both of its requests when they straddle a second: count by replica.
        let from = |sources: [&str; 2]| {
            found
                .iter()
                .filter(|a| {
                    a.alert
                        .source_ip
                        .is_some_and(|ip| sources.contains(&ip.to_string().as_str()))
                })
                .count()
        };
        assert_eq!(from(["127.0.1.7", "127.0.4.7"]), 1, "replica 0: {found:#?}");
        assert!(
            from(["127.0.1.8", "127.0.4.8"]) >= 1,
            "replica 1: {found:#?}"
        );
        c.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn alerts_from_both_replicas_stay_on_the_incidents_timeline() {
        let Some((c, store, record, secret)) = warm_pair_alert_only().await else {
            return;
        };
        let all_alerts = || async {
            store
                .list_alerts(&AlertQuery {
                    key_id: Some(record.id.clone()),
                    ..Default::default()
                })
                .await
                .unwrap()
        };
        // The same trip seen by replica 0, then replica 1, then replica 0 again (each round
        // past the one-second alert window): one incident, written by both in turn.
        let rounds = [
            (0, ["127.0.1.7", "127.0.4.7"]),
            (1, ["127.0.1.8", "127.0.4.8"]),
            (0, ["127.0.1.9", "127.0.4.9"]),
        ];
        let mut raised = 0;
        for (replica, sources) in rounds {
            for src in sources {
                chat_from(&c, replica, &secret, src).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            for _ in 0..500 {
                if all_alerts().await.len() > raised {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let now = all_alerts().await.len();
            assert!(now > raised, "replica {replica} raised nothing");
            raised = now;
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        let incidents = store
            .list_incidents(&IncidentQuery {
                key_id: Some(record.id.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(incidents.len(), 1, "{incidents:#?}");
        let inc = &incidents[0];
        let mut on_timeline: Vec<&str> = inc
            .incident
            .timeline
            .iter()
            .map(|e| e.alert_id.as_str())
            .collect();
        on_timeline.sort_unstable();
        let mut linked: Vec<&str> = inc.alert_ids.iter().map(String::as_str).collect();
        linked.sort_unstable();
        assert_eq!(
            on_timeline, linked,
            "a replica's write replaced the other's timeline entries"
        );
        assert_eq!(linked.len(), all_alerts().await.len());
        c.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_rate_spread_over_replicas_is_counted_whole() {
        let Some((c, store, record, secret)) = warm_pair().await else {
            return;
        };
        // One event-time minute: the burst takes about three seconds.
        while time::OffsetDateTime::now_utc().second() > 52 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // 40 requests in the minute, 20 through each replica: each alone stays under R3's
        // 30 a minute; the shared count shows 40.
        for n in 0..40 {
            let r = http_request(
                "POST",
                &format!("{}/v1/chat/completions", c.proxies[n % 2]),
                &[("authorization", &format!("Bearer {secret}"))],
                chat_body("gpt-4o-mini", false),
                Some("127.0.0.10".parse().unwrap()),
            )
            .await
            .unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        let mut r3 = Vec::new();
        for _ in 0..500 {
            r3 = alerts_of(&store, &record, stormwall_types::DetectorId::R3).await;
            if !r3.is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(r3.len(), 1, "{r3:#?}");
        let rpm = r3[0]
            .alert
            .features
            .iter()
            .find(|f| f.name == "requests_per_minute")
            .unwrap();
        assert!(
            rpm.value > 20.0,
            "more than one replica saw: {:?}",
            r3[0].alert.features
        );
        c.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rate_limit_is_exact_across_replicas() {
        let Some(c) = Cluster::start(3, "").await else {
            return;
        };
        let (key, _) = c.key(0, json!({"tenant": "t", "scope": {"rpm": 30}})).await;
        // Every replica must know the key (pub/sub) before the burst.
        for i in 0..3 {
            for _ in 0..100 {
                if c.replicas[i].data.keys.get(&key[4..16]).is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        let mut tasks = Vec::new();
        for n in 0..90 {
            let url = format!("{}/v1/chat/completions", c.proxies[n % 3]);
            let key = key.clone();
            tasks.push(async move {
                http_request(
                    "POST",
                    &url,
                    &[("authorization", &format!("Bearer {key}"))],
                    chat_body("gpt-4o-mini", false),
                    None,
                )
                .await
                .unwrap()
                .status
                .as_u16()
            });
        }
        let statuses = futures_util::future::join_all(tasks).await;
        let ok = statuses.iter().filter(|&&s| s == 200).count();
        let limited = statuses.iter().filter(|&&s| s == 429).count();
        assert_eq!((ok, limited), (30, 60), "{statuses:?}");
        let events = c.stop().await;
        assert_eq!(
            events.len(),
            90,
            "every request of every replica is one event in the shared store"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_revoked_on_one_replica_is_refused_by_the_others_within_a_second() {
        let Some(c) = Cluster::start(3, "").await else {
            return;
        };
        let (key, id) = c.key(0, json!({"tenant": "t"})).await;
        for i in 1..3 {
            let mut status = 0;
            for _ in 0..100 {
                status = c.chat(i, &key).await;
                if status == 200 {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(status, 200, "replica {i} learned of the new key");
        }
        let r = http_request(
            "POST",
            &format!("{}/admin/keys/{id}/revoke", c.admins[0]),
            &[("authorization", &format!("Bearer {ADMIN_TOKEN}"))],
            "",
            None,
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200);
        let revoked_at = std::time::Instant::now();
        for i in 1..3 {
            loop {
                if c.chat(i, &key).await == 401 {
                    break;
                }
                assert!(
                    revoked_at.elapsed() < Duration::from_secs(1),
                    "replica {i} still serves a revoked key"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        c.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_revoked_on_one_replica_ends_its_streams_on_the_others() {
        let Some(c) = Cluster::start(2, "").await else {
            return;
        };
        let (key, id) = c.key(0, json!({"tenant": "t"})).await;
        c._upstream
            .set_default_fault(Some(Fault::Stall { after_events: 1 }));
        let mut s = None;
        for _ in 0..100 {
            let r = http_stream(
                "POST",
                &format!("{}/v1/chat/completions", c.proxies[1]),
                &[("authorization", &format!("Bearer {key}"))],
                chat_body("gpt-4o-mini", true),
                None,
            )
            .await
            .unwrap();
            if r.status == 200 {
                s = Some(r);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut s = s.expect("replica 1 learned of the new key");
        assert!(s.next_event().await.unwrap().unwrap().json().is_ok());
        c.admin_post(0, &format!("/admin/keys/{id}/revoke")).await;
        assert_cut_for_the_key(&drain_within(&mut s, 5).await);
        let events = c.stop().await;
        assert!(
            events
                .iter()
                .any(|e| e.stream_outcome == Some(StreamOutcome::KeyRevoked)),
            "{events:#?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn redis_outage_falls_back_to_local_limits_and_recovers() {
        if urls().is_none() {
            return;
        }
        // A private Redis we can stop and start.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let start_redis = || {
            std::process::Command::new("redis-server")
                .args([
                    "--port",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ])
                .stdout(std::process::Stdio::null())
                .spawn()
                .expect("redis-server is needed for the outage test")
        };
        let mut redis = start_redis();
        let url = format!("redis://127.0.0.1:{port}");
        for _ in 0..500 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let c = Cluster::start(2, &url).await.unwrap();
        let (key, _) = c
            .key(0, json!({"tenant": "t", "scope": {"rpm": 1000}}))
            .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(c.chat(0, &key).await, 200);
        redis.kill().unwrap();
        let _ = redis.wait();
        // Served throughout, on local limits.
        for i in 0..10 {
            assert_eq!(
                c.chat(i % 2, &key).await,
                200,
                "request {i} during the outage"
            );
        }
        let metrics = http_request("GET", &format!("{}/metrics", c.admins[0]), &[], "", None)
            .await
            .unwrap()
            .text();
        assert!(metrics.contains("stormwall_counters_up 0"), "{metrics}");
        let mut redis = start_redis();
        let mut up = false;
        for _ in 0..100 {
            c.chat(0, &key).await;
            let m = http_request("GET", &format!("{}/metrics", c.admins[0]), &[], "", None)
                .await
                .unwrap()
                .text();
            if m.contains("stormwall_counters_up 1") {
                up = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(up, "counters back on Redis after it returned");
        let events = c.stop().await;
        assert!(events.len() >= 12);
        redis.kill().unwrap();
        let _ = redis.wait();
    }

    /// A relay in front of the test PostgreSQL, and the URL that goes through it.
    async fn pg_relay() -> Option<(stormwall_testkit::TcpRelay, String)> {
        let (pg_url, _) = urls()?;
        let cfg: tokio_postgres::Config = pg_url.parse().unwrap();
        let host = match &cfg.get_hosts()[0] {
            tokio_postgres::config::Host::Tcp(h) => h.clone(),
            #[allow(unreachable_patterns)]
            _ => {
                eprintln!("skipped: PostgreSQL test URL is not TCP");
                return None;
            }
        };
        let port = cfg.get_ports().first().copied().unwrap_or(5432);
        let relay = stormwall_testkit::TcpRelay::start(format!("{host}:{port}"))
            .await
            .unwrap();
        let via = pg_url.replacen(&format!("{host}:{port}"), &relay.addr.to_string(), 1);
        assert_ne!(via, pg_url, "test URL must name host:port explicitly");
        Some((relay, via))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_postgres_outage_keeps_serving_from_cache_and_loses_no_event() {
        let Some((relay, via)) = pg_relay().await else {
            return;
        };
        let c = Cluster::start_via(1, "", Some(&via)).await.unwrap();
        let (key, _) = c.key(0, json!({"tenant": "t"})).await;
        assert_eq!(c.chat(0, &key).await, 200);
        relay.cut();
        let mut served = 0;
        for _ in 0..20 {
            if c.chat(0, &key).await == 200 {
                served += 1;
            }
        }
        assert_eq!(
            served, 20,
            "keys are served from the cache while PostgreSQL is down"
        );
        let dropped_during =
            http_request("GET", &format!("{}/metrics", c.admins[0]), &[], "", None)
                .await
                .unwrap()
                .text();
        assert!(
            dropped_during.contains("stormwall_events_dropped_total 0"),
            "queued, not dropped"
        );
        relay.restore();
        let events = c.stop().await;
        assert_eq!(
            events.len(),
            21,
            "every request recorded once PostgreSQL returned"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keys_are_trusted_from_the_cache_only_for_the_configured_time() {
        let Some((relay, via)) = pg_relay().await else {
            return;
        };
        let c = Cluster::start_in(1, "", Some(&via), unique("swgw"), |c| {
            c.server.key_refresh_secs = 1;
            c.server.key_cache_max_stale_secs = 3;
        })
        .await
        .unwrap();
        let (key, _) = c.key(0, json!({"tenant": "t"})).await;
        assert_eq!(c.chat(0, &key).await, 200);
        relay.cut();
        let cut_at = std::time::Instant::now();
        assert_eq!(c.chat(0, &key).await, 200, "served from the cache at first");
        let mut sent = 2;
        let mut refused_after = None;
        while cut_at.elapsed() < Duration::from_secs(15) {
            sent += 1;
            if c.chat(0, &key).await == 503 {
                refused_after = Some(cut_at.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let refused_after = refused_after.expect("refused once the cache is too old");
        assert!(
            refused_after >= Duration::from_secs(2),
            "not before the bound: {refused_after:?}"
        );
        relay.restore();
        let mut back = false;
        for _ in 0..150 {
            sent += 1;
            if c.chat(0, &key).await == 200 {
                back = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(back, "served again once the store answers");
        let events = c.stop().await;
        assert_eq!(
            events.len(),
            sent,
            "every request recorded, refused ones too"
        );
        assert!(
            events
                .iter()
                .any(|e| e.reject_reason == Some(RejectReason::KeysUnverified))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_in_prompts_are_flagged_by_rule_never_kept() {
    let h = harness().await;
    let (key, _) = h.key(json!({"tenant": "t"})).await;
    // A made-up Stormwall key (valid checksum, never issued) pasted into a prompt.
    let leaked = stormwall_types::ApiKey::generate();
    let body = json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": format!("why does {} fail?", leaked.expose())}]}).to_string();
    assert_eq!(
        h.post("/v1/chat/completions", &key, &body, None)
            .await
            .status,
        200
    );
    assert_eq!(h.chat(&key, "gpt-4o-mini").await.status, 200);
    let events = h.events(2).await;
    assert!(
        !events[0].prompt_credentials.is_empty(),
        "{:?}",
        events[0].prompt_credentials
    );
    assert!(events[1].prompt_credentials.is_empty());
    let stored = serde_json::to_string(&events[0]).unwrap();
    assert!(
        !stored.contains(leaked.expose()),
        "the secret is never recorded"
    );
}

#[path = "gateway/safety.rs"]
mod safety;

#[path = "gateway/ipintel.rs"]
mod ipintel;

#[path = "gateway/cloud_logs.rs"]
mod cloud_logs;
#[path = "gateway/console.rs"]
mod console;
