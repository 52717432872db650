//! `stormwall ip lookup` through the real binary: the JSON contract read from a config's
//! `[ipdb]` section, the text form, the no-database fallback, and a bad address.

use std::process::{Command, Output};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_stormwall");

fn run(args: &[&str], dir: &std::path::Path) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("STORMWALL_LOG", "warn")
        .env_remove("STORMWALL_CONFIG")
        .output()
        .unwrap()
}

#[test]
fn ip_lookup_reads_the_config_and_names_its_sources() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("asn-ipv4.csv"),
        "198.51.100.0,198.51.100.255,16509,Example Cloud\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("country-ipv4.csv"),
        "198.51.100.0,198.51.100.255,IE\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("tor.txt"), "198.51.100.7\n").unwrap();
    let config = dir.path().join("gw.toml");
    std::fs::write(
        &config,
        "[ipdb]\npath = \"asn-ipv4.csv\"\nextra_paths = [\"country-ipv4.csv\"]\n\
         tor_exit_lists = [\"tor.txt\"]\n\n\
         [[upstreams]]\nkind = \"mock\"\nname = \"mock\"\nmodels = [\"m\"]\n",
    )
    .unwrap();
    let out = run(
        &["ip", "lookup", "198.51.100.7", "-c", "gw.toml", "--json"],
        dir.path(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ip"], "198.51.100.7");
    assert_eq!(v["asn"], 16509);
    assert_eq!(v["as_org"], "Example Cloud");
    assert_eq!(v["country"], "IE");
    assert_eq!(v["flags"], serde_json::json!(["hosting", "tor"]));
    assert_eq!(v["prefix"], "198.51.100.0/24");
    assert_eq!(v["network_id"], "AS16509");
    assert_eq!(v["matched"], "198.51.100.0-198.51.100.255");
    assert_eq!(v["sources"]["asn"], "asn-ipv4.csv");
    assert_eq!(v["sources"]["country"], "country-ipv4.csv");
    let flags = v["sources"]["flags"].to_string();
    assert!(
        flags.contains("builtin:hosting-asns") && flags.contains("tor.txt"),
        "{flags}"
    );
    assert!(v["missing"].to_string().contains("no VPN list"));

    let out = run(
        &["ip", "lookup", "198.51.100.7", "-c", "gw.toml"],
        dir.path(),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("AS16509  (from asn-ipv4.csv)"), "{text}");
}

#[test]
fn ip_lookup_without_a_database_shows_the_prefix_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let out = run(&["ip", "lookup", "203.0.113.9", "--json"], dir.path());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v.get("asn").is_none());
    assert_eq!(v["network_id"], "203.0.0.0/16");
    assert!(v["missing"].to_string().contains("no ASN database"));
    let out = run(&["ip", "lookup", "not-an-address"], dir.path());
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not an IPv4 or IPv6 address"));
}
