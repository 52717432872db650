//! Sharing: STIX 2.1 bundles ([`stix`]), MISP events ([`misp`]) and CSV ([`csv`]) of an
//! assessment. Personal data — victims' tenant ids, end-user ids, exposure locations and
//! analysts' names — is replaced by short digests unless [`ExportOptions::include_personal_data`]
//! is set (the CLI records that choice in the audit log). Output is deterministic for the
//! same graph: ids are UUIDv5 of what they name, times come from the data.

pub mod csv;
pub mod misp;
pub mod stix;

use sha2::Digest as _;
use time::OffsetDateTime;

use crate::graph::{Graph, NodeKind};
use crate::roles::{Assessment, Assignment};

/// What an export holds and how.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportOptions {
    /// The reporting organisation's name (the STIX identity, the MISP org).
    pub org_name: String,
    /// Keep victims' and end users' identifiers and exposure locations as they are.
    pub include_personal_data: bool,
    /// TLP 2.0 level: `clear`, `green`, `amber`, `amber+strict` or `red`.
    pub tlp: String,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions {
            org_name: "Stormwall operator".to_owned(),
            include_personal_data: false,
            tlp: "amber".to_owned(),
        }
    }
}

/// The namespace of every UUIDv5 an export makes.
pub const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x7c1f_5a2e_93b4_4d0a_8e61_2f5c_b0d4_a917);

/// A deterministic UUID for a name.
pub fn uuid5(name: &str) -> uuid::Uuid {
    uuid::Uuid::new_v5(&NAMESPACE, name.as_bytes())
}

/// How an entity is shown in an export: personal values become `<kind>-<digest>`.
pub fn shown(kind: NodeKind, label: &str, opts: &ExportOptions) -> String {
    if opts.include_personal_data || !is_personal(kind) {
        return label.to_owned();
    }
    let d = sha2::Sha256::digest(label.as_bytes());
    format!("{}-{}", kind.as_str(), crate::graph::hex(&d[..4]))
}

/// A reason line with personal values replaced by their digests.
pub fn shown_reason(g: &Graph, a: &Assignment, reason: &str, opts: &ExportOptions) -> String {
    if opts.include_personal_data {
        return reason.to_owned();
    }
    let mut out = reason.to_owned();
    // Victims' tenant ids and key ids appear in provider and victim reasons.
    let mut names: Vec<(String, String)> = Vec::new();
    if let Some(i) = g.find(&a.entity) {
        for (k, _) in g.neighbours(i) {
            let nd = &g.nodes()[k];
            if matches!(nd.kind, NodeKind::Key | NodeKind::Tenant) {
                names.push((nd.label.clone(), shown(nd.kind, &nd.label, opts)));
            }
            if nd.kind == NodeKind::Key
                && let Some(t) = g.tenant_of_key(k)
            {
                names.push((t.to_owned(), shown(NodeKind::Tenant, t, opts)));
            }
        }
    }
    if a.kind == NodeKind::Tenant {
        names.push((a.label.clone(), shown(NodeKind::Tenant, &a.label, opts)));
    }
    // Longest first, so a name inside another is not half-replaced.
    names.sort_by_key(|n| std::cmp::Reverse(n.0.len()));
    names.dedup();
    for (from, to) in names {
        if !from.is_empty() {
            out = out.replace(&from, &to);
        }
    }
    // Analysts' names: "confirmed by NAME at TIME".
    for verb in ["confirmed by ", "rejected by ", "assigned by "] {
        if let Some(p) = out.find(verb) {
            let start = p + verb.len();
            let end = out[start..].find(" at ").map_or(out.len(), |e| start + e);
            out.replace_range(start..end, "an analyst");
        }
    }
    out
}

/// The assessment with personal data replaced as in the exports (unless
/// `opts.include_personal_data`): personal entities' ids and labels (`tenant:tenant-1a2b3c4d`),
/// cluster members, the victim and incident harm tables' keys, reasons, and the analysts'
/// names in reasons and notes. What an analyst wrote in a note is kept as written.
pub fn redact(g: &Graph, a: &Assessment, opts: &ExportOptions) -> Assessment {
    if opts.include_personal_data {
        return a.clone();
    }
    let id = |entity: &str| -> String {
        match g.find(entity).map(|i| &g.nodes()[i]) {
            Some(nd) if is_personal(nd.kind) => {
                format!("{}:{}", nd.kind.as_str(), shown(nd.kind, &nd.label, opts))
            }
            Some(_) => entity.to_owned(),
            // Not in the graph (an override naming an entity it has not seen): redact by
            // its prefix.
            None => match entity.split_once(':') {
                Some((kind, label)) => match kind_of(kind).filter(|k| is_personal(*k)) {
                    Some(k) => format!("{kind}:{}", shown(k, label, opts)),
                    None => entity.to_owned(),
                },
                None => entity.to_owned(),
            },
        }
    };
    let assignment = |x: &Assignment| -> Assignment {
        let mut r = x.clone();
        r.reasons = x
            .reasons
            .iter()
            .map(|t| shown_reason(g, x, t, opts))
            .collect();
        r.notes = x.notes.iter().map(|n| redact_note(n)).collect();
        r.entity = id(&x.entity);
        r.label = shown(x.kind, &x.label, opts);
        r
    };
    let mut out = a.clone();
    out.roles = a.roles.iter().map(assignment).collect();
    out.rejected = a.rejected.iter().map(assignment).collect();
    for c in &mut out.clusters {
        c.members = c.members.iter().map(|m| id(m)).collect();
        c.members.sort();
    }
    out.victim_harm = a
        .victim_harm
        .iter()
        .map(|(t, h)| (shown(NodeKind::Tenant, t, opts), h.clone()))
        .collect();
    out.incident_harm = a
        .incident_harm
        .iter()
        .map(|(i, h)| (shown(NodeKind::Incident, i, opts), h.clone()))
        .collect();
    out.notes = a
        .notes
        .iter()
        .map(|(e, ns)| (id(e), ns.iter().map(|n| redact_note(n)).collect()))
        .collect();
    out
}

/// Kinds whose values are personal data (incident ids name their key).
fn is_personal(kind: NodeKind) -> bool {
    matches!(
        kind,
        NodeKind::Tenant
            | NodeKind::EndUser
            | NodeKind::Exposure
            | NodeKind::Key
            | NodeKind::Incident
    )
}

fn kind_of(prefix: &str) -> Option<NodeKind> {
    [
        NodeKind::Key,
        NodeKind::Tenant,
        NodeKind::Network,
        NodeKind::Fingerprint,
        NodeKind::Style,
        NodeKind::EndUser,
        NodeKind::Exposure,
        NodeKind::Incident,
        NodeKind::Tls,
        NodeKind::Control,
    ]
    .into_iter()
    .find(|k| k.as_str() == prefix)
}

/// A note ends with `(NAME at TIME)`: the analyst's name goes.
fn redact_note(note: &str) -> String {
    if let Some(open) = note.rfind(" (")
        && note.ends_with(')')
        && let Some(at) = note[open..].rfind(" at ")
    {
        return format!("{} (an analyst{}", &note[..open], &note[open + at..]);
    }
    note.to_owned()
}

/// The time the export is "as of": the latest last-seen of the graph (deterministic).
pub fn as_of(g: &Graph) -> OffsetDateTime {
    g.nodes()
        .iter()
        .map(|n| n.last)
        .max()
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// STIX/MISP timestamp: RFC 3339, UTC, milliseconds.
pub fn ts(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// The MITRE ATLAS techniques an LLMjacking network uses: id and name.
pub const ATLAS: [(&str, &str, &str); 5] = [
    (
        "AML.T0040",
        "AI Model Inference API Access",
        "Drives the model through its inference API with another party's credentials.",
    ),
    (
        "AML.T0034",
        "Cost Harvesting",
        "Runs up usage on the victims' accounts: the victims pay for the abuse.",
    ),
    (
        "AML.T0054",
        "LLM Jailbreak",
        "Prompts built to get around the model's and the gateway's content policy.",
    ),
    (
        "AML.T0055",
        "Unsecured Credentials",
        "Keys found exposed (code, paste sites, front-end bundles) and taken.",
    ),
    (
        "AML.T0008.005",
        "AI Service Proxies",
        "Reverse proxies that front stolen keys and resell access to many buyers.",
    ),
];

pub(crate) fn assessment_roles<'a>(
    a: &'a Assessment,
    role: crate::Role,
) -> impl Iterator<Item = &'a Assignment> + 'a {
    a.roles.iter().filter(move |r| r.role == role)
}
