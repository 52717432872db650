//! `detect --logs` through the real binary: cloud-log fixtures in, alert JSON lines with
//! recommendations out, bad records reported with file and line, state resumed.

use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_stormwall");

fn fixtures() -> String {
    format!(
        "{}/../stormwall-cloudlogs/tests/fixtures",
        env!("CARGO_MANIFEST_DIR")
    )
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("STORMWALL_LOG", "warn")
        .output()
        .unwrap()
}

#[test]
fn detect_logs_over_a_folder_prints_alert_lines_and_resumes_from_state() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let state = state.to_str().unwrap();
    let fx = fixtures();
    let out = run(&["detect", "--logs", &fx, "--json", "--state", state]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let detectors: Vec<&str> = lines
        .iter()
        .map(|l| l["alert"]["detector"].as_str().unwrap())
        .collect();
    for d in ["X1", "X2", "X3", "X4", "V5", "E4"] {
        assert!(detectors.contains(&d), "{d} missing from {detectors:?}");
    }
    // A high alert on a cloud principal carries the command that revokes it.
    let x3 = lines
        .iter()
        .find(|l| l["alert"]["detector"] == "X3")
        .unwrap();
    assert!(
        x3["recommendation"]["command"]
            .as_str()
            .unwrap()
            .starts_with("az role assignment delete --assignee 22222222-aaaa-bbbb-cccc-000000000002 --scope /subscriptions/00000000-1111-2222-3333-444444444444/resourceGroups/rg-ai/providers/Microsoft.CognitiveServices/accounts/contoso-aoai"),
        "{x3}"
    );
    // Bad records are reported with file and line, and do not stop the run.
    assert!(stderr.contains("3 bad"), "{stderr}");
    assert!(stderr.contains("cloudtrail.json:9: "), "{stderr}");
    // The same files again, resumed from the state: nothing is judged twice.
    let again = run(&["detect", "--logs", &fx, "--json", "--state", state]);
    assert!(again.status.success());
    assert!(
        again.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&again.stdout)
    );
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("32 already judged"), "{stderr}");
}

#[test]
fn detect_logs_filters_by_time_and_forced_source() {
    let fx = format!("{}/cloudtrail.json", fixtures());
    let out = run(&[
        "detect",
        "--logs",
        &fx,
        "--json",
        "--source",
        "cloudtrail",
        "--since",
        "2025-03-04T02:17:00Z",
        "--until",
        "2025-03-04T02:19:00Z",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("2 events judged"), "{stderr}");
    let bad = run(&["detect", "--logs", &fx, "--source", "syslog"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown log source"));
}

#[test]
fn detect_logs_evaluates_the_shipped_sigma_rules() {
    let rules = format!(
        "{}/../stormwall-cloudlogs/sigma",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = run(&["detect", "--logs", &fixtures(), "--sigma", &rules, "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("sigma: 9 rules loaded, 0 skipped, 7 matches"),
        "{stderr}"
    );
    let hits: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v.get("sigma").is_some())
        .collect();
    let deleted = hits
        .iter()
        .find(|h| h["sigma"]["rule"] == "7f1b2c10-3d4e-4f50-8a61-000000000102")
        .unwrap();
    assert!(
        deleted["sigma"]["file"]
            .as_str()
            .unwrap()
            .ends_with("cloudtrail.json")
    );
    assert_eq!(deleted["sigma"]["line"], 4);
    assert_eq!(deleted["sigma"]["source"], "cloudtrail");
    // The match is an alert like the detectors' (detector S1), about the record's principal.
    let alert = &deleted["alert"];
    assert_eq!(alert["detector"], "S1");
    assert_eq!(alert["severity"], "high");
    assert_eq!(alert["evidence"][0], "ct-0003");
    let subject = |kind: &str| {
        alert["subjects"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["kind"] == kind)
            .map(|s| s["value"].as_str().unwrap().to_owned())
    };
    assert_eq!(
        subject("sigma_rule").as_deref(),
        Some("7f1b2c10-3d4e-4f50-8a61-000000000102")
    );
    assert!(subject("principal").unwrap().contains("BedrockAPIKey"));
    assert!(stderr.contains("S1="), "{stderr}");

    // With a state, a second run over the same files reports no match again.
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let state = state.to_str().unwrap();
    let args = [
        "detect",
        "--logs",
        &fixtures(),
        "--sigma",
        &rules,
        "--json",
        "--state",
        state,
    ];
    let first = run(&args);
    assert!(String::from_utf8_lossy(&first.stderr).contains("7 matches"));
    let again = run(&args);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("sigma: 9 rules loaded, 0 skipped, 0 matches"),
        "{stderr}"
    );
}
