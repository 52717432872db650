//! `keys create-bulk`: many keys straight into the store, each secret written once to a new
//! file, and served by a gateway that loads the store.

use std::path::Path;

use serde_json::Value;
use stormwall_testkit::http_request;

const TOKEN: &str = "cli-bulk-admin-token";

fn stormwall(args: &[&str]) -> std::process::Output {
    crate::run_with(args, TOKEN)
}

fn write_config(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("stormwall.toml");
    let root = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../.."));
    let text = crate::mock_gateway_config(
        &dir.join("sw.db"),
        &root.join("tests/data/ip2asn-test.tsv"),
        &["gpt-4o-mini", "text-embedding-3-small"],
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

async fn chat(proxy: &str, key: &str, model: &str) -> u16 {
    let body = format!(r#"{{"model":"{model}","messages":[{{"role":"user","content":"Hello"}}]}}"#);
    let auth = format!("Bearer {key}");
    http_request(
        "POST",
        &format!("{proxy}/v1/chat/completions"),
        &[("authorization", &auth)],
        body,
        None,
    )
    .await
    .unwrap()
    .status
    .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_create_bulk_writes_each_secret_once_and_the_gateway_serves_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let config = config.to_str().unwrap();
    let jsonl = dir.path().join("keys.jsonl");
    let out = stormwall(&[
        "keys",
        "create-bulk",
        "--config",
        config,
        "--count",
        "25",
        "--tenant",
        "acme",
        "--model",
        "gpt-4o-mini",
        "--label",
        "migrated",
        "--out",
        jsonl.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("created 25 keys"), "{stdout}");
    let created: Vec<Value> = lines(&jsonl)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(created.len(), 25);
    let mut secrets = std::collections::HashSet::new();
    for k in &created {
        let key = k["key"].as_str().unwrap();
        let id = k["id"].as_str().unwrap();
        assert!(key.starts_with("swk_") && key.contains(id), "{k}");
        assert!(!stdout.contains(key), "secrets go to the file only");
        assert_eq!(k["tenant"], "acme");
        assert_eq!(k["label"], "migrated");
        secrets.insert(key.to_owned());
    }
    assert_eq!(secrets.len(), 25, "every key is new");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&jsonl).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "only the owner may read the secrets");
    }

    // An existing file is never overwritten, and nothing is created then.
    let again = stormwall(&[
        "keys",
        "create-bulk",
        "--config",
        config,
        "--count",
        "5",
        "--tenant",
        "acme",
        "--out",
        jsonl.to_str().unwrap(),
    ]);
    assert_eq!(again.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("never overwritten"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(lines(&jsonl).len(), 25);

    // `--format keys`: the bare keys, as the load generator reads them.
    let bare = dir.path().join("keys.txt");
    let out = stormwall(&[
        "keys",
        "create-bulk",
        "--config",
        config,
        "--count",
        "3",
        "--tenant",
        "beta",
        "--format",
        "keys",
        "--out",
        bare.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let bare_keys = lines(&bare);
    assert_eq!(bare_keys.len(), 3);
    assert!(bare_keys.iter().all(|k| k.starts_with("swk_")));

    let server = crate::serve_with(Path::new(config), TOKEN);
    let list = stormwall(&["keys", "list", "--json", "--admin-url", &server.admin]);
    let listed: Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 28);
    let listed_text = String::from_utf8_lossy(&list.stdout);
    assert!(secrets.iter().all(|s| !listed_text.contains(s.as_str())));
    // Stored with their scope: the model allowed is served, another is refused.
    let key = created[7]["key"].as_str().unwrap();
    assert_eq!(chat(&server.proxy, key, "gpt-4o-mini").await, 200);
    assert_eq!(
        chat(&server.proxy, key, "text-embedding-3-small").await,
        403
    );
    assert_eq!(
        chat(&server.proxy, &bare_keys[0], "text-embedding-3-small").await,
        200
    );
    // Each committed batch is in the audit log.
    let audit = stormwall(&["audit", "list", "--json", "--admin-url", &server.admin]);
    let audit_text = String::from_utf8_lossy(&audit.stdout);
    assert!(audit_text.contains("key.create_bulk"), "{audit_text}");
    assert!(secrets.iter().all(|s| !audit_text.contains(s.as_str())));
}

#[test]
fn keys_create_bulk_from_a_file_checks_every_line_before_storing_any() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path());
    let config = config.to_str().unwrap();
    let from = dir.path().join("import.jsonl");
    let good = [
        r#"{"tenant": "acme", "label": "ci", "scope": {"models": ["gpt-4o-mini"], "rpm": 60}}"#,
        "",
        r#"{"tenant": "beta", "kind": "canary"}"#,
    ];
    let mut text = good.join("\n");
    text.push_str("\n{\"tenant\": \"not a tenant!\"}\n");
    std::fs::write(&from, &text).unwrap();
    let out_path = dir.path().join("out.jsonl");
    let out = stormwall(&[
        "keys",
        "create-bulk",
        "--config",
        config,
        "--from",
        from.to_str().unwrap(),
        "--out",
        out_path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("import.jsonl:4"), "{err}");
    assert!(
        !out_path.exists(),
        "nothing created before every line was checked"
    );

    // A line that is not a key object, and scope options beside --from, are refused too.
    std::fs::write(&from, "{\"tenant\": \"acme\", \"scop\": {}}\n").unwrap();
    let out = stormwall(&[
        "keys",
        "create-bulk",
        "--config",
        config,
        "--from",
        from.to_str().unwrap(),
        "--out",
        out_path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("import.jsonl:1"));
    let out = stormwall(&[
        "keys",
        "create-bulk",
        "--config",
        config,
        "--from",
        from.to_str().unwrap(),
        "--rpm",
        "5",
        "--out",
        out_path.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(!out_path.exists());

    std::fs::write(&from, good.join("\n")).unwrap();
    let out = stormwall(&[
        "keys",
        "create-bulk",
        "--config",
        config,
        "--from",
        from.to_str().unwrap(),
        "--out",
        out_path.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: Vec<Value> = lines(&out_path)
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(created.len(), 2);
    assert_eq!(created[0]["tenant"], "acme");
    assert_eq!(created[0]["label"], "ci");
    assert_eq!(created[1]["tenant"], "beta");

    // Neither --count nor --from: a usage error.
    let out = stormwall(&["keys", "create-bulk", "--config", config, "--out", "x"]);
    assert_eq!(out.status.code(), Some(2));
}
