//! Who is calling: the client address (the socket peer; forwarding headers only from
//! configured trusted proxies), its network from the IP database, and the request's header
//! shape — the raw material of the proxy and relay detectors.

use std::net::{IpAddr, SocketAddr};

use http::HeaderMap;
use ipnet::IpNet;
use stormwall_types::UsageEvent;
use stormwall_types::record::canonical_ip;

use crate::data::ipdb::IpDb;

/// Longest header value kept on an event.
const MAX_HEADER_VALUE_LEN: usize = 256;
/// Most header names kept on an event.
const MAX_HEADER_NAMES: usize = 64;

/// The client address, walking `X-Forwarded-For` from the right past trusted proxies.
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer_ip = canonical_ip(peer.ip());
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if trusted.is_empty() || !is_trusted(&peer_ip) {
        return peer_ip;
    }
    let mut candidate = peer_ip;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(text) = value.to_str() else {
            return candidate;
        };
        for part in text.rsplit(',') {
            let Ok(ip) = part.trim().parse::<IpAddr>() else {
                return candidate;
            };
            let ip = canonical_ip(ip);
            if !is_trusted(&ip) {
                return ip;
            }
            candidate = ip;
        }
    }
    candidate
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).map(|v| {
        let s = String::from_utf8_lossy(v.as_bytes());
        crate::data::request::truncate(&s, MAX_HEADER_VALUE_LEN).to_owned()
    })
}

/// Fills the client fields of an event: address, network, user agent, header shape.
pub fn describe_client(
    event: &mut UsageEvent,
    peer: SocketAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
    ipdb: &IpDb,
) {
    let ip = client_ip(peer, headers, trusted);
    event.source_ip = ip;
    event.source_port = peer.port();
    let net = ipdb.network(ip);
    event.source_asn = net.asn;
    event.source_as_org = net.as_org.map(|s| s.to_string());
    event.source_country = net.country.map(|c| c.as_str().to_owned());
    event.user_agent = header_text(headers, "user-agent");
    event.origin = header_text(headers, "origin");
    event.referer = header_text(headers, "referer");
    event.forwarded = headers.contains_key("x-forwarded-for")
        || headers.contains_key("forwarded")
        || headers.contains_key("x-real-ip");
    // HeaderMap iterates in insertion order per name; names are already lowercase.
    let mut names: Vec<String> = Vec::with_capacity(headers.keys_len().min(MAX_HEADER_NAMES));
    for name in headers.keys().take(MAX_HEADER_NAMES) {
        names.push(name.as_str().to_owned());
    }
    event.header_names = names;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", xff.parse().unwrap());
        h
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let peer: SocketAddr = "203.0.113.9:5000".parse().unwrap();
        assert_eq!(client_ip(peer, &headers("1.2.3.4"), &[]), peer.ip());
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(client_ip(peer, &headers("1.2.3.4"), &trusted), peer.ip());
    }

    #[test]
    fn walks_past_trusted_proxies() {
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let peer: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let ip = client_ip(peer, &headers("6.6.6.6, 198.51.100.7, 10.0.0.5"), &trusted);
        assert_eq!(ip, "198.51.100.7".parse::<IpAddr>().unwrap());
        let ip = client_ip(peer, &headers("garbage, 10.0.0.9"), &trusted);
        assert_eq!(ip, "10.0.0.9".parse::<IpAddr>().unwrap());
    }
}
