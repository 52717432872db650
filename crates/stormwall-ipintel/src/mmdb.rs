//! MaxMind DB files: MaxMind GeoLite2/GeoIP2 and DB-IP Lite (ASN: `autonomous_system_*`;
//! country and city: `country.iso_code`, else `registered_country.iso_code`) and
//! ip-location-db's MMDB files (flat `country_code`; ASN as in MaxMind's).

use std::net::IpAddr;
use std::sync::Arc;

use crate::info::{Country, Flags, NetworkInfo};

/// A MaxMind DB held in memory.
pub struct MmdbSource {
    reader: maxminddb::Reader<Vec<u8>>,
    has_asn: bool,
    has_country: bool,
}

impl std::fmt::Debug for MmdbSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MmdbSource({})", self.reader.metadata().database_type)
    }
}

#[derive(serde::Deserialize)]
struct Record<'a> {
    #[serde(default, deserialize_with = "asn_value")]
    autonomous_system_number: Option<u32>,
    #[serde(borrow, default)]
    autonomous_system_organization: Option<&'a str>,
    #[serde(borrow, default)]
    country: Option<CountryRecord<'a>>,
    #[serde(borrow, default)]
    registered_country: Option<CountryRecord<'a>>,
    #[serde(borrow, default)]
    country_code: Option<&'a str>,
}

#[derive(serde::Deserialize)]
struct CountryRecord<'a> {
    #[serde(borrow, default)]
    iso_code: Option<&'a str>,
}

/// An AS number stored as an integer (MaxMind) or as text (some converters).
fn asn_value<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    struct V;
    impl serde::de::Visitor<'_> for V {
        type Value = Option<u32>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("an AS number")
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(u32::try_from(v).ok())
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            Ok(u32::try_from(v).ok())
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            Ok(v.trim().trim_start_matches("AS").parse().ok())
        }
    }
    d.deserialize_any(V)
}

impl MmdbSource {
    /// Opens a database from its bytes; `why` on failure.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<MmdbSource, String> {
        let reader = maxminddb::Reader::from_source(bytes).map_err(|e| e.to_string())?;
        let mut src = MmdbSource {
            reader,
            has_asn: false,
            has_country: false,
        };
        src.survey();
        Ok(src)
    }

    /// Learns which fields the database carries from its first records (for status and
    /// `config check`), falling back on its declared type.
    fn survey(&mut self) {
        let (mut asn, mut country) = (false, false);
        if let Ok(networks) = self.reader.networks(maxminddb::WithinOptions::default()) {
            for item in networks.take(256).flatten() {
                if let Ok(Some(rec)) = item.decode::<Record<'_>>() {
                    asn |= rec.autonomous_system_number.is_some();
                    country |= country_of(&rec).is_some();
                }
                if asn && country {
                    break;
                }
            }
        }
        let kind = self.reader.metadata().database_type.to_ascii_lowercase();
        self.has_asn = asn || kind.contains("asn");
        self.has_country = country || kind.contains("country") || kind.contains("city");
    }

    /// What the database says of an address, with the network it matched.
    #[inline]
    pub fn find(&self, ip: IpAddr) -> Option<NetworkInfo> {
        let result = self.reader.lookup(ip).ok()?;
        let rec: Record<'_> = result.decode().ok()??;
        Some(NetworkInfo {
            asn: rec.autonomous_system_number.filter(|&a| a != 0),
            as_org: rec
                .autonomous_system_organization
                .filter(|s| !s.is_empty())
                .map(Arc::from),
            country: country_of(&rec),
            flags: Flags::NONE,
        })
    }

    /// The most specific network the database holds for an address.
    pub fn network(&self, ip: IpAddr) -> Option<String> {
        let result = self.reader.lookup(ip).ok()?;
        result.network().ok().map(|n| n.to_string())
    }

    /// Whether the database carries AS numbers.
    pub fn has_asn(&self) -> bool {
        self.has_asn
    }

    /// Whether the database carries countries.
    pub fn has_country(&self) -> bool {
        self.has_country
    }

    /// The database's declared type (`GeoLite2-ASN`, `DBIP-Country-Lite`, …).
    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }
}

fn country_of(rec: &Record<'_>) -> Option<Country> {
    rec.country
        .as_ref()
        .and_then(|c| c.iso_code)
        .or(rec.country_code)
        .or(rec.registered_country.as_ref().and_then(|c| c.iso_code))
        .and_then(Country::parse)
}
