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
