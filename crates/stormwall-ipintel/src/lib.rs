//! IP intelligence for Stormwall: what is known of a client address — AS number, AS
//! organisation, country, and whether it is a hosting/cloud network, a VPN or a Tor exit —
//! from the public databases in their published formats (MaxMind and DB-IP `.mmdb`,
//! ip-location-db `.csv` and `.mmdb`, iptoasn `.tsv`), the shipped list of hosting and
//! cloud ASNs, and Tor exit and VPN lists.
//!
//! The gateway (one look-up per request), the offline detector (`stormwall detect`) and
//! `stormwall ip lookup` share it. Text formats are parsed into sorted ranges searched by
//! bisection ([`ranges`]); MMDB files are read in memory by the `maxminddb` crate.
//! [`SharedIpIntel`] holds the data in force behind an atomically swapped `Arc` and reloads
//! it from the files without a restart; nothing here spawns a thread or a task.

pub mod config;
pub mod db;
pub mod error;
pub mod formats;
pub mod info;
pub mod mmdb;
pub mod ranges;
pub mod shared;

pub use config::IpIntelConfig;
pub use db::{
    BUILTIN_HOSTING_ASNS, Explanation, Format, IpIntel, IpIntelBuilder, Status, client_prefix,
    fallback_network,
};
pub use error::IpIntelError;
pub use info::{Country, Flags, NetworkInfo};
pub use shared::{Reloaded, SharedIpIntel};
