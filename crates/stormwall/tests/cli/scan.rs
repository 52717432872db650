//! `scan` through the real binary: exit codes, the JSON-lines contract, stdin, SARIF,
//! baselines, and `--revoke` against a running gateway's admin API.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_stormwall");
const TOKEN: &str = "cli-scan-admin-token";

/// A made-up Groq key (random, valid format, never issued).
const GROQ_KEY: &str = "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";

fn scan(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut child = Command::new(BIN)
        .arg("scan")
        .args(args)
        .env("STORMWALL_ADMIN_TOKEN", TOKEN)
        .env("STORMWALL_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn jsonl(out: &std::process::Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn scan_exit_codes_and_the_jsonl_contract() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("src")).unwrap();
    std::fs::write(
        dir.path().join("src/settings.py"),
        format!("import os\nGROQ_API_KEY = \"{GROQ_KEY}\"\n"),
    )
    .unwrap();
    let root = dir.path().to_str().unwrap();

    let out = scan(&[root, "--format", "jsonl"], None);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let findings = jsonl(&out);
    assert_eq!(findings.len(), 1);
    let f = &findings[0];
    assert_eq!(f["path"], "src/settings.py");
    assert_eq!(f["line"], 2);
    assert_eq!(f["provider"], "Groq");
    assert_eq!(f["rule"], "groq-api-key");
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains(GROQ_KEY),
        "never the secret"
    );

    let clean = tempfile::tempdir().unwrap();
    std::fs::write(clean.path().join("a.txt"), "nothing to see\n").unwrap();
    let out = scan(&[clean.path().to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 findings"));

    let out = scan(&["/definitely/not/here"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read"));
}

#[test]
fn scan_reads_standard_input() {
    let out = scan(
        &["-", "--format", "jsonl"],
        Some(&format!("log line\nkey={GROQ_KEY}\n")),
    );
    assert_eq!(out.status.code(), Some(1));
    let findings = jsonl(&out);
    assert_eq!(findings[0]["path"], "<stdin>");
    assert_eq!(findings[0]["line"], 2);
    assert_eq!(findings[0]["source"], "stdin");
}

#[test]
fn scan_writes_sarif_and_honours_a_baseline() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".env"),
        format!("GROQ_API_KEY={GROQ_KEY}\n"),
    )
    .unwrap();
    let root = dir.path().to_str().unwrap();
    let report = tempfile::tempdir().unwrap();
    let sarif = report.path().join("scan.sarif");
    let out = scan(
        &[
            root,
            "--format",
            "sarif",
            "--output",
            sarif.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let log: Value = serde_json::from_str(&std::fs::read_to_string(&sarif).unwrap()).unwrap();
    assert_eq!(log["version"], "2.1.0");
    assert_eq!(log["runs"][0]["results"][0]["ruleId"], "groq-api-key");

    let baseline = report.path().join("baseline.json");
    let out = scan(
        &[root, "--write-baseline", baseline.to_str().unwrap()],
        None,
    );
    assert_eq!(out.status.code(), Some(0));
    let out = scan(&[root, "--baseline", baseline.to_str().unwrap()], None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        !std::fs::read_to_string(&baseline)
            .unwrap()
            .contains(GROQ_KEY)
    );
}

struct Server {
    child: Child,
    admin: String,
}

fn serve(dir: &Path) -> Server {
    let config = dir.join("stormwall.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\n\
             [store]\nbackend = \"sqlite\"\npath = \"{}\"\n\n\
             [[upstreams]]\nname = \"mock\"\nkind = \"mock\"\nmodels = [\"gpt-4o-mini\"]\n",
            dir.join("sw.db").display()
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--config"])
        .arg(&config)
        .env("STORMWALL_ADMIN_TOKEN", TOKEN)
        .env("STORMWALL_LOG", "warn")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // The first line names the bound addresses: "stormwall: proxy on http://A  admin on http://B".
    let line = lines.next().unwrap().unwrap();
    let admin = line
        .split_whitespace()
        .filter(|w| w.starts_with("http://"))
        .nth(1)
        .unwrap()
        .to_owned();
    std::thread::spawn(move || for _ in lines {});
    Server { child, admin }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn admin_cli(args: &[&str]) -> Value {
    let out = Command::new(BIN)
        .args(args)
        .env("STORMWALL_ADMIN_TOKEN", TOKEN)
        .env("STORMWALL_LOG", "warn")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn scan_revoke_revokes_leaked_stormwall_keys_through_the_admin_api() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(dir.path());
    let created = admin_cli(&[
        "keys",
        "create",
        "--tenant",
        "acme",
        "--json",
        "--admin-url",
        &server.admin,
    ]);
    let key = created["key"].as_str().unwrap().to_owned();
    let id = created["id"].as_str().unwrap().to_owned();

    let repo = tempfile::tempdir().unwrap();
    std::fs::write(
        repo.path().join("client.py"),
        format!("\nAPI_KEY = \"{key}\"\n"),
    )
    .unwrap();
    let out = scan(
        &[
            repo.path().to_str().unwrap(),
            "--revoke",
            "--admin-url",
            &server.admin,
            "--format",
            "jsonl",
        ],
        None,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("revoked Stormwall key {id}")),
        "{stderr}"
    );
    assert!(!stderr.contains(&key) && !String::from_utf8_lossy(&out.stdout).contains(&key));

    let shown = admin_cli(&["keys", "show", &id, "--json", "--admin-url", &server.admin]);
    assert_eq!(shown["status"], "revoked");
    assert_eq!(
        shown["status_reason"],
        "leaked: found by stormwall scan at client.py:2"
    );
    drop(server);
}
