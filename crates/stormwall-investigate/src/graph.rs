//! The entity graph: keys, tenants, client networks, client fingerprints, prompt styles,
//! end users, exposure locations, incidents, TLS fingerprints and management calls as
//! nodes; co-occurrence in events (and alerts) as edges with counts and first/last seen. Updated incrementally — [`Graph::add_event`]
//! touches only the nodes and edges of that event — and saved as a [`GraphState`] so a
//! daily run adds a day of events without rebuilding.
//!
//! Node ids are `<kind>:<value>` and never hold a secret: keys by public id, prompts by
//! digest, networks by /24 (IPv6: /48).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use sha2::Digest as _;
use stormwall_types::pricing::Pricing;
use stormwall_types::{Action, Alert, DetectorId, UsageEvent};
use time::OffsetDateTime;

use crate::harm::Harm;

/// What a node stands for.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    /// A gateway key (public id).
    Key,
    /// A tenant (key owner).
    Tenant,
    /// A client network: /24 (IPv4) or /48 (IPv6).
    Network,
    /// A client fingerprint: user-agent family, header shape and SDK markers.
    Fingerprint,
    /// A prompt style: a system-prompt digest, or a MinHash band of the prompt.
    Style,
    /// An end-user id a client sent (`user`, `safety_identifier`).
    EndUser,
    /// Where a key was found exposed: a leaked-key report's URL, or a `stormwall scan`
    /// finding's location (`scan:<path>:<line>[@<commit>]`).
    Exposure,
    /// A stored incident (issue 13's grouping of alerts about one key or network).
    Incident,
    /// A client's TLS fingerprint (JA4-style digest of its ClientHello), recorded when the
    /// gateway terminated TLS itself.
    Tls,
    /// Management calls of one kind from one network (`<action>@<network>`), read from
    /// cloud logs: who listed, created or regenerated keys, or changed logging, guardrails
    /// or network access, and from where.
    Control,
}

impl NodeKind {
    /// Stable snake_case name (the id prefix).
    pub fn as_str(self) -> &'static str {
        match self {
            NodeKind::Key => "key",
            NodeKind::Tenant => "tenant",
            NodeKind::Network => "network",
            NodeKind::Fingerprint => "fingerprint",
            NodeKind::Style => "style",
            NodeKind::EndUser => "end_user",
            NodeKind::Exposure => "exposure",
            NodeKind::Incident => "incident",
            NodeKind::Tls => "tls",
            NodeKind::Control => "control",
        }
    }

    /// Whether the node's value is personal data (redacted from exports by default).
    pub fn personal(self) -> bool {
        matches!(self, NodeKind::EndUser)
    }
}

/// One entity.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Node {
    /// `<kind>:<value>`.
    pub id: String,
    /// Kind.
    pub kind: NodeKind,
    /// Display value (never a secret).
    pub label: String,
    /// Facts about the entity (network: asn, as_org, country, flags; key: tenant;
    /// fingerprint: ua_family, user_agent, header_shape, sdk).
    pub attrs: BTreeMap<String, String>,
    /// Events (or alerts) that named it.
    pub count: u64,
    /// First seen.
    #[serde(with = "time::serde::rfc3339")]
    pub first: OffsetDateTime,
    /// Last seen.
    #[serde(with = "time::serde::rfc3339")]
    pub last: OffsetDateTime,
    /// Alerts about it, by detector (keys).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub alerts: BTreeMap<String, u64>,
    /// Response actions on it, by kind (keys).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub actions: BTreeMap<String, u64>,
    /// Management calls made with it, by action (keys of cloud principals).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub controls: BTreeMap<String, u64>,
    /// Incidents: what the events on its subject amounted to from the incident's opening
    /// until it ended (open-ended while it is open or acknowledged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harm: Option<Harm>,
}

/// One relation between two entities (undirected; `a` < `b` by node index).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Edge {
    /// One end (node index).
    pub a: usize,
    /// The other end (node index).
    pub b: usize,
    /// Events (or alerts) that linked them.
    pub count: u64,
    /// First seen.
    #[serde(with = "time::serde::rfc3339")]
    pub first: OffsetDateTime,
    /// Last seen.
    #[serde(with = "time::serde::rfc3339")]
    pub last: OffsetDateTime,
    /// Key–network edges: what the key's use from that network amounted to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub harm: Option<Harm>,
}

/// The saved form of a graph (`stormwall investigate graph --state FILE`).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct GraphState {
    /// Nodes, in insertion order.
    pub nodes: Vec<Node>,
    /// Edges, in insertion order.
    pub edges: Vec<Edge>,
    /// Id of the last event added (the store is read after it next time).
    #[serde(default)]
    pub cursor: Option<String>,
    /// Events added so far.
    #[serde(default)]
    pub events: u64,
    /// Ids of alerts and actions already added (each is added once).
    #[serde(default)]
    pub seen: BTreeSet<String>,
}

/// What [`Graph::add_scan_finding`] did with a finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanOutcome {
    /// An exposure of a Stormwall key, now in the graph.
    Added,
    /// Already in the graph (the same finding given again).
    Seen,
    /// Names no Stormwall key (another provider's credential, or a checksum that failed).
    NoKey,
}

/// IP-intelligence flags of a client address (`hosting`, `vpn`, `tor`), when configured.
pub type NetFlags<'a> = &'a [&'a str];

/// The entity graph.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    state: GraphState,
    index: HashMap<String, usize>,
    edge_index: HashMap<(usize, usize), usize>,
    adj: Vec<Vec<usize>>,
    pricing: Pricing,
    /// Fingerprint node by a hash of what it is computed from: most events repeat a
    /// client program already seen, and the digest is the costly part.
    fp_cache: HashMap<u64, usize>,
    /// Incident nodes by their subject's node (a key or a network), so an event finds the
    /// incidents it counts toward without a scan.
    incidents_of: HashMap<usize, Vec<usize>>,
}

/// The /24 (IPv4) or /48 (IPv6) of an address, in CIDR notation.
pub fn network_of(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0/24")
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}::/48", s[0], s[1], s[2])
        }
    }
}

/// A client fingerprint: what a client program looks like on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// Short digest of family, shape and markers (the node's value).
    pub id: String,
    /// The user agent without version numbers (`OpenAI/Python`, `okhttp`).
    pub ua_family: String,
    /// Header names in arrival order, joined by commas.
    pub header_shape: String,
    /// SDK and relay markers: `stainless`, `azure-api-key`, `azure-sdk`, `empty-origin`,
    /// `forwarded`.
    pub sdk: Vec<String>,
}

/// The user-agent family: each token's product name, versions dropped.
pub fn ua_family(ua: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for tok in ua.split_whitespace() {
        if tok.starts_with(|c: char| c.is_ascii_digit()) {
            continue;
        }
        match tok.split_once('/') {
            Some((name, rest)) if rest.starts_with(|c: char| c.is_ascii_digit()) => out.push(name),
            _ => out.push(tok),
        }
    }
    out.join(" ")
}

/// The fingerprint of a client program.
pub fn fingerprint(
    user_agent: Option<&str>,
    header_names: &[String],
    empty_origin: bool,
    forwarded: bool,
) -> Fingerprint {
    let family = user_agent.map(ua_family).unwrap_or_default();
    let shape = header_names.join(",");
    let mut sdk = Vec::new();
    if header_names.iter().any(|h| h.starts_with("x-stainless")) {
        sdk.push("stainless".to_owned());
    }
    if header_names.iter().any(|h| h == "api-key") {
        sdk.push("azure-api-key".to_owned());
    }
    if header_names.iter().any(|h| h == "x-ms-client-request-id") {
        sdk.push("azure-sdk".to_owned());
    }
    if empty_origin {
        sdk.push("empty-origin".to_owned());
    }
    if forwarded {
        sdk.push("forwarded".to_owned());
    }
    let mut h = sha2::Sha256::new();
    h.update(family.as_bytes());
    h.update(b"\n");
    h.update(shape.as_bytes());
    h.update(b"\n");
    h.update(sdk.join(",").as_bytes());
    let id = hex(&h.finalize()[..8]);
    Fingerprint {
        id,
        ua_family: family,
        header_shape: shape,
        sdk,
    }
}

/// The prompt-style node value of an event: its system-prompt digest (`sys:<hex16>`), or
/// else one MinHash band of its prompt (`mh:<hex16>`: prompts sharing the band's four
/// minimums are near-duplicates with high probability).
pub fn style_of(e: &UsageEvent) -> Option<String> {
    if let Some(h) = e.system_prompt_hash.as_deref() {
        let h: String = h.chars().take(16).collect();
        return Some(format!("sys:{h}"));
    }
    if e.prompt_minhash.len() >= 4 {
        // A band key, not a secret: a cheap mix is enough (SHA-256 per event was the
        // graph's largest cost).
        let mut h: u64 = 0x9e37_79b9_7f4a_7c15;
        for v in &e.prompt_minhash[..4] {
            h = (h ^ u64::from(*v)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            h ^= h >> 31;
        }
        return Some(format!("mh:{h:016x}"));
    }
    None
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Graph {
    /// An empty graph; costs missing from events come from `pricing`.
    pub fn new(pricing: Pricing) -> Self {
        Graph {
            pricing,
            ..Graph::default()
        }
    }

    /// A graph continued from a saved state.
    pub fn from_state(state: GraphState, pricing: Pricing) -> Result<Self, crate::Error> {
        let mut g = Graph::new(pricing);
        g.adj = vec![Vec::new(); state.nodes.len()];
        for (i, n) in state.nodes.iter().enumerate() {
            if g.index.insert(n.id.clone(), i).is_some() {
                return Err(crate::Error::State(format!("node {} twice", n.id)));
            }
        }
        for (i, e) in state.edges.iter().enumerate() {
            if e.a >= e.b || e.b >= state.nodes.len() {
                return Err(crate::Error::State(format!("edge {i} names no node")));
            }
            if g.edge_index.insert((e.a, e.b), i).is_some() {
                return Err(crate::Error::State(format!("edge {i} twice")));
            }
            g.adj[e.a].push(i);
            g.adj[e.b].push(i);
        }
        g.state = state;
        let mut incidents_of: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, n) in g.state.nodes.iter().enumerate() {
            if n.kind != NodeKind::Incident {
                continue;
            }
            for (m, _) in g.neighbours(i) {
                if matches!(g.state.nodes[m].kind, NodeKind::Key | NodeKind::Network) {
                    incidents_of.entry(m).or_default().push(i);
                }
            }
        }
        g.incidents_of = incidents_of;
        Ok(g)
    }

    /// The saved form.
    pub fn state(&self) -> &GraphState {
        &self.state
    }

    /// All nodes, by index.
    pub fn nodes(&self) -> &[Node] {
        &self.state.nodes
    }

    /// All edges.
    pub fn edges(&self) -> &[Edge] {
        &self.state.edges
    }

    /// A node's index by id.
    pub fn find(&self, id: &str) -> Option<usize> {
        self.index.get(id).copied()
    }

    /// A node by index.
    pub fn node(&self, i: usize) -> Option<&Node> {
        self.state.nodes.get(i)
    }

    /// The edge between two nodes.
    pub fn edge(&self, a: usize, b: usize) -> Option<&Edge> {
        let k = if a < b { (a, b) } else { (b, a) };
        self.edge_index.get(&k).map(|&i| &self.state.edges[i])
    }

    /// A node's neighbours with the edge to each.
    pub fn neighbours(&self, i: usize) -> impl Iterator<Item = (usize, &Edge)> + '_ {
        self.adj.get(i).into_iter().flatten().map(move |&ei| {
            let e = &self.state.edges[ei];
            (if e.a == i { e.b } else { e.a }, e)
        })
    }

    /// Neighbours of one kind.
    pub fn neighbours_of_kind(
        &self,
        i: usize,
        kind: NodeKind,
    ) -> impl Iterator<Item = (usize, &Edge)> + '_ {
        self.neighbours(i)
            .filter(move |(n, _)| self.state.nodes[*n].kind == kind)
    }

    /// Events added so far.
    pub fn events(&self) -> u64 {
        self.state.events
    }

    /// Id of the last event added.
    pub fn cursor(&self) -> Option<&str> {
        self.state.cursor.as_deref()
    }

    fn touch(&mut self, kind: NodeKind, value: &str, at: OffsetDateTime) -> usize {
        let id = format!("{}:{value}", kind.as_str());
        if let Some(&i) = self.index.get(&id) {
            let n = &mut self.state.nodes[i];
            n.count += 1;
            n.first = n.first.min(at);
            n.last = n.last.max(at);
            return i;
        }
        let i = self.state.nodes.len();
        self.state.nodes.push(Node {
            id: id.clone(),
            kind,
            label: value.to_owned(),
            attrs: BTreeMap::new(),
            count: 1,
            first: at,
            last: at,
            alerts: BTreeMap::new(),
            actions: BTreeMap::new(),
            controls: BTreeMap::new(),
            harm: None,
        });
        self.adj.push(Vec::new());
        self.index.insert(id, i);
        i
    }

    fn link(&mut self, x: usize, y: usize, at: OffsetDateTime) -> usize {
        let (a, b) = if x < y { (x, y) } else { (y, x) };
        if let Some(&i) = self.edge_index.get(&(a, b)) {
            let e = &mut self.state.edges[i];
            e.count += 1;
            e.first = e.first.min(at);
            e.last = e.last.max(at);
            return i;
        }
        let i = self.state.edges.len();
        self.state.edges.push(Edge {
            a,
            b,
            count: 1,
            first: at,
            last: at,
            harm: None,
        });
        self.edge_index.insert((a, b), i);
        self.adj[a].push(i);
        self.adj[b].push(i);
        i
    }

    fn set_attr(&mut self, i: usize, k: &str, v: &str) {
        let attrs = &mut self.state.nodes[i].attrs;
        if attrs.get(k).map(String::as_str) != Some(v) {
            attrs.insert(k.to_owned(), truncate(v, 200).to_owned());
        }
    }

    /// Adds one event: its key, tenant, network (with `flags` from IP intelligence, when
    /// configured), fingerprint, prompt style and end user, and the edges between them.
    pub fn add_event(&mut self, e: &UsageEvent, flags: NetFlags<'_>) {
        let at = e.timestamp;
        self.state.events += 1;
        if self
            .state
            .cursor
            .as_deref()
            .is_none_or(|c| e.id.as_str() > c)
        {
            self.state.cursor = Some(e.id.clone());
        }
        let net = self.touch(NodeKind::Network, &network_of(e.source_ip), at);
        self.count_toward_incidents(net, e);
        if let Some(asn) = e.source_asn {
            self.set_attr(net, "asn", &asn.to_string());
        }
        if let Some(org) = &e.source_as_org {
            self.set_attr(net, "as_org", org);
        }
        if let Some(cc) = &e.source_country {
            self.set_attr(net, "country", cc);
        }
        if !flags.is_empty() {
            self.set_attr(net, "flags", &flags.join(","));
        }
        let empty_origin = e.origin.as_deref() == Some("") && e.referer.as_deref() == Some("");
        let cache_key = {
            use std::hash::{Hash as _, Hasher as _};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            e.user_agent.as_deref().map(ua_family).hash(&mut h);
            e.header_names.hash(&mut h);
            (empty_origin, e.forwarded).hash(&mut h);
            h.finish()
        };
        let fpi = match self.fp_cache.get(&cache_key) {
            Some(&i) => {
                let n = &mut self.state.nodes[i];
                n.count += 1;
                n.first = n.first.min(at);
                n.last = n.last.max(at);
                i
            }
            None => {
                let fp = fingerprint(
                    e.user_agent.as_deref(),
                    &e.header_names,
                    empty_origin,
                    e.forwarded,
                );
                let i = self.touch(NodeKind::Fingerprint, &fp.id, at);
                if self.state.nodes[i].attrs.is_empty() {
                    self.set_attr(i, "ua_family", &fp.ua_family);
                    self.set_attr(i, "header_shape", &fp.header_shape);
                    self.set_attr(i, "sdk", &fp.sdk.join(","));
                    if let Some(ua) = &e.user_agent {
                        self.set_attr(i, "user_agent", ua);
                    }
                }
                self.fp_cache.insert(cache_key, i);
                i
            }
        };
        self.link(net, fpi, at);
        // The TLS stack under the HTTP client: linked to the HTTP fingerprint too, so a
        // tool's builds on one TLS stack show as one.
        let tls = e
            .tls_fingerprint
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(|t| self.touch(NodeKind::Tls, truncate(t, 64), at));
        if let Some(t) = tls {
            self.link(net, t, at);
            self.link(fpi, t, at);
        }
        let style = style_of(e).map(|s| self.touch(NodeKind::Style, &s, at));
        if let Some(s) = style {
            self.link(net, s, at);
        }
        let end_user = e
            .end_user
            .as_deref()
            .filter(|u| !u.is_empty())
            .map(|u| self.touch(NodeKind::EndUser, truncate(u, 64), at));
        if let (Some(s), Some(u)) = (style, end_user) {
            self.link(s, u, at);
        }
        let Some(key_id) = &e.key_id else { return };
        let key = self.touch(NodeKind::Key, key_id.as_str(), at);
        self.count_toward_incidents(key, e);
        if let Some(t) = &e.tenant {
            self.set_attr(key, "tenant", t);
            let tenant = self.touch(NodeKind::Tenant, t, at);
            self.link(key, tenant, at);
        }
        let kn = self.link(key, net, at);
        self.state.edges[kn]
            .harm
            .get_or_insert_with(Harm::default)
            .add_event(e, &self.pricing);
        self.link(key, fpi, at);
        if let Some(t) = tls {
            self.link(key, t, at);
        }
        if let Some(s) = style {
            self.link(key, s, at);
        }
        if let Some(u) = end_user {
            self.link(key, u, at);
        }
    }

    /// Adds an alert once (by id): counted on its key; a leaked-key report's location
    /// (E1's `url` subject) becomes an exposure node linked to the key.
    pub fn add_alert(&mut self, a: &Alert) {
        if !self.state.seen.insert(format!("alert:{}", a.id)) {
            return;
        }
        let Some(key_id) = &a.key_id else { return };
        let key = self.touch(NodeKind::Key, key_id.as_str(), a.at);
        // An alert is not a use of the key: undo the count `touch` added.
        self.state.nodes[key].count -= 1;
        *self.state.nodes[key]
            .alerts
            .entry(a.detector.as_str().to_owned())
            .or_default() += 1;
        if let Some(t) = &a.tenant {
            self.set_attr(key, "tenant", t);
        }
        if a.detector == DetectorId::E1 {
            for s in a.subjects.iter().filter(|s| s.kind == "url") {
                let x = self.touch(NodeKind::Exposure, truncate(&s.value, 300), a.at);
                self.link(key, x, a.at);
            }
        }
    }

    /// Adds a `stormwall scan` finding once (by its fingerprint and location): an exposure
    /// node (`exposure:scan:<path>:<line>[@<commit>]`, with the scanner's source, rule,
    /// provider, fingerprint and commit) linked to the Stormwall key it names. Dated by the
    /// commit's author time for history findings, else `at` (when the scan was made).
    pub fn add_scan_finding(
        &mut self,
        f: &stormwall_scan::Finding,
        at: OffsetDateTime,
    ) -> ScanOutcome {
        let Some(key_id) = crate::findings::key_of(f) else {
            return ScanOutcome::NoKey;
        };
        let location = crate::findings::location_of(f);
        if !self
            .state
            .seen
            .insert(format!("scan:{}:{location}", f.fingerprint))
        {
            return ScanOutcome::Seen;
        }
        let at = f
            .location
            .git
            .as_ref()
            .and_then(|g| OffsetDateTime::from_unix_timestamp(g.time).ok())
            .unwrap_or(at);
        let key = self.touch(NodeKind::Key, key_id, at);
        // An exposure is not a use of the key: undo the count `touch` added.
        self.state.nodes[key].count -= 1;
        let x = self.touch(NodeKind::Exposure, truncate(&location, 300), at);
        self.set_attr(x, "found_by", "stormwall scan");
        self.set_attr(x, "source", crate::findings::source_name(f.location.source));
        self.set_attr(x, "rule", &f.rule);
        self.set_attr(x, "provider", &f.provider);
        self.set_attr(x, "fingerprint", &f.fingerprint);
        if let Some(g) = &f.location.git {
            self.set_attr(x, "commit", &g.commit);
        }
        self.link(key, x, at);
        ScanOutcome::Added
    }

    /// Adds a management-plane call from a cloud log once (by its id): counted by action
    /// on its principal's key node (the key id the detectors and alerts use), with the
    /// principal's account as the key's tenant; and, when the caller's address was logged,
    /// a control node `control:<action>@<network>` linked to the key and to the network,
    /// holding the calls' count, service, last operation name, user-agent family and how
    /// many failed or loosened a control. A management call is not a use of the key: no
    /// harm, and no key–network edge (roles are inferred from use).
    pub fn add_control_event(&mut self, c: &stormwall_types::ControlEvent, flags: NetFlags<'_>) {
        if !self.state.seen.insert(format!("control:{}", c.id)) {
            return;
        }
        let at = c.timestamp;
        let calls = u64::from(c.count.max(1));
        let p = &c.cloud.principal;
        let key = self.touch(NodeKind::Key, p.key_id().as_str(), at);
        self.state.nodes[key].count -= 1;
        *self.state.nodes[key]
            .controls
            .entry(c.action.as_str().to_owned())
            .or_default() += calls;
        self.set_attr(key, "cloud", p.provider.as_str());
        self.set_attr(key, "credential", p.kind.as_str());
        if let Some(t) = p.account.as_deref().filter(|t| !t.is_empty()) {
            self.set_attr(key, "tenant", t);
            let tenant = self.touch(NodeKind::Tenant, truncate(t, 200), at);
            self.state.nodes[tenant].count -= 1;
            self.link(key, tenant, at);
        }
        let Some(ip) = c.source_ip.filter(|_| !c.cloud.ip_missing) else {
            return;
        };
        let net_label = network_of(ip);
        let net = self.touch(NodeKind::Network, &net_label, at);
        // The network's count is of requests made from it.
        self.state.nodes[net].count -= 1;
        if !flags.is_empty() {
            self.set_attr(net, "flags", &flags.join(","));
        }
        let ctl = self.touch(
            NodeKind::Control,
            &format!("{}@{net_label}", c.action.as_str()),
            at,
        );
        self.state.nodes[ctl].count += calls - 1;
        self.set_attr(ctl, "action", c.action.as_str());
        self.set_attr(ctl, "cloud", p.provider.as_str());
        self.set_attr(ctl, "operation", &c.cloud.operation);
        if let Some(s) = &c.service {
            self.set_attr(ctl, "service", s);
        }
        if let Some(ua) = &c.user_agent {
            self.set_attr(ctl, "ua_family", &ua_family(ua));
        }
        let bump = |g: &mut Graph, k: &str| {
            let n: u64 = g.state.nodes[ctl]
                .attrs
                .get(k)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            g.set_attr(ctl, k, &(n + calls).to_string());
        };
        if !c.success {
            bump(self, "failed");
        }
        if c.loosens {
            bump(self, "loosens");
        }
        self.link(key, ctl, at);
        self.link(ctl, net, at);
    }

    /// Adds a response action once (by its alert and kind): counted on its key.
    pub fn add_action(&mut self, a: &Action) {
        let id = format!("action:{}:{}:{}", a.alert_id, a.kind.as_str(), a.key_id);
        if !self.state.seen.insert(id) {
            return;
        }
        let key = self.touch(NodeKind::Key, a.key_id.as_str(), a.at);
        self.state.nodes[key].count -= 1;
        *self.state.nodes[key]
            .actions
            .entry(a.kind.as_str().to_owned())
            .or_default() += 1;
    }

    /// Adds (or updates) a stored incident: a node linked to its subject — its key and
    /// tenant, or its source network — carrying severity, status, stages and risk score.
    /// Events added afterwards on its subject within its window count toward its harm, so
    /// the store's incidents are read before its events (`stormwall investigate` does).
    pub fn add_incident(&mut self, stored: &stormwall_store::StoredIncident) {
        let inc = &stored.incident;
        let first_time = self.state.seen.insert(format!("incident:{}", inc.id));
        let i = self.touch(NodeKind::Incident, truncate(&inc.id, 200), inc.opened_at);
        {
            let n = &mut self.state.nodes[i];
            n.count = stored.alert_ids.len().max(1) as u64;
            n.first = inc.opened_at;
            n.last = inc.updated_at.max(inc.opened_at);
        }
        self.set_attr(i, "severity", inc.severity.as_str());
        self.set_attr(i, "status", inc.status.as_str());
        self.set_attr(i, "subject", &inc.subject.label());
        self.set_attr(i, "risk_score", &format!("{:.1}", inc.risk_score));
        let stages: Vec<&str> = inc.stages.iter().map(|s| s.as_str()).collect();
        self.set_attr(i, "stages", &stages.join(","));
        if !first_time {
            return;
        }
        let (at, last) = (inc.opened_at, inc.updated_at);
        let subject = match &inc.subject {
            stormwall_types::IncidentSubject::Key(k) => {
                let key = self.touch(NodeKind::Key, truncate(k, 200), at);
                // An incident is not a use of the key: undo the count `touch` added.
                self.state.nodes[key].count -= 1;
                if let Some(t) = &inc.tenant {
                    self.set_attr(key, "tenant", t);
                    let tenant = self.touch(NodeKind::Tenant, t, at);
                    self.state.nodes[tenant].count -= 1;
                    self.link(i, tenant, last);
                }
                key
            }
            stormwall_types::IncidentSubject::Network(n) => {
                let net = self.touch(NodeKind::Network, truncate(n, 64), at);
                self.state.nodes[net].count -= 1;
                net
            }
        };
        self.link(i, subject, at);
        self.incidents_of.entry(subject).or_default().push(i);
    }

    /// Adds an event's harm to the incidents of `subject` whose window holds it.
    fn count_toward_incidents(&mut self, subject: usize, e: &UsageEvent) {
        let Some(list) = self.incidents_of.get(&subject) else {
            return;
        };
        for &i in list {
            let n = &mut self.state.nodes[i];
            let ended = n
                .attrs
                .get("status")
                .is_some_and(|s| matches!(s.as_str(), "resolved" | "closed" | "false_positive"));
            if e.timestamp < n.first || (ended && e.timestamp > n.last) {
                continue;
            }
            n.harm
                .get_or_insert_with(Harm::default)
                .add_event(e, &self.pricing);
        }
    }

    /// Harm per incident node (label), for incidents events were counted toward.
    pub fn incident_harm(&self) -> BTreeMap<String, Harm> {
        self.state
            .nodes
            .iter()
            .filter(|n| n.kind == NodeKind::Incident)
            .map(|n| (n.label.clone(), n.harm.clone().unwrap_or_default()))
            .collect()
    }

    /// The key's tenant, from its attributes.
    pub fn tenant_of_key(&self, key: usize) -> Option<&str> {
        self.state
            .nodes
            .get(key)?
            .attrs
            .get("tenant")
            .map(String::as_str)
    }
}

impl Graph {
    /// The nodes `seeds` and their neighbours, with the edges among them (indices
    /// renumbered): the part of the graph an evidence bundle carries.
    pub fn excerpt(&self, seeds: &[usize]) -> GraphState {
        let mut keep: BTreeSet<usize> = BTreeSet::new();
        for &s in seeds {
            if s < self.state.nodes.len() {
                keep.insert(s);
                keep.extend(self.neighbours(s).map(|(n, _)| n));
            }
        }
        let map: HashMap<usize, usize> = keep.iter().enumerate().map(|(j, &i)| (i, j)).collect();
        let nodes = keep.iter().map(|&i| self.state.nodes[i].clone()).collect();
        let edges = self
            .state
            .edges
            .iter()
            .filter_map(|e| {
                let (a, b) = (*map.get(&e.a)?, *map.get(&e.b)?);
                Some(Edge {
                    a: a.min(b),
                    b: a.max(b),
                    ..e.clone()
                })
            })
            .collect();
        GraphState {
            nodes,
            edges,
            cursor: None,
            events: 0,
            seen: BTreeSet::new(),
        }
    }
}
