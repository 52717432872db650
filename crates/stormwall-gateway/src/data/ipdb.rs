//! Client-network enrichment: ASN, AS organisation, country and egress flags (hosting, VPN,
//! Tor) for an address, from MaxMind `.mmdb` files or an ip-to-ASN TSV
//! (`range_start  range_end  as_number  country_code  as_description  [flags]`, the layout
//! iptoasn.com publishes, plus an optional flags column).

use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use stormwall_types::record::canonical_ip;

use crate::config::IpDbConfig;

/// What is known about one address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkInfo {
    /// Autonomous system number.
    pub asn: Option<u32>,
    /// Autonomous system organisation.
    pub as_org: Option<Arc<str>>,
    /// ISO 3166-1 alpha-2 country.
    pub country: Option<Arc<str>>,
    /// Flags from the TSV (`hosting`, `vpn`, `tor`).
    pub flags: Option<Arc<str>>,
}

/// A database that cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum IpDbError {
    /// The file could not be read.
    #[error("cannot read IP database {path}")]
    Io {
        /// File.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A TSV line is malformed.
    #[error("IP database {path} line {line}: {why}")]
    Tsv {
        /// File.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        why: &'static str,
    },
    /// The MMDB file is invalid.
    #[error("invalid MaxMind database {path}: {why}")]
    Mmdb {
        /// File.
        path: PathBuf,
        /// Cause.
        why: String,
    },
}

struct Range {
    start: u128,
    end: u128,
    info: NetworkInfo,
}

enum Source {
    Tsv(Vec<Range>),
    Mmdb(Box<maxminddb::Reader<Vec<u8>>>),
}

/// The loaded databases, consulted in order until each field is known.
#[derive(Default)]
pub struct IpDb {
    sources: Vec<Source>,
}

impl std::fmt::Debug for IpDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IpDb({} sources)", self.sources.len())
    }
}

#[derive(serde::Deserialize)]
struct MmdbRecord<'a> {
    #[serde(default)]
    autonomous_system_number: Option<u32>,
    #[serde(borrow, default)]
    autonomous_system_organization: Option<&'a str>,
    #[serde(borrow, default)]
    country: Option<MmdbCountry<'a>>,
}

#[derive(serde::Deserialize)]
struct MmdbCountry<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

impl IpDb {
    /// Loads every file a config names (none: an empty database that knows nothing).
    pub fn load(config: &IpDbConfig) -> Result<Self, IpDbError> {
        let mut db = IpDb::default();
        for path in config.path.iter().chain(&config.extra_paths) {
            db.sources.push(load_file(path)?);
        }
        Ok(db)
    }

    /// Loads a TSV from text (tests and tools).
    pub fn from_tsv(text: &str) -> Result<Self, IpDbError> {
        Ok(IpDb {
            sources: vec![Source::Tsv(parse_tsv(text, Path::new("<memory>"))?)],
        })
    }

    /// Looks an address up.
    pub fn lookup(&self, ip: IpAddr) -> NetworkInfo {
        let ip = canonical_ip(ip);
        let mut out = NetworkInfo::default();
        for source in &self.sources {
            let found = match source {
                Source::Tsv(ranges) => lookup_tsv(ranges, ip),
                Source::Mmdb(reader) => lookup_mmdb(reader, ip),
            };
            if let Some(f) = found {
                out.asn = out.asn.or(f.asn);
                out.as_org = out.as_org.or(f.as_org);
                out.country = out.country.or(f.country);
                out.flags = out.flags.or(f.flags);
            }
            if out.asn.is_some() && out.country.is_some() {
                break;
            }
        }
        out
    }
}

fn load_file(path: &Path) -> Result<Source, IpDbError> {
    let is_mmdb = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("mmdb"));
    if is_mmdb {
        let reader = maxminddb::Reader::open_readfile(path).map_err(|e| IpDbError::Mmdb {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
        return Ok(Source::Mmdb(Box::new(reader)));
    }
    let text = std::fs::read_to_string(path).map_err(|source| IpDbError::Io {
        path: path.to_owned(),
        source,
    })?;
    Ok(Source::Tsv(parse_tsv(&text, path)?))
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

fn parse_tsv(text: &str, path: &Path) -> Result<Vec<Range>, IpDbError> {
    let err = |line: usize, why: &'static str| IpDbError::Tsv {
        path: path.to_owned(),
        line,
        why,
    };
    let mut ranges = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() < 3 {
            return Err(err(line_no, "expected at least 3 tab-separated columns"));
        }
        let start: IpAddr = cols[0]
            .trim()
            .parse()
            .map_err(|_| err(line_no, "bad range start"))?;
        let end: IpAddr = cols[1]
            .trim()
            .parse()
            .map_err(|_| err(line_no, "bad range end"))?;
        let asn: u32 = cols[2]
            .trim()
            .parse()
            .map_err(|_| err(line_no, "bad AS number"))?;
        let (start, end) = (to_u128(start), to_u128(end));
        if end < start {
            return Err(err(line_no, "range end before start"));
        }
        let text_col = |i: usize| {
            cols.get(i)
                .map(|s| s.trim())
                .filter(|s| !s.is_empty() && *s != "None")
                .map(Arc::<str>::from)
        };
        ranges.push(Range {
            start,
            end,
            info: NetworkInfo {
                // iptoasn marks unrouted space with AS 0.
                asn: (asn != 0).then_some(asn),
                country: text_col(3),
                as_org: text_col(4),
                flags: text_col(5),
            },
        });
    }
    ranges.sort_by_key(|r| r.start);
    Ok(ranges)
}

fn lookup_tsv(ranges: &[Range], ip: IpAddr) -> Option<NetworkInfo> {
    let x = to_u128(ip);
    let idx = ranges.partition_point(|r| r.start <= x);
    let r = ranges.get(idx.checked_sub(1)?)?;
    (x <= r.end).then(|| r.info.clone())
}

fn lookup_mmdb(reader: &maxminddb::Reader<Vec<u8>>, ip: IpAddr) -> Option<NetworkInfo> {
    let result = reader.lookup(ip).ok()?;
    let rec: MmdbRecord<'_> = result.decode().ok()??;
    Some(NetworkInfo {
        asn: rec.autonomous_system_number,
        as_org: rec.autonomous_system_organization.map(Arc::from),
        country: rec.country.and_then(|c| c.iso_code).map(Arc::from),
        flags: None,
    })
}

/// The unspecified address, for events whose client address is unknown.
pub const UNKNOWN_IP: IpAddr = IpAddr::V6(Ipv6Addr::UNSPECIFIED);

#[cfg(test)]
mod tests {
    use super::*;

    const TSV: &str = "# test\n127.0.0.0\t127.0.0.255\t64500\tUS\tCORP\n127.0.2.0\t127.0.2.255\t64502\tNL\tHOST\thosting\n10.0.0.0\t10.0.0.255\t0\tNone\tNot routed\n";

    #[test]
    fn tsv_lookup() {
        let db = IpDb::from_tsv(TSV).unwrap();
        let a = db.lookup("127.0.0.7".parse().unwrap());
        assert_eq!(a.asn, Some(64500));
        assert_eq!(a.country.as_deref(), Some("US"));
        let b = db.lookup("::ffff:127.0.2.1".parse().unwrap());
        assert_eq!(b.flags.as_deref(), Some("hosting"));
        assert_eq!(
            db.lookup("127.0.1.1".parse().unwrap()),
            NetworkInfo::default()
        );
        assert_eq!(db.lookup("10.0.0.1".parse().unwrap()).asn, None);
    }

    #[test]
    fn bad_tsv_names_the_line() {
        let e = IpDb::from_tsv("1.2.3.4\tnope\t5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1"), "{e}");
    }

    #[test]
    fn shipped_test_database_parses() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../tests/data/ip2asn-test.tsv"
        );
        let db = IpDb::load(&IpDbConfig {
            path: Some(path.into()),
            extra_paths: vec![],
        })
        .unwrap();
        assert_eq!(db.lookup("127.0.3.9".parse().unwrap()).asn, Some(64503));
    }
}
