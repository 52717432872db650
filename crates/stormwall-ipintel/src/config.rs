//! `[ipdb]`: the IP databases and lists, and how often they are checked for changes.

use std::path::{Path, PathBuf};

/// `[ipdb]`: where client addresses get their network, country and egress flags.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct IpIntelConfig {
    /// One database file: MaxMind/DB-IP/ip-location-db `.mmdb`, ip-location-db `.csv`, or
    /// an iptoasn `.tsv` (the format is told by the extension).
    pub path: Option<PathBuf>,
    /// More database files, consulted in order after `path` for fields still unknown
    /// (e.g. an ASN file, then a country file, IPv4 and IPv6 files side by side).
    pub extra_paths: Vec<PathBuf>,
    /// Mark the networks of the shipped hosting and cloud ASN list (`hosting`).
    pub builtin_hosting_asns: bool,
    /// More ASN lists: `ASN [flag] [name]` a line (flag `hosting` when absent).
    pub asn_lists: Vec<PathBuf>,
    /// Tor exit lists: one address a line (torproject's bulk exit list), or the
    /// exit-addresses format.
    pub tor_exit_lists: Vec<PathBuf>,
    /// VPN lists: one CIDR or address a line.
    pub vpn_lists: Vec<PathBuf>,
    /// Seconds between checks of the files for changes (changed files are reloaded without
    /// a restart); 0 turns polling off (SIGHUP and `POST /admin/ipintel/reload` still work).
    pub reload_secs: u64,
}

impl Default for IpIntelConfig {
    fn default() -> Self {
        Self {
            path: None,
            extra_paths: Vec::new(),
            builtin_hosting_asns: true,
            asn_lists: Vec::new(),
            tor_exit_lists: Vec::new(),
            vpn_lists: Vec::new(),
            reload_secs: 60,
        }
    }
}

impl IpIntelConfig {
    /// The database files, `path` first.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.path
            .iter()
            .chain(&self.extra_paths)
            .map(PathBuf::as_path)
    }

    /// Every file the config names: databases, then lists.
    pub fn all_files(&self) -> impl Iterator<Item = &Path> {
        self.files().chain(
            self.asn_lists
                .iter()
                .chain(&self.tor_exit_lists)
                .chain(&self.vpn_lists)
                .map(PathBuf::as_path),
        )
    }
}
