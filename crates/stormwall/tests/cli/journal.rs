//! The write-ahead event journal through the real binary: two replicas on PostgreSQL and
//! Redis under load; every answer a client received with status 200 has its event in the
//! store, once — across a SIGKILL and restart, and across a PostgreSQL outage longer than
//! the in-memory channel covers. Run when the test services' URLs are set; skip otherwise.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use stormwall_testkit::{TestClient, http_request};

use crate::Server;

const TOKEN: &str = "journal-test-admin-token";

fn services() -> Option<(String, String)> {
    match (
        std::env::var("STORMWALL_TEST_POSTGRES_URL"),
        std::env::var("STORMWALL_TEST_REDIS_URL"),
    ) {
        (Ok(pg), Ok(redis)) if !pg.is_empty() && !redis.is_empty() => Some((pg, redis)),
        _ => {
            eprintln!("skipped: STORMWALL_TEST_POSTGRES_URL / STORMWALL_TEST_REDIS_URL not set");
            None
        }
    }
}

fn unique_schema(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    )
}

/// A replica's config: its own journal directory, the shared schema and Redis prefix;
/// `pg_url_env` names the variable holding the PostgreSQL URL (direct or through a relay).
fn replica_config(
    dir: &Path,
    name: &str,
    schema: &str,
    pg_url_env: &str,
    journal_extra: &str,
    events_extra: &str,
) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let journal = dir.join(format!("journal-{name}"));
    std::fs::write(
        &path,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
key_cache_max_stale_secs = 0
[store]
backend = "postgres"
url_env = "{pg_url_env}"
schema = "{schema}"
[counters]
backend = "redis"
url_env = "STORMWALL_TEST_REDIS_URL"
prefix = "{schema}:"
[events]
flush_interval_ms = 20
{events_extra}
[journal]
dir = "{journal}"
fsync_interval_ms = 50
{journal_extra}
[[upstreams]]
name = "mock"
kind = "mock"
models = ["gpt-4o-mini"]
"#,
            journal = journal.display(),
        ),
    )
    .unwrap();
    path
}

fn serve(config: &Path, env: &[(&str, &str)]) -> Server {
    crate::serve_env(config, TOKEN, env)
}

async fn wait_ready(server: &Server) {
    for _ in 0..600 {
        if let Ok(r) = http_request("GET", &format!("{}/readyz", server.admin), &[], "", None).await
            && r.status == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("replica never became ready");
}

async fn create_key(server: &Server) -> String {
    let r = http_request(
        "POST",
        &format!("{}/admin/keys", server.admin),
        &[("authorization", &format!("Bearer {TOKEN}"))],
        r#"{"tenant":"t"}"#,
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 201, "{}", r.text());
    r.json().unwrap()["key"].as_str().unwrap().to_owned()
}

/// What the clients saw. Each request carries a unique id of the client's own in the
/// OpenAI `user` field, which the gateway records in its event (`end_user.id`): so a stored
/// event names the request it records, whether or not its answer arrived.
#[derive(Default)]
struct Seen {
    next: AtomicU64,
    /// Client id → the event id (`x-request-id`) of each answer received whole with 200.
    received: Mutex<HashMap<String, String>>,
    /// Client id → the proxy it was sent to, for each request whose answer never arrived
    /// whole (connection refused or cut, or a stream without `[DONE]`).
    cut: Mutex<HashMap<String, String>>,
}

impl Seen {
    fn cut_count(&self) -> usize {
        self.cut.lock().unwrap().len()
    }
}

/// `workers` clients sending to `proxy` until `stop`, alternating whole and streamed chat.
fn load(
    proxy: String,
    key: &str,
    workers: usize,
    stop: &Arc<AtomicBool>,
    seen: &Arc<Seen>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..workers)
        .map(|w| {
            let (proxy, stop, seen) = (proxy.clone(), Arc::clone(stop), Arc::clone(seen));
            let auth = format!("Bearer {key}");
            #[allow(clippy::disallowed_methods)] // joined by the test
            tokio::spawn(async move {
                let client = TestClient::new(None);
                let mut i = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    i += 1;
                    let stream = (i + w as u64).is_multiple_of(2);
                    let id = format!("req-{}", seen.next.fetch_add(1, Ordering::SeqCst));
                    let body = format!(
                        r#"{{"model":"gpt-4o-mini","stream":{stream},"user":"{id}","messages":[{{"role":"user","content":"hi"}}]}}"#
                    );
                    let r = client
                        .request(
                            "POST",
                            &format!("{proxy}/v1/chat/completions"),
                            &[("authorization", &auth)],
                            body,
                        )
                        .await;
                    match r {
                        // A stream counts as received only when it completed.
                        Ok(r) if r.status == 200 && (!stream || r.text().contains("data: [DONE]")) => {
                            let event = r.header("x-request-id").unwrap().to_owned();
                            seen.received.lock().unwrap().insert(id, event);
                        }
                        Ok(r) if r.status == 200 => {
                            seen.cut.lock().unwrap().insert(id, proxy.clone());
                        }
                        Ok(r) => panic!("unexpected status {}: {}", r.status, r.text()),
                        Err(_) => {
                            seen.cut.lock().unwrap().insert(id, proxy.clone());
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
            })
        })
        .collect()
}

async fn run_for(
    targets: &[(String, usize)],
    key: &str,
    seen: &Arc<Seen>,
    during: impl AsyncFnOnce(),
) {
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (proxy, workers) in targets {
        tasks.extend(load(proxy.clone(), key, *workers, &stop, seen));
    }
    during().await;
    stop.store(true, Ordering::SeqCst);
    for t in tasks {
        t.await.unwrap();
    }
}

fn sigterm(server: &mut Server) {
    let pid = server.child.id().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    for _ in 0..400 {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "stormwall serve exited with {status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("stormwall serve did not exit after SIGTERM");
}

/// A stored event: its id, status and the client's request id (`end_user.id`).
struct StoredEvent {
    id: String,
    status: i64,
    client_id: Option<String>,
}

/// Every stored event, read straight from the schema (which is dropped after).
async fn stored(pg: &str, schema: &str) -> Vec<StoredEvent> {
    let (client, conn) = tokio_postgres::connect(pg, tokio_postgres::NoTls)
        .await
        .unwrap();
    #[allow(clippy::disallowed_methods)]
    let task = tokio::spawn(conn);
    let rows = client
        .query(
            &format!("SELECT id, status, body_json FROM {schema}.events"),
            &[],
        )
        .await
        .unwrap();
    let out = rows
        .iter()
        .map(|row| {
            let body: serde_json::Value = serde_json::from_str(row.get::<_, &str>(2)).unwrap();
            StoredEvent {
                id: row.get(0),
                status: i64::from(row.get::<_, i32>(1)),
                client_id: body["end_user.id"].as_str().map(str::to_owned),
            }
        })
        .collect();
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .unwrap();
    drop(client);
    let _ = task.await;
    out
}

/// How the stored events matched the clients' requests.
struct Matched {
    /// Answers received whole with status 200.
    received: usize,
    /// Status-200 events of requests whose answer the client never got whole (each one a
    /// request named in `Seen::cut`), by the proxy they were sent to.
    cut_stored: HashMap<String, usize>,
}

/// The exact statement: every request is recorded at most once (by event id and by the
/// client's id); every answer received with 200 has its event with status 200 and the
/// event id the client was told; every status-200 event is of a request whose answer was
/// received, or of one the client saw cut (`Seen::cut`) — no count is tolerated.
fn match_exactly(stored: &[StoredEvent], seen: &Seen) -> Matched {
    let mut by_event = HashSet::new();
    let mut by_client: HashMap<&str, &StoredEvent> = HashMap::new();
    for e in stored {
        assert!(
            by_event.insert(e.id.as_str()),
            "event {} stored twice",
            e.id
        );
        let client = e
            .client_id
            .as_deref()
            .unwrap_or_else(|| panic!("event {} carries no client request id", e.id));
        if let Some(first) = by_client.insert(client, e) {
            panic!(
                "request {client} recorded twice: events {} and {}",
                first.id, e.id
            );
        }
    }
    let received = seen.received.lock().unwrap();
    let cut = seen.cut.lock().unwrap();
    let mut missing = Vec::new();
    for (client, event_id) in received.iter() {
        match by_client.get(client.as_str()) {
            Some(e) if e.status == 200 && e.id == *event_id => {}
            Some(e) => panic!(
                "request {client} answered 200 as event {event_id}; stored as event {} with status {}",
                e.id, e.status
            ),
            None => missing.push(client.clone()),
        }
    }
    assert!(
        missing.is_empty(),
        "{} answered requests have no record: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    let mut cut_stored: HashMap<String, usize> = HashMap::new();
    let mut unexplained = Vec::new();
    for (client, e) in &by_client {
        if e.status != 200 || received.contains_key(*client) {
            continue;
        }
        match cut.get(*client) {
            Some(proxy) => *cut_stored.entry(proxy.clone()).or_default() += 1,
            None => unexplained.push(*client),
        }
    }
    assert!(
        unexplained.is_empty(),
        "status-200 events of requests neither answered nor cut: {unexplained:?}"
    );
    Matched {
        received: received.len(),
        cut_stored,
    }
}

/// Two replicas under load; one is SIGKILLed mid-load and restarted on its journal. Every
/// request is recorded at most once; every answer a client received with status 200 has
/// its event; every other status-200 event is of a request the client saw cut — each named
/// by its id, all sent to the killed replica, at most one per client connection (the
/// requests in flight at the kill, journaled before their last byte could leave).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_killed_mid_load_and_restarted_loses_no_answered_event() {
    let Some((pg, _)) = services() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let schema = unique_schema("swjkill");
    let env = [("PG_URL", pg.as_str())];
    let cfg_a = replica_config(dir.path(), "a", &schema, "PG_URL", "", "");
    let cfg_b = replica_config(dir.path(), "b", &schema, "PG_URL", "", "");
    let mut a = serve(&cfg_a, &env);
    let mut b = serve(&cfg_b, &env);
    wait_ready(&a).await;
    wait_ready(&b).await;
    let key = create_key(&a).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = Arc::new(Seen::default());
    const WORKERS: usize = 6;
    run_for(
        &[(a.proxy.clone(), WORKERS), (b.proxy.clone(), WORKERS)],
        &key,
        &seen,
        async || {
            tokio::time::sleep(Duration::from_secs(3)).await;
            a.child.kill().unwrap(); // SIGKILL: no drain, no flush
            let _ = a.child.wait();
            tokio::time::sleep(Duration::from_secs(1)).await;
        },
    )
    .await;
    let cut_at_kill = seen.cut_count();
    let received_before_restart = seen.received.lock().unwrap().len();
    // Restart on the same journal: what the killed run left is shipped before ready.
    let a2 = serve(&cfg_a, &env);
    wait_ready(&a2).await;
    run_for(
        &[(a2.proxy.clone(), WORKERS), (b.proxy.clone(), WORKERS)],
        &key,
        &seen,
        async || tokio::time::sleep(Duration::from_secs(2)).await,
    )
    .await;
    let mut a2 = a2;
    sigterm(&mut a2);
    sigterm(&mut b);
    let stored = stored(&pg, &schema).await;
    let m = match_exactly(&stored, &seen);
    let on_killed = m.cut_stored.get(&a.proxy).copied().unwrap_or(0);
    eprintln!(
        "received 200: {} ({received_before_restart} before the restart); stored: {}; \
         cut at the kill: {cut_at_kill}, of which stored with 200: {on_killed}",
        m.received,
        stored.len(),
    );
    assert!(received_before_restart > 100, "the load was real");
    assert_eq!(
        seen.cut_count(),
        cut_at_kill,
        "no request cut after the restart"
    );
    assert!(
        seen.cut.lock().unwrap().values().all(|p| *p == a.proxy),
        "only requests to the killed replica were cut"
    );
    assert!(
        on_killed <= WORKERS,
        "at most one request per connection was in flight at the kill: {on_killed}"
    );
}

/// What one outage run saw: the clients' view, the stored events, the largest
/// `journal_bytes` read during the outage.
struct OutageRun {
    seen: Arc<Seen>,
    stored: Vec<StoredEvent>,
    journal_bytes: u64,
}

/// Serves two replicas through a PostgreSQL relay that is cut for longer than a
/// 32-event in-memory channel covers.
async fn outage_run(pg: &str, journal: bool) -> OutageRun {
    let cfg: tokio_postgres::Config = pg.parse().unwrap();
    let host = match &cfg.get_hosts()[0] {
        tokio_postgres::config::Host::Tcp(h) => h.clone(),
        #[allow(unreachable_patterns)]
        _ => panic!("the PostgreSQL test URL must be TCP"),
    };
    let port = cfg.get_ports().first().copied().unwrap_or(5432);
    let relay = stormwall_testkit::TcpRelay::start(format!("{host}:{port}"))
        .await
        .unwrap();
    let via = pg.replacen(&format!("{host}:{port}"), &relay.addr.to_string(), 1);
    assert_ne!(via, pg, "the PostgreSQL test URL must name host:port");
    let dir = tempfile::tempdir().unwrap();
    let schema = unique_schema(if journal { "swjout" } else { "swjoff" });
    let env = [("PG_VIA", via.as_str())];
    let journal_extra = format!("enabled = {journal}");
    // A small channel: the in-memory path covers 32 events of outage.
    let events_extra = "channel_capacity = 32\nretry_for_secs = 600";
    let mk = |name: &str| {
        replica_config(
            dir.path(),
            name,
            &schema,
            "PG_VIA",
            &journal_extra,
            events_extra,
        )
    };
    let (cfg_a, cfg_b) = (mk("a"), mk("b"));
    let mut a = serve(&cfg_a, &env);
    let mut b = serve(&cfg_b, &env);
    wait_ready(&a).await;
    wait_ready(&b).await;
    let key = create_key(&a).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let seen = Arc::new(Seen::default());
    let journal_bytes = Arc::new(AtomicU64::new(0));
    let admin = a.admin.clone();
    let jb = Arc::clone(&journal_bytes);
    run_for(
        &[(a.proxy.clone(), 3), (b.proxy.clone(), 3)],
        &key,
        &seen,
        async || {
            tokio::time::sleep(Duration::from_millis(500)).await;
            relay.cut();
            // Long enough for far more events than the channel holds.
            let until = tokio::time::Instant::now() + Duration::from_secs(4);
            while tokio::time::Instant::now() < until {
                let m = http_request("GET", &format!("{admin}/metrics"), &[], "", None)
                    .await
                    .unwrap()
                    .text();
                if let Some(v) = m
                    .lines()
                    .find(|l| l.starts_with("stormwall_journal_bytes "))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse::<u64>().ok())
                {
                    jb.fetch_max(v, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            relay.restore();
            tokio::time::sleep(Duration::from_millis(500)).await;
        },
    )
    .await;
    assert_eq!(seen.cut_count(), 0, "every request answered");
    sigterm(&mut a);
    sigterm(&mut b);
    OutageRun {
        seen,
        stored: stored(pg, &schema).await,
        journal_bytes: journal_bytes.load(Ordering::SeqCst),
    }
}

/// PostgreSQL unreachable for longer than the in-memory channel covers: with the journal,
/// the status-200 events are exactly the 200 answers received, request by request (no
/// request was cut, so no other 200 event may exist); without it (the control run), the
/// same outage loses events, so the test can tell.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_outage_longer_than_the_channel_loses_no_answered_event() {
    let Some((pg, _)) = services() else {
        return;
    };
    let run = outage_run(&pg, true).await;
    let m = match_exactly(&run.stored, &run.seen);
    eprintln!(
        "journal on: received 200: {}; stored: {}; journal bytes during the outage: {}",
        m.received,
        run.stored.len(),
        run.journal_bytes
    );
    assert!(
        m.received > 200,
        "far more answers than the 32-event channel holds"
    );
    assert!(
        run.journal_bytes > 0,
        "the journal held the events during the outage"
    );
    assert!(m.cut_stored.is_empty(), "no request was cut");

    let run = outage_run(&pg, false).await;
    let received = run.seen.received.lock().unwrap();
    let recorded = run
        .stored
        .iter()
        .filter(|e| e.status == 200)
        .filter(|e| {
            e.client_id
                .as_ref()
                .is_some_and(|c| received.contains_key(c))
        })
        .count();
    eprintln!(
        "journal off (control): received 200: {}; recorded: {recorded}",
        received.len()
    );
    assert!(
        recorded < received.len(),
        "without the journal the outage loses events (else this test proves nothing)"
    );
}
