//! MISP event (the JSON `PyMISP`'s `MISPEvent.load` reads): attributes for relay networks,
//! tool user agents and TLS client fingerprints (`text`: MISP has no type for this digest), `ip-port` and `http-request` objects with first/last seen, and
//! tags — TLP and the MITRE ATLAS galaxy clusters.

use serde_json::{Value, json};

use std::collections::BTreeMap;

use super::{ATLAS, ExportOptions, as_of, assessment_roles, shown_reason, ts, uuid5};
use crate::graph::{Graph, NodeKind};
use crate::roles::{Assessment, Role};

/// Builds the event.
pub fn event(g: &Graph, a: &Assessment, opts: &ExportOptions) -> Value {
    let now = as_of(g);
    let date = format!(
        "{:04}-{:02}-{:02}",
        now.year(),
        u8::from(now.month()),
        now.day()
    );
    let stamp = now.unix_timestamp().to_string();
    let mut attributes = Vec::new();
    let mut objects = Vec::new();
    let attr = |kind: &str, category: &str, value: &str, comment: &str, ids: bool| {
        json!({"uuid": uuid5(&format!("misp-attribute|{kind}|{value}")).to_string(),
               "type": kind, "category": category, "value": value, "to_ids": ids,
               "comment": comment, "timestamp": stamp, "distribution": "5",
               "disable_correlation": false})
    };
    for r in assessment_roles(a, Role::Provider) {
        let Some(i) = g.find(&r.entity) else { continue };
        let nd = &g.nodes()[i];
        let why = r
            .reasons
            .iter()
            .map(|x| shown_reason(g, r, x, opts))
            .collect::<Vec<_>>()
            .join("; ");
        attributes.push(attr(
            "ip-src",
            "Network activity",
            &nd.label,
            &format!("relay network (provider): {why}"),
            true,
        ));
        objects.push(json!({
            "name": "ip-port", "meta-category": "network",
            "description": "Relay network fronting stolen keys",
            "uuid": uuid5(&format!("misp-object|{}", nd.id)).to_string(),
            "timestamp": stamp, "distribution": "5",
            "first_seen": ts(nd.first), "last_seen": ts(nd.last),
            "comment": format!("AS{} {} ({})",
                nd.attrs.get("asn").map_or("?", String::as_str),
                nd.attrs.get("as_org").map_or("?", String::as_str),
                nd.attrs.get("country").map_or("?", String::as_str)),
            "Attribute": [
                attr("ip-src", "Network activity", &nd.label, "relay network", true)
                    .as_object().cloned().map(|mut o| { o.insert("object_relation".into(), json!("ip-src")); Value::Object(o) }).unwrap_or_default(),
                attr("text", "Other", &why, "role reasons", false)
                    .as_object().cloned().map(|mut o| { o.insert("object_relation".into(), json!("text")); Value::Object(o) }).unwrap_or_default(),
            ]
        }));
    }
    // TLS ClientHello fingerprints, one attribute each: at provider relays and of
    // creators. MISP's fingerprint types name other digests (JA3 is an MD5 of other
    // fields; `jarm-fingerprint` is a server's), so this one is `text`, said in the
    // comment, and not for IDS matching.
    let mut tls: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in assessment_roles(a, Role::Provider) {
        let Some(i) = g.find(&r.entity) else { continue };
        for (t, e) in g.neighbours_of_kind(i, NodeKind::Tls) {
            tls.entry(g.nodes()[t].label.clone())
                .or_default()
                .push(format!(
                    "seen at relay network {} ({} requests)",
                    g.nodes()[i].label,
                    e.count
                ));
        }
    }
    for r in assessment_roles(a, Role::Creator) {
        let Some(i) = g.find(&r.entity) else { continue };
        let nd = &g.nodes()[i];
        if nd.kind != NodeKind::Tls {
            continue;
        }
        let why = r
            .reasons
            .iter()
            .map(|x| shown_reason(g, r, x, opts))
            .collect::<Vec<_>>()
            .join("; ");
        tls.entry(nd.label.clone())
            .or_default()
            .insert(0, format!("tool signature of a creator: {why}"));
    }
    for (value, notes) in &tls {
        attributes.push(attr(
            "text",
            "Network activity",
            value,
            &format!(
                "TLS client fingerprint (Stormwall's JA4-style digest of the ClientHello; not JA3 or JA4): {}",
                notes.join("; ")
            ),
            false,
        ));
    }
    for r in assessment_roles(a, Role::Creator) {
        let Some(i) = g.find(&r.entity) else { continue };
        let nd = &g.nodes()[i];
        let ua = nd.attrs.get("user_agent").cloned().unwrap_or_default();
        if ua.is_empty() {
            continue;
        }
        attributes.push(attr(
            "user-agent",
            "Network activity",
            &ua,
            &format!("tool of a creator: fingerprint {}", nd.label),
            true,
        ));
        let rel = |kind: &str, rel: &str, value: &str| {
            attr(kind, "Network activity", value, "", false)
                .as_object()
                .cloned()
                .map(|mut o| {
                    o.insert("object_relation".into(), json!(rel));
                    Value::Object(o)
                })
                .unwrap_or_default()
        };
        objects.push(json!({
            "name": "http-request", "meta-category": "network",
            "description": "Client fingerprint of a tool shared across relay providers",
            "uuid": uuid5(&format!("misp-object|{}", nd.id)).to_string(),
            "timestamp": stamp, "distribution": "5",
            "first_seen": ts(nd.first), "last_seen": ts(nd.last),
            "Attribute": [
                rel("user-agent", "user-agent", &ua),
                rel("text", "header", nd.attrs.get("header_shape").map_or("", String::as_str)),
            ]
        }));
    }
    let mut tags = vec![json!({"name": format!("tlp:{}", opts.tlp)})];
    let mut galaxy_clusters = Vec::new();
    for (ext, name, desc) in ATLAS {
        let value = format!("{name} - {ext}");
        tags.push(json!({"name": format!("misp-galaxy:mitre-atlas-attack-pattern=\"{value}\"")}));
        galaxy_clusters.push(json!({
            "type": "mitre-atlas-attack-pattern", "value": value, "description": desc,
            "tag_name": format!("misp-galaxy:mitre-atlas-attack-pattern=\"{value}\""),
            "meta": {"external_id": [ext]}
        }));
    }
    let roles = a.roles.len();
    let harm: f64 = a.clusters.iter().map(|c| c.harm.cost_usd()).sum();
    json!({"Event": {
        "uuid": uuid5(&format!("misp-event|{}|{}", opts.org_name, ts(now))).to_string(),
        "info": format!("LLMjacking network: {} clusters, {roles} roles, estimated cost {harm:.2} USD", a.clusters.len()),
        "date": date, "timestamp": stamp, "publish_timestamp": stamp,
        "threat_level_id": "2", "analysis": "1", "distribution": "0", "published": false,
        "Orgc": {"name": opts.org_name, "uuid": uuid5(&format!("org|{}", opts.org_name)).to_string()},
        "Attribute": attributes, "Object": objects, "Tag": tags,
        "Galaxy": [{"type": "mitre-atlas-attack-pattern", "name": "Attack Pattern",
                    "namespace": "mitre-atlas", "description": "MITRE ATLAS techniques",
                    "uuid": uuid5("galaxy|mitre-atlas-attack-pattern").to_string(),
                    "GalaxyCluster": galaxy_clusters}]
    }})
}
