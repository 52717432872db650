//! Egress reputation for detector P3: which networks are hosting providers, VPNs, Tor exits
//! or other anonymisers. Built from config (ASNs and CIDRs) and from the flags column of an
//! ip-to-ASN TSV (the gateway's IP database format), parsed from text: this crate reads no
//! files.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use stormwall_types::record::canonical_ip;

/// What kind of anonymising egress a network is.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum EgressFlag {
    /// A hosting or cloud provider.
    Hosting,
    /// A commercial VPN.
    Vpn,
    /// A Tor exit.
    Tor,
    /// An open proxy or other anonymiser (tunnels, residential-proxy pools).
    Proxy,
}

impl EgressFlag {
    /// Stable name.
    pub fn as_str(self) -> &'static str {
        match self {
            EgressFlag::Hosting => "hosting",
            EgressFlag::Vpn => "vpn",
            EgressFlag::Tor => "tor",
            EgressFlag::Proxy => "proxy",
        }
    }

    /// Parses a flag name (`hosting`, `vpn`, `tor`, `proxy`; `anonymizer` is `proxy`).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "hosting" | "cloud" | "datacenter" => Some(EgressFlag::Hosting),
            "vpn" => Some(EgressFlag::Vpn),
            "tor" => Some(EgressFlag::Tor),
            "proxy" | "anonymizer" | "anonymiser" => Some(EgressFlag::Proxy),
            _ => None,
        }
    }

    /// A bit for flag sets.
    pub fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// An IP-database line that cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("egress list line {line}: {why}")]
pub struct EgressParseError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub why: &'static str,
}

/// An outside source of egress flags, consulted after the configured lists: the
/// gateway's and `stormwall detect`'s IP intelligence (the shipped hosting ASN list, Tor
/// exit and VPN lists, flagged database rows), which reloads without rebuilding the engine.
#[derive(Clone)]
pub struct ExternalEgress(Arc<dyn Fn(IpAddr, Option<u32>) -> Option<EgressFlag> + Send + Sync>);

impl ExternalEgress {
    /// Wraps a look-up of an address and its AS number.
    pub fn new(
        f: impl Fn(IpAddr, Option<u32>) -> Option<EgressFlag> + Send + Sync + 'static,
    ) -> Self {
        Self(Arc::new(f))
    }
}

impl std::fmt::Debug for ExternalEgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExternalEgress")
    }
}

/// Networks known to be anonymising egress.
#[derive(Debug, Clone, Default)]
pub struct EgressList {
    by_asn: HashMap<u32, EgressFlag>,
    ranges: Vec<(u128, u128, EgressFlag)>,
    external: Option<ExternalEgress>,
}

impl EgressList {
    /// Adds an ASN.
    pub fn add_asn(&mut self, asn: u32, flag: EgressFlag) {
        self.by_asn.insert(asn, flag);
    }

    /// Adds a network.
    pub fn add_net(&mut self, net: IpNet, flag: EgressFlag) {
        let (a, b) = (to_u128(net.network()), to_u128(net.broadcast()));
        self.ranges.push((a, b, flag));
    }

    /// Adds the flagged lines of an ip-to-ASN TSV
    /// (`range_start range_end as_number country as_description [flags]`). Lines without
    /// flags are skipped; the ASN of a flagged range is flagged too.
    pub fn add_tsv(&mut self, text: &str) -> Result<(), EgressParseError> {
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end_matches('\r');
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let cols: Vec<&str> = line.split('\t').collect();
            let Some(flags) = cols.get(5).filter(|f| !f.trim().is_empty()) else {
                continue;
            };
            let err = |why| EgressParseError { line: i + 1, why };
            let start: IpAddr = cols
                .first()
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| err("bad range start"))?;
            let end: IpAddr = cols
                .get(1)
                .and_then(|s| s.trim().parse().ok())
                .ok_or_else(|| err("bad range end"))?;
            let asn: Option<u32> = cols.get(2).and_then(|s| s.trim().parse().ok());
            // The strongest flag wins when a range has several.
            let flag = flags
                .split(',')
                .filter_map(EgressFlag::parse)
                .max_by_key(|f| match f {
                    EgressFlag::Tor => 3,
                    EgressFlag::Proxy => 2,
                    EgressFlag::Vpn => 1,
                    EgressFlag::Hosting => 0,
                })
                .ok_or_else(|| err("unknown flag"))?;
            let (a, b) = (to_u128(start), to_u128(end));
            if a > b {
                return Err(err("range start after end"));
            }
            self.ranges.push((a, b, flag));
            if let Some(asn) = asn.filter(|&a| a != 0) {
                self.by_asn.insert(asn, flag);
            }
        }
        Ok(())
    }

    /// Consults `external` after the configured ASNs and networks.
    pub fn set_external(&mut self, external: ExternalEgress) {
        self.external = Some(external);
    }

    /// The flag of an address or its ASN, if any: configured ASNs, configured networks,
    /// then the external source.
    pub fn lookup(&self, ip: IpAddr, asn: Option<u32>) -> Option<EgressFlag> {
        if let Some(f) = asn.and_then(|a| self.by_asn.get(&a)) {
            return Some(*f);
        }
        if !self.ranges.is_empty() {
            let v = to_u128(ip);
            if let Some(r) = self.ranges.iter().find(|(a, b, _)| (*a..=*b).contains(&v)) {
                return Some(r.2);
            }
        }
        self.external.as_ref().and_then(|f| (f.0)(ip, asn))
    }

    /// Whether the list knows nothing.
    pub fn is_empty(&self) -> bool {
        self.by_asn.is_empty() && self.ranges.is_empty() && self.external.is_none()
    }
}

fn to_u128(ip: IpAddr) -> u128 {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => u128::from(u32::from(v4)) | 0xffff << 32,
        IpAddr::V6(v6) => u128::from(v6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_test_ip_database_flags() {
        let tsv = "# c\n127.0.0.0\t127.0.0.255\t64500\tUS\tCORP\n127.0.2.0\t127.0.2.255\t64502\tNL\tHOST\thosting\n127.0.5.0\t127.0.5.255\t64505\tRO\tTOR\ttor\n";
        let mut l = EgressList::default();
        l.add_tsv(tsv).unwrap();
        assert_eq!(
            l.lookup("127.0.2.9".parse().unwrap(), None),
            Some(EgressFlag::Hosting)
        );
        assert_eq!(
            l.lookup("10.0.0.1".parse().unwrap(), Some(64505)),
            Some(EgressFlag::Tor)
        );
        assert_eq!(l.lookup("127.0.0.9".parse().unwrap(), Some(64500)), None);
        assert!(l.add_tsv("x\ty\t1\tUS\tA\thosting\n").is_err());
        assert!(l.add_tsv("1.0.0.0\t1.0.0.255\t1\tUS\tA\tweird\n").is_err());
        // The external source answers what the configured lists do not.
        l.set_external(ExternalEgress::new(|_, asn| {
            (asn == Some(16509)).then_some(EgressFlag::Hosting)
        }));
        assert_eq!(
            l.lookup("192.0.2.1".parse().unwrap(), Some(16509)),
            Some(EgressFlag::Hosting)
        );
        assert_eq!(
            l.lookup("127.0.5.1".parse().unwrap(), Some(16509)),
            Some(EgressFlag::Tor)
        );
    }
}
