//! Clusters and roles: Louvain communities over the entity graph, then role inference —
//! *provider* (a relay network that fronts keys of several tenants and serves prompt
//! styles seen across tenants), *creator* (a client fingerprint shared by providers and
//! rarely seen elsewhere), *user* (a prompt style served mostly through providers, across
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

    /// The node kind the role is inferred for.
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
    }
}

fn span(first: OffsetDateTime, last: OffsetDateTime) -> String {
    format!(
        "{} to {}",
        stormwall_types::timefmt::format(first),
        stormwall_types::timefmt::format(last)
    )
}

/// The inference proper, on the graph alone.
/// Keys each inferred provider network fronts.
type Fronted = BTreeMap<usize, BTreeSet<usize>>;

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

    // Providers.
    let mut providers: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
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
        // Keys fronted: used from here enough, carrying those styles, and also used from
        // elsewhere (their owner) — a neighbour in the same /24 using its own key is not.
        let mut fronted: BTreeMap<&str, Vec<(usize, u64)>> = BTreeMap::new();
        for (k, e) in g.neighbours_of_kind(i, NodeKind::Key) {
            if e.count < cfg.min_key_requests {
                continue;
            }
            let carries = g
                .neighbours_of_kind(k, NodeKind::Style)
                .any(|(s, _)| shared.contains(&s));
            let elsewhere = g
                .neighbours_of_kind(k, NodeKind::Network)
                .any(|(m, e2)| m != i && e2.count >= cfg.min_key_requests);
            if let (true, true, Some(t)) = (carries, elsewhere, g.tenant_of_key(k)) {
                fronted.entry(t).or_default().push((k, e.count));
            }
        }
        if fronted.len() < cfg.provider_min_tenants {
            continue;
        }
        let shared_styles = shared.len();
        let shared_users = fronted
            .values()
            .flatten()
            .flat_map(|(k, _)| g.neighbours_of_kind(*k, NodeKind::EndUser))
            .map(|(u, _)| u)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .filter(|&u| tenants_of(u).len() >= 2)
            .count();
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
        if shared_users > 0 {
            reasons.push(format!(
                "{shared_users} end-user ids appear on keys of several tenants"
            ));
        }
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
        let confidence = (0.55
            + 0.1 * (fronted.len() as f64 - 1.0)
            + 0.05 * (shared_styles as f64 - 1.0)
            + if shared_users > 0 { 0.05 } else { 0.0 })
        .min(0.99);
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
        }
    }
    for (_, (ti, reasons, requests)) in victims {
        let confidence = (0.6 + 0.1 * (requests as f64).log10()).min(0.99);
        out.push(assign(ti, Role::Victim, confidence, reasons));
    }

    // Users: prompt styles served mostly through providers, on several tenants' keys.
    for (i, nd) in nodes.iter().enumerate() {
        if nd.kind != NodeKind::Style || !nd.label.starts_with("sys:") {
            continue;
        }
        let (mut via, mut total) = (0u64, 0u64);
        let mut through = BTreeSet::new();
        for (m, e) in g.neighbours_of_kind(i, NodeKind::Network) {
            total += e.count;
            if providers.contains_key(&m) {
                via += e.count;
                through.insert(nodes[m].label.as_str());
            }
        }
        if total < cfg.user_min_requests || through.is_empty() {
            continue;
        }
        let share = via as f64 / total as f64;
        let tenants = tenants_of(i);
        if share < cfg.user_min_provider_share || tenants.len() < 2 {
            continue;
        }
        let users = g.neighbours_of_kind(i, NodeKind::EndUser).count();
        let mut reasons = vec![
            format!(
                "{via} of {total} requests with system-prompt digest {} came through provider network(s) {}",
                nd.label,
                through.iter().copied().collect::<Vec<_>>().join(", ")
            ),
            format!("seen on keys of {} tenants", tenants.len()),
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

    // Creators: fingerprints shared by providers and rare elsewhere.
    for (i, nd) in nodes.iter().enumerate() {
        if nd.kind != NodeKind::Fingerprint {
            continue;
        }
        let (mut via, mut total) = (0u64, 0u64);
        let mut at = BTreeSet::new();
        for (m, e) in g.neighbours_of_kind(i, NodeKind::Network) {
            total += e.count;
            if providers.contains_key(&m) {
                via += e.count;
                at.insert(nodes[m].label.as_str());
            }
        }
        if at.len() < cfg.creator_min_providers || total == 0 {
            continue;
        }
        let share = via as f64 / total as f64;
        if share < cfg.creator_min_provider_share {
            continue;
        }
        let reasons = vec![
            format!(
                "client fingerprint {} (user agent family \"{}\", markers [{}]) is used by {} provider networks: {}",
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
        let confidence = (0.5 + 0.15 * (at.len() as f64 - 1.0) + 0.3 * share).min(0.99);
        out.push(assign(i, Role::Creator, confidence, reasons));
    }
    (out, providers)
}
