//! The look-up structures: sorted address ranges searched by bisection. IPv4 ranges are
//! kept apart in `u32`s (12 bytes a range with its value index), IPv6 in `u128`s, and equal
//! answers are stored once, so a 500,000-range ASN table is a few megabytes and a look-up
//! is one binary search plus an index.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use stormwall_types::record::canonical_ip;

use crate::info::{Flags, NetworkInfo};

/// Why a range cannot be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeError {
    /// One end is IPv4, the other IPv6.
    MixedFamilies,
    /// The end comes before the start.
    EndBeforeStart,
}

impl RangeError {
    /// A short description for error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            RangeError::MixedFamilies => "range mixes IPv4 and IPv6",
            RangeError::EndBeforeStart => "range end before start",
        }
    }
}

/// An inclusive address range, as it was matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    /// First address.
    pub start: IpAddr,
    /// Last address.
    pub end: IpAddr,
}

impl std::fmt::Display for Range {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.start, self.end)
    }
}

/// Collects ranges and answers, then freezes them into a [`RangeTable`].
#[derive(Debug, Default)]
pub struct TableBuilder {
    v4: Vec<(u32, u32, u32)>,
    v6: Vec<(u128, u128, u32)>,
    values: Vec<NetworkInfo>,
    index: HashMap<NetworkInfo, u32>,
}

impl TableBuilder {
    /// Adds an inclusive range and what is known of it.
    pub fn push(
        &mut self,
        start: IpAddr,
        end: IpAddr,
        info: NetworkInfo,
    ) -> Result<(), RangeError> {
        match (canonical_ip(start), canonical_ip(end)) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let (a, b) = (u32::from(a), u32::from(b));
                if b < a {
                    return Err(RangeError::EndBeforeStart);
                }
                let v = self.intern(info);
                self.v4.push((a, b, v));
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let (a, b) = (u128::from(a), u128::from(b));
                if b < a {
                    return Err(RangeError::EndBeforeStart);
                }
                let v = self.intern(info);
                self.v6.push((a, b, v));
            }
            _ => return Err(RangeError::MixedFamilies),
        }
        Ok(())
    }

    fn intern(&mut self, info: NetworkInfo) -> u32 {
        if let Some(&i) = self.index.get(&info) {
            return i;
        }
        let i = u32::try_from(self.values.len()).unwrap_or(u32::MAX);
        self.values.push(info.clone());
        self.index.insert(info, i);
        i
    }

    /// Number of ranges so far.
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    /// Whether no range was added.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sorts and freezes the table. Ranges are expected to be disjoint, as the published
    /// databases are; where two overlap, an address is answered by the one that starts
    /// last at or before it.
    pub fn build(mut self) -> RangeTable {
        self.v4.sort_unstable_by_key(|r| (r.0, r.1));
        self.v6.sort_unstable_by_key(|r| (r.0, r.1));
        let has_asn = self.values.iter().any(|v| v.asn.is_some());
        let has_country = self.values.iter().any(|v| v.country.is_some());
        let mut values = self.values;
        values.shrink_to_fit();
        RangeTable {
            v4_start: self.v4.iter().map(|r| r.0).collect(),
            v4_end: self.v4.iter().map(|r| r.1).collect(),
            v4_val: self.v4.iter().map(|r| r.2).collect(),
            v6_start: self.v6.iter().map(|r| r.0).collect(),
            v6_end: self.v6.iter().map(|r| r.1).collect(),
            v6_val: self.v6.iter().map(|r| r.2).collect(),
            values,
            has_asn,
            has_country,
        }
    }
}

/// Sorted, disjoint ranges with an answer each.
#[derive(Debug, Default)]
pub struct RangeTable {
    v4_start: Vec<u32>,
    v4_end: Vec<u32>,
    v4_val: Vec<u32>,
    v6_start: Vec<u128>,
    v6_end: Vec<u128>,
    v6_val: Vec<u32>,
    values: Vec<NetworkInfo>,
    has_asn: bool,
    has_country: bool,
}

impl RangeTable {
    /// The answer for an address, if a range holds it.
    #[inline]
    pub fn find(&self, ip: IpAddr) -> Option<&NetworkInfo> {
        self.find_index(ip)
            .and_then(|(v, _)| self.values.get(v as usize))
    }

    /// The answer and the range that holds the address.
    pub fn find_range(&self, ip: IpAddr) -> Option<(&NetworkInfo, Range)> {
        let (v, i) = self.find_index(ip)?;
        let range = match canonical_ip(ip) {
            IpAddr::V4(_) => Range {
                start: IpAddr::V4(Ipv4Addr::from(*self.v4_start.get(i)?)),
                end: IpAddr::V4(Ipv4Addr::from(*self.v4_end.get(i)?)),
            },
            IpAddr::V6(_) => Range {
                start: IpAddr::V6(Ipv6Addr::from(*self.v6_start.get(i)?)),
                end: IpAddr::V6(Ipv6Addr::from(*self.v6_end.get(i)?)),
            },
        };
        Some((self.values.get(v as usize)?, range))
    }

    /// (value index, range index).
    #[inline]
    fn find_index(&self, ip: IpAddr) -> Option<(u32, usize)> {
        match canonical_ip(ip) {
            IpAddr::V4(v4) => {
                let x = u32::from(v4);
                let i = self.v4_start.partition_point(|&s| s <= x).checked_sub(1)?;
                (x <= *self.v4_end.get(i)?).then(|| Some((*self.v4_val.get(i)?, i)))?
            }
            IpAddr::V6(v6) => {
                let x = u128::from(v6);
                let i = self.v6_start.partition_point(|&s| s <= x).checked_sub(1)?;
                (x <= *self.v6_end.get(i)?).then(|| Some((*self.v6_val.get(i)?, i)))?
            }
        }
    }

    /// Number of ranges.
    pub fn len(&self) -> usize {
        self.v4_start.len() + self.v6_start.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether any answer carries an ASN.
    pub fn has_asn(&self) -> bool {
        self.has_asn
    }

    /// Whether any answer carries a country.
    pub fn has_country(&self) -> bool {
        self.has_country
    }
}

/// The key every flag range is kept under: IPv4 as its IPv4-mapped IPv6 address.
pub fn addr_key(ip: IpAddr) -> u128 {
    match canonical_ip(ip) {
        IpAddr::V4(v4) => u128::from(v4.to_ipv6_mapped()),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

/// Flag ranges that may overlap on input (a Tor exit inside a VPN provider's block),
/// flattened into disjoint segments each carrying the union of the flags over it.
#[derive(Debug, Default)]
pub struct FlagTable {
    starts: Vec<u128>,
    ends: Vec<u128>,
    flags: Vec<Flags>,
}

impl FlagTable {
    /// Builds the table from inclusive `(start, end, flags)` ranges keyed by [`addr_key`].
    pub fn build(ranges: &[(u128, u128, Flags)]) -> FlagTable {
        const BITS: [Flags; 4] = [Flags::HOSTING, Flags::VPN, Flags::TOR, Flags::PROXY];
        // Sweep: +1 at a range's start, -1 just past its end, per flag bit.
        let mut events: Vec<(u128, i8, Flags)> = Vec::with_capacity(ranges.len() * 2);
        for &(a, b, f) in ranges {
            if b < a || f.is_empty() {
                continue;
            }
            events.push((a, 1, f));
            if let Some(past) = b.checked_add(1) {
                events.push((past, -1, f));
            }
        }
        events.sort_unstable_by_key(|e| e.0);
        let mut counts = [0i64; 4];
        let mut out = FlagTable::default();
        let mut i = 0;
        while i < events.len() {
            let pos = events[i].0;
            while i < events.len() && events[i].0 == pos {
                let (_, d, f) = events[i];
                for (c, bit) in counts.iter_mut().zip(BITS) {
                    if f.contains(bit) {
                        *c += i64::from(d);
                    }
                }
                i += 1;
            }
            let now = counts
                .iter()
                .zip(BITS)
                .filter(|(c, _)| **c > 0)
                .fold(Flags::NONE, |acc, (_, b)| acc.union(b));
            let end = events.get(i).map_or(u128::MAX, |e| e.0 - 1);
            if now.is_empty() {
                continue;
            }
            // Adjacent segments with the same flags become one.
            if out.flags.last() == Some(&now)
                && out.ends.last().and_then(|e| e.checked_add(1)) == Some(pos)
            {
                if let Some(e) = out.ends.last_mut() {
                    *e = end;
                }
                continue;
            }
            out.starts.push(pos);
            out.ends.push(end);
            out.flags.push(now);
        }
        out
    }

    /// The flags over an address.
    #[inline]
    pub fn find(&self, ip: IpAddr) -> Flags {
        if self.starts.is_empty() {
            return Flags::NONE;
        }
        let x = addr_key(ip);
        let Some(i) = self.starts.partition_point(|&s| s <= x).checked_sub(1) else {
            return Flags::NONE;
        };
        match (self.ends.get(i), self.flags.get(i)) {
            (Some(&e), Some(&f)) if x <= e => f,
            _ => Flags::NONE,
        }
    }

    /// Number of disjoint segments.
    pub fn len(&self) -> usize {
        self.starts.len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.starts.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn info(asn: u32) -> NetworkInfo {
        NetworkInfo {
            asn: Some(asn),
            ..NetworkInfo::default()
        }
    }

    #[test]
    fn bisection_finds_ranges_and_gaps() {
        let mut b = TableBuilder::default();
        b.push(ip("198.51.100.0"), ip("198.51.100.255"), info(64501))
            .unwrap();
        b.push(ip("192.0.2.0"), ip("192.0.2.127"), info(64500))
            .unwrap();
        b.push(
            ip("2001:db8::"),
            ip("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff"),
            info(64502),
        )
        .unwrap();
        b.push(ip("203.0.113.0"), ip("203.0.113.255"), info(64501))
            .unwrap();
        assert_eq!(
            b.push(ip("192.0.2.0"), ip("2001:db8::"), info(1)),
            Err(RangeError::MixedFamilies)
        );
        assert_eq!(
            b.push(ip("192.0.2.9"), ip("192.0.2.1"), info(1)),
            Err(RangeError::EndBeforeStart)
        );
        let t = b.build();
        assert_eq!(t.len(), 4);
        assert_eq!(t.values.len(), 3, "equal answers are stored once");
        assert_eq!(t.find(ip("192.0.2.5")).unwrap().asn, Some(64500));
        assert_eq!(t.find(ip("::ffff:192.0.2.127")).unwrap().asn, Some(64500));
        assert!(t.find(ip("192.0.2.128")).is_none());
        assert!(t.find(ip("1.1.1.1")).is_none());
        assert!(t.find(ip("255.255.255.255")).is_none());
        assert_eq!(t.find(ip("2001:db8::1")).unwrap().asn, Some(64502));
        assert!(t.find(ip("2001:db9::1")).is_none());
        let (_, r) = t.find_range(ip("203.0.113.7")).unwrap();
        assert_eq!(r.to_string(), "203.0.113.0-203.0.113.255");
    }

    #[test]
    fn overlapping_flag_ranges_are_flattened() {
        let k = |s| addr_key(ip(s));
        let t = FlagTable::build(&[
            (k("198.51.100.0"), k("198.51.100.255"), Flags::VPN),
            (k("198.51.100.7"), k("198.51.100.7"), Flags::TOR),
            (k("198.51.101.0"), k("198.51.101.255"), Flags::VPN),
        ]);
        assert_eq!(t.find(ip("198.51.100.6")), Flags::VPN);
        assert_eq!(t.find(ip("198.51.100.7")), Flags::VPN.union(Flags::TOR));
        assert_eq!(t.find(ip("198.51.100.8")), Flags::VPN);
        assert_eq!(t.find(ip("198.51.101.200")), Flags::VPN);
        assert_eq!(t.find(ip("198.51.102.0")), Flags::NONE);
        assert_eq!(t.find(ip("10.0.0.1")), Flags::NONE);
        // 100.0-6, .7, 100.8-101.255 (the two VPN blocks touch and merge).
        assert_eq!(t.len(), 3);
        let all = FlagTable::build(&[(0, u128::MAX, Flags::PROXY)]);
        assert_eq!(all.find(ip("2001:db8::1")), Flags::PROXY);
    }
}
