//! What is known of one address: the vocabulary every source answers in.

use std::fmt;
use std::sync::Arc;

/// Kinds of anonymising or non-residential egress, as a small bit set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Flags(u8);

impl Flags {
    /// No flag.
    pub const NONE: Flags = Flags(0);
    /// A hosting or cloud provider's network.
    pub const HOSTING: Flags = Flags(1);
    /// A commercial VPN's exit.
    pub const VPN: Flags = Flags(2);
    /// A Tor exit relay.
    pub const TOR: Flags = Flags(4);
    /// An open proxy or other anonymiser.
    pub const PROXY: Flags = Flags(8);

    const NAMES: [(Flags, &'static str); 4] = [
        (Flags::HOSTING, "hosting"),
        (Flags::VPN, "vpn"),
        (Flags::TOR, "tor"),
        (Flags::PROXY, "proxy"),
    ];

    /// Whether no flag is set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every flag of `other` is set.
    pub fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0 && !other.is_empty()
    }

    /// Both sets.
    pub fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }

    /// Parses one flag name (`hosting`/`cloud`/`datacenter`, `vpn`, `tor`,
    /// `proxy`/`anonymizer`), case-insensitively.
    pub fn parse_one(s: &str) -> Option<Flags> {
        match s.trim().to_ascii_lowercase().as_str() {
            "hosting" | "cloud" | "datacenter" => Some(Flags::HOSTING),
            "vpn" => Some(Flags::VPN),
            "tor" => Some(Flags::TOR),
            "proxy" | "anonymizer" | "anonymiser" => Some(Flags::PROXY),
            _ => None,
        }
    }

    /// Parses a comma-separated list of flag names; `None` if any is unknown.
    pub fn parse_list(s: &str) -> Option<Flags> {
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .try_fold(Flags::NONE, |acc, p| Some(acc.union(Flags::parse_one(p)?)))
    }

    /// The names of the set flags, in a stable order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Flags::NAMES
            .into_iter()
            .filter(move |(f, _)| self.contains(*f))
            .map(|(_, n)| n)
    }

    /// The strongest flag (Tor, then proxy, VPN, hosting): the one a single-valued
    /// reader such as the detectors' egress check should see.
    pub fn strongest(self) -> Option<&'static str> {
        [
            (Flags::TOR, "tor"),
            (Flags::PROXY, "proxy"),
            (Flags::VPN, "vpn"),
            (Flags::HOSTING, "hosting"),
        ]
        .into_iter()
        .find(|(f, _)| self.contains(*f))
        .map(|(_, n)| n)
    }
}

impl fmt::Display for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.names().collect();
        f.write_str(&names.join(","))
    }
}

impl serde::Serialize for Flags {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.names())
    }
}

/// An ISO 3166-1 alpha-2 country code, upper case; stored inline so a look-up copies two
/// bytes, not a string.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Country([u8; 2]);

impl Country {
    /// Parses a two-letter code (any case); anything else (`-`, `ZZ` is kept, `None`,
    /// empty, three letters) is `None`.
    pub fn parse(s: &str) -> Option<Country> {
        match s.trim().as_bytes() {
            [a, b] if a.is_ascii_alphabetic() && b.is_ascii_alphabetic() => {
                Some(Country([a.to_ascii_uppercase(), b.to_ascii_uppercase()]))
            }
            _ => None,
        }
    }

    /// The code.
    pub fn as_str(&self) -> &str {
        // Both bytes are ASCII letters by construction.
        std::str::from_utf8(&self.0).unwrap_or("??")
    }
}

impl fmt::Debug for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Country {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Country {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// What is known about one address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, serde::Serialize)]
pub struct NetworkInfo {
    /// Autonomous system number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub asn: Option<u32>,
    /// Autonomous system organisation.
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "arc_str")]
    pub as_org: Option<Arc<str>>,
    /// Country.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub country: Option<Country>,
    /// Egress flags (hosting, VPN, Tor, proxy).
    pub flags: Flags,
}

fn arc_str<S: serde::Serializer>(v: &Option<Arc<str>>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(t) => s.serialize_str(t),
        None => s.serialize_none(),
    }
}

impl NetworkInfo {
    /// Fills the fields still unknown from another answer; flags accumulate.
    pub fn merge(&mut self, other: &NetworkInfo) {
        if self.asn.is_none() {
            self.asn = other.asn;
        }
        if self.as_org.is_none() {
            self.as_org.clone_from(&other.as_org);
        }
        if self.country.is_none() {
            self.country = other.country;
        }
        self.flags = self.flags.union(other.flags);
    }

    /// Whether ASN, organisation and country are all known (later sources cannot add
    /// anything but flags).
    pub fn complete(&self) -> bool {
        self.asn.is_some() && self.as_org.is_some() && self.country.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_and_name() {
        let f = Flags::parse_list("hosting, tor").unwrap();
        assert!(f.contains(Flags::TOR) && f.contains(Flags::HOSTING));
        assert!(!f.contains(Flags::VPN));
        assert_eq!(f.to_string(), "hosting,tor");
        assert_eq!(f.strongest(), Some("tor"));
        assert_eq!(Flags::parse_list("weird"), None);
        assert_eq!(Flags::NONE.strongest(), None);
    }

    #[test]
    fn country_codes() {
        assert_eq!(Country::parse("us").unwrap().as_str(), "US");
        assert_eq!(Country::parse("-"), None);
        assert_eq!(Country::parse("None"), None);
        assert_eq!(Country::parse("U1"), None);
    }
}
