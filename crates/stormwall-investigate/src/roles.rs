//! Clusters and roles: Louvain communities over the entity graph, then role inference —
//! *provider* (a relay network that fronts keys of several tenants and serves prompt
//! styles seen across tenants), *creator* (a client fingerprint, or a TLS ClientHello
//! fingerprint, shared by providers and rarely seen elsewhere), *user* (a prompt style served mostly through providers, across
//! tenants' keys), *victim* (a tenant whose key a provider used) — each with a confidence
//! and the facts behind it; then the analyst's overrides.

use std::collections::{BTreeMap, BTreeSet};

use sha2::Digest as _;
use time::OffsetDateTime;

use crate::graph::{Graph, NodeKind};
use crate::harm::Harm;
use crate::overrides::{OverrideOp, Overrides};

/// A role in the abuse network.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Runs relay infrastructure fronting stolen keys and resells access.
    Provider,
    /// Wrote the tool providers run (a fingerprint shared across providers).
    Creator,
    /// Buys access: a prompt-style cluster behind a provider.
    User,
    /// A tenant whose key was abused.
    Victim,
}

impl Role {
    /// Stable snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Provider => "provider",
            Role::Creator => "creator",
            Role::User => "user",
            Role::Victim => "victim",
        }
    }

    /// Parses [`Role::as_str`]'s names.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "provider" => Some(Role::Provider),
            "creator" => Some(Role::Creator),
            "user" => Some(Role::User),
            "victim" => Some(Role::Victim),
            _ => None,
        }
    }

    /// The node kind the role is mostly inferred for (creators may also be TLS
    /// fingerprints: [`NodeKind::Tls`]).
    pub fn kind(self) -> NodeKind {
        match self {
            Role::Provider => NodeKind::Network,
            Role::Creator => NodeKind::Fingerprint,
            Role::User => NodeKind::Style,
            Role::Victim => NodeKind::Tenant,
        }
    }
}

/// Where an assignment comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Inferred from the graph; not yet reviewed.
    Inferred,
    /// Confirmed (or added) by an analyst.
    Confirmed,
}

/// One role given to one entity.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Assignment {
    /// Node id.
    pub entity: String,
    /// Node kind.
    pub kind: NodeKind,
    /// Display value.
    pub label: String,
    /// Role.
    pub role: Role,
    /// Confidence in 0..=1.
    pub confidence: f64,
    /// The facts behind it, for a person.
    pub reasons: Vec<String>,
    /// The cluster the entity is in.
    pub cluster: String,
    /// Inferred or confirmed.
    pub status: Status,
    /// Analyst notes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// One community of entities.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Cluster {
    /// Stable id: `cluster-` and a digest of its lowest member id.
    pub id: String,
    /// Member node ids, sorted.
    pub members: Vec<String>,
    /// Roles of its members.
    pub roles: BTreeMap<Role, usize>,
    /// Harm done through its provider networks (empty when it has none).
    pub harm: Harm,
    /// First and last seen over its members.
    #[serde(with = "time::serde::rfc3339")]
    pub first: OffsetDateTime,
    /// Last seen.
    #[serde(with = "time::serde::rfc3339")]
    pub last: OffsetDateTime,
}

/// Thresholds of role inference.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoleConfig {
    /// Requests a key must have made from a network for the network to front it.
    pub min_key_requests: u64,
    /// Tenants whose keys a provider network fronts, at least.
    pub provider_min_tenants: usize,
    /// Prompt styles (or end users) seen on several tenants' keys a provider serves, at least.
    pub provider_min_shared_styles: usize,
    /// Provider networks a creator's fingerprint is seen on, at least.
    pub creator_min_providers: usize,
    /// Share of a creator fingerprint's requests made through providers, at least.
    pub creator_min_provider_share: f64,
    /// Share of a user style's requests made through providers, at least.
    pub user_min_provider_share: f64,
    /// Requests of a user style, at least.
    pub user_min_requests: u64,
    /// Louvain resolution.
    pub resolution: f64,
    /// Share of a provider's end users (those sent with the prompt styles it serves, on the
    /// keys it fronts) seen on keys of several tenants, at least, once it has
    /// `mixing_min_end_users` of them: an honest integrator keeps each client's end users
    /// on that client's key, a relay rotating stolen keys spreads its buyers' over them.
    pub provider_min_mixed_share: f64,
    /// End users at which the mixing test above applies.
    pub mixing_min_end_users: usize,
    /// Share of a creator tool family's requests (all its versions) made through providers
    /// fronting several tenants' keys, at least; each of its fingerprints then needs
    /// `creator_min_provider_share` through all providers.
    pub creator_family_min_provider_share: f64,
    /// Share of a network's requests made with a creator's tool at which a network
    /// fronting a single tenant's key is a provider (a relay fronting one victim).
    pub single_provider_min_creator_share: f64,
    /// Share of a style's requests made through providers at which it is a user even when
    /// seen on one tenant's keys only (the buyers of a single-key relay).
    pub user_single_tenant_share: f64,
}

impl Default for RoleConfig {
    fn default() -> Self {
        RoleConfig {
            min_key_requests: 5,
            provider_min_tenants: 2,
            provider_min_shared_styles: 2,
            creator_min_providers: 2,
            creator_min_provider_share: 0.8,
            user_min_provider_share: 0.6,
            user_min_requests: 5,
            resolution: 1.0,
            provider_min_mixed_share: 0.1,
            mixing_min_end_users: 5,
            creator_family_min_provider_share: 0.5,
            single_provider_min_creator_share: 0.5,
            user_single_tenant_share: 0.9,
        }
    }
}

/// Clusters, roles and harm: what the investigation concluded.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Assessment {
    /// Clusters that hold at least one role, largest harm first.
    pub clusters: Vec<Cluster>,
    /// Every role given, by role then entity.
    pub roles: Vec<Assignment>,
    /// Roles the analyst rejected (kept so a rebuild does not bring them back unseen).
    pub rejected: Vec<Assignment>,
    /// Harm per victim tenant: its keys' use from provider networks.
    pub victim_harm: BTreeMap<String, Harm>,
    /// Analyst notes on entities without a role.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub notes: BTreeMap<String, Vec<String>>,
    /// Harm per stored incident, by incident id: its subject's events from its opening
    /// until it ended.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub incident_harm: BTreeMap<String, Harm>,
}

impl Assessment {
    /// The assignment of a role to an entity, if any.
    pub fn role_of(&self, entity: &str) -> Vec<&Assignment> {
        self.roles.iter().filter(|a| a.entity == entity).collect()
    }

    /// The cluster with this id.
    pub fn cluster(&self, id: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.id == id)
    }
}

fn cluster_id(lowest: &str) -> String {
    let d = sha2::Sha256::digest(lowest.as_bytes());
    format!("cluster-{}", crate::graph::hex(&d[..4]))
}

/// Edge weight for community detection: log-damped, so a busy key does not swallow all.
fn weight(count: u64) -> f64 {
    (1.0 + count as f64).ln()
}

/// Runs community detection and role inference, then applies the overrides.
pub fn assess(g: &Graph, cfg: &RoleConfig, overrides: &Overrides) -> Assessment {
    let n = g.nodes().len();
    let edges: Vec<(usize, usize, f64)> = g
        .edges()
        .iter()
        .map(|e| (e.a, e.b, weight(e.count)))
        .collect();
    let mut comm = crate::louvain::louvain(n, &edges, cfg.resolution);
    // Merges and splits are applied to the communities before anything is named, so they
    // hold however the detection falls on a rebuild.
    let mut next = comm.iter().max().map_or(0, |m| m + 1);
    for o in &overrides.entries {
        match &o.op {
            OverrideOp::Merge { entity, with } => {
                if let (Some(a), Some(b)) = (g.find(entity), g.find(with)) {
                    let (from, to) = (comm[b], comm[a]);
                    for c in comm.iter_mut() {
                        if *c == from {
                            *c = to;
                        }
                    }
                }
            }
            OverrideOp::Split { entity } => {
                if let Some(a) = g.find(entity) {
                    comm[a] = next;
                    next += 1;
                }
            }
            _ => {}
        }
    }
    let mut members: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
    for (i, c) in comm.iter().enumerate() {
        members.entry(*c).or_default().push(i);
    }
    let mut cluster_of = vec![String::new(); n];
    for list in members.values() {
        let lowest = list
            .iter()
            .filter_map(|&i| g.node(i))
            .map(|nd| nd.id.as_str())
            .min()
            .unwrap_or("");
        let id = cluster_id(lowest);
        for &i in list {
            cluster_of[i] = id.clone();
        }
    }

    let (mut roles, fronted) = infer(g, cfg, &cluster_of);
    let mut rejected = Vec::new();
    let mut notes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for o in &overrides.entries {
        let who = format!(
            "{} at {}",
            o.analyst,
            stormwall_types::timefmt::format(o.at)
        );
        match &o.op {
            OverrideOp::Confirm { entity, role } => {
                if let Some(a) = roles
                    .iter_mut()
                    .find(|a| &a.entity == entity && a.role == *role)
                {
                    a.status = Status::Confirmed;
                    a.confidence = 1.0;
                    a.reasons.push(format!("confirmed by {who}"));
                } else if let Some(i) = g.find(entity) {
                    let nd = &g.nodes()[i];
                    rejected.retain(|a: &Assignment| !(&a.entity == entity && a.role == *role));
                    roles.push(Assignment {
                        entity: entity.clone(),
                        kind: nd.kind,
                        label: nd.label.clone(),
                        role: *role,
                        confidence: 1.0,
                        reasons: vec![format!("assigned by {who}")],
                        cluster: cluster_of[i].clone(),
                        status: Status::Confirmed,
                        notes: Vec::new(),
                    });
                }
            }
            OverrideOp::Reject { entity, role } => {
                let (out, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut roles)
                    .into_iter()
                    .partition(|a| &a.entity == entity && a.role == *role);
                roles = keep;
                for mut a in out {
                    a.reasons.push(format!("rejected by {who}"));
                    rejected.push(a);
                }
            }
            OverrideOp::Annotate { entity, note } => {
                let text = format!("{note} ({who})");
                let mut put = false;
                for a in roles.iter_mut().filter(|a| &a.entity == entity) {
                    a.notes.push(text.clone());
                    put = true;
                }
                if !put {
                    notes.entry(entity.clone()).or_default().push(text);
                }
            }
            OverrideOp::Merge { .. } | OverrideOp::Split { .. } => {}
        }
    }
    roles.sort_by(|a, b| (a.role, &a.entity).cmp(&(b.role, &b.entity)));

    // Harm: each provider network's key edges, summed per cluster and per victim tenant.
    let providers: BTreeSet<usize> = roles
        .iter()
        .filter(|a| a.role == Role::Provider)
        .filter_map(|a| g.find(&a.entity))
        .collect();
    let mut cluster_harm: BTreeMap<String, Harm> = BTreeMap::new();
    let mut victim_harm: BTreeMap<String, Harm> = BTreeMap::new();
    for &p in &providers {
        // An inferred provider counts the keys it fronts; one an analyst named, all keys.
        let keys = fronted.get(&p);
        for (k, e) in g.neighbours_of_kind(p, NodeKind::Key) {
            if keys.is_some_and(|ks| !ks.contains(&k)) {
                continue;
            }
            let Some(h) = &e.harm else { continue };
            cluster_harm
                .entry(cluster_of[p].clone())
                .or_default()
                .merge(h);
            if let Some(t) = g.tenant_of_key(k) {
                victim_harm.entry(t.to_owned()).or_default().merge(h);
            }
        }
    }
    let with_roles: BTreeSet<&str> = roles.iter().map(|a| a.cluster.as_str()).collect();
    let mut clusters: Vec<Cluster> = members
        .values()
        .filter_map(|list| {
            let id = cluster_of[*list.first()?].clone();
            if !with_roles.contains(id.as_str()) {
                return None;
            }
            let nodes: Vec<_> = list.iter().filter_map(|&i| g.node(i)).collect();
            let mut ids: Vec<String> = nodes.iter().map(|nd| nd.id.clone()).collect();
            ids.sort();
            let mut rc = BTreeMap::new();
            for a in roles.iter().filter(|a| a.cluster == id) {
                *rc.entry(a.role).or_default() += 1;
            }
            Some(Cluster {
                harm: cluster_harm.get(&id).cloned().unwrap_or_default(),
                first: nodes.iter().map(|nd| nd.first).min()?,
                last: nodes.iter().map(|nd| nd.last).max()?,
                id,
                members: ids,
                roles: rc,
            })
        })
        .collect();
    clusters.sort_by(|a, b| {
        b.harm
            .requests
            .cmp(&a.harm.requests)
            .then_with(|| a.id.cmp(&b.id))
    });
    victim_harm.retain(|t, _| {
        roles
            .iter()
            .any(|a| a.role == Role::Victim && a.label == *t)
    });
    Assessment {
        clusters,
        roles,
        rejected,
        victim_harm,
        notes,
        incident_harm: g.incident_harm(),
    }
}

fn span(first: OffsetDateTime, last: OffsetDateTime) -> String {
    format!(
        "{} to {}",
        stormwall_types::timefmt::format(first),
        stormwall_types::timefmt::format(last)
    )
}

/// Keys each inferred provider network fronts.
type Fronted = BTreeMap<usize, BTreeSet<usize>>;

/// A tool's family: its user-agent family and markers. A new version of a tool that adds
/// or reorders headers is a new fingerprint of the same family.
fn family(nd: &crate::graph::Node) -> (String, String) {
    (
        nd.attrs.get("ua_family").cloned().unwrap_or_default(),
        nd.attrs.get("sdk").cloned().unwrap_or_default(),
    )
}

/// Requests with a node through provider networks, in all, and the providers' labels.
fn through<'g>(g: &'g Graph, i: usize, providers: &Fronted) -> (u64, u64, BTreeSet<&'g str>) {
    let (mut via, mut total) = (0u64, 0u64);
    let mut at = BTreeSet::new();
    for (m, e) in g.neighbours_of_kind(i, NodeKind::Network) {
        total += e.count;
        if providers.contains_key(&m) {
            via += e.count;
            at.insert(g.nodes()[m].label.as_str());
        }
    }
    (via, total, at)
}

/// The inference proper, on the graph alone: providers that front several tenants' keys
/// first, then the creators' tool families they share, the buyers' styles, then relays
/// fronting a single key that run a creator's tool or serve a known buyer, and last the
/// creators' fingerprints, users and victims over all providers.
fn infer(g: &Graph, cfg: &RoleConfig, cluster_of: &[String]) -> (Vec<Assignment>, Fronted) {
    let nodes = g.nodes();
    let mut out = Vec::new();
    let assign = |i: usize, role: Role, confidence: f64, reasons: Vec<String>| Assignment {
        entity: nodes[i].id.clone(),
        kind: nodes[i].kind,
        label: nodes[i].label.clone(),
        role,
        confidence: (confidence * 100.0).round() / 100.0,
        reasons,
        cluster: cluster_of[i].clone(),
        status: Status::Inferred,
        notes: Vec::new(),
    };
    // The tenants whose keys used a style (or end user), with requests.
    let tenants_of = |i: usize| -> BTreeSet<&str> {
        g.neighbours_of_kind(i, NodeKind::Key)
            .filter(|(_, e)| e.count >= 1)
            .filter_map(|(k, _)| g.tenant_of_key(k))
            .collect()
    };
    // Keys used enough from network `i` that are also used enough from elsewhere (their
    // owner), by tenant — a neighbour in the same /24 using its own key is not fronting.
    let fronted_by = |i: usize, carries: &dyn Fn(usize) -> bool| {
        let mut fronted: BTreeMap<&str, Vec<(usize, u64)>> = BTreeMap::new();
        for (k, e) in g.neighbours_of_kind(i, NodeKind::Key) {
            if e.count < cfg.min_key_requests || !carries(k) {
                continue;
            }
            let elsewhere = g
                .neighbours_of_kind(k, NodeKind::Network)
                .any(|(m, e2)| m != i && e2.count >= cfg.min_key_requests);
            if let (true, Some(t)) = (elsewhere, g.tenant_of_key(k)) {
                fronted.entry(t).or_default().push((k, e.count));
            }
        }
        fronted
    };
    let mut reasons_of: BTreeMap<usize, (f64, Vec<String>)> = BTreeMap::new();
    let network_facts = |nd: &crate::graph::Node, reasons: &mut Vec<String>| {
        if let Some(f) = nd.attrs.get("flags") {
            reasons.push(format!("network flagged {f}"));
        }
        if let Some(org) = nd.attrs.get("as_org") {
            reasons.push(format!(
                "AS{} {org} ({})",
                nd.attrs.get("asn").map_or("?", String::as_str),
                nd.attrs.get("country").map_or("?", String::as_str)
            ));
        }
    };

    // Providers fronting several tenants' keys.
    let mut providers: Fronted = BTreeMap::new();
    for (i, nd) in nodes.iter().enumerate() {
        if nd.kind != NodeKind::Network {
            continue;
        }
        // Styles served here that keys of several tenants carry: buyers' personas spread
        // over the keys a relay rotates through.
        let shared: BTreeSet<usize> = g
            .neighbours_of_kind(i, NodeKind::Style)
            .filter(|(s, e)| e.count >= cfg.min_key_requests && tenants_of(*s).len() >= 2)
            .map(|(s, _)| s)
            .collect();
        if shared.len() < cfg.provider_min_shared_styles {
            continue;
        }
        let fronted = fronted_by(i, &|k| {
            g.neighbours_of_kind(k, NodeKind::Style)
                .any(|(s, _)| shared.contains(&s))
        });
        if fronted.len() < cfg.provider_min_tenants {
            continue;
        }
        let shared_styles = shared.len();
        // End users this network served: on the keys it fronts, sent with a style it
        // serves (a key owner's own end users, whose ids may collide across tenants, are
        // not).
        let served: BTreeSet<usize> = g
            .neighbours_of_kind(i, NodeKind::Style)
            .map(|(s, _)| s)
            .collect();
        let users: BTreeSet<usize> = fronted
            .values()
            .flatten()
            .flat_map(|(k, _)| g.neighbours_of_kind(*k, NodeKind::EndUser))
            .map(|(u, _)| u)
            .filter(|&u| {
                g.neighbours_of_kind(u, NodeKind::Style)
                    .any(|(s, _)| served.contains(&s))
            })
            .collect();
        let (mut mixed, mut pinned) = (0usize, 0usize);
        for &u in &users {
            if tenants_of(u).len() >= 2 {
                mixed += 1;
            } else {
                pinned += 1;
            }
        }
        // An integrator serving the same templates to its clients keeps each client's end
        // users on that client's key; a relay rotating stolen keys mixes them.
        let mixed_share = mixed as f64 / users.len().max(1) as f64;
        if users.len() >= cfg.mixing_min_end_users && mixed_share < cfg.provider_min_mixed_share {
            continue;
        }
        providers.insert(i, fronted.values().flatten().map(|(k, _)| *k).collect());
        let keys: usize = fronted.values().map(Vec::len).sum();
        let requests: u64 = fronted.values().flatten().map(|(_, c)| c).sum();
        let mut reasons = vec![
            format!(
                "fronts {keys} keys of {} tenants ({}) that are also used from their owners' networks",
                fronted.len(),
                fronted.keys().copied().collect::<Vec<_>>().join(", ")
            ),
            format!(
                "{requests} requests on those keys from {} between {}",
                nd.label,
                span(nd.first, nd.last)
            ),
            format!("serves {shared_styles} prompt styles each seen on keys of several tenants"),
        ];
        if mixed > 0 {
            reasons.push(format!(
                "{mixed} of the {} end-user ids it served appear on keys of several tenants ({pinned} stay on one tenant's)",
                users.len()
            ));
        }
        network_facts(nd, &mut reasons);
        let confidence = (0.55
            + 0.1 * (fronted.len() as f64 - 1.0)
            + 0.05 * (shared_styles as f64 - 1.0)
            + if mixed > 0 { 0.05 } else { 0.0 })
        .min(0.99);
        reasons_of.insert(i, (confidence, reasons));
    }

    // Creators' tool families: seen on several of those providers, rarely elsewhere.
    let mut families: BTreeMap<(String, String), (u64, u64, BTreeSet<&str>)> = BTreeMap::new();
    for (i, nd) in nodes.iter().enumerate() {
        if nd.kind != NodeKind::Fingerprint {
            continue;
        }
        let (via, total, at) = through(g, i, &providers);
        let f = families.entry(family(nd)).or_default();
        f.0 += via;
        f.1 += total;
        f.2.extend(at);
    }
    families.retain(|_, (via, total, at)| {
        at.len() >= cfg.creator_min_providers
            && *total > 0
            && *via as f64 / *total as f64 >= cfg.creator_family_min_provider_share
    });
    // Buyers' styles already seen through those providers.
    let buyer_style = |s: usize| {
        let (via, total, _) = through(g, s, &providers);
        nodes[s].label.starts_with("sys:")
            && via >= cfg.user_min_requests
            && via as f64 / total.max(1) as f64 >= cfg.user_min_provider_share
    };

    // Relays fronting one tenant's key: a network with a fronted key whose traffic is
    // mostly a creator's tool, or that serves a buyer already seen at a provider.
    let mut single: Fronted = BTreeMap::new();
    for (i, nd) in nodes.iter().enumerate() {
        if nd.kind != NodeKind::Network || providers.contains_key(&i) {
            continue;
        }
        // Only keys it uses with a client their owners' own networks never served: a
        // hosting /24 a relay shares with a legitimate tenant's servers also carries that
        // tenant's keys, with the tenant's own clients.
        let fronted = fronted_by(i, &|k| foreign_client_on(g, k, i, &providers));
        if fronted.is_empty() {
            continue;
        }
        let mut tool = 0u64;
        let mut tools = BTreeSet::new();
        for (f, e) in g.neighbours_of_kind(i, NodeKind::Fingerprint) {
            if families.contains_key(&family(&nodes[f])) {
                tool += e.count;
                tools.insert(nodes[f].label.as_str());
            }
        }
        // Measured against the requests on the keys it fronts, not all the network's: a
        // relay in a hosting /24 it shares with a legitimate tenant's own servers is not
        // diluted by their traffic.
        let on_fronted: u64 = fronted.values().flatten().map(|(_, c)| c).sum();
        let tool_share = tool.min(on_fronted) as f64 / on_fronted.max(1) as f64;
        let buyers: Vec<&str> = g
            .neighbours_of_kind(i, NodeKind::Style)
            .filter(|(s, e)| e.count >= cfg.min_key_requests && buyer_style(*s))
            .map(|(s, _)| nodes[s].label.as_str())
            .collect();
        let by_tool = tool_share >= cfg.single_provider_min_creator_share;
        if !by_tool && buyers.is_empty() {
            continue;
        }
        let keys: Vec<&str> = fronted
            .values()
            .flatten()
            .map(|(k, _)| nodes[*k].label.as_str())
            .collect();
        let requests: u64 = fronted.values().flatten().map(|(_, c)| c).sum();
        let mut reasons = vec![
            format!(
                "uses key(s) {} of {} ({}) {requests} times, keys also used from their owners' networks",
                keys.join(", "),
                if fronted.len() == 1 {
                    "one tenant"
                } else {
                    "tenants"
                },
                fronted.keys().copied().collect::<Vec<_>>().join(", ")
            ),
            format!("active {}", span(nd.first, nd.last)),
        ];
        if by_tool {
            reasons.push(format!(
                "{:.0}% of its requests on those keys come from a tool family several providers run ({})",
                tool_share * 100.0,
                tools.iter().copied().collect::<Vec<_>>().join(", ")
            ));
        }
        if !buyers.is_empty() {
            reasons.push(format!(
                "serves {} prompt style(s) of buyers seen at other providers: {}",
                buyers.len(),
                buyers.join(", ")
            ));
        }
        network_facts(nd, &mut reasons);
        let confidence = (0.5
            + if by_tool { 0.2 * tool_share } else { 0.0 }
            + if buyers.is_empty() { 0.0 } else { 0.15 })
        .min(0.95);
        single.insert(i, fronted.values().flatten().map(|(k, _)| *k).collect());
        reasons_of.insert(i, (confidence, reasons));
    }
    providers.append(&mut single);
    for (i, (confidence, reasons)) in reasons_of {
        out.push(assign(i, Role::Provider, confidence, reasons));
    }

    // Victims: tenants whose keys a provider fronted.
    let mut victims: BTreeMap<&str, (usize, Vec<String>, u64)> = BTreeMap::new();
    for (&p, keys) in &providers {
        for (k, e) in g.neighbours_of_kind(p, NodeKind::Key) {
            if !keys.contains(&k) {
                continue;
            }
            let Some(t) = g.tenant_of_key(k) else {
                continue;
            };
            let Some(ti) = g.find(&format!("tenant:{t}")) else {
                continue;
            };
            // A relay brings its own clients. When every client the key shows on that
            // network is one the key also uses from its owner's other networks, the owner's
            // users merely share the address block (carrier NAT, a shared proxy): that is
            // no evidence the provider fronted the key.
            if !foreign_client_on(g, k, p, &providers) {
                continue;
            }
            let v = victims.entry(t).or_insert((ti, Vec::new(), 0));
            v.2 += e.count;
            v.1.push(format!(
                "key {} used {} times from provider network {} between {}",
                nodes[k].label,
                e.count,
                nodes[p].label,
                span(e.first, e.last)
            ));
            let own: u64 = g
                .neighbours_of_kind(k, NodeKind::Network)
                .filter(|(m, _)| !providers.contains_key(m))
                .map(|(_, e)| e.count)
                .sum();
            if own > 0 {
                v.1.push(format!(
                    "the same key made {own} requests from the tenant's own networks"
                ));
            }
            // Where it leaked from is personal data (a repository, a path): counted here,
            // shown in the graph.
            let exposed = g.neighbours_of_kind(k, NodeKind::Exposure).count();
            if exposed > 0 {
                v.1.push(format!(
                    "key {} was found exposed in {exposed} place(s) (leaked-key reports, stormwall scan)",
                    nodes[k].label
                ));
            }
        }
    }
    for (_, (ti, reasons, requests)) in victims {
        let confidence = (0.6 + 0.1 * (requests as f64).log10()).min(0.99);
        out.push(assign(ti, Role::Victim, confidence, reasons));
    }

    // Users: prompt styles served mostly through providers, on several tenants' keys (or
    // almost only through providers, as behind a single-key relay).
    for (i, nd) in nodes.iter().enumerate() {
        if nd.kind != NodeKind::Style || !nd.label.starts_with("sys:") {
            continue;
        }
        let (via, total, at) = through(g, i, &providers);
        if total < cfg.user_min_requests || at.is_empty() {
            continue;
        }
        let share = via as f64 / total as f64;
        let tenants = tenants_of(i);
        if share < cfg.user_min_provider_share
            || (tenants.len() < 2 && share < cfg.user_single_tenant_share)
        {
            continue;
        }
        let users = g.neighbours_of_kind(i, NodeKind::EndUser).count();
        let mut reasons = vec![
            format!(
                "{via} of {total} requests with system-prompt digest {} came through provider network(s) {}",
                nd.label,
                at.iter().copied().collect::<Vec<_>>().join(", ")
            ),
            format!("seen on keys of {} tenant(s)", tenants.len()),
        ];
        if users > 0 {
            reasons.push(format!("{users} end-user ids sent with it"));
        }
        reasons.push(format!("active {}", span(nd.first, nd.last)));
        out.push(assign(
            i,
            Role::User,
            (0.5 + 0.45 * share).min(0.99),
            reasons,
        ));
    }

    // Creators: each fingerprint of a creator's tool family used mostly through providers.
    for (i, nd) in nodes.iter().enumerate() {
        if nd.kind != NodeKind::Fingerprint {
            continue;
        }
        let Some((_, _, family_at)) = families.get(&family(nd)) else {
            continue;
        };
        let (via, total, at) = through(g, i, &providers);
        if at.is_empty() || total < cfg.min_key_requests {
            continue;
        }
        let share = via as f64 / total as f64;
        if share < cfg.creator_min_provider_share {
            continue;
        }
        let mut reasons = vec![
            format!(
                "client fingerprint {} (user agent family \"{}\", markers [{}]) is used by {} provider network(s): {}",
                nd.label,
                nd.attrs.get("ua_family").map_or("", String::as_str),
                nd.attrs.get("sdk").map_or("", String::as_str),
                at.len(),
                at.iter().copied().collect::<Vec<_>>().join(", ")
            ),
            format!(
                "{via} of its {total} requests ({:.0}%) came through providers",
                share * 100.0
            ),
            format!(
                "header shape: {}",
                nd.attrs.get("header_shape").map_or("", String::as_str)
            ),
        ];
        if at.len() < family_at.len() {
            reasons.push(format!(
                "a version of a tool family {} providers run",
                family_at.len()
            ));
        }
        let n = at.len().max(family_at.len());
        let confidence = (0.5 + 0.15 * (n as f64 - 1.0) + 0.3 * share).min(0.99);
        out.push(assign(i, Role::Creator, confidence, reasons));
    }

    // Creators by TLS stack: a ClientHello fingerprint used by several providers' relays
    // and mostly through them is a tool's signature, as a shared client fingerprint is.
    // A TLS stack is less specific than an HTTP fingerprint (one library underlies many
    // programs), so the same evidence weighs a little less.
    for (i, nd) in nodes.iter().enumerate() {
        if nd.kind != NodeKind::Tls {
            continue;
        }
        let (via, total, at) = through(g, i, &providers);
        if at.len() < cfg.creator_min_providers || total < cfg.min_key_requests {
            continue;
        }
        let share = via as f64 / total as f64;
        if share < cfg.creator_min_provider_share {
            continue;
        }
        let clients: BTreeSet<&str> = g
            .neighbours_of_kind(i, NodeKind::Fingerprint)
            .map(|(f, _)| nodes[f].label.as_str())
            .collect();
        let mut reasons = vec![
            format!(
                "TLS client fingerprint {} (the ClientHello of the tool's TLS stack) is used by {} provider network(s): {}",
                nd.label,
                at.len(),
                at.iter().copied().collect::<Vec<_>>().join(", ")
            ),
            format!(
                "{via} of its {total} requests ({:.0}%) came through providers",
                share * 100.0
            ),
        ];
        if !clients.is_empty() {
            reasons.push(format!(
                "sent by {} client fingerprint(s): {}",
                clients.len(),
                clients.iter().copied().collect::<Vec<_>>().join(", ")
            ));
        }
        reasons.push(format!("active {}", span(nd.first, nd.last)));
        let confidence = (0.4 + 0.15 * (at.len() as f64 - 1.0) + 0.3 * share).min(0.9);
        out.push(assign(i, Role::Creator, confidence, reasons));
    }
    (out, providers)
}

/// Whether key `k` used, on provider network `p`, a client fingerprint that none of the
/// key's own (non-provider) networks served.
fn foreign_client_on(g: &Graph, k: usize, p: usize, providers: &Fronted) -> bool {
    let own: BTreeSet<usize> = g
        .neighbours_of_kind(k, NodeKind::Network)
        .filter(|(m, _)| *m != p && !providers.contains_key(m))
        .flat_map(|(m, _)| {
            g.neighbours_of_kind(m, NodeKind::Fingerprint)
                .map(|(f, _)| f)
        })
        .collect();
    let on_p: BTreeSet<usize> = g
        .neighbours_of_kind(p, NodeKind::Fingerprint)
        .map(|(f, _)| f)
        .collect();
    g.neighbours_of_kind(k, NodeKind::Fingerprint)
        .any(|(f, _)| on_p.contains(&f) && !own.contains(&f))
}
