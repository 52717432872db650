//! Architecture invariants from ARCHITECTURE.md, checked against the manifests and sources.

use std::path::{Path, PathBuf};

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn manifest(name: &str) -> String {
    std::fs::read_to_string(crates_dir().join(name).join("Cargo.toml")).unwrap_or_default()
}

fn library_crates() -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(crates_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("stormwall-") && entry.path().join("Cargo.toml").exists() {
            out.push(name);
        }
    }
    out.sort();
    out
}

fn dependencies_section(toml: &str) -> String {
    // Only [dependencies]: dev-dependencies may use anything.
    let mut out = String::new();
    let mut inside = false;
    for line in toml.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            inside = t == "[dependencies]";
            continue;
        }
        if inside {
            out.push_str(t);
            out.push('\n');
        }
    }
    out
}

#[test]
fn types_crate_depends_on_no_workspace_crate_and_does_no_io() {
    let deps = dependencies_section(&manifest("stormwall-types"));
    assert!(
        !deps.contains("stormwall-"),
        "stormwall-types must not depend on workspace crates:\n{deps}"
    );
    for banned in [
        "tokio",
        "hyper",
        "rusqlite",
        "reqwest",
        "std::fs",
        "std::net::TcpStream",
    ] {
        assert!(
            !deps.contains(banned),
            "stormwall-types depends on {banned}"
        );
    }
    let src = crates_dir().join("stormwall-types/src");
    for entry in std::fs::read_dir(src).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        for io in ["std::fs", "std::net::Tcp", "std::io::stdin", "tokio::"] {
            assert!(!text.contains(io), "{} uses {io}", entry.path().display());
        }
    }
}

#[test]
fn only_the_binary_uses_anyhow_and_clap() {
    for name in library_crates() {
        if name == "stormwall-testkit" {
            continue; // test-only tools, never linked into the gateway
        }
        let deps = dependencies_section(&manifest(&name));
        for banned in ["anyhow", "clap"] {
            assert!(
                !deps.lines().any(|l| l.starts_with(banned)),
                "{name} depends on {banned}; libraries return typed errors"
            );
        }
    }
}

#[test]
fn dependency_graph_points_one_way() {
    // types → store → gateway → stormwall: a lower layer never depends on a higher one.
    let layers = ["stormwall-types", "stormwall-store", "stormwall-gateway"];
    for (i, lower) in layers.iter().enumerate() {
        let deps = dependencies_section(&manifest(lower));
        for higher in &layers[i + 1..] {
            assert!(
                !deps.lines().any(|l| l.starts_with(&format!("{higher}."))
                    || l.starts_with(&format!("{higher} "))),
                "{lower} depends on {higher}"
            );
        }
    }
}
