//! The simulated world: networks (with ASNs, countries and egress flags), client programs
//! (user agent, header shape and the TLS stack under them), and a deterministic random
//! source.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use stormwall_detect::sketch::mix64;
use stormwall_detect::{EgressFlag, EgressList};

/// A small deterministic PRNG (splitmix64): the same seed gives the same traffic.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Self {
        Self(seed ^ 0x5354_4f52_4d57_414c)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }

    /// Uniform in `[0, 1)`.
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `[lo, hi)` (returns `lo` when the range is empty).
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        if hi <= lo {
            return lo;
        }
        lo + self.next_u64() % (hi - lo)
    }

    /// Uniform in `[lo, hi)`.
    pub fn uniform(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.f64()
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        self.f64() < p
    }

    /// Exponential with the given mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.f64()).max(1e-12).ln()
    }

    /// A random element.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            return None;
        }
        items.get(self.range(0, items.len() as u64) as usize)
    }

    /// A fresh generator split off this one.
    pub fn fork(&mut self) -> Rng {
        Rng(self.next_u64())
    }
}

/// One network: an ASN in a country, with an optional egress flag and a /16 of addresses.
#[derive(Debug, Clone)]
pub struct Net {
    /// ASN.
    pub asn: u32,
    /// Country.
    pub cc: &'static str,
    /// AS organisation.
    pub org: &'static str,
    /// Egress flag.
    pub flag: Option<EgressFlag>,
    /// First two octets of its addresses.
    pub prefix: [u8; 2],
}

impl Net {
    /// The address `host` of this network (host picks the last two octets).
    pub fn ip(&self, host: u16) -> IpAddr {
        let [a, b] = self.prefix;
        let [c, d] = host.to_be_bytes();
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }
}

/// Well-known networks of the simulation. Documentation ASNs (RFC 5398) only.
pub fn networks() -> Vec<Net> {
    let n = |asn, cc, org, flag, p: u8| Net {
        asn,
        cc,
        org,
        flag,
        prefix: [100, p],
    };
    use EgressFlag::*;
    vec![
        n(64496, "US", "EXAMPLE-CLOUD-A", Some(Hosting), 64),
        n(64496, "IE", "EXAMPLE-CLOUD-A", Some(Hosting), 65),
        n(64496, "DE", "EXAMPLE-CLOUD-A", Some(Hosting), 66),
        n(64497, "US", "EXAMPLE-CLOUD-B", Some(Hosting), 67),
        n(64497, "DE", "EXAMPLE-CLOUD-B", Some(Hosting), 68),
        n(64502, "NL", "EXAMPLE-HOSTING", Some(Hosting), 69),
        n(64499, "RO", "EXAMPLE-VPS", Some(Hosting), 70),
        n(64510, "RU", "EXAMPLE-VDS", Some(Hosting), 71),
        n(64503, "SG", "EXAMPLE-VPN", Some(Vpn), 72),
        n(64503, "US", "EXAMPLE-VPN", Some(Vpn), 73),
        n(64503, "DE", "EXAMPLE-VPN", Some(Vpn), 74),
        n(64509, "NL", "EXAMPLE-VPN-2", Some(Vpn), 75),
        n(64505, "RO", "EXAMPLE-TOR-EXIT", Some(Tor), 76),
        n(64504, "BR", "EXAMPLE-RESIDENTIAL-BR", None, 77),
        n(64506, "US", "EXAMPLE-RESIDENTIAL-US", None, 78),
        n(64507, "DE", "EXAMPLE-RESIDENTIAL-DE", None, 79),
        n(64508, "IN", "EXAMPLE-RESIDENTIAL-IN", None, 80),
        n(64511, "VN", "EXAMPLE-RESIDENTIAL-VN", None, 81),
        n(64501, "DE", "EXAMPLE-MOBILE-DE", None, 82),
        n(65540, "AT", "EXAMPLE-MOBILE-AT", None, 83),
        n(65541, "CH", "EXAMPLE-MOBILE-CH", None, 84),
        n(65542, "US", "EXAMPLE-MOBILE-US", None, 85),
        n(65543, "GB", "EXAMPLE-RESIDENTIAL-GB", None, 86),
        n(65544, "IE", "EXAMPLE-RESIDENTIAL-IE", None, 87),
    ]
}

/// Finds a network by ASN and country.
pub fn net(nets: &[Net], asn: u32, cc: &str) -> Option<Net> {
    nets.iter().find(|n| n.asn == asn && n.cc == cc).cloned()
}

/// A corporate network of its own for tenant number `i`.
pub fn corporate_net(i: usize, cc: &'static str) -> Net {
    let i = i as u32;
    Net {
        asn: 65600 + i,
        cc,
        org: "EXAMPLE-CORP",
        flag: None,
        prefix: [101 + (i / 250) as u8, (i % 250) as u8],
    }
}

/// The egress list the simulated IP database implies.
pub fn egress_list(nets: &[Net]) -> EgressList {
    let mut l = EgressList::default();
    for n in nets {
        if let Some(f) = n.flag {
            l.add_asn(n.asn, f);
        }
    }
    l
}

/// The simulated IP database as an ip-to-ASN TSV (what `stormwall detect --ipdb` reads).
pub fn ipdb_tsv(nets: &[Net]) -> String {
    let mut s = String::from(
        "# range_start\trange_end\tas_number\tcountry_code\tas_description\t[flags]\n",
    );
    for n in nets {
        let [a, b] = n.prefix;
        s.push_str(&format!(
            "{a}.{b}.0.0\t{a}.{b}.255.255\t{}\t{}\t{}\t{}\n",
            n.asn,
            n.cc,
            n.org,
            n.flag.map_or("", |f| f.as_str())
        ));
    }
    s
}

/// A client program: user agent and the header names it sends, in order.
#[derive(Debug, Clone)]
pub struct Program {
    /// User agent.
    pub ua: Arc<str>,
    /// Header names.
    pub headers: Arc<Vec<String>>,
    /// Sends `Origin` and `Referer`, empty.
    pub empty_origin: bool,
    /// Sends forwarding headers.
    pub forwarded: bool,
}

/// TLS ClientHello fingerprints (the gateway's JA4-style `tls.client.fingerprint`) of the
/// TLS stacks under the simulated programs. A fingerprint belongs to a stack, not a
/// program: every Python client shares one, every Node client another.
pub mod tls {
    /// Python's `ssl` module over OpenSSL 3 (the OpenAI and Azure Python SDKs, requests,
    /// aiohttp).
    pub const PYTHON_OPENSSL: &str = "t13d4705h1_5d04281c6031_ca1bdb4e8a4f";
    /// Node.js's TLS (the OpenAI Node SDK, axios, node-fetch).
    pub const NODE: &str = "t13d3104h2_e8f1e7e78f70_1f7ad2cbf5ac";
    /// Android's Conscrypt (okhttp).
    pub const OKHTTP: &str = "t13d1504h2_8a21ca3a7b0f_6e5e1e8e9b3d";
    /// Apple's Network framework (CFNetwork).
    pub const APPLE: &str = "t13d2004h2_3c8e06b1bd8d_91d0c1f7e3a2";
    /// curl over OpenSSL.
    pub const CURL: &str = "t13d3105h2_2b0648ab686e_d0a54b2ba7c3";
    /// Go's `crypto/tls`.
    pub const GO: &str = "t13d1303h2_0f2cb44170f4_5c5f0e9e3b44";
    /// A rustls build with a trimmed suite list (the relaykit tool).
    pub const RUSTLS_TRIMMED: &str = "t13d090300_f5c9a6a8c2d1_7b4e2f0c9d1a";
    /// Electron's Chromium (BoringSSL; the GenStudio tool).
    pub const ELECTRON: &str = "t13d1516h2_8daaf6152771_b0da82dd1658";
}

/// The TLS fingerprint a program's requests carry: its stack's, recognised from the user
/// agent. `None` for an unknown program.
pub fn tls_of(p: &Program) -> Option<&'static str> {
    let ua = &*p.ua;
    let has = |s: &str| ua.contains(s);
    // A client forging the OpenAI Python user agent without the SDK's headers is a Node
    // script: its stack does not change with the header.
    let forged_python =
        ua.starts_with("OpenAI/Python") && !p.headers.iter().any(|h| h == "x-stainless-lang");
    let stack = if has("relaykit") {
        tls::RUSTLS_TRIMMED
    } else if has("GenStudio") {
        tls::ELECTRON
    } else if has("Go-http-client") {
        tls::GO
    } else if has("OpenAI/JS") || has("axios") || has("node-fetch") || forged_python {
        tls::NODE
    } else if has("Python") || has("python") {
        tls::PYTHON_OPENSSL
    } else if has("okhttp") {
        tls::OKHTTP
    } else if has("CFNetwork") {
        tls::APPLE
    } else if has("curl") {
        tls::CURL
    } else {
        return None;
    };
    Some(stack)
}

fn names(list: &[&str]) -> Arc<Vec<String>> {
    Arc::new(list.iter().map(|s| (*s).to_owned()).collect())
}

/// The client programs of the simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// OpenAI Python SDK.
    OpenaiPython,
    /// OpenAI Node SDK.
    OpenaiNode,
    /// Azure SDK.
    Azure,
    /// Android app.
    Okhttp,
    /// iOS app.
    CfNetwork,
    /// python-requests.
    Requests,
    /// curl.
    Curl,
    /// aiohttp.
    Aiohttp,
    /// A Node relay (axios) with empty Origin/Referer.
    AxiosRelay,
    /// OpenAI Python user agent forged without the SDK's headers.
    ForgedPython,
}

/// Builds a program of a kind, with a version chosen by `v`.
pub fn program(kind: Kind, v: u64) -> Program {
    let p = |ua: String, h: &[&str]| Program {
        ua: Arc::from(ua.as_str()),
        headers: names(h),
        empty_origin: false,
        forwarded: false,
    };
    let stainless_py = [
        "host",
        "accept-encoding",
        "connection",
        "accept",
        "content-type",
        "user-agent",
        "x-stainless-lang",
        "x-stainless-package-version",
        "x-stainless-os",
        "x-stainless-arch",
        "x-stainless-runtime",
        "x-stainless-runtime-version",
        "authorization",
        "x-stainless-async",
        "x-stainless-retry-count",
        "x-stainless-read-timeout",
        "content-length",
    ];
    match kind {
        Kind::OpenaiPython => p(format!("OpenAI/Python 1.{}.0", 40 + v % 20), &stainless_py),
        Kind::OpenaiNode => p(
            format!("OpenAI/JS 4.{}.1", 60 + v % 20),
            &[
                "accept",
                "content-type",
                "user-agent",
                "x-stainless-lang",
                "x-stainless-package-version",
                "x-stainless-os",
                "x-stainless-arch",
                "x-stainless-runtime",
                "x-stainless-runtime-version",
                "authorization",
                "x-stainless-retry-count",
                "content-length",
                "accept-encoding",
                "host",
                "connection",
            ],
        ),
        Kind::Azure => p(
            format!("azsdk-python-ai-inference/1.0.0b{} Python/3.12", 4 + v % 5),
            &[
                "host",
                "user-agent",
                "accept",
                "content-type",
                "api-key",
                "x-ms-client-request-id",
                "content-length",
            ],
        ),
        Kind::Okhttp => p(
            format!("okhttp/4.{}.0", 9 + v % 4),
            &[
                "authorization",
                "content-type",
                "content-length",
                "host",
                "connection",
                "accept-encoding",
                "user-agent",
            ],
        ),
        Kind::CfNetwork => p(
            format!("ExampleApp/{} CFNetwork/1490.0.4 Darwin/23.2.0", 3 + v % 3),
            &[
                "host",
                "content-type",
                "accept",
                "authorization",
                "user-agent",
                "accept-language",
                "content-length",
                "accept-encoding",
                "connection",
            ],
        ),
        Kind::Requests => p(
            format!("python-requests/2.{}.3", 28 + v % 5),
            &[
                "host",
                "user-agent",
                "accept-encoding",
                "accept",
                "connection",
                "authorization",
                "content-type",
                "content-length",
            ],
        ),
        Kind::Curl => p(
            format!("curl/8.{}.0", 4 + v % 6),
            &[
                "host",
                "user-agent",
                "accept",
                "authorization",
                "content-type",
                "content-length",
            ],
        ),
        Kind::Aiohttp => p(
            format!("Python/3.11 aiohttp/3.9.{}", v % 6),
            &[
                "host",
                "authorization",
                "content-type",
                "accept",
                "accept-encoding",
                "user-agent",
                "content-length",
            ],
        ),
        Kind::AxiosRelay => Program {
            empty_origin: true,
            forwarded: v.is_multiple_of(2),
            ..p(
                format!("axios/1.{}.8", 5 + v % 3),
                &[
                    "accept",
                    "content-type",
                    "authorization",
                    "user-agent",
                    "content-length",
                    "accept-encoding",
                    "host",
                    "connection",
                    "origin",
                    "referer",
                ],
            )
        },
        Kind::ForgedPython => p(
            format!("OpenAI/Python 1.{}.0", 40 + v % 20),
            &[
                "host",
                "user-agent",
                "accept",
                "content-type",
                "authorization",
                "content-length",
            ],
        ),
    }
}
