//! `simulate` and `detect` through the real binary: the `--evaluate --json` contract, the
//! event file round trip (simulate writes, detect replays, same alerts every time), and
//! errors that name the bad line.

use std::path::Path;
use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_stormwall");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("STORMWALL_LOG", "warn")
        .output()
        .unwrap()
}

const SMALL: &[&str] = &[
    "simulate",
    "--legit-keys",
    "20",
    "--days",
    "4",
    "--warmup-days",
    "2",
    "--attacks-per-scenario",
    "1",
];

#[test]
fn simulate_evaluate_json_contract() {
    let mut args = SMALL.to_vec();
    args.extend(["--evaluate", "--json"]);
    let out = run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    for field in [
        "attack_keys",
        "legit_keys",
        "recall",
        "precision",
        "false_suspensions",
        "median_attacker_requests_served",
        "per_detector",
    ] {
        assert!(v.get(field).is_some(), "missing {field}: {v}");
    }
    assert_eq!(v["legit_keys"], 20);
    assert!(v["attack_keys"].as_u64().unwrap() >= 12);
    assert_eq!(v["false_suspensions"], 0, "{v}");
    assert!(v["per_detector"]["H1"]["true_alerts"].as_u64().unwrap() >= 1);
    // Same seed, same figures.
    let again = run(&args);
    assert_eq!(out.stdout, again.stdout);
}

#[test]
fn simulated_events_replay_through_detect() {
    let dir = tempfile::tempdir().unwrap();
    let events = dir.path().join("events.jsonl");
    let mut args = SMALL.to_vec();
    let path = events.to_str().unwrap();
    args.extend(["--write-events", path]);
    let out = run(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ipdb = format!("{path}.ipdb.tsv");
    assert!(Path::new(&ipdb).exists());
    assert!(Path::new(&format!("{path}.keys.jsonl")).exists());
    let detect = |json: bool| {
        let mut a = vec!["detect", "--events", path, "--ipdb", &ipdb];
        if json {
            a.push("--json");
        }
        let out = run(&a);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let first = detect(true);
    assert_eq!(
        first,
        detect(true),
        "replaying a file gives the same alerts"
    );
    let lines: Vec<Value> = first
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert!(lines.iter().any(|l| l["alert"]["detector"] == "H1"));
    assert!(lines.iter().any(|l| l["action"]["kind"] == "suspend"));
    for l in &lines {
        let a = &l["alert"];
        assert!(!a["evidence"].as_array().unwrap().is_empty(), "{a}");
        assert!(!a["explanation"].as_str().unwrap().is_empty());
    }
    let text = String::from_utf8(detect(false)).unwrap();
    assert!(text.contains("critical H1"), "{text}");
}

#[test]
fn detect_reports_the_bad_line_and_bad_config() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, "\n{\"not\": \"an event\"}\n").unwrap();
    let out = run(&["detect", "--events", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"));

    let empty = dir.path().join("empty.jsonl");
    std::fs::write(&empty, "").unwrap();
    let cfg = dir.path().join("stormwall.toml");
    std::fs::write(&cfg, "[detect]\nbaseline_hours = 3\n").unwrap();
    let out = run(&[
        "detect",
        "--events",
        empty.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown field"));

    // Other crates' sections are not this command's business.
    std::fs::write(
        &cfg,
        "[server]\nanything = 1\n[detect]\nbaseline_min_hours = 3\n",
    )
    .unwrap();
    let out = run(&[
        "detect",
        "--events",
        empty.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
