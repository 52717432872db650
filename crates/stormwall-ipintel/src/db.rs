//! The loaded IP intelligence: databases consulted in order, ASN lists, address lists.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ipnet::IpNet;
use stormwall_types::record::canonical_ip;

use crate::config::IpIntelConfig;
use crate::error::IpIntelError;
use crate::formats;
use crate::info::{Flags, NetworkInfo};
use crate::mmdb::MmdbSource;
use crate::ranges::{FlagTable, RangeTable, TableBuilder};

/// The shipped list of hosting and cloud ASNs (`data/hosting-asns.txt`, sources in
/// `data/SOURCES.md`).
pub const BUILTIN_HOSTING_ASNS: &str = include_str!("../data/hosting-asns.txt");
/// The name the shipped list answers under.
pub const BUILTIN_HOSTING_NAME: &str = "builtin:hosting-asns";

/// A database file's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// MaxMind DB (`.mmdb`).
    Mmdb,
    /// ip-location-db CSV (`.csv`).
    IpLocationCsv,
    /// iptoasn TSV (`.tsv` and anything else).
    IptoasnTsv,
}

impl Format {
    /// The format a file name implies.
    pub fn of(path: &Path) -> Format {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        match ext.as_deref() {
            Some("mmdb") => Format::Mmdb,
            Some("csv") => Format::IpLocationCsv,
            _ => Format::IptoasnTsv,
        }
    }
}

enum SourceData {
    Table(RangeTable),
    Mmdb(Box<MmdbSource>),
}

struct Source {
    name: Arc<str>,
    format: Format,
    data: SourceData,
}

impl Source {
    #[inline]
    fn find(&self, ip: IpAddr, out: &mut NetworkInfo) -> bool {
        match &self.data {
            SourceData::Table(t) => t.find(ip).map(|f| out.merge(f)).is_some(),
            SourceData::Mmdb(m) => m.find(ip).map(|f| out.merge(&f)).is_some(),
        }
    }

    fn has_asn(&self) -> bool {
        match &self.data {
            SourceData::Table(t) => t.has_asn(),
            SourceData::Mmdb(m) => m.has_asn(),
        }
    }

    fn has_country(&self) -> bool {
        match &self.data {
            SourceData::Table(t) => t.has_country(),
            SourceData::Mmdb(m) => m.has_country(),
        }
    }
}

struct AddressList {
    name: Arc<str>,
    flags: Flags,
    entries: usize,
    table: FlagTable,
}

/// Everything known about client networks, immutable once built; a reload builds a new one.
#[derive(Default)]
pub struct IpIntel {
    sources: Vec<Source>,
    /// Sorted by ASN: (ASN, flags, index into `asn_list_names`).
    asn_flags: Vec<(u32, Flags, u16)>,
    asn_list_names: Vec<(Arc<str>, usize)>,
    lists: Vec<AddressList>,
}

impl std::fmt::Debug for IpIntel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "IpIntel({} databases, {} flagged ASNs, {} address lists)",
            self.sources.len(),
            self.asn_flags.len(),
            self.lists.len()
        )
    }
}

/// Builds an [`IpIntel`] from texts and bytes (what [`IpIntel::load`] does with files).
#[derive(Default)]
pub struct IpIntelBuilder {
    intel: IpIntel,
    asn_flags: Vec<(u32, Flags, u16)>,
}

fn parse_err(name: &str, source: formats::ParseError) -> IpIntelError {
    IpIntelError::Parse {
        path: PathBuf::from(name),
        source,
    }
}

impl IpIntelBuilder {
    /// Adds an iptoasn TSV database.
    pub fn tsv(mut self, name: &str, text: &str) -> Result<Self, IpIntelError> {
        let mut table = TableBuilder::default();
        let mut flagged = Vec::new();
        formats::parse_iptoasn_tsv(text, &mut table, &mut flagged)
            .map_err(|e| parse_err(name, e))?;
        if !flagged.is_empty() {
            self.add_asn_flags(name, flagged);
        }
        self.push_table(name, Format::IptoasnTsv, table);
        Ok(self)
    }

    /// Adds an ip-location-db CSV database; `ipv6` when the file is an IPv6 one (matters
    /// only for `-num` files; a name containing `ipv6` says so).
    pub fn csv(mut self, name: &str, text: &str, ipv6: bool) -> Result<Self, IpIntelError> {
        let mut table = TableBuilder::default();
        formats::parse_ip_location_csv(text, ipv6, &mut table).map_err(|e| parse_err(name, e))?;
        self.push_table(name, Format::IpLocationCsv, table);
        Ok(self)
    }

    /// Adds a MaxMind DB from its bytes.
    pub fn mmdb(mut self, name: &str, bytes: Vec<u8>) -> Result<Self, IpIntelError> {
        let src = MmdbSource::from_bytes(bytes).map_err(|why| IpIntelError::Mmdb {
            path: PathBuf::from(name),
            why,
        })?;
        self.intel.sources.push(Source {
            name: Arc::from(name),
            format: Format::Mmdb,
            data: SourceData::Mmdb(Box::new(src)),
        });
        Ok(self)
    }

    /// Adds an ASN list (`ASN [flag] [name]` lines).
    pub fn asn_list(mut self, name: &str, text: &str) -> Result<Self, IpIntelError> {
        let list = formats::parse_asn_list(text).map_err(|e| parse_err(name, e))?;
        self.add_asn_flags(name, list);
        Ok(self)
    }

    /// Adds the shipped hosting and cloud ASN list.
    pub fn builtin_hosting_asns(self) -> Result<Self, IpIntelError> {
        self.asn_list(BUILTIN_HOSTING_NAME, BUILTIN_HOSTING_ASNS)
    }

    /// Adds an address list (Tor exits, VPN ranges) whose entries get `flags`.
    pub fn address_list(
        mut self,
        name: &str,
        text: &str,
        flags: Flags,
    ) -> Result<Self, IpIntelError> {
        let ranges = formats::parse_address_list(text, flags).map_err(|e| parse_err(name, e))?;
        self.intel.lists.push(AddressList {
            name: Arc::from(name),
            flags,
            entries: ranges.len(),
            table: FlagTable::build(&ranges),
        });
        Ok(self)
    }

    fn push_table(&mut self, name: &str, format: Format, table: TableBuilder) {
        self.intel.sources.push(Source {
            name: Arc::from(name),
            format,
            data: SourceData::Table(table.build()),
        });
    }

    fn add_asn_flags(&mut self, name: &str, list: Vec<(u32, Flags)>) {
        let idx = u16::try_from(self.intel.asn_list_names.len()).unwrap_or(u16::MAX);
        self.intel
            .asn_list_names
            .push((Arc::from(name), list.len()));
        self.asn_flags
            .extend(list.into_iter().map(|(a, f)| (a, f, idx)));
    }

    /// Freezes what was added.
    pub fn build(mut self) -> IpIntel {
        // Stable sort: for an ASN in several lists the first list is named as the source,
        // and the flags of all of them are kept.
        self.asn_flags.sort_by_key(|e| e.0);
        let mut merged: Vec<(u32, Flags, u16)> = Vec::with_capacity(self.asn_flags.len());
        for (a, f, i) in self.asn_flags {
            match merged.last_mut() {
                Some(last) if last.0 == a => last.1 = last.1.union(f),
                _ => merged.push((a, f, i)),
            }
        }
        merged.shrink_to_fit();
        self.intel.asn_flags = merged;
        self.intel
    }
}

fn read(path: &Path) -> Result<Vec<u8>, IpIntelError> {
    std::fs::read(path).map_err(|source| IpIntelError::Io {
        path: path.to_owned(),
        source,
    })
}

fn read_text(path: &Path) -> Result<String, IpIntelError> {
    let bytes = read(path)?;
    String::from_utf8(bytes).map_err(|_| IpIntelError::Parse {
        path: path.to_owned(),
        source: formats::ParseError {
            line: 0,
            why: "not UTF-8 text",
        },
    })
}

/// How the detectors tell networks apart when no database gives an AS number: the /16 of
/// an IPv4 address, the /32 of an IPv6 one (an operator's typical allocation).
pub fn fallback_network(ip: IpAddr) -> IpNet {
    let (ip, len) = match canonical_ip(ip) {
        ip @ IpAddr::V4(_) => (ip, 16),
        ip @ IpAddr::V6(_) => (ip, 32),
    };
    IpNet::new(ip, len)
        .map(|n| n.trunc())
        .unwrap_or_else(|_| IpNet::from(ip))
}

/// The client "network" the detectors count per address (/24 for IPv4, /48 for IPv6).
pub fn client_prefix(ip: IpAddr) -> IpNet {
    let (ip, len) = match canonical_ip(ip) {
        ip @ IpAddr::V4(_) => (ip, 24),
        ip @ IpAddr::V6(_) => (ip, 48),
    };
    IpNet::new(ip, len)
        .map(|n| n.trunc())
        .unwrap_or_else(|_| IpNet::from(ip))
}

/// Which source answered each field of an [`Explanation`].
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Answered {
    /// Source of the AS number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asn: Option<String>,
    /// Source of the AS organisation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub as_org: Option<String>,
    /// Source of the country.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<String>,
    /// Sources of the flags (`list: flag`).
    pub flags: Vec<String>,
}

/// Everything known of one address, with where each part came from (`stormwall ip lookup`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Explanation {
    /// The address (IPv4-mapped IPv6 shown as IPv4).
    pub ip: IpAddr,
    /// What the gateway records and the detectors read.
    #[serde(flatten)]
    pub info: NetworkInfo,
    /// The range or network of the database that answered the AS number (else the first
    /// that matched).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched: Option<String>,
    /// The address's /24 (IPv4) or /48 (IPv6): the client network the detectors count.
    pub prefix: IpNet,
    /// The network the detectors group this address by: `AS<n>`, or the /16 (IPv6 /32)
    /// prefix when no AS number is known.
    pub network_id: String,
    /// Which source answered what.
    pub sources: Answered,
}

/// One database, as `config check`, `/readyz` and `POST /admin/ipintel/reload` report it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SourceStatus {
    /// File (or name).
    pub name: String,
    /// Format.
    pub format: Format,
    /// Ranges (text formats).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ranges: Option<usize>,
    /// Carries AS numbers.
    pub asn: bool,
    /// Carries countries.
    pub country: bool,
}

/// One list, as reported.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ListStatus {
    /// File (or name).
    pub name: String,
    /// Entries read.
    pub entries: usize,
    /// Flag its entries get (address lists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags: Option<Flags>,
}

/// What is loaded, and what is missing with what that costs the detectors.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    /// Databases, in the order they are consulted.
    pub databases: Vec<SourceStatus>,
    /// ASN lists (the shipped hosting list, files, flagged TSV rows).
    pub asn_lists: Vec<ListStatus>,
    /// Address lists (Tor exits, VPN ranges).
    pub address_lists: Vec<ListStatus>,
    /// One sentence per missing piece.
    pub missing: Vec<String>,
}

impl IpIntel {
    /// A builder.
    pub fn builder() -> IpIntelBuilder {
        IpIntelBuilder::default()
    }

    /// Loads every file a config names, plus the shipped hosting list unless turned off.
    pub fn load(config: &IpIntelConfig) -> Result<IpIntel, IpIntelError> {
        let mut b = IpIntel::builder();
        for path in config.files() {
            let name = path.display().to_string();
            b = match Format::of(path) {
                Format::Mmdb => b.mmdb(&name, read(path)?)?,
                Format::IpLocationCsv => {
                    let ipv6 = path
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().to_ascii_lowercase().contains("ipv6"));
                    b.csv(&name, &read_text(path)?, ipv6)?
                }
                Format::IptoasnTsv => b.tsv(&name, &read_text(path)?)?,
            };
        }
        if config.builtin_hosting_asns {
            b = b.builtin_hosting_asns()?;
        }
        for path in &config.asn_lists {
            b = b.asn_list(&path.display().to_string(), &read_text(path)?)?;
        }
        for path in &config.tor_exit_lists {
            b = b.address_list(&path.display().to_string(), &read_text(path)?, Flags::TOR)?;
        }
        for path in &config.vpn_lists {
            b = b.address_list(&path.display().to_string(), &read_text(path)?, Flags::VPN)?;
        }
        Ok(b.build())
    }

    /// AS number, organisation and country (and the flags column of a TSV): what the
    /// gateway records on every event. The request path calls only this.
    #[inline]
    pub fn network(&self, ip: IpAddr) -> NetworkInfo {
        let ip = canonical_ip(ip);
        let mut out = NetworkInfo::default();
        for s in &self.sources {
            if s.find(ip, &mut out) && out.complete() {
                break;
            }
        }
        out
    }

    /// The egress flags of an address whose AS number is `asn`: ASN lists, then address
    /// lists.
    #[inline]
    pub fn flags(&self, ip: IpAddr, asn: Option<u32>) -> Flags {
        let mut f = asn
            .and_then(|a| self.asn_entry(a))
            .map_or(Flags::NONE, |e| e.1);
        for l in &self.lists {
            f = f.union(l.table.find(ip));
        }
        f
    }

    fn asn_entry(&self, asn: u32) -> Option<&(u32, Flags, u16)> {
        self.asn_flags
            .binary_search_by_key(&asn, |e| e.0)
            .ok()
            .and_then(|i| self.asn_flags.get(i))
    }

    /// Network and flags together.
    pub fn lookup(&self, ip: IpAddr) -> NetworkInfo {
        let mut info = self.network(ip);
        info.flags = info.flags.union(self.flags(ip, info.asn));
        info
    }

    /// Everything known of an address, with which source answered each part.
    pub fn explain(&self, ip: IpAddr) -> Explanation {
        let ip = canonical_ip(ip);
        let mut info = NetworkInfo::default();
        let mut by = Answered::default();
        let mut matched: Option<String> = None;
        for s in &self.sources {
            let before = info.clone();
            let (found, range) = match &s.data {
                SourceData::Table(t) => match t.find_range(ip) {
                    Some((f, r)) => (Some(f.clone()), Some(r.to_string())),
                    None => (None, None),
                },
                SourceData::Mmdb(m) => (m.find(ip), m.network(ip)),
            };
            let Some(found) = found else { continue };
            info.merge(&found);
            let name = || Some(s.name.to_string());
            if before.asn.is_none() && info.asn.is_some() {
                by.asn = name();
                matched = range.clone();
            }
            if before.as_org.is_none() && info.as_org.is_some() {
                by.as_org = name();
            }
            if before.country.is_none() && info.country.is_some() {
                by.country = name();
            }
            if !found.flags.is_empty() {
                by.flags.push(format!("{}: {}", s.name, found.flags));
            }
            if matched.is_none() {
                matched = range;
            }
        }
        if let Some(&(_, f, i)) = info.asn.and_then(|a| self.asn_entry(a)) {
            let list = self
                .asn_list_names
                .get(usize::from(i))
                .map_or("ASN list", |(n, _)| n);
            let said = format!("{list}: {f}");
            // A TSV's flagged row also flags its ASN: name that file once.
            if !by.flags.contains(&said) {
                by.flags.push(said);
            }
            info.flags = info.flags.union(f);
        }
        for l in &self.lists {
            let f = l.table.find(ip);
            if !f.is_empty() {
                by.flags.push(format!("{}: {f}", l.name));
                info.flags = info.flags.union(f);
            }
        }
        let network_id = match info.asn {
            Some(a) => format!("AS{a}"),
            None => fallback_network(ip).to_string(),
        };
        Explanation {
            ip,
            info,
            matched,
            prefix: client_prefix(ip),
            network_id,
            sources: by,
        }
    }

    /// Whether some database gives AS numbers.
    pub fn has_asn(&self) -> bool {
        self.sources.iter().any(Source::has_asn)
    }

    /// Whether some database gives countries.
    pub fn has_country(&self) -> bool {
        self.sources.iter().any(Source::has_country)
    }

    /// What is loaded and what is missing.
    pub fn status(&self) -> Status {
        let databases = self
            .sources
            .iter()
            .map(|s| SourceStatus {
                name: s.name.to_string(),
                format: s.format,
                ranges: match &s.data {
                    SourceData::Table(t) => Some(t.len()),
                    SourceData::Mmdb(_) => None,
                },
                asn: s.has_asn(),
                country: s.has_country(),
            })
            .collect();
        let asn_lists = self
            .asn_list_names
            .iter()
            .map(|(n, entries)| ListStatus {
                name: n.to_string(),
                entries: *entries,
                flags: None,
            })
            .collect();
        let address_lists = self
            .lists
            .iter()
            .map(|l| ListStatus {
                name: l.name.to_string(),
                entries: l.entries,
                flags: Some(l.flags),
            })
            .collect();
        Status {
            databases,
            asn_lists,
            address_lists,
            missing: self.missing(),
        }
    }

    /// One sentence per missing piece, saying what the detectors do without it.
    pub fn missing(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.has_asn() {
            out.push(
                "no ASN database ([ipdb] path): events carry no AS number or organisation; \
                 detectors tell networks apart by /16 prefix (IPv6 /32) and count clients by \
                 /24 (IPv6 /48)"
                    .to_owned(),
            );
        }
        if !self.has_country() {
            out.push(
                "no country database ([ipdb] path or extra_paths): events carry no country; \
                 country checks and impossible travel (P2) are off"
                    .to_owned(),
            );
        }
        if self.asn_flags.is_empty() {
            out.push(
                "no hosting ASN list ([ipdb] builtin_hosting_asns, asn_lists): hosting and \
                 cloud networks are not flagged"
                    .to_owned(),
            );
        }
        if !self.lists.iter().any(|l| l.flags.contains(Flags::TOR)) {
            out.push(
                "no Tor exit list ([ipdb] tor_exit_lists): Tor exits are not flagged".to_owned(),
            );
        }
        if !self.lists.iter().any(|l| l.flags.contains(Flags::VPN)) {
            out.push(
                "no VPN list ([ipdb] vpn_lists): VPN exits are flagged only through ASN lists"
                    .to_owned(),
            );
        }
        out
    }
}
