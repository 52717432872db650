//! CSV for spreadsheets: one row per role, with its cluster's harm and the TLS client
//! fingerprints seen with the entity (space-separated, last column).

use super::{ExportOptions, shown, shown_reason, ts};
use crate::graph::{Graph, Node, NodeKind};
use crate::roles::Assessment;

/// The header row.
pub const HEADER: &str = "role,entity_kind,entity,confidence,status,cluster,first_seen,last_seen,requests,tokens,images,cost_usd,policy_hits,reasons,tls_fingerprints";

fn field(s: &str) -> String {
    // Cells a spreadsheet would run as a formula start with a quote.
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_owned()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// The TLS client fingerprints of an entity: its own value for one, those seen with a
/// network or a client fingerprint, none for the other kinds.
fn tls_of(g: &Graph, nd: &Node) -> Vec<String> {
    match nd.kind {
        NodeKind::Tls => vec![nd.label.clone()],
        NodeKind::Network | NodeKind::Fingerprint => {
            let mut v: Vec<String> = g
                .find(&nd.id)
                .into_iter()
                .flat_map(|i| g.neighbours_of_kind(i, NodeKind::Tls))
                .map(|(t, _)| g.nodes()[t].label.clone())
                .collect();
            v.sort();
            v
        }
        _ => Vec::new(),
    }
}

/// The CSV text.
pub fn csv(g: &Graph, a: &Assessment, opts: &ExportOptions) -> String {
    let mut out = String::from(HEADER);
    out.push('\n');
    for r in &a.roles {
        let Some(nd) = g.find(&r.entity).and_then(|i| g.node(i)) else {
            continue;
        };
        let harm = a
            .cluster(&r.cluster)
            .map(|c| c.harm.clone())
            .unwrap_or_default();
        let reasons: Vec<String> = r
            .reasons
            .iter()
            .map(|x| shown_reason(g, r, x, opts))
            .collect();
        let row = [
            r.role.as_str().to_owned(),
            nd.kind.as_str().to_owned(),
            shown(nd.kind, &nd.label, opts),
            format!("{:.2}", r.confidence),
            format!("{:?}", r.status).to_lowercase(),
            r.cluster.clone(),
            ts(nd.first),
            ts(nd.last),
            harm.requests.to_string(),
            (harm.input_tokens + harm.output_tokens).to_string(),
            harm.images.to_string(),
            format!("{:.4}", harm.cost_usd()),
            harm.policy_hit_total().to_string(),
            reasons.join(" | "),
            tls_of(g, nd).join(" "),
        ];
        out.push_str(&row.iter().map(|c| field(c)).collect::<Vec<_>>().join(","));
        out.push('\n');
    }
    out
}
