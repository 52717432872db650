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
fn the_mock_upstream_is_pure() {
    // The gateway's built-in mock upstream and the test kit's server share one reply
    // generator; it stays a function of the request (no runtime, no sockets, no files) so
    // both can link it and its replies are tested without either.
    let deps = dependencies_section(&manifest("stormwall-mock"));
    assert!(!deps.is_empty(), "stormwall-mock moved?");
    for line in deps.lines() {
        let dep = line.split(['.', ' ', '=']).next().unwrap_or_default();
        assert!(
            !dep.starts_with("stormwall") || dep == "stormwall-types",
            "stormwall-mock depends on {dep}; it may use only stormwall-types"
        );
        for banned in ["tokio", "hyper", "http", "rusqlite", "reqwest"] {
            assert!(
                !dep.starts_with(banned),
                "stormwall-mock depends on {dep}; it must stay pure"
            );
        }
    }
    for (path, text) in sources(&crates_dir().join("stormwall-mock/src")) {
        for io in ["std::fs", "std::net", "std::io::", "tokio::", "std::thread"] {
            assert!(!text.contains(io), "{} uses {io}", path.display());
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

/// Every crate's layer: a crate may depend only on crates of lower layers, so the graph is a
/// DAG that points one way (ARCHITECTURE.md, "Architecture invariants"). A new crate must be
/// placed here before this test passes.
const LAYERS: &[(&str, u8)] = &[
    ("stormwall-types", 0),
    ("stormwall-store", 1),
    ("stormwall-scan", 1),
    ("stormwall-safety", 1),
    ("stormwall-detect", 1),
    ("stormwall-mock", 1),
    ("stormwall-cloudlogs", 1),
    ("stormwall-ipintel", 1),
    // Above investigation: the admin API serves the assessment (GET /admin/investigation).
    ("stormwall-gateway", 3),
    ("stormwall-sim", 2),
    ("stormwall-investigate", 2),
    // Beside the gateway, not above it: the test kit must not link the gateway it tests; it
    // shares only the mock's reply generator.
    ("stormwall-testkit", 2),
    ("stormwall", 4),
];

fn layer_of(name: &str) -> Option<u8> {
    LAYERS.iter().find(|(n, _)| *n == name).map(|(_, l)| *l)
}

/// The workspace crates a manifest's `[dependencies]` names.
fn workspace_dependencies(name: &str) -> Vec<String> {
    dependencies_section(&manifest(name))
        .lines()
        .filter_map(|l| {
            let dep = l.split(['.', ' ', '=']).next()?.trim();
            dep.starts_with("stormwall").then(|| dep.to_owned())
        })
        .collect()
}

#[test]
fn dependency_graph_points_one_way() {
    let mut crates = library_crates();
    crates.push("stormwall".to_owned());
    for name in &crates {
        let Some(layer) = layer_of(name) else {
            panic!("{name} has no layer in architecture.rs LAYERS: place it");
        };
        for dep in workspace_dependencies(name) {
            let dep_layer = layer_of(&dep).unwrap_or(u8::MAX);
            assert!(
                dep_layer < layer,
                "{name} (layer {layer}) depends on {dep} (layer {dep_layer}): dependencies point down"
            );
        }
    }
}

#[test]
fn the_simulator_stays_out_of_the_gateway() {
    // The gateway's request path must not link the traffic simulator, directly or not.
    let mut seen = vec!["stormwall-gateway".to_owned()];
    let mut i = 0;
    while i < seen.len() {
        for dep in workspace_dependencies(&seen[i]) {
            assert_ne!(dep, "stormwall-sim", "{} depends on the simulator", seen[i]);
            if !seen.contains(&dep) {
                seen.push(dep);
            }
        }
        i += 1;
    }
}

/// Every `.rs` file below `dir`, with its text.
fn sources(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            out.push((path, text));
        }
    }
    out
}

#[test]
fn the_gateway_planes_point_one_way() {
    // The data plane (the request path) never names the control plane or the entry point;
    // the control plane never names the entry point; only the entry point (server.rs) builds
    // the planes' state. So no module below the entry point reaches a shared hub.
    let src = crates_dir().join("stormwall-gateway/src");
    let data = sources(&src.join("data"));
    let control = sources(&src.join("control"));
    assert!(data.len() > 5 && control.len() > 5, "the planes moved?");
    for (path, text) in &data {
        for banned in ["crate::control", "crate::server", "ControlPlane"] {
            assert!(
                !text.contains(banned),
                "{} (data plane) names {banned}",
                path.display()
            );
        }
    }
    for (path, text) in &control {
        assert!(
            !text.contains("crate::server"),
            "{} (control plane) names the entry point",
            path.display()
        );
    }
    for (path, text) in sources(&src) {
        let is_entry = path.ends_with("server.rs");
        for literal in ["DataPlane {", "ControlPlane {"] {
            let built = text
                .lines()
                .any(|l| l.contains(literal) && !l.trim_start().starts_with("pub struct"));
            assert!(
                is_entry || !built,
                "{} builds {literal}..}}: only server.rs composes the planes",
                path.display()
            );
        }
    }
}

/// Whether `path` (`stormwall_gateway::module::…::item`) names a module, or an item defined
/// in the module file the leading segments lead to.
fn gateway_item_exists(path: &str) -> bool {
    let mut dir = crates_dir().join("stormwall-gateway/src");
    let mut file = dir.join("lib.rs");
    let segments: Vec<&str> = path.split("::").skip(1).collect();
    let mut rest = segments.as_slice();
    while let Some((seg, tail)) = rest.split_first() {
        let flat = dir.join(format!("{seg}.rs"));
        let nested = dir.join(seg).join("mod.rs");
        file = if flat.exists() {
            flat
        } else if nested.exists() {
            nested
        } else {
            break;
        };
        dir = dir.join(seg);
        rest = tail;
    }
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    rest.iter().all(|item| {
        ["fn", "struct", "enum", "trait", "type", "const", "static"]
            .iter()
            .any(|kw| {
                [
                    format!("{kw} {item}("),
                    format!("{kw} {item}<"),
                    format!("{kw} {item} "),
                ]
                .iter()
                .any(|decl| text.contains(decl.as_str()))
            })
    })
}

#[test]
fn clippy_bans_cover_every_spawn_and_name_real_helpers() {
    let text = std::fs::read_to_string(crates_dir().join("../clippy.toml")).unwrap_or_default();
    assert!(text.contains("disallowed-methods"), "clippy.toml moved?");
    // `tokio::spawn` alone lets `Handle::current().spawn(..)` through.
    for spawn in [
        "tokio::spawn",
        "tokio::task::spawn",
        "tokio::runtime::Handle::spawn",
        "tokio::runtime::Runtime::spawn",
        "tokio::task::spawn_blocking",
        "tokio::runtime::Handle::spawn_blocking",
    ] {
        assert!(
            text.contains(&format!("path = \"{spawn}\"")),
            "clippy.toml does not ban {spawn}"
        );
    }
    // A reason that points at a helper must point at one that exists.
    let mut named = 0;
    for (at, _) in text.match_indices("stormwall_gateway::") {
        let path: String = text[at..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let path = path.trim_end_matches(':');
        assert!(
            gateway_item_exists(path),
            "clippy.toml names {path}, which the gateway does not define"
        );
        named += 1;
    }
    assert!(named > 0, "clippy.toml's reasons name no helper");
}

/// `unsafe_code` is denied workspace-wide; the `allow`s are glibc's `malloc_trim` in
/// `stormwall::memory` and the encoder's SIMD kernels in `stormwall_safety::encoder::simd`
/// (run-time feature dispatch and vector loads, tested against a scalar reference). Any
/// other lifts the ban without a reviewer noticing.
#[test]
fn the_only_unsafe_code_is_the_allocator_trim() {
    let mut offenders = Vec::new();
    for entry in std::fs::read_dir(crates_dir())
        .into_iter()
        .flatten()
        .flatten()
    {
        for (path, text) in sources(&entry.path().join("src")) {
            let allowed = path.ends_with("stormwall/src/memory.rs")
                || path.ends_with("stormwall-safety/src/encoder/simd.rs")
                || path.ends_with("stormwall/src/architecture.rs");
            if !allowed && (text.contains("allow(unsafe_code)") || text.contains("unsafe {")) {
                offenders.push(path.display().to_string());
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "unsafe code outside stormwall::memory: {offenders:?}"
    );
}
