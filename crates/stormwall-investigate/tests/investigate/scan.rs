//! `stormwall scan` findings as exposure locations: the scanner's JSON lines read strictly,
//! Stormwall keys linked, other credentials skipped, each finding added once (also through
//! a saved state), and nothing of a secret in any export.

use stormwall_investigate::export::{ExportOptions, csv, misp, stix};
use stormwall_investigate::findings::parse_scan_findings;
use stormwall_investigate::graph::{Graph, GraphState, NodeKind, ScanOutcome};
use stormwall_investigate::{Overrides, RoleConfig, assess};
use stormwall_scan::{Confidence, Finding, GitOrigin, Location, SourceKind};

use crate::fixture_graph;

/// A secret-looking string a (hostile or broken) findings file might carry.
const SECRET: &str = "sk-proj-Zq8LrT2vWx9Ab7Cd5Ef3Gh1Ij0KlMnOpQrStUvWxYz0123456789T3BlbkFJ";
/// A Stormwall-shaped key text.
const STORMWALL_SECRET: &str = "swk_acmekey00001_q9W8e7R6t5Y4u3I2o1P0aSdFgHjKlZx1A2b3C";
/// A staff member's name and address, as git records them.
const AUTHOR: &str = "Jane Committer";
const EMAIL: &str = "jane.committer@example.com";

fn at() -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(1_741_100_000).unwrap()
}

fn finding(path: &str, line: u64, key_id: Option<&str>, git: bool) -> Finding {
    Finding {
        location: Location {
            path: path.to_owned(),
            line,
            column: 9,
            end_column: 61,
            source: if git {
                SourceKind::Git
            } else {
                SourceKind::File
            },
            blob: git.then(|| "5d41402abc4b2a76b9719d911017c592aabbccdd".to_owned()),
            git: git.then(|| GitOrigin {
                commit: "0123456789abcdef0123456789abcdef01234567".to_owned(),
                author: AUTHOR.to_owned(),
                email: EMAIL.to_owned(),
                time: 1_741_000_500,
            }),
        },
        provider: if key_id.is_some() {
            "Stormwall"
        } else {
            "OpenAI"
        }
        .to_owned(),
        rule: if key_id.is_some() {
            "stormwall-api-key"
        } else {
            "openai-project-key"
        }
        .to_owned(),
        rule_name: "API key".to_owned(),
        confidence: Confidence::High,
        validated: key_id.is_some(),
        // A broken scanner that put the whole secret here must not leak it either.
        redacted: if key_id.is_some() {
            STORMWALL_SECRET.to_owned()
        } else {
            SECRET.to_owned()
        },
        fingerprint: format!("{:032x}", line * 7919 + path.len() as u64),
        key_id: key_id.map(str::to_owned),
    }
}

/// The findings as `stormwall scan --format jsonl` writes them.
fn jsonl(findings: &[Finding]) -> String {
    let mut out = Vec::new();
    stormwall_scan::report::write_jsonl(&mut out, findings).unwrap();
    String::from_utf8(out).unwrap()
}

fn sample() -> Vec<Finding> {
    vec![
        finding("deploy/.env", 3, Some("acmekey00001"), false),
        finding("src/client.py", 12, Some("globexkey001"), true),
        finding("web/bundle.js", 1, None, false),
    ]
}

#[test]
fn the_scanners_json_lines_are_read_and_anything_else_is_refused() {
    let text = jsonl(&sample());
    let parsed = parse_scan_findings(&text).unwrap();
    assert_eq!(parsed, sample());
    assert!(parse_scan_findings("\n\n").unwrap().is_empty());

    let refused = |text: &str, says: &str| {
        let e = parse_scan_findings(text).unwrap_err().to_string();
        assert!(e.contains(says), "{e:?} should say {says:?}");
        assert!(!e.contains("sk-proj-"), "an error echoed a secret: {e}");
        assert!(!e.contains("swk_"), "an error echoed a secret: {e}");
    };
    refused(
        r#"{"version":"2.1.0","$schema":"https://json.schemastore.org/sarif-2.1.0.json","runs":[]}"#,
        "SARIF",
    );
    refused(&format!("[{}]", text.lines().next().unwrap()), "JSON array");
    refused(
        "deploy/.env:3:9: Stormwall API key (stormwall-api-key) swk_ac…9b3C\n1 finding\n",
        "line 1 is not JSON",
    );
    // A line missing a field, and one with a secret where a number belongs.
    let mut v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    v.as_object_mut().unwrap().remove("fingerprint");
    refused(&v.to_string(), "missing field `fingerprint`");
    let mut v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    v["line"] = serde_json::json!(SECRET);
    refused(&format!("\n{v}"), "line 2");
    // Fields the scanner always writes in one shape: anything else did not come from it.
    let mut v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    v["fingerprint"] = serde_json::json!(SECRET);
    refused(&v.to_string(), "fingerprint");
    let mut v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    v["key_id"] = serde_json::json!(STORMWALL_SECRET);
    refused(&v.to_string(), "key_id");
    // Free text is bounded before it can reach the audit log for good.
    let first =
        || -> serde_json::Value { serde_json::from_str(text.lines().next().unwrap()).unwrap() };
    let mut v = first();
    v["path"] = serde_json::json!("a/".repeat(3000));
    refused(&v.to_string(), "path is longer than 4096 bytes");
    let mut v = first();
    v["rule"] = serde_json::json!("stormwall-api-key\nforged audit line");
    refused(
        &v.to_string(),
        "rule is longer than 128 bytes or holds control characters",
    );
    let mut v = first();
    v["rule_name"] = serde_json::json!("x".repeat(200));
    refused(&v.to_string(), "rule_name");
    let mut v = first();
    v["blob"] = serde_json::json!("not hex");
    refused(&v.to_string(), "blob is not a hex object id");
}

#[test]
fn findings_of_stormwall_keys_become_exposures_linked_to_the_key_once() {
    let mut g = fixture_graph();
    let before = g.nodes().len();
    let outcomes: Vec<ScanOutcome> = sample()
        .iter()
        .map(|f| g.add_scan_finding(f, at()))
        .collect();
    assert_eq!(
        outcomes,
        [ScanOutcome::Added, ScanOutcome::Added, ScanOutcome::NoKey]
    );
    assert_eq!(
        g.nodes().len(),
        before + 2,
        "two exposure nodes, no new key"
    );

    let key = g.find("key:acmekey00001").unwrap();
    let uses = g.nodes()[key].count;
    let x = g
        .find("exposure:scan:deploy/.env:3")
        .expect("file exposure");
    assert_eq!(g.nodes()[x].kind, NodeKind::Exposure);
    assert!(g.edge(key, x).is_some());
    assert_eq!(g.nodes()[x].first, at(), "no commit: the scan's time");
    let attrs = &g.nodes()[x].attrs;
    assert_eq!(attrs["found_by"], "stormwall scan");
    assert_eq!(attrs["rule"], "stormwall-api-key");
    assert_eq!(attrs["source"], "file");

    // A history finding names its commit and is dated by it.
    let h = g
        .find("exposure:scan:src/client.py:12@0123456789ab")
        .expect("history exposure");
    let globex = g.find("key:globexkey001").unwrap();
    assert!(g.edge(globex, h).is_some());
    assert_eq!(g.nodes()[h].first.unix_timestamp(), 1_741_000_500);
    assert_eq!(
        g.nodes()[h].attrs["commit"],
        "0123456789abcdef0123456789abcdef01234567"
    );

    // Given again (the same report on the next run): nothing changes.
    let state = g.state().clone();
    for f in &sample()[..2] {
        assert_eq!(g.add_scan_finding(f, at()), ScanOutcome::Seen);
    }
    assert_eq!(g.state(), &state);
    // An exposure is not a use of the key.
    assert_eq!(g.nodes()[key].count, uses);
}

#[test]
fn findings_through_a_saved_state_are_added_once() {
    let mut g = fixture_graph();
    g.add_scan_finding(&sample()[0], at());
    let saved = serde_json::to_string(g.state()).unwrap();
    let state: GraphState = serde_json::from_str(&saved).unwrap();
    let mut g2 = Graph::from_state(state, Default::default()).unwrap();
    for f in &sample() {
        g2.add_scan_finding(f, at());
    }
    let mut whole = fixture_graph();
    for f in &sample() {
        whole.add_scan_finding(f, at());
    }
    assert_eq!(g2.state(), whole.state());
}

#[test]
fn nothing_of_a_secret_or_a_committer_reaches_any_export() {
    // Read from the file as the CLI does, with an extra field a future scanner (or a
    // hand-edited file) might add.
    let mut text = String::new();
    for line in jsonl(&sample()).lines() {
        let mut v: serde_json::Value = serde_json::from_str(line).unwrap();
        v["secret"] = serde_json::json!(SECRET);
        text.push_str(&v.to_string());
        text.push('\n');
    }
    let findings = parse_scan_findings(&text).unwrap();
    let mut g = fixture_graph();
    for f in &findings {
        g.add_scan_finding(f, at());
    }
    let a = assess(&g, &RoleConfig::default(), &Overrides::default());
    for include_personal_data in [false, true] {
        let opts = ExportOptions {
            include_personal_data,
            ..ExportOptions::default()
        };
        let outputs = [
            ("stix", stix::bundle(&g, &a, &opts).unwrap().to_string()),
            ("misp", misp::event(&g, &a, &opts).to_string()),
            ("csv", csv::csv(&g, &a, &opts)),
            (
                "report",
                stormwall_investigate::report::html(&g, &a, &opts, "t"),
            ),
            ("graph", serde_json::to_string(g.state()).unwrap()),
            (
                "assessment",
                serde_json::to_string(&stormwall_investigate::export::redact(&g, &a, &opts))
                    .unwrap(),
            ),
        ];
        for (what, out) in outputs {
            for needle in [
                SECRET,
                STORMWALL_SECRET,
                "sk-proj-",
                "swk_",
                "T3BlbkFJ",
                AUTHOR,
                EMAIL,
            ] {
                assert!(
                    !out.contains(needle),
                    "{needle} reached the {what} output (personal data {include_personal_data})"
                );
            }
        }
    }
    // The victim's reasons say its key was found exposed, without saying where.
    let acme = a.role_of("tenant:acme");
    assert!(
        acme.iter()
            .flat_map(|r| &r.reasons)
            .any(|r| r.contains("found exposed in 1 place")),
        "{acme:?}"
    );
    // Locations are personal data: in cluster members only when asked for.
    let shown = |include_personal_data| {
        let opts = ExportOptions {
            include_personal_data,
            ..ExportOptions::default()
        };
        serde_json::to_string(&stormwall_investigate::export::redact(&g, &a, &opts)).unwrap()
    };
    assert!(!shown(false).contains("deploy/.env"));
    assert!(shown(true).contains("exposure:scan:deploy/.env:3"));
}
