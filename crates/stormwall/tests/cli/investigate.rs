//! `stormwall investigate` and `stormwall evidence` over a real SQLite store: roles from
//! stored events, a signed case folder for a cluster and for an incident, its verification
//! against the store's audit log, and tampering detected; a cloud principal's incident
//! bundle with its control events.

use std::path::Path;
use std::process::Output;

use stormwall_store::{
    ActionOutcome, ActionRecord, AlertStore as _, AuditEntry, AuditStore as _,
    ControlEventStore as _, EventStore as _, SqliteStore,
};
use stormwall_types::{Action, ActionKind, Alert, DetectorId, KeyId, Severity, Stage, UsageEvent};
use time::OffsetDateTime;

fn run(args: &[&str]) -> Output {
    crate::run_with(args, "unused")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Tenants acme, globex, initech use their keys; relays in 203.0.113.0/24 and
/// 198.51.100.0/24 rotate buyers' personas over their keys.
fn events() -> Vec<UsageEvent> {
    let t0 = OffsetDateTime::from_unix_timestamp(1_741_000_000).unwrap();
    let keys = [
        ("acme", "acmekey00001", "192.0.2.10"),
        ("globex", "globexkey001", "192.0.2.77"),
        ("initech", "initechkey01", "100.64.3.4"),
    ];
    let mut out = Vec::new();
    let mut n = 0u64;
    let mut ev = |t: i64, k: usize, ip: &str, sys: &str, relay: bool| {
        n += 1;
        let mut e = UsageEvent::new(
            format!("{t:013}-{n:08x}"),
            t0 + time::Duration::seconds(t),
            ip.parse().unwrap(),
            "POST",
            "/v1/chat/completions",
        );
        e.tenant = Some(keys[k].0.into());
        e.key_id = Some(KeyId::new(keys[k].1).unwrap());
        e.model = Some("gpt-4o-mini".into());
        e.input_tokens = Some(100);
        e.output_tokens = Some(50);
        e.system_prompt_hash = Some(format!("{sys:0<32}"));
        e.user_agent = Some(
            if relay {
                "relaykit/2.3.1"
            } else {
                "OpenAI/Python 1.50.0"
            }
            .into(),
        );
        e.status = 200;
        out.push(e);
    };
    for i in 0..30i64 {
        for (k, (_, _, ip)) in keys.iter().enumerate() {
            ev(i * 600, k, ip, &format!("own{k}"), false);
        }
        ev(i * 600 + 60, (i % 2) as usize, "203.0.113.5", "a", true);
        ev(
            i * 600 + 120,
            ((i + 1) % 2) as usize,
            "203.0.113.6",
            "bb",
            true,
        );
        ev(
            i * 600 + 180,
            1 + (i % 2) as usize,
            "198.51.100.20",
            "ccc",
            true,
        );
        ev(
            i * 600 + 240,
            1 + ((i + 1) % 2) as usize,
            "198.51.100.21",
            "dddd",
            true,
        );
    }
    out
}

fn alert(id: &str, key: &str, at: OffsetDateTime) -> Alert {
    Alert {
        id: id.into(),
        detector: DetectorId::R1,
        stage: Stage::Resale,
        severity: Severity::High,
        at,
        key_id: Some(KeyId::new(key).unwrap()),
        tenant: Some("acme".into()),
        source_ip: Some("203.0.113.5".parse().unwrap()),
        features: Vec::new(),
        subjects: Vec::new(),
        explanation: "Many users behind one key. More.".into(),
        evidence: Vec::new(),
        score: 70.0,
    }
}

fn seed(db: &Path) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = SqliteStore::open(db).await.unwrap();
        s.insert_events(&events()).await.unwrap();
        let at = OffsetDateTime::from_unix_timestamp(1_741_003_000).unwrap();
        let a = alert("alert-1", "acmekey00001", at);
        s.insert_alert(&a, "R1:acmekey00001").await.unwrap();
        s.record_action(&ActionRecord {
            id: "act-1".into(),
            action: Action {
                kind: ActionKind::Suspend,
                key_id: KeyId::new("acmekey00001").unwrap(),
                tenant: Some("acme".into()),
                at,
                throttle_rpm: None,
                alert_id: "alert-1".into(),
                contributing_alerts: Vec::new(),
                risk_score: 70.0,
                kill_chain: false,
                reason: "resale".into(),
            },
            outcome: ActionOutcome::Applied,
            message: None,
            applied_at: at,
        })
        .await
        .unwrap();
        for (action, target) in [
            ("key.create", "hoolikey0001"),
            ("key.suspend", "acmekey00001"),
        ] {
            s.append_audit(&AuditEntry {
                at,
                actor: "detection".into(),
                action: action.into(),
                target: Some(target.into()),
                tenant: None,
                detail: serde_json::json!({"alert": "alert-1"}),
            })
            .await
            .unwrap();
        }
    });
}

#[test]
fn roles_evidence_bundles_verify_and_tampering_is_detected() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sw.db");
    let cfg = dir.path().join("stormwall.toml");
    std::fs::write(
        &cfg,
        format!(
            "[store]\nbackend = \"sqlite\"\npath = \"{}\"\n",
            db.display()
        ),
    )
    .unwrap();
    seed(&db);
    let c = cfg.to_str().unwrap();
    let ov = dir.path().join("overrides.json");
    let o = ov.to_str().unwrap();

    let roles: serde_json::Value = serde_json::from_str(&ok(&run(&[
        "investigate",
        "roles",
        "--config",
        c,
        "--overrides",
        o,
        "--json",
    ])))
    .unwrap();
    let provider = roles["roles"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["entity"] == "network:203.0.113.0/24")
        .expect("relay found");
    assert_eq!(provider["role"], "provider");
    let cluster = provider["cluster"].as_str().unwrap().to_owned();

    // An analyst's decision is kept and audited.
    ok(&run(&[
        "investigate",
        "override",
        "--config",
        c,
        "--overrides",
        o,
        "--analyst",
        "a.n.alyst",
        "annotate",
        "network:203.0.113.0/24",
        "hosting provider notified",
    ]));
    let roles = ok(&run(&[
        "investigate",
        "roles",
        "--config",
        c,
        "--overrides",
        o,
        "--json",
    ]));
    assert!(roles.contains("hosting provider notified"));
    assert_eq!(roles.matches("hosting provider notified").count(), 1);
    // The decision is in the store's audit log too (where the admin API keeps its own):
    // read from there without the file, and not applied twice with it.
    let no_file = dir.path().join("no-overrides.json");
    let roles = ok(&run(&[
        "investigate",
        "roles",
        "--config",
        c,
        "--overrides",
        no_file.to_str().unwrap(),
        "--json",
    ]));
    assert_eq!(roles.matches("hosting provider notified").count(), 1);

    let key = dir.path().join("evidence.key");
    let pk = ok(&run(&[
        "evidence",
        "keygen",
        "--out",
        key.to_str().unwrap(),
    ]));
    let pk = pk.trim();

    // A cluster's case folder.
    let out = dir.path().join("case-cluster");
    let signed = ok(&run(&[
        "evidence",
        "bundle",
        "--config",
        c,
        "--overrides",
        o,
        "--cluster",
        &cluster,
        "--key-file",
        key.to_str().unwrap(),
        out.to_str().unwrap(),
    ]));
    assert_eq!(signed.trim(), pk);
    for f in [
        "events.jsonl",
        "alerts.json",
        "actions.json",
        "audit.json",
        "graph.json",
        "summary.md",
        "manifest.json",
        "manifest.sig",
        "public_key.txt",
    ] {
        assert!(out.join(f).exists(), "{f}");
    }
    let events = std::fs::read_to_string(out.join("events.jsonl")).unwrap();
    // The relays' requests on the victims' keys (one relay, or both if one cluster).
    let n = events.lines().count();
    assert!(n == 60 || n == 120, "{n} events");
    assert!(
        std::fs::read_to_string(out.join("alerts.json"))
            .unwrap()
            .contains("alert-1")
    );
    let verify = |d: &Path| {
        run(&[
            "evidence",
            "verify",
            d.to_str().unwrap(),
            "--public-key",
            pk,
            "--config",
            c,
        ])
    };
    assert!(ok(&verify(&out)).starts_with("OK"));

    // An incident's case folder, signed with the key from the environment.
    let inc = dir.path().join("case-incident");
    let seed_hex = std::fs::read_to_string(&key).unwrap();
    let incident_id = {
        let mut g = stormwall_detect::incident::Grouper::new(Default::default());
        let at = OffsetDateTime::from_unix_timestamp(1_741_003_000).unwrap();
        g.add(&alert("alert-1", "acmekey00001", at), None)
            .unwrap()
            .incident
            .id
    };
    let made = std::process::Command::new(crate::BIN)
        .args([
            "evidence",
            "bundle",
            "--config",
            c,
            "--overrides",
            o,
            "--incident",
            &incident_id,
            inc.to_str().unwrap(),
        ])
        .env("STORMWALL_EVIDENCE_KEY", seed_hex.trim())
        .env("STORMWALL_LOG", "warn")
        .output()
        .unwrap();
    ok(&made);
    assert!(ok(&verify(&inc)).starts_with("OK"));
    let summary = std::fs::read_to_string(inc.join("summary.md")).unwrap();
    assert!(summary.contains(&incident_id));

    // Later audit entries do not break an older bundle: the log still chains through it.
    ok(&run(&[
        "investigate",
        "override",
        "--config",
        c,
        "--overrides",
        o,
        "--analyst",
        "b",
        "confirm",
        "tenant:acme",
        "victim",
    ]));
    assert!(ok(&verify(&out)).starts_with("OK"));

    // Tampering: a changed byte, a removed file, an added file, another key.
    let copy = |name: &str| {
        let d = dir.path().join(name);
        std::fs::create_dir(&d).unwrap();
        for e in std::fs::read_dir(&out).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), d.join(e.file_name())).unwrap();
        }
        d
    };
    let d = copy("t1");
    let mut b = std::fs::read(d.join("events.jsonl")).unwrap();
    b[10] ^= 1;
    std::fs::write(d.join("events.jsonl"), b).unwrap();
    let d2 = copy("t2");
    std::fs::remove_file(d2.join("audit.json")).unwrap();
    let d3 = copy("t3");
    std::fs::write(d3.join("note.txt"), "planted").unwrap();
    for d in [&d, &d2, &d3] {
        let r = verify(d);
        assert_eq!(
            r.status.code(),
            Some(1),
            "{}",
            String::from_utf8_lossy(&r.stdout)
        );
        assert!(String::from_utf8_lossy(&r.stdout).starts_with("FAILED"));
    }
    let wrong = run(&[
        "evidence",
        "verify",
        out.to_str().unwrap(),
        "--public-key",
        &"00".repeat(32),
    ]);
    assert_eq!(wrong.status.code(), Some(1));

    // Exports need --config to include personal data (it is audited).
    let r = run(&[
        "investigate",
        "export",
        "--events",
        dir.path().join("none.jsonl").to_str().unwrap(),
        "--csv",
        dir.path().join("x.csv").to_str().unwrap(),
        "--include-personal-data",
    ]);
    assert!(!r.status.success());
    assert!(String::from_utf8_lossy(&r.stderr).contains("audited"));
    ok(&run(&[
        "investigate",
        "export",
        "--config",
        c,
        "--overrides",
        o,
        "--include-personal-data",
        "--csv",
        dir.path().join("x.csv").to_str().unwrap(),
    ]));
    assert!(
        std::fs::read_to_string(dir.path().join("x.csv"))
            .unwrap()
            .contains("globex")
    );

    // The HTML report.
    let html = dir.path().join("report.html");
    ok(&run(&[
        "investigate",
        "report",
        "--config",
        c,
        "--overrides",
        o,
        "--out",
        html.to_str().unwrap(),
    ]));
    assert!(std::fs::read_to_string(&html).unwrap().contains("<svg"));
    render_in_chromium(&html, &dir.path().join("report.png"));
}

/// A management call of a cloud principal (an Entra identity listing an account's keys).
fn list_keys(id: &str, object_id: &str, at: OffsetDateTime) -> stormwall_types::ControlEvent {
    use stormwall_types::{CloudContext, CloudProvider, ControlAction, CredentialKind, Principal};
    stormwall_types::ControlEvent {
        timestamp: at,
        id: id.into(),
        dataset: "azure.activity".into(),
        action: ControlAction::ListKeys,
        success: true,
        source_ip: Some("203.0.113.50".parse().unwrap()),
        user_agent: None,
        cloud: CloudContext {
            principal: Principal {
                provider: CloudProvider::Azure,
                kind: CredentialKind::AzureEntraIdentity,
                id: format!("oid:{object_id}"),
                account: Some("00000000-1111-2222-3333-444444444444".into()),
                name: None,
            },
            operation: "MICROSOFT.COGNITIVESERVICES/ACCOUNTS/LISTKEYS/ACTION".into(),
            region: None,
            resource: None,
            ip_masked: false,
            ip_missing: false,
            error: None,
            bearer: false,
        },
        service: Some("Microsoft.Resources".into()),
        target: None,
        scopes: Vec::new(),
        loosens: false,
        count: 1,
        response_bytes: None,
    }
}

/// An incident about a cloud principal: its bundle carries the principal's stored control
/// events of the incident's window (not another principal's, not older ones), signed with
/// the rest.
#[test]
fn an_incident_bundle_of_a_cloud_principal_carries_its_control_events() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("sw.db");
    let cfg = dir.path().join("stormwall.toml");
    std::fs::write(
        &cfg,
        format!(
            "[store]\nbackend = \"sqlite\"\npath = \"{}\"\n",
            db.display()
        ),
    )
    .unwrap();
    let at = OffsetDateTime::from_unix_timestamp(1_741_003_000).unwrap();
    let mine = list_keys(
        "azure.activity:arm-1",
        "aaaa0001",
        at - time::Duration::minutes(10),
    );
    let key = mine.cloud.principal.key_id();
    let older = list_keys(
        "azure.activity:arm-0",
        "aaaa0001",
        at - time::Duration::hours(5),
    );
    let other = list_keys("azure.activity:arm-2", "bbbb0002", at);
    let a = alert("cloud-1", key.as_str(), at);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let s = SqliteStore::open(&db).await.unwrap();
        s.insert_alert(&a, &format!("E3:{key}")).await.unwrap();
        let n = s
            .insert_control_events(&[mine.clone(), older, other])
            .await
            .unwrap();
        assert_eq!(n, 3);
    });
    let incident_id = {
        let mut g = stormwall_detect::incident::Grouper::new(Default::default());
        g.add(&a, None).unwrap().incident.id
    };
    let c = cfg.to_str().unwrap();
    let o = dir.path().join("overrides.json");
    let keyfile = dir.path().join("evidence.key");
    let pk = ok(&run(&[
        "evidence",
        "keygen",
        "--out",
        keyfile.to_str().unwrap(),
    ]));
    let out = dir.path().join("case");
    ok(&run(&[
        "evidence",
        "bundle",
        "--config",
        c,
        "--overrides",
        o.to_str().unwrap(),
        "--incident",
        &incident_id,
        "--key-file",
        keyfile.to_str().unwrap(),
        out.to_str().unwrap(),
    ]));
    let lines = std::fs::read_to_string(out.join("control_events.jsonl")).unwrap();
    let got: Vec<stormwall_types::ControlEvent> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got, [mine]);
    let summary = std::fs::read_to_string(out.join("summary.md")).unwrap();
    assert!(
        summary.contains("- control_events.jsonl: 1 management calls"),
        "{summary}"
    );
    // The management calls are in the graph too: the principal's key, linked to the
    // network it listed keys from.
    let graph = std::fs::read_to_string(out.join("graph.json")).unwrap();
    assert!(
        graph.contains("control:list_keys@203.0.113.0/24"),
        "{graph}"
    );
    let verify = |d: &Path| {
        run(&[
            "evidence",
            "verify",
            d.to_str().unwrap(),
            "--public-key",
            pk.trim(),
        ])
    };
    assert!(ok(&verify(&out)).starts_with("OK"));
    // The file is covered by the signed manifest.
    let mut b = std::fs::read(out.join("control_events.jsonl")).unwrap();
    b[5] ^= 1;
    std::fs::write(out.join("control_events.jsonl"), b).unwrap();
    assert_eq!(verify(&out).status.code(), Some(1));
}

/// Opens the report in headless Chromium (Debian's `chromium`) and checks it rendered a
/// page. Without Chromium on PATH the check is skipped, unless STORMWALL_TEST_CHROMIUM=1
/// demands it (CI, where the browser is installed).
fn render_in_chromium(html: &Path, png: &Path) {
    let found = std::process::Command::new("chromium")
        .arg("--version")
        .output();
    if found.is_err() {
        assert!(
            std::env::var("STORMWALL_TEST_CHROMIUM").as_deref() != Ok("1"),
            "STORMWALL_TEST_CHROMIUM=1 but chromium is not on PATH"
        );
        eprintln!("chromium not on PATH: report rendering not checked");
        return;
    }
    let out = std::process::Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
        ])
        .arg("--window-size=1000,1500")
        .arg(format!("--screenshot={}", png.display()))
        .arg(format!("file://{}", html.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bytes = std::fs::read(png).unwrap();
    assert!(bytes.starts_with(b"\x89PNG"), "not a PNG");
    // A blank page compresses to a few kilobytes; the graph and tables do not.
    assert!(
        bytes.len() > 20_000,
        "{} bytes: the page looks empty",
        bytes.len()
    );
}

/// Findings as `stormwall scan --format jsonl` writes them: the acme key in the working
/// tree, a key no event names, an OpenAI key; each with a secret where a broken scanner
/// might put one.
fn scan_findings() -> String {
    use stormwall_scan::{Confidence, Finding, Location, SourceKind};
    let f = |path: &str, key: Option<&str>, n: u64| Finding {
        location: Location {
            path: path.into(),
            line: 3,
            column: 9,
            end_column: 61,
            source: SourceKind::File,
            blob: None,
            git: None,
        },
        provider: "Stormwall".into(),
        rule: "stormwall-api-key".into(),
        rule_name: "Stormwall API key".into(),
        confidence: Confidence::High,
        validated: key.is_some(),
        redacted: SCAN_SECRET.into(),
        fingerprint: format!("{n:032x}"),
        key_id: key.map(str::to_owned),
    };
    let mut out = Vec::new();
    stormwall_scan::report::write_jsonl(
        &mut out,
        &[
            f("deploy/.env", Some("acmekey00001"), 1),
            f("old/.env", Some("zzzzkey00009"), 2),
            f("web/app.js", None, 3),
        ],
    )
    .unwrap();
    String::from_utf8(out).unwrap()
}

const SCAN_SECRET: &str = "swk_acmekey00001_q9W8e7R6t5Y4u3I2o1P0aSdFgHjKlZx1A2b3C";

#[test]
fn scan_findings_become_exposures_once_and_never_carry_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).to_str().unwrap().to_owned();
    let mut text = String::new();
    for e in events() {
        text.push_str(&serde_json::to_string(&e).unwrap());
        text.push('\n');
    }
    std::fs::write(path("events.jsonl"), text).unwrap();
    std::fs::write(path("findings.jsonl"), scan_findings()).unwrap();
    let (ev, st, fi, ov) = (
        path("events.jsonl"),
        path("graph.json"),
        path("findings.jsonl"),
        path("overrides.json"),
    );
    let graph = |extra: &[&str]| {
        let mut args = vec![
            "investigate",
            "graph",
            "--events",
            &ev,
            "--state",
            &st,
            "--overrides",
            &ov,
            "--scan-findings",
            &fi,
        ];
        args.extend_from_slice(extra);
        run(&args)
    };
    let out = graph(&["--json"]);
    let json = ok(&out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("1 exposure(s) of Stormwall keys added, 0 already in the graph, 1 naming no Stormwall key skipped, 1 of keys this graph and store do not know skipped"),
        "{stderr}"
    );
    let g: serde_json::Value = serde_json::from_str(&json).unwrap();
    let nodes = g["nodes"].as_array().unwrap();
    assert!(
        nodes
            .iter()
            .any(|n| n["id"] == "exposure:scan:deploy/.env:3")
    );
    assert!(!json.contains("zzzzkey00009"));
    // Again through the saved state: nothing added twice.
    let out = graph(&[]);
    ok(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("0 exposure(s) of Stormwall keys added, 1 already in the graph")
    );

    // The exports: no secret.
    let (stix, misp, csv) = (path("b.json"), path("m.json"), path("r.csv"));
    ok(&run(&[
        "investigate",
        "export",
        "--events",
        &ev,
        "--overrides",
        &ov,
        "--scan-findings",
        &fi,
        "--stix",
        &stix,
        "--misp",
        &misp,
        "--csv",
        &csv,
    ]));
    for f in [stix, misp, csv, st.clone()] {
        let text = std::fs::read_to_string(&f).unwrap();
        assert!(!text.contains(SCAN_SECRET), "a secret reached {f}");
        assert!(!text.contains("swk_"), "a secret reached {f}");
    }

    // Anything but the scanner's JSON lines is refused, saying what it is.
    std::fs::write(
        path("scan.sarif"),
        r#"{"version":"2.1.0","$schema":"https://json.schemastore.org/sarif-2.1.0.json","runs":[]}"#,
    )
    .unwrap();
    let out = run(&[
        "investigate",
        "graph",
        "--events",
        &ev,
        "--overrides",
        &ov,
        "--scan-findings",
        &path("scan.sarif"),
    ]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("SARIF") && stderr.contains("--format jsonl"),
        "{stderr}"
    );
}
