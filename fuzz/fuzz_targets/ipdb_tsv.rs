//! `stormwall-ipintel`'s iptoasn TSV reader on arbitrary text, then look-ups of addresses taken from the text and the
//! raw bytes: never panics; for a table whose ranges do not overlap, every look-up agrees
//! with a linear scan.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use stormwall_ipintel::IpIntel;
use stormwall_types::record::canonical_ip;

fn to_u128(ip: IpAddr) -> u128 {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// (start, end, asn) of every data line, parsed the documented way.
fn ranges(text: &str) -> Vec<(u128, u128, u32)> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        let (Some(a), Some(b), Some(n)) = (cols.first(), cols.get(1), cols.get(2)) else {
            continue;
        };
        if let (Ok(a), Ok(b), Ok(n)) = (
            a.trim().parse::<IpAddr>(),
            b.trim().parse::<IpAddr>(),
            n.trim().parse::<u32>(),
        ) {
            out.push((to_u128(a), to_u128(b), n));
        }
    }
    out
}

fn v6(x: u128) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(x))
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let Ok(db) = IpIntel::builder().tsv("fuzz", &text).map(|b| b.build()) else {
        return;
    };
    let rs = ranges(&text);
    let mut probes: Vec<IpAddr> = vec![
        IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        IpAddr::V4(Ipv4Addr::BROADCAST),
        IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        IpAddr::V6(Ipv6Addr::from(u128::MAX)),
        "127.0.0.1".parse().expect("literal"),
    ];
    for &(s, e, _) in &rs {
        probes.extend([v6(s), v6(e), v6(s.wrapping_sub(1)), v6(e.wrapping_add(1))]);
        probes.push(v6(s + (e.saturating_sub(s)) / 2));
    }
    if let Some(tail) = data.get(data.len().saturating_sub(16)..)
        && let Ok(b) = <[u8; 16]>::try_from(tail)
    {
        probes.push(v6(u128::from_be_bytes(b)));
        probes.push(IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])));
    }

    let mut sorted = rs.clone();
    sorted.sort_by_key(|r| r.0);
    let disjoint = sorted.windows(2).all(|w| w[0].1 < w[1].0);

    for ip in probes {
        let info = db.lookup(ip);
        assert_ne!(info.asn, Some(0), "AS 0 must read as unknown");
        if let Some(t) = &info.as_org {
            assert!(!t.is_empty() && &**t != "None" && t.trim() == &**t);
        }
        if let Some(c) = info.country {
            assert!(c.as_str().bytes().all(|b| b.is_ascii_uppercase()));
        }
        if disjoint {
            let x = to_u128(ip);
            let expected = rs
                .iter()
                .find(|r| r.0 <= x && x <= r.1)
                .and_then(|r| (r.2 != 0).then_some(r.2));
            assert_eq!(info.asn, expected, "look-up of {ip} disagrees with a linear scan");
        }
    }
});
