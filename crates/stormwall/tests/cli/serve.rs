//! `serve`, `keys`, `events export`, `config check` and `demo` through the real binary.

use std::path::Path;
use std::process::{Child, Command};
use std::time::Duration;

use serde_json::Value;
use stormwall_testkit::http_request;

const TOKEN: &str = "cli-test-admin-token";

use crate::{BIN, Server};

fn serve(config: &Path) -> Server {
    crate::serve_with(config, TOKEN)
}

fn stormwall(args: &[&str]) -> std::process::Output {
    crate::run_with(args, TOKEN)
}

fn repo_root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))
}

fn write_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("stormwall.toml");
    let text = crate::mock_gateway_config(
        &dir.join("sw.db"),
        &repo_root().join("tests/data/ip2asn-test.tsv"),
        &["gpt-4o-mini", "text-embedding-3-small", "dall-e-3"],
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn sigterm(child: &mut Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    panic!("stormwall serve did not exit after SIGTERM");
}

/// Replaces values that change from run to run, so the rest can be snapshotted.
fn normalize(v: &mut Value) {
    const VOLATILE: &[&str] = &[
        "@timestamp",
        "event.id",
        "key.id",
        "key.last4",
        "source.port",
        "event.duration_ms",
        "upstream.ttfb_ms",
        "prompt.minhash",
        "created_at",
        "updated_at",
        "id",
        "key",
        "last4",
    ];
    if let Value::Object(map) = v {
        for (k, val) in map.iter_mut() {
            if VOLATILE.contains(&k.as_str()) {
                *val = Value::String("[volatile]".into());
            } else {
                normalize(val);
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_keys_requests_shutdown_and_export() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let check = stormwall(&["config", "check", "--config", config.to_str().unwrap()]);
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // The console is on by default, and without a read-only token the check says so.
    assert!(
        String::from_utf8_lossy(&check.stderr)
            .contains("console at http://127.0.0.1:0/console/ (admin sign-in only"),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    // No [safety] encoder_dir: the fast tier screens alone, and the check says so.
    assert!(
        String::from_utf8_lossy(&check.stdout).contains("safety: fast tier only"),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );

    let mut server = serve(&config);
    let out = stormwall(&[
        "keys",
        "create",
        "--tenant",
        "acme",
        "--model",
        "gpt-4o-mini",
        "--rpm",
        "5",
        "--json",
        "--admin-url",
        &server.admin,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("swk_") && key.contains(&id));
    let mut snap = created.clone();
    normalize(&mut snap);
    insta::assert_json_snapshot!("keys_create_json", snap);

    let auth = format!("Bearer {key}");
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Hello"}]}"#;
    let r = http_request(
        "POST",
        &format!("{}/v1/chat/completions", server.proxy),
        &[("authorization", &auth), ("user-agent", "cli-test/1.0")],
        body,
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());

    let list = stormwall(&["keys", "list", "--json", "--admin-url", &server.admin]);
    let listed: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 1);
    assert!(
        !String::from_utf8_lossy(&list.stdout).contains(&key),
        "the secret is shown only at creation"
    );
    for verb in ["suspend", "resume", "show"] {
        let o = stormwall(&["keys", verb, &id, "--json", "--admin-url", &server.admin]);
        assert!(
            o.status.success(),
            "{verb}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let rotated = stormwall(&[
        "keys",
        "rotate",
        &id,
        "--grace-secs",
        "60",
        "--json",
        "--admin-url",
        &server.admin,
    ]);
    let rotated: Value = serde_json::from_slice(&rotated.stdout).unwrap();
    assert_eq!(rotated["rotated_from"], id.as_str());
    let revoked = stormwall(&[
        "keys",
        "revoke",
        &id,
        "--reason",
        "test",
        "--json",
        "--admin-url",
        &server.admin,
    ]);
    let revoked: Value = serde_json::from_slice(&revoked.stdout).unwrap();
    assert_eq!(revoked["status"], "revoked");
    let missing = stormwall(&["keys", "show", "000000000000", "--admin-url", &server.admin]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("404"));

    let status = sigterm(&mut server.child);
    assert!(status.success(), "graceful exit: {status:?}");

    let exported = dir.path().join("events.jsonl");
    let out = stormwall(&[
        "events",
        "export",
        "--config",
        config.to_str().unwrap(),
        "--output",
        exported.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&exported).unwrap();
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(events.len(), 1, "one request, one event");
    let mut event = events[0].clone();
    assert_eq!(event["key.id"], id.as_str());
    assert!(
        !text.contains("Be brief") && !text.contains(&key),
        "no prompt text or key in events"
    );
    normalize(&mut event);
    insta::assert_json_snapshot!("exported_event", event);
    // Lines read back as the event type: the export is the detectors' input format.
    let _: stormwall_types::UsageEvent =
        serde_json::from_str(text.lines().next().unwrap()).unwrap();
}

#[test]
fn config_check_reports_clear_errors_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[server]\nlisten = \"nope\"\n", "listen"),
        ("[serverx]\n", "unknown field"),
        (
            "[[upstreams]]\nname = \"o\"\nkind = \"openai\"\nbase_url = \"https://api.openai.com/v1\"\napi_key_env = \"SW_TEST_UNSET_VAR\"\nmodels = [\"m\"]\n",
            "SW_TEST_UNSET_VAR",
        ),
        ("", "no [[upstreams]]"),
    ];
    // Follow mode and the cloud detectors' thresholds are checked too.
    let mock = "[[upstreams]]\nname = \"m\"\nkind = \"mock\"\nmodels = [\"m\"]\n";
    let logs_dir = dir.path().display().to_string();
    let follow = [
        (
            format!("{mock}[[logs]]\nname = \"aws\"\ndir = \"/nonexistent/ct\"\n"),
            "[[logs]] aws: dir /nonexistent/ct is not a folder".to_owned(),
        ),
        (
            format!("{mock}[[logs]]\ndir = \"{logs_dir}\"\nsource = \"cloudtrial\"\n"),
            "unknown log source".to_owned(),
        ),
        (
            format!("{mock}[detect.cloud]\np7_regions = 1\n"),
            "[detect.cloud] p7_regions: must be at least 2".to_owned(),
        ),
        (
            format!("{mock}[events]\nretention_days = 7\n"),
            "[events] retention_days must be 0 (keep forever) or at least 32".to_owned(),
        ),
    ];
    let cases: Vec<(String, String)> = cases
        .iter()
        .map(|(t, n)| ((*t).to_owned(), (*n).to_owned()))
        .chain(follow)
        .collect();
    for (i, (text, needle)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("c{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let out = stormwall(&["config", "check", "--config", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{text}: {err}");
        assert!(err.contains(needle), "{text}: expected {needle:?} in {err}");
    }
    let out = stormwall(&["config", "check", "--config", "/nonexistent/stormwall.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let local = repo_root().join("examples/local.toml");
    let out = Command::new(BIN)
        .current_dir(repo_root())
        .args(["config", "check", "--config"])
        .arg(&local)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "examples/local.toml: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn demo_runs_on_the_embedded_default() {
    let out = Command::new(BIN)
        .current_dir(repo_root())
        .arg("demo")
        .env("STORMWALL_LOG", "error")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for needle in [
        "Chat completion: 200",
        "outside its scope): 403",
        "429",
        "revoked",
        "Canary key used: 401",
        "content_policy_violation",
        "Key status: suspended",
        "alert P3 (high)",
        "Console: http://127.0.0.1:",
        "Events recorded (",
    ] {
        assert!(stdout.contains(needle), "missing {needle:?} in\n{stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_keep_running_leaves_the_console_up_until_interrupted() {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(BIN)
        .current_dir(repo_root())
        .args(["demo", "--keep-running"])
        .env("STORMWALL_LOG", "error")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut console, mut token) = (None, None);
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(url) = line.strip_prefix("Console: ") {
            console = Some(url.trim().to_owned());
        }
        if let Some(t) = line.split("admin token: ").nth(1) {
            token = Some(t.trim().to_owned());
            break;
        }
    }
    let (console, token) = (console.expect("console address"), token.expect("token"));
    std::thread::spawn(move || for _ in lines {});
    let login = http_request("GET", &format!("{console}login"), &[], "", None)
        .await
        .unwrap();
    assert_eq!(login.status, 200);
    let signed_in = http_request(
        "POST",
        &format!("{console}login"),
        &[("content-type", "application/x-www-form-urlencoded")],
        format!("token={token}"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(signed_in.status, 303);
    assert!(signed_in.headers.contains_key("set-cookie"));
    let pid = child.id().to_string();
    Command::new("kill").args(["-INT", &pid]).status().unwrap();
    for _ in 0..200 {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    panic!("demo --keep-running did not stop on SIGINT");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leak_reports_refresh_keys_writes_a_checked_key_file() {
    use stormwall_testkit::{Fault, MockUpstream};
    let doc = serde_json::json!({"public_keys": [{
        "key_identifier": "90a421169f0a406205f1563a953312f0be898d3c7b6c06b681aa86a874555f4a",
        "key": "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE9MJJHnMfn2+H4xL4YaPDA4RpJqUq\nkCmRCBnYERxZanmcpzQSXs1X/AljlKkbJ8qpVIW4clayyef9gWhFbNHWAA==\n-----END PUBLIC KEY-----\n",
        "is_current": true
    }]});
    let server = MockUpstream::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("keys.json");
    #[allow(clippy::disallowed_methods)]
    // test: runs the blocking CLI process, awaited by each caller
    let fetch = |body: String| {
        server.push_fault(Fault::Response {
            status: 200,
            headers: vec![("content-type".into(), "application/json".into())],
            body,
        });
        let url = format!("{}/v1/models", server.url());
        let out = out.clone();
        tokio::task::spawn_blocking(move || {
            stormwall(&[
                "leak-reports",
                "refresh-keys",
                "--url",
                &url,
                "--out",
                out.to_str().unwrap(),
            ])
        })
    };
    let ok = fetch(doc.to_string()).await.unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(
        written["public_keys"][0]["key_identifier"],
        doc["public_keys"][0]["key_identifier"]
    );
    // A document with a key that is not P-256 is refused and the old file kept.
    let bad = serde_json::json!({"public_keys": [{"key_identifier": "x", "key": "AAAA", "is_current": true}]});
    let refused = fetch(bad.to_string()).await.unwrap();
    assert_eq!(refused.status.code(), Some(2));
    assert_eq!(
        serde_json::from_str::<Value>(&std::fs::read_to_string(&out).unwrap()).unwrap(),
        written
    );
}

/// Two replicas on PostgreSQL and Redis; one is SIGKILLed mid-load. The other keeps serving,
/// and every event the store holds is whole and unique. Runs when the test services' URLs
/// are set (as `.ci/run` does); skips when they are not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_killed_mid_load_does_not_stop_the_other() {
    let (Ok(pg), Ok(redis)) = (
        std::env::var("STORMWALL_TEST_POSTGRES_URL"),
        std::env::var("STORMWALL_TEST_REDIS_URL"),
    ) else {
        eprintln!("skipped: STORMWALL_TEST_POSTGRES_URL / STORMWALL_TEST_REDIS_URL not set");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let schema = format!(
        "swkill_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let config = dir.path().join("scaled.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
[store]
backend = "postgres"
url_env = "STORMWALL_TEST_POSTGRES_URL"
schema = "{schema}"
[counters]
backend = "redis"
url_env = "STORMWALL_TEST_REDIS_URL"
prefix = "{schema}:"
[events]
flush_interval_ms = 20
[journal]
dir = "{journal}"
[[upstreams]]
name = "mock"
kind = "mock"
models = ["gpt-4o-mini"]
"#,
            journal = dir.path().join("journal-a").display()
        ),
    )
    .unwrap();
    // Each replica journals in its own directory.
    let config_b = dir.path().join("scaled-b.toml");
    std::fs::write(
        &config_b,
        std::fs::read_to_string(&config)
            .unwrap()
            .replace("journal-a", "journal-b"),
    )
    .unwrap();
    let _ = (&pg, &redis);
    let mut a = serve(&config);
    let mut b = serve(&config_b);
    let out = stormwall(&[
        "keys",
        "create",
        "--tenant",
        "t",
        "--rpm",
        "100000",
        "--json",
        "--admin-url",
        &a.admin,
    ]);
    let key = serde_json::from_slice::<Value>(&out.stdout).unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let auth = format!("Bearer {key}");
    let body = r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hi"}]}"#;
    let (mut sent, mut served, mut refused) = (0u32, 0u32, 0u32);
    let mut served_by_b = 0u32;
    for i in 0..200 {
        if i == 100 {
            a.child.kill().unwrap(); // SIGKILL: no drain, no flush
            let _ = a.child.wait();
        }
        for (name, server) in [("a", &a), ("b", &b)] {
            sent += 1;
            match http_request(
                "POST",
                &format!("{}/v1/chat/completions", server.proxy),
                &[("authorization", &auth)],
                body,
                None,
            )
            .await
            {
                Ok(r) if r.status == 200 => {
                    served += 1;
                    if name == "b" {
                        served_by_b += 1;
                    }
                }
                _ => refused += 1,
            }
        }
    }
    assert_eq!(
        served_by_b, 200,
        "the surviving replica served every request sent to it"
    );
    assert!(sigterm(&mut b.child).success());
    let exported = dir.path().join("events.jsonl");
    let o = Command::new(BIN)
        .args([
            "events",
            "export",
            "--config",
            config.to_str().unwrap(),
            "--output",
            exported.to_str().unwrap(),
        ])
        .env("STORMWALL_LOG", "warn")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = std::fs::read_to_string(&exported).unwrap();
    let ids: std::collections::HashSet<String> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<stormwall_types::UsageEvent>(l)
                .unwrap()
                .id
        })
        .collect();
    let stored = ids.len() as u32;
    eprintln!("sent {sent}, served {served}, refused {refused}, events stored {stored}");
    assert_eq!(
        stored as usize,
        text.lines().count(),
        "no event stored twice"
    );
    assert!(
        stored >= served_by_b,
        "every request the survivor served (and flushed at SIGTERM) is stored"
    );
    assert!(stored <= served, "no event without a request");
    // Drop the test schema.
    let (client, conn) = tokio_postgres::connect(&pg, tokio_postgres::NoTls)
        .await
        .unwrap();
    #[allow(clippy::disallowed_methods)]
    let task = tokio::spawn(conn);
    client
        .batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .unwrap();
    drop(client);
    let _ = task.await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_list_show_ack_and_false_positive() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let mut server = serve(&config);
    let admin = server.admin.clone();
    let out = stormwall(&[
        "keys",
        "create",
        "--tenant",
        "acme",
        "--kind",
        "canary",
        "--json",
        "--admin-url",
        &admin,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (key, id) = (
        created["key"].as_str().unwrap().to_owned(),
        created["id"].as_str().unwrap().to_owned(),
    );
    let r = http_request(
        "POST",
        &format!("{}/v1/chat/completions", server.proxy),
        &[("authorization", &format!("Bearer {key}"))],
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}"#,
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);
    // The canary's use becomes an H1 alert (detection runs in serve by default).
    let mut alerts = Value::Null;
    for _ in 0..100 {
        let o = stormwall(&[
            "alerts",
            "list",
            "--key",
            &id,
            "--json",
            "--admin-url",
            &admin,
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        alerts = serde_json::from_slice(&o.stdout).unwrap();
        if !alerts["alerts"].as_array().unwrap().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let alert = &alerts["alerts"][0];
    assert_eq!(alert["detector"], "H1", "{alerts:#}");
    let alert_id = alert["id"].as_str().unwrap().to_owned();
    // The table names the detector and the key; `show` explains and lists evidence.
    let table = stormwall(&["alerts", "list", "--detector", "H1", "--admin-url", &admin]);
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.contains("H1") && table.contains(&id), "{table}");
    let shown = stormwall(&["alerts", "show", &alert_id, "--admin-url", &admin]);
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(
        shown.contains("explanation:") && shown.contains("evidence:    1 event"),
        "{shown}"
    );
    assert!(!shown.contains(&key), "no secret in the output");
    for (verb, status) in [
        ("ack", "acknowledged"),
        ("false-positive", "false_positive"),
    ] {
        let o = stormwall(&[
            "alerts",
            verb,
            &alert_id,
            "--note",
            "checked",
            "--json",
            "--admin-url",
            &admin,
        ]);
        assert!(
            o.status.success(),
            "{verb}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["status"], status);
        assert_eq!(v["note"], "checked");
    }
    // Bad input is a clear error with exit code 2, not a panic.
    let o = stormwall(&["alerts", "list", "--detector", "Z9", "--admin-url", &admin]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown detector"));
    let o = stormwall(&["alerts", "show", "no-such-alert", "--admin-url", &admin]);
    assert_eq!(o.status.code(), Some(2));
    // The changes are in the audit log, whose chain verifies.
    let o = stormwall(&[
        "audit",
        "list",
        "--object",
        &alert_id,
        "--admin-url",
        &admin,
    ]);
    let listed = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        listed.contains("alert.acknowledged") && listed.contains("alert.false_positive"),
        "{listed}"
    );
    let o = stormwall(&["audit", "verify", "--admin-url", &admin]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("audit log ok: 3 records"));
    sigterm(&mut server.child);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incidents_list_show_ack_and_false_positive() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let mut server = serve(&config);
    let admin = server.admin.clone();
    let out = stormwall(&[
        "keys",
        "create",
        "--tenant",
        "acme",
        "--kind",
        "canary",
        "--json",
        "--admin-url",
        &admin,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Value = serde_json::from_slice(&out.stdout).unwrap();
    let (key, id) = (
        created["key"].as_str().unwrap().to_owned(),
        created["id"].as_str().unwrap().to_owned(),
    );
    let r = http_request(
        "POST",
        &format!("{}/v1/chat/completions", server.proxy),
        &[("authorization", &format!("Bearer {key}"))],
        r#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}"#,
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);
    // The canary's H1 alert opens an incident about the key.
    let mut listed = Value::Null;
    for _ in 0..100 {
        let o = stormwall(&[
            "incidents",
            "list",
            "--key",
            &id,
            "--json",
            "--admin-url",
            &admin,
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        listed = serde_json::from_slice(&o.stdout).unwrap();
        if !listed["incidents"].as_array().unwrap().is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let inc = &listed["incidents"][0];
    assert_eq!(inc["severity"], "critical", "{listed:#}");
    assert_eq!(inc["status"], "open");
    let inc_id = inc["id"].as_str().unwrap().to_owned();
    let alert_id = inc["alert_ids"][0].as_str().unwrap().to_owned();
    // The table names the subject and the stages; `show` gives the timeline and alerts.
    let table = stormwall(&[
        "incidents",
        "list",
        "--severity",
        "high",
        "--admin-url",
        &admin,
    ]);
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(
        table.contains(&format!("key:{id}")) && table.contains("harvest"),
        "{table}"
    );
    let shown = stormwall(&["incidents", "show", &inc_id, "--admin-url", &admin]);
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(
        shown.contains("timeline:") && shown.contains("H1") && shown.contains(&alert_id),
        "{shown}"
    );
    assert!(!shown.contains(&key), "no secret in the output");
    // Ack and false-positive apply to the incident's alert too.
    for (verb, status) in [
        ("ack", "acknowledged"),
        ("false-positive", "false_positive"),
    ] {
        let o = stormwall(&[
            "incidents",
            verb,
            &inc_id,
            "--note",
            "checked",
            "--json",
            "--admin-url",
            &admin,
        ]);
        assert!(
            o.status.success(),
            "{verb}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let v: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["status"], status);
        assert_eq!(v["note"], "checked");
        let o = stormwall(&[
            "alerts",
            "list",
            "--key",
            &id,
            "--json",
            "--admin-url",
            &admin,
        ]);
        let alerts: Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(alerts["alerts"][0]["status"], status, "{alerts:#}");
    }
    let o = stormwall(&["incidents", "resolve", &inc_id, "--admin-url", &admin]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("resolved"));
    // Bad input is a clear error with exit code 2, not a panic.
    let o = stormwall(&[
        "incidents",
        "list",
        "--status",
        "done",
        "--admin-url",
        &admin,
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("status must be"));
    let o = stormwall(&[
        "incidents",
        "show",
        "no-such-incident",
        "--admin-url",
        &admin,
    ]);
    assert_eq!(o.status.code(), Some(2));
    // The changes are in the audit log.
    let o = stormwall(&["audit", "list", "--object", &inc_id, "--admin-url", &admin]);
    let listed = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        listed.contains("incident.acknowledged") && listed.contains("incident.false_positive"),
        "{listed}"
    );
    sigterm(&mut server.child);
}
