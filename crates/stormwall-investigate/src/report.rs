//! The HTML report: one self-contained file (inline CSS and SVG, no script, nothing
//! fetched) — the role graph coloured by role, a timeline of each role's activity, the
//! roles with their reasons, harm per cluster and per victim, and the alerts and actions
//! behind the victims' keys.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::export::{ExportOptions, shown, shown_reason, ts};
use crate::graph::{Graph, NodeKind};
use crate::harm::Harm;
use crate::roles::{Assessment, Role};

/// Escapes text for HTML.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            _ => o.push(c),
        }
    }
    o
}

/// A role's colour.
pub fn colour(r: Role) -> &'static str {
    match r {
        Role::Provider => "#d62728",
        Role::Creator => "#9467bd",
        Role::User => "#1f77b4",
        Role::Victim => "#ff7f0e",
    }
}

fn ring(r: Role) -> f64 {
    match r {
        Role::Creator => 70.0,
        Role::Provider => 170.0,
        Role::User => 270.0,
        Role::Victim => 340.0,
    }
}

/// Whether two role-bearing entities are linked (directly, or provider–victim through a key).
fn linked(g: &Graph, a: usize, b: usize) -> bool {
    if g.edge(a, b).is_some() {
        return true;
    }
    let (na, nb) = (&g.nodes()[a], &g.nodes()[b]);
    let (net, tenant) = match (na.kind, nb.kind) {
        (NodeKind::Network, NodeKind::Tenant) => (a, b),
        (NodeKind::Tenant, NodeKind::Network) => (b, a),
        _ => return false,
    };
    g.neighbours_of_kind(net, NodeKind::Key)
        .any(|(k, _)| g.edge(k, tenant).is_some())
}

fn harm_row(name: &str, h: &Harm) -> String {
    let hits: Vec<String> = h
        .policy_hits
        .iter()
        .map(|(k, v)| format!("{} {v}", esc(k)))
        .collect();
    format!(
        "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.1}</td><td>{}</td><td>{}</td></tr>",
        esc(name),
        h.requests,
        h.denied,
        h.input_tokens + h.output_tokens,
        h.images,
        h.cost_usd(),
        h.span_hours(),
        h.first.map(ts).unwrap_or_default(),
        hits.join(", ")
    )
}

const HARM_HEAD: &str = "<tr><th>who</th><th>requests</th><th>refused</th><th>tokens</th><th>images</th><th>est. cost (USD)</th><th>span (h)</th><th>first</th><th>content-policy hits</th></tr>";

/// Renders the report.
pub fn html(g: &Graph, a: &Assessment, opts: &ExportOptions, title: &str) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>\
body{{font:14px system-ui,sans-serif;margin:2em;color:#222}}table{{border-collapse:collapse;margin:1em 0}}\
td,th{{border:1px solid #ccc;padding:3px 6px;text-align:left;vertical-align:top}}th{{background:#f3f3f3}}\
.tag{{display:inline-block;padding:0 6px;border-radius:3px;color:#fff}}svg{{background:#fafafa;border:1px solid #ddd}}\
</style></head><body><h1>{}</h1><p>As of {} — {} events, {} entities, {} relations; {} clusters with roles, {} roles.</p>",
        esc(title),
        esc(title),
        ts(crate::export::as_of(g)),
        g.events(),
        g.nodes().len(),
        g.edges().len(),
        a.clusters.len(),
        a.roles.len()
    );
    // Graph.
    let mut placed: Vec<(usize, Role, f64, f64)> = Vec::new();
    for role in [Role::Creator, Role::Provider, Role::User, Role::Victim] {
        let mut list: Vec<_> = a.roles.iter().filter(|r| r.role == role).collect();
        list.sort_by(|x, y| (&x.cluster, &x.entity).cmp(&(&y.cluster, &y.entity)));
        let n = list.len().max(1) as f64;
        for (j, r) in list.iter().enumerate() {
            let Some(i) = g.find(&r.entity) else { continue };
            let angle = std::f64::consts::TAU * (j as f64 + 0.5) / n;
            placed.push((
                i,
                role,
                400.0 + ring(role) * angle.cos(),
                380.0 + ring(role) * angle.sin(),
            ));
        }
    }
    s.push_str("<h2>Network</h2><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"800\" height=\"760\" viewBox=\"0 0 800 760\" role=\"img\" aria-label=\"role graph\">");
    for (x, p) in placed.iter().enumerate() {
        for q in &placed[x + 1..] {
            if linked(g, p.0, q.0) {
                let _ = write!(
                    s,
                    "<line x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#999\" stroke-width=\"0.8\"/>",
                    p.2, p.3, q.2, q.3
                );
            }
        }
    }
    for (i, role, x, y) in &placed {
        let nd = &g.nodes()[*i];
        let name = shown(nd.kind, &nd.label, opts);
        let _ = write!(
            s,
            "<g><circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"9\" fill=\"{}\"><title>{} {}</title></circle><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"9\">{}</text></g>",
            colour(*role),
            role.as_str(),
            esc(&name),
            x + 11.0,
            y + 3.0,
            esc(&name.chars().take(24).collect::<String>())
        );
    }
    let mut lx = 10.0;
    for role in [Role::Provider, Role::Creator, Role::User, Role::Victim] {
        let _ = write!(
            s,
            "<circle cx=\"{lx}\" cy=\"745\" r=\"6\" fill=\"{}\"/><text x=\"{}\" y=\"749\" font-size=\"11\">{}</text>",
            colour(role),
            lx + 9.0,
            role.as_str()
        );
        lx += 90.0;
    }
    s.push_str("</svg>");

    // Timeline.
    let t0 = g.nodes().iter().map(|n| n.first).min();
    let t1 = g.nodes().iter().map(|n| n.last).max();
    if let (Some(t0), Some(t1)) = (t0, t1) {
        let span = (t1 - t0).as_seconds_f64().max(1.0);
        let h = 20 + 16 * a.roles.len();
        let _ = write!(
            s,
            "<h2>Timeline</h2><p>{} to {}</p><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"900\" height=\"{h}\" viewBox=\"0 0 900 {h}\">",
            ts(t0),
            ts(t1)
        );
        for (j, r) in a.roles.iter().enumerate() {
            let Some(nd) = g.find(&r.entity).and_then(|i| g.node(i)) else {
                continue;
            };
            let x0 = 250.0 + 640.0 * (nd.first - t0).as_seconds_f64() / span;
            let x1 = 250.0 + 640.0 * (nd.last - t0).as_seconds_f64() / span;
            let y = 10 + 16 * j;
            let _ = write!(
                s,
                "<text x=\"4\" y=\"{}\" font-size=\"10\">{} {}</text><rect x=\"{x0:.1}\" y=\"{y}\" width=\"{:.1}\" height=\"11\" fill=\"{}\"/>",
                y + 9,
                r.role.as_str(),
                esc(&shown(nd.kind, &nd.label, opts)
                    .chars()
                    .take(30)
                    .collect::<String>()),
                (x1 - x0).max(2.0),
                colour(r.role)
            );
        }
        s.push_str("</svg>");
    }

    // Roles.
    s.push_str("<h2>Roles</h2><table><tr><th>role</th><th>entity</th><th>confidence</th><th>cluster</th><th>reasons</th></tr>");
    for r in &a.roles {
        let Some(nd) = g.find(&r.entity).and_then(|i| g.node(i)) else {
            continue;
        };
        let reasons: Vec<String> = r
            .reasons
            .iter()
            .chain(r.notes.iter())
            .map(|x| format!("<li>{}</li>", esc(&shown_reason(g, r, x, opts))))
            .collect();
        let _ = write!(
            s,
            "<tr><td><span class=\"tag\" style=\"background:{}\">{}</span></td><td>{} {}</td><td>{:.2}{}</td><td>{}</td><td><ul>{}</ul></td></tr>",
            colour(r.role),
            r.role.as_str(),
            nd.kind.as_str(),
            esc(&shown(nd.kind, &nd.label, opts)),
            r.confidence,
            if r.status == crate::roles::Status::Confirmed {
                " (confirmed)"
            } else {
                ""
            },
            esc(&r.cluster),
            reasons.join("")
        );
    }
    s.push_str("</table>");

    // Harm.
    let _ = write!(s, "<h2>Harm per cluster</h2><table>{HARM_HEAD}");
    for c in &a.clusters {
        s.push_str(&harm_row(&c.id, &c.harm));
    }
    let _ = write!(s, "</table><h2>Harm per victim</h2><table>{HARM_HEAD}");
    for (t, h) in &a.victim_harm {
        s.push_str(&harm_row(&shown(NodeKind::Tenant, t, opts), h));
    }
    s.push_str("</table>");
    if !a.incident_harm.is_empty() {
        let _ = write!(s, "<h2>Harm per incident</h2><table>{HARM_HEAD}");
        for (id, h) in &a.incident_harm {
            s.push_str(&harm_row(&shown(NodeKind::Incident, id, opts), h));
        }
        s.push_str("</table>");
    }

    // Evidence: the victims' keys with their alerts and actions.
    s.push_str("<h2>Evidence: victims' keys</h2><table><tr><th>key</th><th>tenant</th><th>requests</th><th>networks</th><th>alerts by detector</th><th>actions</th></tr>");
    let victims: BTreeSet<&str> = a
        .roles
        .iter()
        .filter(|r| r.role == Role::Victim)
        .map(|r| r.label.as_str())
        .collect();
    for (i, nd) in g.nodes().iter().enumerate() {
        if nd.kind != NodeKind::Key || !g.tenant_of_key(i).is_some_and(|t| victims.contains(t)) {
            continue;
        }
        let fmt = |m: &std::collections::BTreeMap<String, u64>| {
            m.iter()
                .map(|(k, v)| format!("{} {v}", esc(k)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = write!(
            s,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&shown(NodeKind::Key, &nd.label, opts)),
            esc(&shown(
                NodeKind::Tenant,
                g.tenant_of_key(i).unwrap_or(""),
                opts
            )),
            nd.count,
            g.neighbours_of_kind(i, NodeKind::Network).count(),
            fmt(&nd.alerts),
            fmt(&nd.actions)
        );
    }
    s.push_str("</table></body></html>\n");
    s
}
