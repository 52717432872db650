//! STIX 2.1 bundle: the reporting organisation (identity), one intrusion-set per cluster
//! with a provider, threat-actors with roles, tools (creators' fingerprints),
//! infrastructure (relay networks), indicators with STIX patterns, observed-data and
//! sightings with counts and first/last seen, MITRE ATLAS attack-patterns, relationships,
//! and TLP 2.0 marking definitions.

use serde_json::{Value, json};

use super::{ATLAS, ExportOptions, as_of, shown, shown_reason, ts, uuid5};
use crate::graph::{Graph, NodeKind};
use crate::roles::{Assessment, Role};

/// TLP 2.0 marking definitions (FIRST / OASIS): level, id.
pub const TLP2: [(&str, &str); 5] = [
    (
        "clear",
        "marking-definition--94868c89-83c2-464b-929b-a1a8aa3c8487",
    ),
    (
        "green",
        "marking-definition--bab4a63c-aed9-4cf5-a766-dfca5abac2bb",
    ),
    (
        "amber",
        "marking-definition--55d920b0-5e8b-4f79-9ee9-91f868d9b421",
    ),
    (
        "amber+strict",
        "marking-definition--939a9414-2ddd-4d32-a0cd-375ea402b003",
    ),
    (
        "red",
        "marking-definition--e828b379-4e03-4974-9ac4-e53a884c97c1",
    ),
];

/// The TLP 2.0 property extension's definition id.
pub const TLP2_EXTENSION: &str = "extension-definition--60a3c5c5-0d10-413e-aab3-9e08dde9e88d";

/// The STIX cyber-observable namespace (UUIDv5 ids of SCOs are derived in it).
const SCO_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x00ab_edb4_aa42_466c_9c01_fed2_3315_a9b7);

fn id(kind: &str, name: &str) -> String {
    format!("{kind}--{}", uuid5(&format!("{kind}|{name}")))
}

/// Escapes a string for a STIX pattern literal.
fn lit(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\'', "\\'")
}

/// Builds the bundle.
pub fn bundle(g: &Graph, a: &Assessment, opts: &ExportOptions) -> Result<Value, crate::Error> {
    let now = ts(as_of(g));
    let (level, marking) = TLP2
        .iter()
        .find(|(l, _)| *l == opts.tlp)
        .copied()
        .ok_or_else(|| crate::Error::State(format!("unknown TLP level {}", opts.tlp)))?;
    let identity = id("identity", &opts.org_name);
    let mut objects: Vec<Value> = Vec::new();
    objects.push(json!({
        "type": "marking-definition",
        "spec_version": "2.1",
        "id": marking,
        "created": "2022-10-01T00:00:00.000Z",
        "name": format!("TLP:{}", level.to_uppercase()),
        "extensions": {
            TLP2_EXTENSION: {"extension_type": "property-extension", "tlp_2_0": level}
        }
    }));
    let common = |v: &mut Value| {
        if let Some(o) = v.as_object_mut() {
            o.insert("spec_version".into(), json!("2.1"));
            o.insert("created".into(), json!(now));
            o.insert("modified".into(), json!(now));
            o.insert("created_by_ref".into(), json!(identity));
            o.insert("object_marking_refs".into(), json!([marking]));
        }
    };
    let mut push = |mut v: Value, objects: &mut Vec<Value>| {
        common(&mut v);
        objects.push(v);
    };
    push(
        json!({"type": "identity", "id": identity, "name": opts.org_name,
               "identity_class": "organization",
               "description": "Operator of the Stormwall gateway that recorded this activity."}),
        &mut objects,
    );
    let mut patterns = Vec::new();
    for (ext, name, desc) in ATLAS {
        let pid = id("attack-pattern", ext);
        push(
            json!({"type": "attack-pattern", "id": pid, "name": name, "description": desc,
                   "external_references": [{
                       "source_name": "mitre-atlas", "external_id": ext,
                       "url": format!("https://atlas.mitre.org/techniques/{ext}")}]}),
            &mut objects,
        );
        patterns.push(pid);
    }
    let mut rel = |src: &str, kind: &str, dst: &str, objects: &mut Vec<Value>| {
        let mut v = json!({"type": "relationship",
                           "id": id("relationship", &format!("{src}|{kind}|{dst}")),
                           "relationship_type": kind, "source_ref": src, "target_ref": dst});
        common(&mut v);
        objects.push(v);
    };

    for c in &a.clusters {
        let providers: Vec<_> = a
            .roles
            .iter()
            .filter(|r| r.cluster == c.id && r.role == Role::Provider)
            .collect();
        let iset = id("intrusion-set", &c.id);
        let h = &c.harm;
        push(
            json!({"type": "intrusion-set", "id": iset, "name": format!("Stormwall {}", c.id),
                   "description": format!(
                       "Cluster of {} entities ({} provider, {} creator, {} user, {} victim roles): {} requests through its relays, {} tokens, {} images, estimated cost {:.2} USD, {} content-policy hits.",
                       c.members.len(),
                       c.roles.get(&Role::Provider).unwrap_or(&0),
                       c.roles.get(&Role::Creator).unwrap_or(&0),
                       c.roles.get(&Role::User).unwrap_or(&0),
                       c.roles.get(&Role::Victim).unwrap_or(&0),
                       h.requests, h.input_tokens + h.output_tokens, h.images, h.cost_usd(),
                       h.policy_hit_total()),
                   "first_seen": ts(c.first), "last_seen": ts(c.last),
                   "goals": ["resell access to generative-AI services"],
                   "resource_level": "organization",
                   "primary_motivation": "personal-gain"}),
            &mut objects,
        );
        if !providers.is_empty() {
            for p in &patterns {
                rel(&iset, "uses", p, &mut objects);
            }
        }
    }

    let cluster_set = |cluster: &str| id("intrusion-set", cluster);
    let identity_ref = identity.clone();
    for r in &a.roles {
        let Some(i) = g.find(&r.entity) else { continue };
        let nd = &g.nodes()[i];
        let reasons: Vec<String> = r
            .reasons
            .iter()
            .map(|x| shown_reason(g, r, x, opts))
            .collect();
        let name = shown(nd.kind, &nd.label, opts);
        let in_set = a.cluster(&r.cluster).is_some();
        match r.role {
            Role::Victim => {
                let vid = id("identity", &format!("victim|{}", nd.id));
                push(
                    json!({"type": "identity", "id": vid, "name": format!("Victim {name}"),
                           "identity_class": "organization",
                           "description": reasons.join("; ")}),
                    &mut objects,
                );
                if in_set {
                    rel(&cluster_set(&r.cluster), "targets", &vid, &mut objects);
                }
            }
            Role::Provider | Role::Creator | Role::User => {
                let (roles, label) = match r.role {
                    Role::Provider => (vec!["infrastructure-operator"], "Provider"),
                    Role::Creator => (
                        vec!["malware-author", "infrastructure-architect"],
                        "Creator",
                    ),
                    _ => (vec!["agent"], "User"),
                };
                let actor = id("threat-actor", &nd.id);
                push(
                    json!({"type": "threat-actor", "id": actor,
                           "name": format!("{label} behind {name}"),
                           "threat_actor_types": [if r.role == Role::User { "criminal" } else { "crime-syndicate" }],
                           "roles": roles,
                           "description": reasons.join("; "),
                           "first_seen": ts(nd.first), "last_seen": ts(nd.last),
                           "confidence": (r.confidence * 100.0).round() as u32,
                           "x_stormwall_role": r.role.as_str(),
                           "x_stormwall_entity": if nd.kind.personal() { name.clone() } else { nd.id.clone() }}),
                    &mut objects,
                );
                if in_set {
                    rel(
                        &cluster_set(&r.cluster),
                        "attributed-to",
                        &actor,
                        &mut objects,
                    );
                }
                match r.role {
                    Role::Provider => provider(
                        g,
                        i,
                        &actor,
                        &identity_ref,
                        &mut push,
                        &mut rel,
                        &mut objects,
                    ),
                    Role::Creator if nd.kind == NodeKind::Tls => {
                        let tool = id("tool", &nd.id);
                        push(
                            json!({"type": "tool", "id": tool,
                                   "name": format!("TLS stack {}", nd.label),
                                   "tool_types": ["credential-exploitation"],
                                   "description": format!("A tool's TLS ClientHello fingerprint {} (Stormwall's JA4-style digest; not JA3 or JA4), shared across relay providers", nd.label)}),
                            &mut objects,
                        );
                        rel(&actor, "uses", &tool, &mut objects);
                        let ind = id("indicator", &nd.id);
                        push(
                            json!({"type": "indicator", "id": ind,
                                   "name": format!("TLS client fingerprint of tool {}", nd.label),
                                   "indicator_types": ["attribution"],
                                   "pattern": format!("[x-stormwall-tls-client:fingerprint = '{}']", lit(&nd.label)),
                                   "pattern_type": "stix", "valid_from": ts(nd.first)}),
                            &mut objects,
                        );
                        rel(&ind, "indicates", &tool, &mut objects);
                    }
                    Role::Creator => {
                        let tool = id("tool", &nd.id);
                        let ua = nd.attrs.get("user_agent").cloned().unwrap_or_default();
                        push(
                            json!({"type": "tool", "id": tool,
                                   "name": format!("{} ({})", nd.attrs.get("ua_family").map_or("unknown", String::as_str), nd.label),
                                   "tool_types": ["credential-exploitation"],
                                   "description": format!("Client fingerprint {}: header shape {}", nd.label,
                                       nd.attrs.get("header_shape").map_or("", String::as_str))}),
                            &mut objects,
                        );
                        rel(&actor, "uses", &tool, &mut objects);
                        if !ua.is_empty() {
                            let ind = id("indicator", &nd.id);
                            push(
                                json!({"type": "indicator", "id": ind,
                                       "name": format!("User agent of tool {}", nd.label),
                                       "indicator_types": ["attribution"],
                                       "pattern": format!("[network-traffic:extensions.'http-request-ext'.request_header.'User-Agent' = '{}']", lit(&ua)),
                                       "pattern_type": "stix", "valid_from": ts(nd.first)}),
                                &mut objects,
                            );
                            rel(&ind, "indicates", &tool, &mut objects);
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    let bundle_id = format!(
        "bundle--{}",
        uuid5(&format!("bundle|{now}|{}", objects.len()))
    );
    Ok(json!({"type": "bundle", "id": bundle_id, "objects": objects}))
}

/// A relay network: infrastructure, its address block (SCO), an indicator, the observed
/// data and its sighting.
fn provider(
    g: &Graph,
    i: usize,
    actor: &str,
    identity: &str,
    push: &mut impl FnMut(Value, &mut Vec<Value>),
    rel: &mut impl FnMut(&str, &str, &str, &mut Vec<Value>),
    objects: &mut Vec<Value>,
) {
    let nd = &g.nodes()[i];
    let infra = id("infrastructure", &nd.id);
    push(
        json!({"type": "infrastructure", "id": infra,
               "name": format!("Relay network {}", nd.label),
               "infrastructure_types": ["anonymization"],
               "description": format!("Reverse proxy fronting stolen keys; AS{} {} ({}){}",
                   nd.attrs.get("asn").map_or("?", String::as_str),
                   nd.attrs.get("as_org").map_or("?", String::as_str),
                   nd.attrs.get("country").map_or("?", String::as_str),
                   nd.attrs.get("flags").map(|f| format!(", flagged {f}")).unwrap_or_default()),
               "first_seen": ts(nd.first), "last_seen": ts(nd.last)}),
        objects,
    );
    rel(actor, "uses", &infra, objects);
    let v6 = nd.label.contains(':');
    let sco_type = if v6 { "ipv6-addr" } else { "ipv4-addr" };
    let sco_id = format!(
        "{sco_type}--{}",
        uuid::Uuid::new_v5(
            &SCO_NAMESPACE,
            json!({"value": nd.label}).to_string().as_bytes()
        )
    );
    objects.push(json!({"type": sco_type, "spec_version": "2.1", "id": sco_id, "value": nd.label}));
    rel(&infra, "consists-of", &sco_id, objects);
    let ind = id("indicator", &nd.id);
    push(
        json!({"type": "indicator", "id": ind, "name": format!("Relay network {}", nd.label),
               "indicator_types": ["malicious-activity"],
               "pattern": format!("[{sco_type}:value ISSUBSET '{}']", lit(&nd.label)),
               "pattern_type": "stix", "valid_from": ts(nd.first)}),
        objects,
    );
    rel(&ind, "indicates", &infra, objects);
    // The TLS stacks seen at the relay (when the gateway terminated TLS): STIX has no
    // standard object for a ClientHello fingerprint, and this one is not JA3 or JA4, so it
    // is a custom observable type.
    for (t, e) in g.neighbours_of_kind(i, NodeKind::Tls) {
        let tn = &g.nodes()[t];
        let tind = id("indicator", &format!("{}|{}", nd.id, tn.id));
        push(
            json!({"type": "indicator", "id": tind,
                   "name": format!("TLS client fingerprint {} at relay network {}", tn.label, nd.label),
                   "description": format!("JA4-style ClientHello fingerprint computed by Stormwall (not JA4; see its docs), {} requests from the relay network", e.count),
                   "indicator_types": ["attribution"],
                   "pattern": format!("[x-stormwall-tls-client:fingerprint = '{}']", lit(&tn.label)),
                   "pattern_type": "stix", "valid_from": ts(e.first)}),
            objects,
        );
        rel(&tind, "indicates", &infra, objects);
    }
    let requests: u64 = g
        .neighbours_of_kind(i, NodeKind::Key)
        .map(|(_, e)| e.count)
        .sum();
    let obs = id("observed-data", &nd.id);
    push(
        json!({"type": "observed-data", "id": obs,
               "first_observed": ts(nd.first), "last_observed": ts(nd.last),
               "number_observed": requests.clamp(1, 999_999_999),
               "object_refs": [sco_id]}),
        objects,
    );
    push(
        json!({"type": "sighting", "id": id("sighting", &nd.id),
               "sighting_of_ref": ind, "observed_data_refs": [obs],
               "where_sighted_refs": [identity],
               "count": requests.min(999_999_999),
               "first_seen": ts(nd.first), "last_seen": ts(nd.last)}),
        objects,
    );
}
