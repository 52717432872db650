//! The scan crate's one integration-test binary: rule examples, the synthetic corpus
//! (recall and precision), git history, archives, streams, baselines, allow comments, and
//! the JSON and SARIF outputs (snapshots and schema validation).
#![cfg(feature = "inputs")]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::Mutex;

use stormwall_scan::baseline::Baseline;
use stormwall_scan::inputs::{CHUNK_BYTES, ScanOptions, Scanner, merge_findings};
use stormwall_scan::matcher::PREFILTER_KEYWORD_BUDGET;
use stormwall_scan::report::{self, sarif};
use stormwall_scan::synth::{self, FORMATS, Rng, SynthOptions};
use stormwall_scan::{Finding, Matcher, Redactor, SourceKind};

fn scanner(options: ScanOptions) -> Scanner {
    Scanner::new(
        Matcher::builtin().unwrap(),
        Redactor::new(b"test fingerprint key"),
        options,
    )
}

fn scan_dir(dir: &std::path::Path, options: ScanOptions) -> Vec<Finding> {
    let s = scanner(options);
    let found = Mutex::new(Vec::new());
    s.scan_path(dir, &|f| found.lock().unwrap().push(f))
        .unwrap();
    merge_findings(found.into_inner().unwrap())
}

fn tool() -> sarif::ToolInfo {
    sarif::ToolInfo {
        name: "stormwall".into(),
        version: "0.0.0-test".into(),
        information_uri: "https://example.invalid/stormwall".into(),
    }
}

#[test]
fn every_rule_positive_example_matches_and_negative_does_not() {
    let matcher = Matcher::builtin().unwrap();
    let mut failures = Vec::new();
    for rule in matcher.rules() {
        assert!(
            !rule.positive_examples().is_empty(),
            "rule {} has no positive example",
            rule.id()
        );
        for ex in rule.positive_examples() {
            let found: Vec<_> = matcher
                .find(ex.as_bytes())
                .into_iter()
                .filter(|m| m.rule().id() == rule.id())
                .collect();
            if found.len() != 1 {
                failures.push(format!(
                    "{}: positive matched {} times: {ex}",
                    rule.id(),
                    found.len()
                ));
            }
        }
        for ex in rule.negative_examples() {
            if matcher
                .find(ex.as_bytes())
                .iter()
                .any(|m| m.rule().id() == rule.id())
            {
                failures.push(format!("{}: negative matched: {ex}", rule.id()));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_provider_of_the_issue_is_covered() {
    let matcher = Matcher::builtin().unwrap();
    let providers: BTreeSet<&str> = matcher.rules().iter().map(|r| r.provider()).collect();
    for p in [
        "OpenAI",
        "Azure OpenAI",
        "Anthropic",
        "Google AI (Gemini)",
        "AWS (Bedrock)",
        "Hugging Face",
        "Groq",
        "Replicate",
        "OpenRouter",
        "Perplexity",
        "xAI",
        "DeepSeek",
        "Mistral AI",
        "Cohere",
        "Together AI",
        "Fireworks AI",
        "ElevenLabs",
        "Stability AI",
        "LangSmith",
        "Cloudflare",
        "Stormwall",
    ] {
        assert!(providers.contains(p), "no rule for {p}");
    }
    // Every rule has a generator, so the synthetic corpus exercises all of them.
    for rule in matcher.rules() {
        assert!(
            FORMATS.iter().any(|f| f.rule == rule.id()),
            "no synthetic format for {}",
            rule.id()
        );
    }
}

#[test]
fn prefilter_stays_within_the_simd_keyword_budget() {
    let matcher = Matcher::builtin().unwrap();
    assert!(
        matcher.keywords().len() <= PREFILTER_KEYWORD_BUDGET,
        "{} keywords",
        matcher.keywords().len()
    );
}

#[test]
fn generated_keys_pass_their_validators() {
    let matcher = Matcher::builtin().unwrap();
    let mut rng = Rng::new(42);
    for _ in 0..20 {
        for f in FORMATS {
            let key = f.make(&mut rng);
            let rule = matcher.rule(f.rule).unwrap();
            if let Some(v) = rule.validator() {
                assert!(v.check(key.as_bytes()), "{} failed its checksum", f.rule);
            }
            if f.rule == "stormwall-api-key" {
                stormwall_types::key::validate(&key).unwrap();
            }
        }
    }
}

#[test]
fn synthetic_corpus_has_full_recall_and_no_false_positive() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = synth::generate(dir.path(), &SynthOptions::default()).unwrap();
    assert!(
        corpus.planted.len() > 100,
        "{} planted",
        corpus.planted.len()
    );
    let findings = scan_dir(dir.path(), ScanOptions::default());

    let expected: BTreeSet<(String, u64, String)> = corpus
        .planted
        .iter()
        .map(|p| (p.path.clone(), p.line, p.rule.clone()))
        .collect();
    let got: BTreeSet<(String, u64, String)> = findings
        .iter()
        .map(|f| (f.location.path.clone(), f.location.line, f.rule.clone()))
        .collect();
    let missed: Vec<_> = expected.difference(&got).collect();
    let extra: Vec<_> = got.difference(&expected).collect();
    assert!(
        missed.is_empty() && extra.is_empty(),
        "recall {}/{}; missed {missed:#?}\nfalse positives {extra:#?}",
        expected.len() - missed.len(),
        expected.len()
    );
    assert_eq!(findings.len(), corpus.planted.len(), "duplicate findings");
}

#[test]
fn git_history_reports_deleted_and_unreachable_credentials_with_their_commit() {
    let dir = tempfile::tempdir().unwrap();
    let options = SynthOptions {
        rounds: 0,
        archives: false,
        ..SynthOptions::default()
    };
    let corpus = synth::generate(dir.path(), &options).unwrap();
    let findings = scan_dir(dir.path(), ScanOptions::default());
    let by_path = |p: &str| findings.iter().find(|f| f.location.path == p);

    let removed = by_path("repo/config.py").expect("key removed by a later commit");
    assert_eq!(removed.location.source, SourceKind::Git);
    let origin = removed.location.git.as_ref().unwrap();
    assert_eq!(origin.author, "Avery Example");
    assert_eq!(origin.email, "avery@example.invalid");
    assert_eq!(origin.time, 1_700_000_000);
    assert_eq!(origin.commit.len(), 40);

    let deleted = by_path("repo/old/secrets.env").expect("key in a deleted file");
    assert_eq!(deleted.rule, "xai-api-key");

    let live = by_path("repo/app/main.go").expect("key still in the working tree");
    assert_eq!(live.location.source, SourceKind::File);
    assert!(
        live.location.git.is_some(),
        "working-tree finding carries its commit"
    );
    assert!(live.key_id.is_some(), "Stormwall key exposes its public id");

    let dangling = findings
        .iter()
        .find(|f| f.location.path.starts_with("repo/.git/blob/"))
        .expect("unreachable packed blob");
    assert!(dangling.location.git.is_none());
    assert!(dangling.validated);
    assert_eq!(findings.len(), corpus.planted.len());

    // Without history only the working tree is scanned.
    let tree_only = scan_dir(
        dir.path(),
        ScanOptions {
            history: false,
            ..ScanOptions::default()
        },
    );
    assert_eq!(tree_only.len(), 1);
    assert_eq!(tree_only[0].location.path, "repo/app/main.go");
}

#[test]
fn streams_are_scanned_across_chunk_boundaries() {
    let matcher = Matcher::builtin().unwrap();
    let _ = matcher;
    let mut rng = Rng::new(9);
    let groq = FORMATS.iter().find(|f| f.rule == "groq-api-key").unwrap();
    let mut text = Vec::new();
    let mut expected = Vec::new();
    let mut line = 1u64;
    // Keys placed so that some straddle each chunk boundary.
    for boundary in 1..=3 {
        let target = boundary * CHUNK_BYTES - 20;
        while text.len() < target {
            text.extend_from_slice(b"let filler = 42; // padding line for the stream test\n");
            line += 1;
        }
        let key = groq.make(&mut rng);
        writeln!(text, "GROQ_API_KEY={key}").unwrap();
        expected.push(line);
        line += 1;
    }
    let s = scanner(ScanOptions::default());
    let found = Mutex::new(Vec::new());
    s.scan_reader("<stdin>", SourceKind::Stdin, &mut text.as_slice(), &|f| {
        found.lock().unwrap().push(f)
    })
    .unwrap();
    let lines: Vec<u64> = found
        .into_inner()
        .unwrap()
        .iter()
        .map(|f| f.location.line)
        .collect();
    assert_eq!(lines, expected);
}

#[test]
fn inline_allow_comment_and_baseline_suppress_findings() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(3);
    let groq = FORMATS.iter().find(|f| f.rule == "groq-api-key").unwrap();
    let (a, b) = (groq.make(&mut rng), groq.make(&mut rng));
    std::fs::write(
        dir.path().join("fixtures.py"),
        format!("GROQ_API_KEY = \"{a}\"  # stormwall:allow test fixture\nGROQ_API_KEY = \"{b}\"\n"),
    )
    .unwrap();
    let findings = scan_dir(dir.path(), ScanOptions::default());
    assert_eq!(findings.len(), 1);
    assert_eq!(findings[0].location.line, 2);

    let baseline = Baseline::from_findings(&findings);
    let reloaded = Baseline::parse(&baseline.to_json()).unwrap();
    assert!(reloaded.filter(findings.clone()).is_empty());
    assert!(!baseline.to_json().contains(&b), "baseline holds no secret");
    assert!(Baseline::parse("{\"version\": 9, \"entries\": []}").is_err());
}

#[test]
fn binary_and_oversized_files_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(5);
    let key = FORMATS[0].make(&mut rng);
    std::fs::write(
        dir.path().join("a.bin"),
        [&[0u8, 1, 2][..], key.as_bytes()].concat(),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("big.txt"),
        format!("{key}\n{}", "x".repeat(4096)),
    )
    .unwrap();
    let s = scanner(ScanOptions {
        max_file_size: 1024,
        ..ScanOptions::default()
    });
    let found = Mutex::new(Vec::new());
    let summary = s
        .scan_path(dir.path(), &|f| found.lock().unwrap().push(f))
        .unwrap();
    assert!(found.into_inner().unwrap().is_empty());
    assert_eq!(summary.skipped_binary, 1);
    assert_eq!(summary.skipped_large, 1);
}

#[test]
fn archive_caps_bound_the_work() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(11);
    let key = FORMATS
        .iter()
        .find(|f| f.rule == "groq-api-key")
        .unwrap()
        .make(&mut rng);
    let path = dir.path().join("bomb.zip");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    zip.start_file("zeros.txt", opts).unwrap();
    let zeros = vec![b'0'; 4 << 20];
    zip.write_all(&zeros).unwrap();
    zip.start_file("late.env", opts).unwrap();
    writeln!(zip, "GROQ_API_KEY={key}").unwrap();
    zip.finish().unwrap();

    let capped = scanner(ScanOptions {
        max_archive_bytes: 1 << 20,
        ..ScanOptions::default()
    });
    let found = Mutex::new(Vec::new());
    capped
        .scan_path(dir.path(), &|f| found.lock().unwrap().push(f))
        .unwrap();
    assert!(
        found.into_inner().unwrap().is_empty(),
        "scan stopped at the cap"
    );

    let uncapped = scan_dir(dir.path(), ScanOptions::default());
    assert_eq!(uncapped.len(), 1);
    assert_eq!(uncapped[0].location.path, "bomb.zip!late.env");
    assert_eq!(uncapped[0].location.source, SourceKind::Archive);
}

#[test]
fn matcher_never_panics_on_noise_around_keywords() {
    let matcher = Matcher::builtin().unwrap();
    let mut rng = Rng::new(1234);
    let keywords = matcher.keywords().to_vec();
    for _ in 0..2000 {
        let mut hay = Vec::new();
        for _ in 0..rng.below(12) {
            match rng.below(4) {
                0 => hay.extend_from_slice(keywords[rng.below(keywords.len())].as_bytes()),
                1 => {
                    let n = rng.below(40);
                    hay.extend((0..n).map(|_| rng.next_u64() as u8));
                }
                2 => {
                    let n = rng.below(120);
                    hay.extend_from_slice(rng.string(n, b"abcdef0123456789_-=\"' \n").as_bytes());
                }
                _ => hay
                    .extend_from_slice(FORMATS[rng.below(FORMATS.len())].make(&mut rng).as_bytes()),
            }
        }
        for m in matcher.find(&hay) {
            assert!(m.range().end <= hay.len());
        }
    }
}

/// Findings over a fixed set of texts (fixed seed), for the output snapshots.
fn snapshot_findings() -> Vec<Finding> {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = Rng::new(2026);
    let pick = |id: &str| FORMATS.iter().find(|f| f.rule == id).unwrap();
    let files = [
        (
            "app/settings.py",
            format!(
                "OPENAI_API_KEY = \"{}\"\n",
                pick("openai-project-key").make(&mut rng)
            ),
        ),
        (
            "deploy/.env",
            format!(
                "AZURE_OPENAI_ENDPOINT=https://contoso.openai.azure.com/\nAZURE_OPENAI_API_KEY={}\nSTORMWALL_KEY={}\n",
                pick("azure-openai-legacy-key").make(&mut rng),
                pick("stormwall-api-key").make(&mut rng)
            ),
        ),
        (
            "web/dist/app a.min.js",
            format!("var c={{k:\"{}\"}};", pick("google-api-key").make(&mut rng)),
        ),
    ];
    for (path, text) in &files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    scan_dir(dir.path(), ScanOptions::default())
}

#[test]
fn jsonl_output_snapshot() {
    let findings = snapshot_findings();
    let mut out = Vec::new();
    report::write_jsonl(&mut out, &findings).unwrap();
    let text = String::from_utf8(out).unwrap();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        for field in ["path", "line", "provider", "rule"] {
            assert!(v.get(field).is_some(), "jsonl contract field {field}");
        }
    }
    insta::assert_snapshot!("jsonl", text);
}

#[test]
fn human_output_snapshot() {
    let mut out = Vec::new();
    report::write_human(&mut out, &snapshot_findings()).unwrap();
    insta::assert_snapshot!("human", String::from_utf8(out).unwrap());
}

#[test]
fn sarif_output_snapshot_and_schema() {
    let findings = snapshot_findings();
    let matcher = Matcher::builtin().unwrap();
    let log = sarif::to_value(&findings, matcher.rules(), &tool());

    let mut schema: serde_json::Value =
        serde_json::from_str(include_str!("data/sarif-schema-2.1.0.json")).unwrap();
    // The published schema carries one malformed pattern (a stray `]` in the language-tag
    // pattern of every `language` property), which a strict meta-schema check rejects;
    // Stormwall never writes `language`, so the pattern is corrected here rather than in
    // the shipped file.
    let fixed = fix_language_pattern(&mut schema);
    assert!(fixed > 0, "the known schema erratum moved");
    let validator = jsonschema::draft4::new(&schema).unwrap();
    let errors: Vec<String> = validator.iter_errors(&log).map(|e| e.to_string()).collect();
    assert!(errors.is_empty(), "SARIF schema errors: {errors:#?}");

    // Only the results are snapshotted; the rule table is data checked above.
    let results = log["runs"][0]["results"].clone();
    insta::assert_json_snapshot!("sarif_results", results);
    assert_eq!(
        log["runs"][0]["tool"]["driver"]["rules"]
            .as_array()
            .unwrap()
            .len(),
        matcher.rules().len()
    );
}

/// Replaces the schema's malformed language-tag pattern; returns how many were replaced.
fn fix_language_pattern(v: &mut serde_json::Value) -> usize {
    const BAD: &str = "^[a-zA-Z]{2}|^[a-zA-Z]{2}-[a-zA-Z]{2}]?$";
    match v {
        serde_json::Value::Object(map) => {
            let mut n = 0;
            for (k, child) in map.iter_mut() {
                if k == "pattern" && child == BAD {
                    *child = serde_json::Value::from("^[a-zA-Z]{2}(-[a-zA-Z]{2})?$");
                    n += 1;
                } else {
                    n += fix_language_pattern(child);
                }
            }
            n
        }
        serde_json::Value::Array(items) => items.iter_mut().map(fix_language_pattern).sum(),
        _ => 0,
    }
}

#[test]
fn no_output_contains_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = synth::generate(
        dir.path(),
        &SynthOptions {
            git: false,
            ..SynthOptions::default()
        },
    )
    .unwrap();
    let findings = scan_dir(dir.path(), ScanOptions::default());
    let matcher = Matcher::builtin().unwrap();
    let mut all = Vec::new();
    report::write_jsonl(&mut all, &findings).unwrap();
    report::write_human(&mut all, &findings).unwrap();
    sarif::write(&mut all, &findings, matcher.rules(), &tool()).unwrap();
    let text = String::from_utf8(all).unwrap();
    for p in &corpus.planted {
        assert!(!text.contains(&p.secret), "{} leaked into a report", p.rule);
        // Nor any long piece of it.
        let piece = &p.secret[p.secret.len() / 3..p.secret.len() / 3 + 12];
        assert!(!text.contains(piece), "{} partly leaked", p.rule);
    }
}
