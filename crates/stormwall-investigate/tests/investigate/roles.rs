use stormwall_investigate::{Override, OverrideOp, Overrides, Role, RoleConfig, assess};

use crate::fixture_graph;

fn at() -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(1_742_000_000).unwrap()
}

#[test]
fn the_fixture_network_gets_its_roles_with_reasons() {
    let g = fixture_graph();
    let a = assess(&g, &RoleConfig::default(), &Overrides::default());
    let ids = |r: Role| -> Vec<&str> {
        a.roles
            .iter()
            .filter(|x| x.role == r)
            .map(|x| x.entity.as_str())
            .collect()
    };
    assert_eq!(
        ids(Role::Provider),
        ["network:198.51.100.0/24", "network:203.0.113.0/24"]
    );
    assert_eq!(
        ids(Role::Victim),
        ["tenant:acme", "tenant:globex", "tenant:initech"]
    );
    assert_eq!(ids(Role::User).len(), 4);
    assert_eq!(ids(Role::Creator).len(), 1);
    assert!(
        a.roles
            .iter()
            .all(|r| !r.reasons.is_empty() && r.confidence > 0.5)
    );
    assert!(!a.roles.iter().any(|r| r.entity.contains("hooli")));
    // Harm: every relayed request is counted once per victim.
    let relayed: u64 = a.victim_harm.values().map(|h| h.requests).sum();
    assert_eq!(relayed, 160);
    assert!(a.victim_harm["globex"].policy_hits["real_person_sexual"] > 0);
}

#[test]
fn overrides_survive_a_rebuild() {
    let g = fixture_graph();
    let o = |op| Override {
        at: at(),
        analyst: "analyst-1".into(),
        op,
    };
    let overrides = Overrides {
        entries: vec![
            o(OverrideOp::Reject {
                entity: "tenant:initech".into(),
                role: Role::Victim,
            }),
            o(OverrideOp::Confirm {
                entity: "tenant:hooli".into(),
                role: Role::Victim,
            }),
            o(OverrideOp::Annotate {
                entity: "network:203.0.113.0/24".into(),
                note: "hosting provider notified".into(),
            }),
            o(OverrideOp::Merge {
                entity: "network:203.0.113.0/24".into(),
                with: "network:198.51.100.0/24".into(),
            }),
            o(OverrideOp::Split {
                entity: "tenant:acme".into(),
            }),
        ],
    };
    // The decisions file round-trips.
    let text = serde_json::to_string(&overrides).unwrap();
    let overrides = Overrides::from_json(&text).unwrap();
    for _ in 0..2 {
        let g2 = stormwall_investigate::Graph::from_state(g.state().clone(), Default::default())
            .unwrap();
        let a = assess(&g2, &RoleConfig::default(), &overrides);
        assert!(a.role_of("tenant:initech").is_empty());
        assert_eq!(a.rejected.len(), 1);
        let hooli = a.role_of("tenant:hooli");
        assert_eq!(hooli.len(), 1);
        assert_eq!(
            hooli[0].status,
            stormwall_investigate::roles::Status::Confirmed
        );
        let p = a.role_of("network:203.0.113.0/24");
        assert!(p[0].notes[0].contains("hosting provider notified"));
        let q = a.role_of("network:198.51.100.0/24");
        assert_eq!(p[0].cluster, q[0].cluster, "merged");
        let acme = a.role_of("tenant:acme");
        assert_ne!(acme[0].cluster, p[0].cluster, "split");
    }
}

#[test]
fn decisions_in_the_audit_log_are_read_once_and_in_order() {
    use stormwall_investigate::overrides::from_audit;
    use stormwall_store::AuditEntry;
    let entry = |secs: i64, actor: &str, action: &str, detail: serde_json::Value| AuditEntry {
        at: at() + time::Duration::seconds(secs),
        actor: actor.into(),
        action: action.into(),
        target: None,
        tenant: None,
        detail,
    };
    let split = serde_json::json!({"op": "split", "entity": "tenant:acme", "via": "admin_api"});
    let note = serde_json::json!({"op": "annotate", "entity": "tenant:acme", "note": "n"});
    let log = [
        entry(1, "analyst:ana", "investigate.split", split.clone()),
        // Not decisions: another actor, another action, a detail that does not match it.
        entry(2, "admin", "investigate.split", split.clone()),
        entry(3, "analyst:ana", "key.suspend", split.clone()),
        entry(4, "analyst:ana", "investigate.merge", split.clone()),
        entry(5, "analyst:ana", "investigate.annotate", note.clone()),
    ];
    assert!(from_audit(&log[1]).is_none());
    assert!(from_audit(&log[2]).is_none());
    assert!(from_audit(&log[3]).is_none());
    // The file already holds the annotation (the CLI writes both); the split is older.
    let mut o = Overrides {
        entries: vec![Override {
            at: at() + time::Duration::seconds(5),
            analyst: "ana".into(),
            op: OverrideOp::Annotate {
                entity: "tenant:acme".into(),
                note: "n".into(),
            },
        }],
    };
    o.merge_audit(&log);
    assert_eq!(o.entries.len(), 2, "{o:?}");
    assert_eq!(
        o.entries[0].op,
        OverrideOp::Split {
            entity: "tenant:acme".into()
        }
    );
    assert_eq!(o.entries[0].analyst, "ana");
}

/// The fixture with TLS fingerprints: the relays' tool on one TLS stack (one relay address
/// on a stack of its own), the owners' SDK on a common one.
fn tls_graph() -> stormwall_investigate::Graph {
    let mut g = stormwall_investigate::Graph::new(Default::default());
    for mut e in crate::fixture() {
        let ip = e.source_ip.to_string();
        let tls = if ip == "198.51.100.21" {
            "t13d1312h2_onerelayonly_000000"
        } else if ip.starts_with("203.0.113.") || ip.starts_with("198.51.100.") {
            "t13d1516h2_relaykitstack_8daaf6"
        } else {
            "t13d1715h2_commonopenssl_5b57614c"
        };
        e.tls_fingerprint = Some(tls.to_owned());
        g.add_event(&e, &[]);
    }
    g
}

#[test]
fn a_tls_fingerprint_shared_by_providers_relays_is_a_creator_signature() {
    let g = tls_graph();
    let a = assess(&g, &RoleConfig::default(), &Overrides::default());
    let creators: Vec<&str> = a
        .roles
        .iter()
        .filter(|r| r.role == Role::Creator)
        .map(|r| r.entity.as_str())
        .collect();
    assert!(
        creators.contains(&"tls:t13d1516h2_relaykitstack_8daaf6"),
        "{creators:?}"
    );
    // The HTTP fingerprint keeps its role beside it.
    assert!(creators.iter().any(|c| c.starts_with("fingerprint:")));
    // Seen at one provider only, or on the owners' own networks: no role.
    assert!(!a.roles.iter().any(|r| r.entity.contains("onerelayonly")));
    assert!(!a.roles.iter().any(|r| r.entity.contains("commonopenssl")));
    let r = a
        .roles
        .iter()
        .find(|r| r.entity == "tls:t13d1516h2_relaykitstack_8daaf6")
        .unwrap();
    assert_eq!(r.kind, stormwall_investigate::NodeKind::Tls);
    let why = r.reasons.join("\n");
    assert!(why.contains("TLS client fingerprint t13d1516h2_relaykitstack_8daaf6"));
    assert!(why.contains("used by 2 provider network(s): 198.51.100.0/24, 203.0.113.0/24"));
    assert!(why.contains("came through providers"));
    assert!(why.contains("sent by 1 client fingerprint(s)"));
    assert!(
        r.confidence > 0.5 && r.confidence <= 0.9,
        "{}",
        r.confidence
    );
}

#[test]
fn tls_fingerprints_reach_the_misp_csv_and_stix_exports() {
    use stormwall_investigate::export::{ExportOptions, csv, misp, stix};
    let g = tls_graph();
    let a = assess(&g, &RoleConfig::default(), &Overrides::default());
    let opts = ExportOptions::default();

    let e = misp::event(&g, &a, &opts);
    let attrs = e["Event"]["Attribute"].as_array().unwrap();
    let tls: Vec<&serde_json::Value> = attrs
        .iter()
        .filter(|x| x["value"] == "t13d1516h2_relaykitstack_8daaf6")
        .collect();
    assert_eq!(tls.len(), 1, "one attribute per fingerprint");
    assert_eq!(tls[0]["type"], "text");
    assert_eq!(tls[0]["to_ids"], false);
    let comment = tls[0]["comment"].as_str().unwrap();
    assert!(comment.contains("not JA3 or JA4"), "{comment}");
    assert!(comment.contains("tool signature of a creator"), "{comment}");
    assert!(
        comment.contains("seen at relay network 203.0.113.0/24"),
        "{comment}"
    );
    // Seen at a relay though not a creator's: there too.
    assert!(
        attrs
            .iter()
            .any(|x| x["value"] == "t13d1312h2_onerelayonly_000000")
    );
    // The owners' common stack is not shared.
    assert!(!e.to_string().contains("commonopenssl"));
    // No MISP type claims it is JA3.
    assert!(!e.to_string().contains("ja3-fingerprint-md5"));

    let c = csv::csv(&g, &a, &opts);
    assert!(csv::HEADER.ends_with(",tls_fingerprints"));
    let rows: Vec<&str> = c.lines().collect();
    assert!(
        rows.iter()
            .any(|l| l.starts_with("creator,tls,t13d1516h2_relaykitstack_8daaf6,"))
    );
    let relay = rows
        .iter()
        .find(|l| l.starts_with("provider,network,198.51.100.0/24,"))
        .unwrap();
    assert!(
        relay.ends_with(",t13d1312h2_onerelayonly_000000 t13d1516h2_relaykitstack_8daaf6"),
        "{relay}"
    );

    let b = stix::bundle(&g, &a, &opts).unwrap().to_string();
    assert!(b.contains("TLS stack t13d1516h2_relaykitstack_8daaf6"));
    assert!(b.contains("[x-stormwall-tls-client:fingerprint = 't13d1516h2_relaykitstack_8daaf6']"));
}
