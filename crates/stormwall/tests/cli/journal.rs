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

/// What the clients saw: the event ids of answers received whole with status 200, and
/// requests that failed on the wire (connection refused or cut).
#[derive(Default)]
struct Seen {
    received: Mutex<Vec<String>>,
    failed: AtomicU64,
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
                    let body = format!(
                        r#"{{"model":"gpt-4o-mini","stream":{stream},"messages":[{{"role":"user","content":"hi"}}]}}"#
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
                        Ok(r) if r.status == 200 => {
                            // A stream counts as received only when it completed.
                            if stream && !r.text().contains("data: [DONE]") {
                                seen.failed.fetch_add(1, Ordering::SeqCst);
                                continue;
                            }
                            let id = r.header("x-request-id").unwrap().to_owned();
                            seen.received.lock().unwrap().push(id);
                        }
                        Ok(r) => panic!("unexpected status {}: {}", r.status, r.text()),
                        Err(_) => {
                            seen.failed.fetch_add(1, Ordering::SeqCst);
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

/// Event id → status of every stored event, read straight from the schema; fails on a
/// duplicate id (the table's key forbids it; this checks nothing slipped around it).
async fn stored(pg: &str, schema: &str) -> HashMap<String, i64> {
    let (client, conn) = tokio_postgres::connect(pg, tokio_postgres::NoTls)
        .await
        .unwrap();
    #[allow(clippy::disallowed_methods)]
    let task = tokio::spawn(conn);
    let rows = client
        .query(&format!("SELECT id, status FROM {schema}.events"), &[])
        .await
        .unwrap();
    let mut out = HashMap::new();
    for row in rows {
        let id: String = row.get(0);
        let status: i64 = i64::from(row.get::<_, i32>(1));
        assert!(out.insert(id, status).is_none(), "an event stored twice");
    }
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .unwrap();
    drop(client);
    let _ = task.await;
    out
}

/// The events stored with status 200 against the answers received with status 200.
fn compare(stored: &HashMap<String, i64>, seen: &Seen) -> (HashSet<String>, HashSet<String>) {
    let received: HashSet<String> = seen.received.lock().unwrap().iter().cloned().collect();
    assert_eq!(
        received.len(),
        seen.received.lock().unwrap().len(),
        "ids are unique"
    );
    let ok: HashSet<String> = stored
        .iter()
        .filter(|(_, s)| **s == 200)
        .map(|(id, _)| id.clone())
        .collect();
    (received, ok)
}

/// Two replicas under load; one is SIGKILLed mid-load and restarted on its journal. Every
/// answer a client received with status 200 has its event, once. The only 200 events no
/// client saw are those of requests the kill cut after their event was journaled and
/// before their last byte left (at most the requests in flight on the killed replica).
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
    let failed_at_kill = seen.failed.load(Ordering::SeqCst);
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
    let (received, ok) = compare(&stored, &seen);
    let missing: Vec<_> = received.difference(&ok).collect();
    let unseen = ok.difference(&received).count();
    eprintln!(
        "received 200: {} ({} before the restart); stored 200: {}; stored, never received: {unseen}; failed on the wire: {failed_at_kill}",
        received.len(),
        received_before_restart,
        ok.len()
    );
    assert!(received_before_restart > 100, "the load was real");
    assert!(
        missing.is_empty(),
        "{} answered requests have no record: {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
    assert!(
        unseen <= WORKERS && unseen as u64 <= failed_at_kill,
        "200 events no client received: {unseen} (in flight on the killed replica: at most {WORKERS})"
    );
    assert!(
        seen.failed.load(Ordering::SeqCst) == failed_at_kill,
        "no failures after the restart"
    );
}

/// Serves two replicas through a PostgreSQL relay that is cut for longer than a
/// 32-event in-memory channel covers; returns (answers received with 200, events stored
/// with 200, every stored 200 was received, journal bytes seen during the outage).
async fn outage_run(pg: &str, journal: bool) -> (usize, usize, bool, u64) {
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
    assert_eq!(
        seen.failed.load(Ordering::SeqCst),
        0,
        "every request answered"
    );
    sigterm(&mut a);
    sigterm(&mut b);
    let stored = stored(pg, &schema).await;
    let (received, ok) = compare(&stored, &seen);
    let all_received = ok.is_subset(&received);
    (
        received.len(),
        ok.intersection(&received).count(),
        all_received,
        journal_bytes.load(Ordering::SeqCst),
    )
}

/// PostgreSQL unreachable for longer than the in-memory channel covers: with the journal,
/// the events stored with status 200 are exactly the 200 answers received; without it
/// (the control run), the same outage loses events, so the test can tell.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_postgres_outage_longer_than_the_channel_loses_no_answered_event() {
    let Some((pg, _)) = services() else {
        return;
    };
    let (received, stored, exact, journal_bytes) = outage_run(&pg, true).await;
    eprintln!(
        "journal on: received 200: {received}; stored 200 of them: {stored}; journal bytes during the outage: {journal_bytes}"
    );
    assert!(
        received > 200,
        "far more answers than the 32-event channel holds"
    );
    assert!(
        journal_bytes > 0,
        "the journal held the events during the outage"
    );
    assert_eq!(stored, received, "every answer received has its event");
    assert!(exact, "no 200 event without an answer received");

    let (received, stored, _, _) = outage_run(&pg, false).await;
    eprintln!("journal off (control): received 200: {received}; stored 200 of them: {stored}");
    assert!(
        stored < received,
        "without the journal the outage loses events (else this test proves nothing)"
    );
}
