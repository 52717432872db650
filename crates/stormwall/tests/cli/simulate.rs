//! `stormwall simulate --live` against the real `stormwall serve` with its built-in mock
//! upstream: keys are created through the admin API, traffic comes from many loopback
//! source addresses that the written IP database maps to ASNs and countries.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde_json::Value;
use stormwall_testkit::http_request;

const TOKEN: &str = "sim-live-admin-token";

use crate::Server;

fn serve(config: &Path) -> Server {
    crate::serve_with(config, TOKEN)
}

fn stormwall(args: &[&str]) -> std::process::Output {
    crate::run_with(args, TOKEN)
}
/// A small population: 15 legitimate keys, one instance of each attack scenario.
const POPULATION: &[&str] = &[
    "--seed",
    "1",
    "--legit-keys",
    "15",
    "--attacks-per-scenario",
    "1",
];

fn assert_ok(out: &std::process::Output) {
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes the IP database and egress list for the population, and a gateway config using
/// them (with `[detect.egress]` when `detect` is set).
fn setup(dir: &Path, detect: bool) -> PathBuf {
    let ipdb = dir.join("ipdb.tsv");
    let egress = dir.join("egress.toml");
    let mut args = vec!["simulate"];
    args.extend_from_slice(POPULATION);
    args.extend([
        "--write-ipdb",
        ipdb.to_str().unwrap(),
        "--write-egress",
        egress.to_str().unwrap(),
    ]);
    assert_ok(&stormwall(&args));
    let mut text = crate::mock_gateway_config(
        &dir.join("sw.db"),
        &ipdb,
        &[
            "gpt-4o-mini",
            "gpt-4o",
            "text-embedding-3-small",
            "dall-e-3",
        ],
    );
    if detect {
        text.push_str(&std::fs::read_to_string(&egress).unwrap());
    }
    let path = dir.join("stormwall.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// Runs the live replay (after `history_days` of imported history); returns the JSON
/// report and the key truth.
fn simulate_live(
    server: &Server,
    dir: &Path,
    secs: &str,
    history_days: &str,
) -> (Value, Vec<Value>) {
    let keys = dir.join("keys.jsonl");
    let mut args = vec!["simulate"];
    args.extend_from_slice(POPULATION);
    args.extend([
        "--live",
        &server.proxy,
        "--admin",
        &server.admin,
        "--live-secs",
        secs,
        "--history-days",
        history_days,
        "--json",
        "--write-keys",
        keys.to_str().unwrap(),
    ]);
    let out = stormwall(&args);
    assert_ok(&out);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let truth = std::fs::read_to_string(&keys)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (report, truth)
}

async fn admin_get(server: &Server, path: &str) -> Value {
    let r = http_request(
        "GET",
        &format!("{}{path}", server.admin),
        &[("authorization", &format!("Bearer {TOKEN}"))],
        "",
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.json().unwrap()
}

/// Every stored event, by id.
async fn all_events(server: &Server) -> HashMap<String, Value> {
    let mut out = HashMap::new();
    let mut after: Option<String> = None;
    loop {
        let path = match &after {
            Some(a) => format!("/admin/events?limit=10000&after={a}"),
            None => "/admin/events?limit=10000".to_owned(),
        };
        let page = admin_get(server, &path).await;
        for e in page["events"].as_array().unwrap() {
            out.insert(e["event.id"].as_str().unwrap().to_owned(), e.clone());
        }
        match page["next_after"].as_str() {
            Some(a) => after = Some(a.to_owned()),
            None => return out,
        }
    }
}

async fn key_status(server: &Server) -> HashMap<String, String> {
    admin_get(server, "/admin/keys")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["id"].as_str().unwrap().to_owned(),
                k["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_replay_creates_keys_and_sends_mapped_traffic() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), false);
    let server = serve(&config);
    let (report, truth) = simulate_live(&server, dir.path(), "20", "0");

    for field in [
        "attack_keys",
        "legit_keys",
        "recall",
        "precision",
        "false_suspensions",
        "median_attacker_requests_served",
        "per_detector",
    ] {
        assert!(report.get(field).is_some(), "report has {field}: {report}");
    }
    assert_eq!(report["legit_keys"], 15);
    let attack = truth.iter().filter(|k| k["attack"] == true).count();
    assert_eq!(report["attack_keys"], attack);
    assert!(attack >= 12, "one key per scenario at least");

    // Keys exist on the gateway, canaries as canaries.
    let listed = admin_get(&server, "/admin/keys").await;
    let kinds: HashMap<&str, &str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["id"].as_str().unwrap(), k["kind"].as_str().unwrap()))
        .collect();
    for k in &truth {
        let kind = kinds[k["key.id"].as_str().unwrap()];
        assert_eq!(kind == "canary", k["canary"] == true);
    }

    // Traffic arrived from many loopback addresses, enriched from the written IP database.
    let events = all_events(&server).await;
    assert!(
        events.len() as u64 >= report["events"].as_u64().unwrap() * 9 / 10,
        "{} events stored for {} requests",
        events.len(),
        report["events"]
    );
    let mut asns = HashSet::new();
    let mut ips = HashSet::new();
    let mut countries = HashSet::new();
    for e in events.values() {
        let ip = e["source.ip"].as_str().unwrap();
        assert!(ip.starts_with("127."), "{ip}");
        ips.insert(ip.to_owned());
        asns.insert(
            e["source.as.number"]
                .as_u64()
                .expect("every address is mapped"),
        );
        countries.insert(
            e["source.geo.country_iso_code"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert!(ips.len() >= 20, "{} source addresses", ips.len());
    assert!(asns.len() >= 8, "{} ASNs", asns.len());
    assert!(countries.len() >= 4, "{countries:?}");
    let served = events.values().filter(|e| e["decision"] == "allow").count();
    assert!(served * 2 > events.len(), "most requests are served");
    // The operator-revoked key of `revoked_retry` and the reported key are revoked.
    let status = key_status(&server).await;
    for k in &truth {
        let scenario = k["scenario"].as_str().unwrap_or("");
        if matches!(scenario, "revoked_retry" | "exposure_reported") {
            assert_eq!(
                status[k["key.id"].as_str().unwrap()],
                "revoked",
                "{scenario}"
            );
        }
    }
}

/// Scenarios whose keys a short live run detects but does not end suspended or revoked.
/// Their alerts (with evidence) are still required.
const NOT_STOPPED_LIVE: &[(&str, &str)] = &[
    // Throttled on the proxy signals (P1/P2/P3/P5, all one stage); the resale signals (R1,
    // R6) that suspend it offline come over hours, and at 6 requests a minute the seconds
    // left in a live run do not carry them.
    (
        "image_abuse",
        "throttled on proxy signals; resale signals need more time; must end throttled",
    ),
];

/// The end-to-end claim: with the tenants' past imported as history, the attack
/// keys end suspended or revoked, no legitimate key does, and the alerts carry evidence
/// that exists in the event store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_attacks_are_stopped_and_legit_keys_are_not() {
    let dir = tempfile::tempdir().unwrap();
    let config = setup(dir.path(), true);
    let server = serve(&config);
    let (report, truth) = simulate_live(&server, dir.path(), "45", "2");
    let listed = admin_get(&server, "/admin/keys").await;
    let records: HashMap<String, Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|k| (k["id"].as_str().unwrap().to_owned(), k.clone()))
        .collect();
    let events = all_events(&server).await;
    let history = events
        .values()
        .filter(|e| e["event.dataset"] == "simulated-history")
        .count();
    assert!(history > 1000, "{history} events of imported history");

    let mut unstopped = Vec::new();
    let mut stopped = 0;
    for k in &truth {
        let id = k["key.id"].as_str().unwrap();
        let st = records[id]["status"].as_str().unwrap();
        if k["attack"] == false {
            assert!(
                st == "active",
                "legitimate key {id} ({}) is {st}",
                k["profile"]
            );
            continue;
        }
        // A canary is never served by kind; it stays active as a tripwire.
        if k["canary"] == true || k["attacker_requests"] == 0 {
            continue;
        }
        let scenario = k["scenario"].as_str().unwrap();
        let alerts = admin_get(&server, &format!("/admin/alerts?key={id}&limit=10000")).await;
        let alerts = alerts["alerts"].as_array().unwrap();
        assert!(
            !alerts.is_empty(),
            "no alert on attack key {id} ({scenario})"
        );
        for a in alerts {
            let evidence = a["evidence"].as_array().unwrap();
            assert!(!evidence.is_empty(), "alert without evidence: {a}");
            for e in evidence {
                assert!(
                    events.contains_key(e.as_str().unwrap()),
                    "evidence {e} of {} is not a stored event",
                    a["detector"]
                );
            }
        }
        if matches!(st, "suspended" | "revoked") {
            stopped += 1;
            continue;
        }
        match NOT_STOPPED_LIVE.iter().find(|(s, _)| *s == scenario) {
            Some(("image_abuse", _)) => assert!(
                records[id]["scope"]["rpm"].as_u64().is_some(),
                "image_abuse key {id} is neither stopped nor throttled: {}",
                records[id]
            ),
            Some(_) => {}
            None => unstopped.push(format!("{scenario} ({id}: {st})")),
        }
    }
    assert!(
        unstopped.is_empty(),
        "attack keys not stopped: {unstopped:?}; {report}"
    );
    assert!(stopped >= 10, "{stopped} attack keys stopped; {report}");
    assert_eq!(report["false_suspensions"], 0, "{report}");
}
