//! Parsers for the published text formats, from text (no files here):
//!
//! - iptoasn.com's TSV: `range_start  range_end  as_number  country_code  as_description`,
//!   plus an optional sixth column of flags (`hosting`, `vpn`, `tor`, `proxy`, comma
//!   separated) that Stormwall's own test data and simulator use;
//! - ip-location-db's CSV files, no header, IPv4 or IPv6, addresses or `-num` integers:
//!   ASN `ip_range_start,ip_range_end,autonomous_system_number,autonomous_system_organization`,
//!   country `ip_range_start,ip_range_end,country_code`, city
//!   `ip_range_start,ip_range_end,country_code,state1,state2,city,postcode,latitude,longitude,timezone`
//!   (only the country is kept);
//! - ASN lists (`16509 hosting Amazon AWS`), Tor exit lists (one address a line, or the
//!   `ExitAddress` lines of the exit-addresses format) and VPN lists (CIDRs or addresses).

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use crate::info::{Country, Flags, NetworkInfo};
use crate::ranges::{TableBuilder, addr_key};

/// A line that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {why}")]
pub struct ParseError {
    /// 1-based line.
    pub line: usize,
    /// What is wrong.
    pub why: &'static str,
}

fn err(line: usize, why: &'static str) -> ParseError {
    ParseError { line, why }
}

/// The data lines of a text: 1-based number and content, without blank and `#` lines.
fn data_lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().filter_map(|(i, l)| {
        let l = l.trim_end_matches('\r');
        let t = l.trim();
        (!t.is_empty() && !t.starts_with('#')).then_some((i + 1, l))
    })
}

fn text_field(s: &str) -> Option<std::sync::Arc<str>> {
    let s = s.trim();
    (!s.is_empty() && s != "None" && s != "-").then(|| std::sync::Arc::from(s))
}

/// Reads iptoasn's TSV into `table`; the ASNs of flagged ranges go to `asn_flags` too (a
/// network flagged in one range is that operator's network elsewhere as well).
pub fn parse_iptoasn_tsv(
    text: &str,
    table: &mut TableBuilder,
    asn_flags: &mut Vec<(u32, Flags)>,
) -> Result<(), ParseError> {
    for (n, line) in data_lines(text) {
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() < 3 {
            return Err(err(n, "expected at least 3 tab-separated columns"));
        }
        let start: IpAddr = cols[0]
            .trim()
            .parse()
            .map_err(|_| err(n, "bad range start"))?;
        let end: IpAddr = cols[1]
            .trim()
            .parse()
            .map_err(|_| err(n, "bad range end"))?;
        let asn: u32 = cols[2]
            .trim()
            .parse()
            .map_err(|_| err(n, "bad AS number"))?;
        let flags = match cols.get(5).map(|s| s.trim()).filter(|s| !s.is_empty()) {
            Some(f) => Flags::parse_list(f).ok_or_else(|| err(n, "unknown flag"))?,
            None => Flags::NONE,
        };
        // iptoasn marks unrouted space with AS 0.
        let asn = (asn != 0).then_some(asn);
        if let Some(a) = asn.filter(|_| !flags.is_empty()) {
            asn_flags.push((a, flags));
        }
        let info = NetworkInfo {
            asn,
            country: cols.get(3).and_then(|c| Country::parse(c)),
            as_org: cols.get(4).and_then(|s| text_field(s)),
            flags,
        };
        table
            .push(start, end, info)
            .map_err(|e| err(n, e.as_str()))?;
    }
    Ok(())
}

/// Splits one CSV line (RFC 4180 quoting: `"a, b"`, `""` inside quotes).
fn csv_fields(line: &str) -> Result<Vec<Cow<'_, str>>, &'static str> {
    let mut out = Vec::new();
    let mut rest = line;
    loop {
        if let Some(q) = rest.strip_prefix('"') {
            let mut field = String::new();
            let mut chars = q.char_indices();
            let after = loop {
                match chars.next() {
                    Some((i, '"')) => {
                        if q[i + 1..].starts_with('"') {
                            field.push('"');
                            chars.next();
                        } else {
                            break &q[i + 1..];
                        }
                    }
                    Some((_, c)) => field.push(c),
                    None => return Err("unterminated quoted field"),
                }
            };
            out.push(Cow::Owned(field));
            match after.strip_prefix(',') {
                Some(r) => rest = r,
                None if after.trim().is_empty() => return Ok(out),
                None => return Err("text after a quoted field"),
            }
        } else {
            match rest.split_once(',') {
                Some((f, r)) => {
                    out.push(Cow::Borrowed(f));
                    rest = r;
                }
                None => {
                    out.push(Cow::Borrowed(rest));
                    return Ok(out);
                }
            }
        }
    }
}

/// Reads an address column: an address, or an integer (`-num` files; `ipv6` says which
/// family a number below 2^32 is).
fn csv_addr(s: &str, ipv6: bool) -> Option<IpAddr> {
    let s = s.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip);
    }
    let n: u128 = s.parse().ok()?;
    match u32::try_from(n) {
        Ok(v4) if !ipv6 => Some(IpAddr::V4(Ipv4Addr::from(v4))),
        _ => Some(IpAddr::V6(Ipv6Addr::from(n))),
    }
}

/// What an ip-location-db CSV turned out to hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CsvContent {
    /// Rows with an AS number.
    pub asn_rows: usize,
    /// Rows with a country.
    pub country_rows: usize,
}

/// Reads one of ip-location-db's CSV files into `table`. Each row is read by its third
/// column: a number is an AS number (ASN files), two letters a country (country and city
/// files). `ipv6` is whether the file is an IPv6 one (its name says `ipv6`), which only
/// matters for `-num` files.
pub fn parse_ip_location_csv(
    text: &str,
    ipv6: bool,
    table: &mut TableBuilder,
) -> Result<CsvContent, ParseError> {
    let mut content = CsvContent::default();
    for (n, line) in data_lines(text) {
        let cols = csv_fields(line).map_err(|why| err(n, why))?;
        if n == 1 && cols.first().is_some_and(|c| c.trim() == "ip_range_start") {
            continue; // a header some mirrors add
        }
        if cols.len() < 3 {
            return Err(err(n, "expected at least 3 comma-separated columns"));
        }
        let start = csv_addr(&cols[0], ipv6).ok_or_else(|| err(n, "bad range start"))?;
        let end = csv_addr(&cols[1], ipv6).ok_or_else(|| err(n, "bad range end"))?;
        let third = cols[2].trim();
        let info = if let Ok(asn) = third.parse::<u32>() {
            content.asn_rows += 1;
            NetworkInfo {
                asn: (asn != 0).then_some(asn),
                as_org: cols.get(3).and_then(|s| text_field(s)),
                ..NetworkInfo::default()
            }
        } else if third.is_empty() || third == "-" || third.len() == 2 {
            let country = Country::parse(third);
            content.country_rows += usize::from(country.is_some());
            NetworkInfo {
                country,
                ..NetworkInfo::default()
            }
        } else {
            return Err(err(
                n,
                "third column is neither an AS number nor a country code",
            ));
        };
        table
            .push(start, end, info)
            .map_err(|e| err(n, e.as_str()))?;
    }
    Ok(content)
}

/// Reads an ASN list: one AS number a line (`16509` or `AS16509`), optionally followed by a
/// flag name (`hosting` when absent or not a flag) and a free-text name.
pub fn parse_asn_list(text: &str) -> Result<Vec<(u32, Flags)>, ParseError> {
    let mut out = Vec::new();
    for (n, line) in data_lines(text) {
        let mut words = line.split_whitespace();
        let first = words.next().unwrap_or_default();
        let digits = first
            .strip_prefix("AS")
            .or_else(|| first.strip_prefix("as"))
            .unwrap_or(first);
        let asn: u32 = digits.parse().map_err(|_| err(n, "bad AS number"))?;
        if asn == 0 {
            return Err(err(n, "AS 0 is not a network"));
        }
        let flags = words
            .next()
            .and_then(Flags::parse_one)
            .unwrap_or(Flags::HOSTING);
        out.push((asn, flags));
    }
    Ok(out)
}

/// Reads an address list into `(start, end, flags)` ranges keyed by
/// [`addr_key`](crate::ranges::addr_key): addresses or CIDRs, one a line, anything after
/// whitespace ignored; the torproject exit-addresses format's `ExitAddress ADDR …` lines
/// are read and its other lines (`ExitNode`, `Published`, `LastStatus`) skipped.
pub fn parse_address_list(
    text: &str,
    flags: Flags,
) -> Result<Vec<(u128, u128, Flags)>, ParseError> {
    let mut out = Vec::new();
    for (n, line) in data_lines(text) {
        let mut words = line.split_whitespace();
        let mut first = words.next().unwrap_or_default();
        match first {
            "ExitAddress" => first = words.next().unwrap_or_default(),
            "ExitNode" | "Published" | "LastStatus" => continue,
            _ => {}
        }
        if let Ok(ip) = first.parse::<IpAddr>() {
            let k = addr_key(ip);
            out.push((k, k, flags));
        } else if let Ok(net) = first.parse::<IpNet>() {
            out.push((addr_key(net.network()), addr_key(net.broadcast()), flags));
        } else {
            return Err(err(n, "expected an address or a CIDR"));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quoting() {
        let f = csv_fields(r#"1.0.0.0,1.0.0.255,13335,"Cloudflare, Inc.""#).unwrap();
        assert_eq!(f[3], "Cloudflare, Inc.");
        let f = csv_fields(r#"a,"say ""hi""",c"#).unwrap();
        assert_eq!(f[1], r#"say "hi""#);
        assert_eq!(f[2], "c");
        assert!(csv_fields(r#"a,"open"#).is_err());
    }

    #[test]
    fn numeric_addresses() {
        assert_eq!(
            csv_addr("3221225984", false),
            Some("192.0.2.0".parse().unwrap())
        );
        assert_eq!(
            csv_addr("42540766411282592856903984951653826560", true),
            Some("2001:db8::".parse().unwrap())
        );
        assert_eq!(csv_addr("nope", false), None);
    }

    #[test]
    fn asn_list_lines() {
        let l = parse_asn_list("# c\n16509 hosting Amazon\nAS9009 vpn M247\n64500\n").unwrap();
        assert_eq!(
            l,
            vec![
                (16509, Flags::HOSTING),
                (9009, Flags::VPN),
                (64500, Flags::HOSTING)
            ]
        );
        assert_eq!(parse_asn_list("x\n").unwrap_err().line, 1);
    }

    #[test]
    fn exit_addresses_format() {
        let text = "ExitNode 0011BD2485AD45D984EC4159C88FC066E5E3300E\nPublished 2024-01-01 00:00:00\nLastStatus 2024-01-01 01:00:00\nExitAddress 192.0.2.44 2024-01-01 01:02:03\n198.51.100.9\n2001:db8::/126\n";
        let l = parse_address_list(text, Flags::TOR).unwrap();
        assert_eq!(l.len(), 3);
        assert_eq!(l[0].0, addr_key("192.0.2.44".parse().unwrap()));
        assert_eq!(l[2].1 - l[2].0, 3);
        assert_eq!(
            parse_address_list("192.0.2\n", Flags::TOR)
                .unwrap_err()
                .line,
            1
        );
    }
}
