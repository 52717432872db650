//! `stormwall simulate --live`: the simulation replayed as real HTTP against a running
//! gateway. Keys are created through the admin API; every simulated network gets its own
//! loopback /24 (`127.X.Y.0/24`) and every host an address in it, which the client socket
//! binds to (Linux routes all of 127/8 to `lo`); `--write-ipdb` writes the matching ip-to-ASN
//! TSV for the gateway's `[ipdb]` and `--write-egress` the `[detect.egress]` list, so the
//! gateway sees the same ASNs, countries and egress flags as the offline simulation. At the
//! end, key statuses and alerts are read back and evaluated like an offline run.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use secrecy::{ExposeSecret, SecretString};
use stormwall_sim::actors::{GatewayView, Req};
use stormwall_sim::world::Net;
use stormwall_sim::{
    DetectorTally, KeyInfo, KeyOutcome, Label, LiveItem, LiveOptions, Report, Simulation,
    finish_report,
};
use stormwall_types::{DetectorId, Severity};
use time::OffsetDateTime;

/// Largest response body read (then dropped).
const MAX_BODY: usize = 4 * 1024 * 1024;
/// Largest admin answer read.
const MAX_ADMIN_BODY: usize = 64 * 1024 * 1024;
/// Most requests in flight from the driver at once.
const MAX_INFLIGHT: usize = 256;
/// Per-request time limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Time limit of one history import call (the gateway stores and replays the batch).
const IMPORT_TIMEOUT: Duration = Duration::from_secs(120);
/// Most events per history import call (the gateway takes at most 10,000).
const IMPORT_BATCH_EVENTS: usize = 5_000;
/// Most bytes per history import call (the gateway takes at most 16 MiB).
const IMPORT_BATCH_BYTES: usize = 8 * 1024 * 1024;
/// How long before the start of the import the history ends.
const HISTORY_END_MARGIN_MS: i64 = 5_000;
/// `event.dataset` of imported history.
const HISTORY_DATASET: &str = "simulated-history";
/// Second octet of the first loopback /24 handed out (127.0.0.0/16 is left to other uses).
const FIRST_OCTET: u16 = 10;

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The simulated networks mapped onto loopback /24s.
#[derive(Debug, Clone)]
pub struct NetMap {
    nets: Vec<Net>,
}

impl NetMap {
    /// Maps each network, in order, to `127.(10 + i / 256).(i % 256).0/24`.
    pub fn new(nets: Vec<Net>) -> anyhow::Result<Self> {
        if nets.len() > (255 - usize::from(FIRST_OCTET)) * 256 {
            bail!("too many simulated networks for 127/8");
        }
        Ok(Self { nets })
    }

    fn index(&self, net: &Net) -> Option<usize> {
        self.nets
            .iter()
            .position(|n| n.prefix == net.prefix && n.asn == net.asn && n.cc == net.cc)
    }

    fn octets(i: usize) -> (u8, u8) {
        let hi = FIRST_OCTET as usize + i / 256;
        (u8::try_from(hi).unwrap_or(255), (i % 256) as u8)
    }

    /// The loopback address of `host` on `net` (an unmapped network gets 127.9.255.x, which
    /// the written IP database does not know).
    pub fn addr(&self, net: &Net, host: u16) -> Ipv4Addr {
        let last = 1 + (host % 250) as u8;
        match self.index(net) {
            Some(i) => {
                let (b, c) = Self::octets(i);
                Ipv4Addr::new(127, b, c, last)
            }
            None => Ipv4Addr::new(127, 9, 255, last),
        }
    }

    /// The gateway IP database for this mapping (ip-to-ASN TSV with the flags column).
    pub fn ipdb_tsv(&self) -> String {
        let mut s = String::from(
            "# range_start\trange_end\tas_number\tcountry_code\tas_description\t[flags]\n\
             # Written by `stormwall simulate --write-ipdb`: simulated networks on loopback /24s.\n",
        );
        for (i, n) in self.nets.iter().enumerate() {
            let (b, c) = Self::octets(i);
            s.push_str(&format!(
                "127.{b}.{c}.0\t127.{b}.{c}.255\t{}\t{}\t{}\t{}\n",
                n.asn,
                n.cc,
                n.org,
                n.flag.map_or("", |f| f.as_str())
            ));
        }
        s
    }

    /// The `[detect.egress]` section naming the anonymising networks' ASNs.
    pub fn egress_toml(&self) -> String {
        use stormwall_detect::EgressFlag;
        let mut by: BTreeMap<&str, Vec<u32>> = BTreeMap::new();
        for n in &self.nets {
            let field = match n.flag {
                Some(EgressFlag::Hosting) => "hosting_asns",
                Some(EgressFlag::Vpn) => "vpn_asns",
                // The config has no proxy list: proxies count with the anonymisers.
                Some(EgressFlag::Tor | EgressFlag::Proxy) => "tor_asns",
                None => continue,
            };
            let v = by.entry(field).or_default();
            if !v.contains(&n.asn) {
                v.push(n.asn);
            }
        }
        let mut s = String::from(
            "# Written by `stormwall simulate --write-egress`: the simulated anonymising egress.\n\
             [detect.egress]\n",
        );
        for (field, mut asns) in by {
            asns.sort_unstable();
            let list: Vec<String> = asns.iter().map(u32::to_string).collect();
            s.push_str(&format!("{field} = [{}]\n", list.join(", ")));
        }
        s
    }
}

/// Where the live gateway is.
#[derive(Debug, Clone)]
pub struct Target {
    /// Proxy base URL.
    pub proxy: String,
    /// Admin base URL.
    pub admin: String,
    /// Admin token.
    pub token: SecretString,
    /// Seconds to wait after the replay for detection to finish before reading back.
    pub settle: Duration,
    /// Days of legitimate history imported before the replay (0: none).
    pub history_days: u32,
}

/// A key as created on the gateway.
#[derive(Debug, Clone)]
pub struct LiveKey {
    /// The gateway's public key id.
    pub id: String,
    /// The tenant on the gateway.
    pub tenant: String,
    secret: SecretString,
}

/// What a live run produced besides the report.
#[derive(Debug)]
pub struct LiveRun {
    /// The evaluation.
    pub report: Report,
    /// The keys, in the simulation's order.
    pub keys: Vec<LiveKey>,
    /// Requests whose response never came (connection errors, timeouts).
    pub failed_requests: u64,
    /// Whether `GET /admin/alerts` answered.
    pub alerts_available: bool,
    /// What the attackers did with each key, in the simulation's order.
    pub attacker_use: Vec<AttackerUse>,
    /// Events of legitimate history imported before the replay.
    pub history_events: u64,
}

/// What the attackers sent with one key during a live replay.
#[derive(Debug, Clone, Copy, Default)]
pub struct AttackerUse {
    /// Attacker requests sent with the key.
    pub requests: u64,
    /// Attacker requests of an abuse phase sent with the key.
    pub abuse_requests: u64,
    /// Abuse-phase requests the gateway served (2xx).
    pub abuse_served: u64,
}

#[derive(Debug, Default)]
struct View {
    stopped: HashSet<usize>,
}

impl GatewayView for View {
    fn stopped(&self, key: usize) -> bool {
        self.stopped.contains(&key)
    }
}

struct Outcome {
    key: usize,
    label: Label,
    status: u16,
    event_id: Option<String>,
    sent_at: OffsetDateTime,
}

/// Small JSON client for the admin API.
struct Admin {
    base: String,
    token: SecretString,
    http: HttpClient,
}

impl Admin {
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let bytes = match &body {
            Some(v) => Bytes::from(serde_json::to_vec(v)?),
            None => Bytes::new(),
        };
        self.call_raw(method, path, bytes).await
    }

    async fn call_raw(
        &self,
        method: Method,
        path: &str,
        bytes: Bytes,
    ) -> anyhow::Result<(u16, serde_json::Value)> {
        let method_is_import = method == Method::POST && path == "/admin/events";
        let req = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header(
                http::header::AUTHORIZATION,
                format!("Bearer {}", self.token.expose_secret()),
            )
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(bytes))?;
        let limit = if method_is_import {
            IMPORT_TIMEOUT
        } else {
            REQUEST_TIMEOUT
        };
        let resp = tokio::time::timeout(limit, self.http.request(req))
            .await
            .context("the admin API did not answer in time")?
            .with_context(|| format!("cannot reach the admin API at {}", self.base))?;
        let status = resp.status().as_u16();
        #[allow(clippy::disallowed_methods)] // bounded by Limited
        let body = Limited::new(resp.into_body(), MAX_ADMIN_BODY)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading an admin answer: {e}"))?
            .to_bytes();
        let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
        Ok((status, json))
    }

    async fn ok(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> anyhow::Result<serde_json::Value> {
        let (status, json) = self.call(method, path, body).await?;
        if !(200..300).contains(&status) {
            let msg = json
                .pointer("/error/message")
                .and_then(|m| m.as_str())
                .unwrap_or("no message");
            bail!("admin API answered {status} for {path}: {msg}");
        }
        Ok(json)
    }
}

fn client_for(local: Option<IpAddr>) -> HttpClient {
    let mut c = HttpConnector::new();
    c.set_local_address(local);
    c.set_nodelay(true);
    c.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(15))
        .pool_max_idle_per_host(4)
        .build(c)
}

/// Value of a header the client program sends, by name (never the prompt).
fn header_value(name: &str, ua: &str, authority: &str, key: &str, len: usize) -> String {
    let python = ua.contains("Python");
    match name {
        "host" => authority.to_owned(),
        "accept-encoding" => "gzip, deflate".to_owned(),
        "connection" => "keep-alive".to_owned(),
        "accept" => "application/json".to_owned(),
        "content-type" => "application/json".to_owned(),
        "user-agent" => ua.to_owned(),
        "authorization" => format!("Bearer {key}"),
        "api-key" => key.to_owned(),
        "content-length" => len.to_string(),
        "accept-language" => "en-US,en;q=0.9".to_owned(),
        "origin" | "referer" => String::new(),
        "x-stainless-lang" => if python { "python" } else { "js" }.to_owned(),
        "x-stainless-package-version" => ua
            .rsplit(' ')
            .next()
            .unwrap_or("1.0.0")
            .trim_start_matches('v')
            .to_owned(),
        "x-stainless-os" => "Linux".to_owned(),
        "x-stainless-arch" => "x64".to_owned(),
        "x-stainless-runtime" => if python { "CPython" } else { "node" }.to_owned(),
        "x-stainless-runtime-version" => if python { "3.12.3" } else { "v20.11.1" }.to_owned(),
        "x-stainless-async" => "false".to_owned(),
        "x-stainless-retry-count" => "0".to_owned(),
        "x-stainless-read-timeout" => "600".to_owned(),
        "x-ms-client-request-id" => "00000000-0000-4000-8000-000000000000".to_owned(),
        _ => "1".to_owned(),
    }
}

/// The request body the simulated client sends (mild synthetic text only).
fn body_of(r: &Req) -> Option<serde_json::Value> {
    use serde_json::json;
    use stormwall_types::Endpoint;
    let text = r.user_text();
    match r.endpoint {
        Endpoint::Models => None,
        Endpoint::Embeddings => Some(json!({"model": r.model, "input": text})),
        Endpoint::ImagesGenerations => Some(json!({
            "model": r.model, "prompt": text, "n": 1, "size": "1024x1024",
        })),
        _ => {
            let mut messages = Vec::new();
            if let Some(sys) = r.system_prompt() {
                messages.push(json!({"role": "system", "content": sys}));
            }
            messages.push(json!({"role": "user", "content": text}));
            let mut body = serde_json::Map::new();
            body.insert("model".into(), json!(r.model));
            body.insert("messages".into(), json!(messages));
            if let Some(m) = r.max_tokens {
                body.insert("max_tokens".into(), json!(m));
            }
            if let Some(u) = r.end_user {
                body.insert("user".into(), json!(format!("u-{u:x}")));
            }
            Some(serde_json::Value::Object(body))
        }
    }
}

/// The JSON body a simulated client sends (empty for a bodiless request).
fn request_body(r: &Req) -> anyhow::Result<Bytes> {
    Ok(match body_of(r) {
        Some(v) => Bytes::from(serde_json::to_vec(&v)?),
        None => Bytes::new(),
    })
}

/// Builds the HTTP request a simulated client sends with `body` (from [`request_body`]):
/// its header names in its order.
fn build_request(
    proxy: &str,
    r: &Req,
    key: &str,
    body: Bytes,
) -> anyhow::Result<Request<Full<Bytes>>> {
    let (method, path, api_version) = r.http_target();
    let url = match api_version {
        Some(v) => format!("{proxy}{path}?api-version={v}"),
        None => format!("{proxy}{path}"),
    };
    let uri: http::Uri = url.parse().context("proxy URL")?;
    let authority = uri.authority().map_or("", |a| a.as_str()).to_owned();
    let mut req = Request::builder().method(method).uri(uri);
    let ua = &*r.program.ua;
    let mut has_auth = false;
    for name in r.program.headers.iter() {
        if (name == "origin" || name == "referer") && !r.program.empty_origin {
            continue;
        }
        has_auth |= name == "authorization" || name == "api-key";
        let v = header_value(name, ua, &authority, key, body.len());
        req = req.header(
            HeaderName::from_bytes(name.as_bytes())?,
            HeaderValue::from_str(&v)?,
        );
    }
    if !has_auth {
        req = req.header(http::header::AUTHORIZATION, format!("Bearer {key}"));
    }
    if r.program.forwarded {
        // Documentation address: the gateway trusts no proxy here, so this only marks
        // the request as forwarded, as a relay's would be.
        req = req.header("x-forwarded-for", "198.51.100.7");
    }
    Ok(req.body(Full::new(body))?)
}

async fn send(client: HttpClient, req: Request<Full<Bytes>>) -> (u16, Option<String>) {
    let fut = async {
        let resp = client.request(req).await.ok()?;
        let status = resp.status().as_u16();
        let id = resp
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        #[allow(clippy::disallowed_methods)] // bounded by Limited; the body is dropped
        let _ = Limited::new(resp.into_body(), MAX_BODY).collect().await;
        Some((status, id))
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
        Ok(Some(r)) => r,
        _ => (0, None),
    }
}

/// Creates the simulation's keys on the gateway (canaries as kind `canary`).
async fn create_keys(admin: &Admin, keys: &[KeyInfo]) -> anyhow::Result<Vec<LiveKey>> {
    let mut out = Vec::with_capacity(keys.len());
    for k in keys {
        let tenant = format!("sim-{}", k.tenant);
        let body = serde_json::json!({
            "tenant": tenant,
            "kind": if k.canary { "canary" } else { "normal" },
            "label": format!("simulate {}", k.profile),
        });
        let created = admin.ok(Method::POST, "/admin/keys", Some(body)).await?;
        let (Some(id), Some(secret)) = (
            created.get("id").and_then(|v| v.as_str()),
            created.get("key").and_then(|v| v.as_str()),
        ) else {
            bail!("the admin API's created key has no id or key");
        };
        out.push(LiveKey {
            id: id.to_owned(),
            tenant,
            secret: SecretString::from(secret.to_owned()),
        });
    }
    Ok(out)
}

/// A UUIDv7-shaped event id for an imported event at `ms`: unique per run through `salt`
/// (the run's start) and `seq`.
fn event_id(ms: i64, salt: u64, seq: u64) -> String {
    use stormwall_detect::sketch::mix64;
    let ms = u64::try_from(ms).unwrap_or(0) & 0xffff_ffff_ffff;
    let a = mix64(salt ^ seq.rotate_left(17));
    let b = mix64(a ^ seq);
    format!(
        "{:08x}-{:04x}-7{:03x}-{:04x}-{:012x}",
        ms >> 16,
        ms & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 50),
        b & 0xffff_ffff_ffff
    )
}

/// The header names the gateway records for `req`, in wire order: the ones the driver
/// sets, then `host` and `content-length` where the HTTP client adds them.
fn wire_header_names(req: &Request<Full<Bytes>>) -> Vec<String> {
    let mut names: Vec<String> = req
        .headers()
        .keys()
        .map(|n| n.as_str().to_owned())
        .collect();
    if !names.iter().any(|n| n == "host") {
        names.push("host".to_owned());
    }
    let bodyless = req.method() == Method::GET || req.method() == Method::HEAD;
    if !bodyless && !names.iter().any(|n| n == "content-length") {
        names.push("content-length".to_owned());
    }
    names
}

/// How imported history maps onto the live world.
struct HistoryMap {
    keys: Vec<LiveKey>,
    netmap: NetMap,
    proxy: String,
    digester: stormwall_gateway::data::digest::PromptDigester,
    /// Simulated end of the history window, milliseconds.
    sim_end: i64,
    /// Unix milliseconds the history ends at.
    end: i64,
    /// Makes event ids unique per run.
    salt: u64,
}

/// The event the live gateway would have recorded for `req` at simulated `sim_ms`: the
/// simulated event rewritten to the live world — re-timed to end just before now, the
/// gateway's key id and tenant, the loopback address of its network, and the request
/// fields (header shape, prompt digests, role-play markers) computed the way the gateway
/// computes them from the request the driver would send.
fn history_event(
    history: &stormwall_sim::History,
    map: &HistoryMap,
    req: &Req,
    sim_ms: i64,
    seq: u64,
) -> anyhow::Result<Option<stormwall_types::UsageEvent>> {
    use stormwall_types::VerdictCategory;
    use stormwall_types::safety::Category;
    let Some(key) = map.keys.get(req.key) else {
        return Ok(None);
    };
    let Some(mut e) = history.event(req, sim_ms, seq) else {
        return Ok(None);
    };
    let ms = map.end - (map.sim_end - sim_ms);
    e.id = event_id(ms, map.salt, seq);
    e.timestamp = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .context("history time")?;
    e.dataset = HISTORY_DATASET.to_owned();
    e.key_id = Some(stormwall_types::KeyId::new(&key.id).context("gateway key id")?);
    e.tenant = Some(key.tenant.clone());
    e.source_ip = IpAddr::V4(map.netmap.addr(&req.net, req.host));
    e.source_port = 32_768 + (seq % 28_000) as u16;
    // A placeholder secret: only the request's shape is used; nothing is sent.
    let body = request_body(req)?;
    let http_req = build_request(&map.proxy, req, "sk-history-placeholder", body.clone())?;
    e.header_names = wire_header_names(&http_req);
    // The gateway screens the rendered text itself: its role-play marker verdict replaces
    // the simulator's label (simulated content hits stay, as a tenant's habit).
    e.safety.retain(|v| {
        v.category != VerdictCategory::RoleplayMarkers && v.category != Category::Jailbreak
    });
    if !body.is_empty()
        && let Ok(parsed) =
            stormwall_gateway::data::request::parse(&body, req.endpoint, &map.digester)
    {
        parsed.note_into(&mut e);
        e.safety.extend(parsed.roleplay_verdict());
    }
    Ok(Some(e))
}

/// Renders the history as import bodies (`{"events": [...]}`, bounded in events and
/// bytes), in time order, onto `tx`. Runs on a blocking thread so that rendering the next
/// batch overlaps the gateway storing the last one.
fn render_history(
    mut history: stormwall_sim::History,
    map: &HistoryMap,
    tx: &tokio::sync::mpsc::Sender<anyhow::Result<(u64, Bytes)>>,
) -> anyhow::Result<()> {
    let mut batch: Vec<u8> = Vec::with_capacity(IMPORT_BATCH_BYTES + 64 * 1024);
    let mut in_batch = 0u64;
    let mut seq = 0u64;
    let send = |batch: &mut Vec<u8>, in_batch: &mut u64| -> anyhow::Result<()> {
        if *in_batch == 0 {
            return Ok(());
        }
        let mut body = Vec::with_capacity(batch.len() + 16);
        body.extend_from_slice(b"{\"events\":[");
        body.extend_from_slice(batch);
        body.extend_from_slice(b"]}");
        batch.clear();
        let n = std::mem::take(in_batch);
        tx.blocking_send(Ok((n, Bytes::from(body))))
            .map_err(|_| anyhow::anyhow!("history import stopped"))
    };
    while let Some((t, req)) = history.next() {
        seq += 1;
        let Some(e) = history_event(&history, map, &req, t, seq)? else {
            continue;
        };
        if in_batch > 0 {
            batch.push(b',');
        }
        serde_json::to_writer(&mut batch, &e)?;
        in_batch += 1;
        if in_batch >= IMPORT_BATCH_EVENTS as u64 || batch.len() >= IMPORT_BATCH_BYTES {
            send(&mut batch, &mut in_batch)?;
        }
    }
    send(&mut batch, &mut in_batch)
}

/// Gives the keys a past: the legitimate actors' traffic (stolen keys' owners included)
/// over `days` of simulated time, re-timed to end just before now, rewritten to the live
/// world and imported through `POST /admin/events` in time order, so the gateway's
/// baselines know the tenants before the first attack. Returns the events imported.
async fn import_history(
    admin: &Admin,
    sim: &Simulation,
    keys: &[LiveKey],
    netmap: &NetMap,
    proxy: &str,
    days: u32,
) -> anyhow::Result<u64> {
    if days == 0 {
        return Ok(0);
    }
    let history = sim.history(days);
    let now_ms = i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .context("clock")?;
    let map = HistoryMap {
        keys: keys.to_vec(),
        netmap: netmap.clone(),
        proxy: proxy.to_owned(),
        digester: stormwall_gateway::data::digest::PromptDigester::default(),
        sim_end: history.end_ms(),
        end: now_ms - HISTORY_END_MARGIN_MS,
        salt: now_ms.unsigned_abs(),
    };
    // Two batches in flight at most: one being stored, one being rendered.
    let (tx, mut rx) = tokio::sync::mpsc::channel(1);
    #[allow(clippy::disallowed_methods)]
    // a CLI command; joined below, and ends when `rx` is dropped
    let producer = tokio::task::spawn_blocking(move || {
        if let Err(e) = render_history(history, &map, &tx) {
            let _ = tx.blocking_send(Err(e));
        }
    });
    let mut imported = 0u64;
    while let Some(batch) = rx.recv().await {
        let (n, body) = batch?;
        post_history(admin, body).await?;
        imported += n;
    }
    producer.await.context("history rendering")?;
    Ok(imported)
}

async fn post_history(admin: &Admin, body: Bytes) -> anyhow::Result<()> {
    let (status, json) = admin.call_raw(Method::POST, "/admin/events", body).await?;
    if status == 404 || status == 405 {
        bail!("the gateway cannot import history (no POST /admin/events): use --history-days 0");
    }
    if !(200..300).contains(&status) {
        let msg = json
            .pointer("/error/message")
            .and_then(|m| m.as_str())
            .unwrap_or("no message");
        bail!("admin API answered {status} for POST /admin/events: {msg}");
    }
    Ok(())
}

/// Runs the replay and evaluates it.
pub async fn run(
    sim: Simulation,
    opts: LiveOptions,
    target: &Target,
    seed: u64,
    days: u32,
    min_severity: Severity,
) -> anyhow::Result<LiveRun> {
    let netmap = NetMap::new(sim.networks_in_use())?;
    let truth: Vec<KeyInfo> = sim.keys().to_vec();
    let admin = Admin {
        base: target.admin.trim_end_matches('/').to_owned(),
        token: target.token.clone(),
        http: client_for(None),
    };
    let keys = create_keys(&admin, &truth).await?;
    let proxy = target.proxy.trim_end_matches('/').to_owned();
    let mut history_events = 0;
    if target.history_days > 0 {
        let began = Instant::now();
        history_events =
            import_history(&admin, &sim, &keys, &netmap, &proxy, target.history_days).await?;
        eprintln!(
            "imported {history_events} events of legitimate history ({} days) in {:.1} s",
            target.history_days,
            began.elapsed().as_secs_f64()
        );
    }
    eprintln!(
        "created {} keys ({} attack, {} canary); replaying for {:.0} s",
        keys.len(),
        truth.iter().filter(|k| k.scenario.is_some()).count(),
        truth.iter().filter(|k| k.canary).count(),
        opts.duration_ms as f64 / 1000.0
    );
    let mut replay = sim.live(opts);
    let mut view = View::default();
    let mut clients: HashMap<Ipv4Addr, HttpClient> = HashMap::new();
    let mut tasks: tokio::task::JoinSet<Outcome> = tokio::task::JoinSet::new();
    let mut outcomes: Vec<Outcome> = Vec::new();
    let mut failed = 0u64;
    let start = tokio::time::Instant::now();
    let wall_start = Instant::now();

    let mut absorb = |o: Outcome, view: &mut View, outcomes: &mut Vec<Outcome>| {
        if o.status == 401 {
            view.stopped.insert(o.key);
        }
        if o.status == 0 {
            failed += 1;
        }
        outcomes.push(o);
    };
    while let Some(at) = replay.next_at() {
        let deadline = start + Duration::from_millis(u64::try_from(at).unwrap_or(0));
        loop {
            tokio::select! {
                Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                    if let Ok(o) = done {
                        absorb(o, &mut view, &mut outcomes);
                    }
                }
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        while tasks.len() >= MAX_INFLIGHT {
            if let Some(Ok(o)) = tasks.join_next().await {
                absorb(o, &mut view, &mut outcomes);
            }
        }
        match replay.step(&view) {
            Some(LiveItem::Request { req, label }) => {
                let Some(key) = keys.get(req.key) else {
                    continue;
                };
                let ip = netmap.addr(&req.net, req.host);
                let client = clients
                    .entry(ip)
                    .or_insert_with(|| client_for(Some(IpAddr::V4(ip))))
                    .clone();
                let request = build_request(
                    &proxy,
                    &req,
                    key.secret.expose_secret(),
                    request_body(&req)?,
                )?;
                let k = req.key;
                tasks.spawn(async move {
                    let sent_at = OffsetDateTime::now_utc();
                    let (status, event_id) = send(client, request).await;
                    Outcome {
                        key: k,
                        label,
                        status,
                        event_id,
                        sent_at,
                    }
                });
            }
            Some(LiveItem::Revoke { key }) | Some(LiveItem::Exposure { key }) => {
                // The gateway answers a leaked-key report by revoking the key; an operator
                // revocation is the same call.
                if let Some(k) = keys.get(key) {
                    admin
                        .ok(
                            Method::POST,
                            &format!("/admin/keys/{}/revoke", k.id),
                            Some(serde_json::json!({"reason": "simulated leak"})),
                        )
                        .await?;
                    view.stopped.insert(key);
                }
            }
            None => {}
        }
    }
    while let Some(done) = tasks.join_next().await {
        if let Ok(o) = done {
            absorb(o, &mut view, &mut outcomes);
        }
    }
    eprintln!(
        "sent {} requests in {:.1} s ({failed} without an answer); waiting {:.0} s for detection",
        outcomes.len(),
        wall_start.elapsed().as_secs_f64(),
        target.settle.as_secs_f64()
    );
    tokio::time::sleep(target.settle).await;

    // Read back: statuses and alerts.
    let listed = admin.ok(Method::GET, "/admin/keys", None).await?;
    let status: HashMap<String, String> = listed
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|k| {
                    Some((
                        k.get("id")?.as_str()?.to_owned(),
                        k.get("status")?.as_str()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut alerts: Vec<(usize, serde_json::Value)> = Vec::new();
    let mut alerts_available = true;
    for (i, k) in keys.iter().enumerate() {
        let (code, json) = admin
            .call(
                Method::GET,
                &format!("/admin/alerts?key_id={}&limit=10000", k.id),
                None,
            )
            .await?;
        if code == 404 {
            alerts_available = false;
            break;
        }
        if !(200..300).contains(&code) {
            bail!("admin API answered {code} for /admin/alerts");
        }
        for a in json
            .get("alerts")
            .and_then(|a| a.as_array())
            .cloned()
            .unwrap_or_default()
        {
            alerts.push((i, a));
        }
    }
    let mut attacker_use = vec![AttackerUse::default(); keys.len()];
    for o in &outcomes {
        if o.label.scenario.is_none() {
            continue;
        }
        if let Some(u) = attacker_use.get_mut(o.key) {
            u.requests += 1;
            if o.label.abuse {
                u.abuse_requests += 1;
                if (200..300).contains(&o.status) {
                    u.abuse_served += 1;
                }
            }
        }
    }
    let report = evaluate(
        &truth,
        &keys,
        &outcomes,
        &status,
        &alerts,
        seed,
        days,
        min_severity,
    );
    Ok(LiveRun {
        report,
        keys,
        failed_requests: failed,
        alerts_available,
        attacker_use,
        history_events,
    })
}

fn severity_of(a: &serde_json::Value) -> Option<Severity> {
    serde_json::from_value(a.get("severity")?.clone()).ok()
}

fn detector_of(a: &serde_json::Value) -> Option<DetectorId> {
    serde_json::from_value(a.get("detector")?.clone()).ok()
}

fn time_of(a: &serde_json::Value, field: &str) -> Option<OffsetDateTime> {
    stormwall_types::timefmt::parse(a.get(field)?.as_str()?).ok()
}

/// The offline report's figures, from what the gateway answered and stored.
#[allow(clippy::too_many_arguments)]
fn evaluate(
    truth: &[KeyInfo],
    keys: &[LiveKey],
    outcomes: &[Outcome],
    status: &HashMap<String, String>,
    alerts: &[(usize, serde_json::Value)],
    seed: u64,
    days: u32,
    min_severity: Severity,
) -> Report {
    let n = truth.len();
    let mut r = Report {
        seed,
        days,
        tenants: truth
            .iter()
            .map(|k| &*k.tenant)
            .collect::<HashSet<_>>()
            .len(),
        min_severity,
        alerts: alerts.len() as u64,
        ..Report::default()
    };
    let mut ko = vec![KeyOutcome::default(); n];
    let mut attacker_ids: HashSet<&str> = HashSet::new();
    let mut sorted: Vec<&Outcome> = outcomes.iter().collect();
    sorted.sort_by_key(|o| o.sent_at);
    for o in sorted {
        r.events += 1;
        let Some(k) = ko.get_mut(o.key) else {
            continue;
        };
        if o.label.scenario.is_none() {
            continue;
        }
        r.attacker_events += 1;
        if let Some(id) = &o.event_id {
            attacker_ids.insert(id);
        }
        let at = unix_ms(o.sent_at);
        k.first_attack.get_or_insert(at);
        if o.label.abuse && k.abuse_start.is_none() {
            k.abuse_start = Some(at);
            k.active_at_abuse = (200..300).contains(&o.status) || o.status == 429;
        }
        if k.abuse_start.is_some() && (200..300).contains(&o.status) {
            k.served_after_abuse += 1;
        }
    }
    // The gateway's key statuses at the end say which keys were stopped, not when.
    for (o, k) in ko.iter_mut().zip(keys) {
        o.stopped_untimed = status
            .get(&k.id)
            .is_some_and(|s| s == "suspended" || s == "revoked");
    }
    // Per key: detected (true alert at or above the severity), first detection, detectors.
    let mut per_det: Vec<DetectorTally> = vec![DetectorTally::default(); DetectorId::ALL.len()];
    for (i, a) in alerts {
        let Some(d) = detector_of(a) else {
            continue;
        };
        let is_attack_key = truth.get(*i).is_some_and(|k| k.scenario.is_some());
        let evidence: Vec<&str> = a
            .get("evidence")
            .and_then(|e| e.as_array())
            .map(|e| e.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default();
        let true_alert = evidence.iter().any(|id| attacker_ids.contains(id))
            || d == DetectorId::E1 && is_attack_key;
        if let Some(pd) = per_det.get_mut(d.index()) {
            pd.0 += 1;
            if true_alert {
                pd.1 += 1;
                pd.2.insert(*i);
            } else {
                pd.3.insert(*i);
            }
        }
        let Some(o) = ko.get_mut(*i) else {
            continue;
        };
        if severity_of(a).is_some_and(|s| s >= min_severity) {
            if true_alert {
                if let Some(at) = time_of(a, "at").map(unix_ms) {
                    o.detected_at = Some(o.detected_at.map_or(at, |x| x.min(at)));
                }
                o.detectors.insert(d.index());
            } else {
                o.legit_alerted = true;
            }
        }
    }
    finish_report(&mut r, truth, &ko, &per_det);
    r
}

fn unix_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}
