use stormwall_investigate::graph::{Graph, GraphState, NodeKind, fingerprint, ua_family};

use crate::{fixture, fixture_graph};

#[test]
fn nodes_of_every_kind_and_edges_with_counts_and_times() {
    let g = fixture_graph();
    let relay = g.find("network:203.0.113.0/24").unwrap();
    let acme_key = g.find("key:acmekey00001").unwrap();
    let e = g.edge(relay, acme_key).unwrap();
    assert_eq!(e.count, 40);
    assert!(e.first < e.last);
    let h = e.harm.as_ref().unwrap();
    assert_eq!(h.requests, 40);
    assert!(
        h.policy_hits
            .get("real_person_sexual")
            .copied()
            .unwrap_or(0)
            > 0
    );
    for kind in [
        NodeKind::Key,
        NodeKind::Tenant,
        NodeKind::Network,
        NodeKind::Fingerprint,
        NodeKind::Style,
        NodeKind::EndUser,
    ] {
        assert!(g.nodes().iter().any(|n| n.kind == kind), "{kind:?}");
    }
    let net = &g.nodes()[relay];
    assert_eq!(net.attrs.get("asn").map(String::as_str), Some("64500"));
    // No node id holds more than a digest of a prompt.
    assert!(g.nodes().iter().all(|n| !n.id.contains("You are")));
}

#[test]
fn adding_events_in_parts_through_a_saved_state_equals_one_pass() {
    let events = fixture();
    let whole = fixture_graph();
    let (a, b) = events.split_at(events.len() / 2);
    let mut g = Graph::new(Default::default());
    for e in a {
        g.add_event(e, &[]);
    }
    let saved = serde_json::to_string(g.state()).unwrap();
    let state: GraphState = serde_json::from_str(&saved).unwrap();
    let mut g = Graph::from_state(state, Default::default()).unwrap();
    assert_eq!(g.cursor(), Some(a.last().unwrap().id.as_str()));
    for e in b {
        g.add_event(e, &[]);
    }
    assert_eq!(g.state(), whole.state());
}

#[test]
fn a_broken_saved_state_is_an_error_not_a_panic() {
    let mut s = fixture_graph().state().clone();
    s.edges[0].b = 10_000;
    assert!(Graph::from_state(s, Default::default()).is_err());
    let mut s = fixture_graph().state().clone();
    let dup = s.nodes[0].clone();
    s.nodes.push(dup);
    assert!(Graph::from_state(s, Default::default()).is_err());
}

#[test]
fn fingerprints_ignore_versions_but_not_header_shape() {
    assert_eq!(ua_family("OpenAI/Python 1.45.0"), "OpenAI/Python");
    assert_eq!(ua_family("okhttp/4.9.0"), "okhttp");
    assert_eq!(
        ua_family("ExampleApp/3 CFNetwork/1490.0.4 Darwin/23.2.0"),
        "ExampleApp CFNetwork Darwin"
    );
    let h: Vec<String> = vec!["host".into(), "authorization".into()];
    let a = fingerprint(Some("relaykit/2.1.0"), &h, true, false);
    let b = fingerprint(Some("relaykit/2.9.3"), &h, true, false);
    assert_eq!(a.id, b.id);
    let c = fingerprint(Some("relaykit/2.1.0"), &h[..1], true, false);
    assert_ne!(a.id, c.id);
    assert_eq!(a.sdk, vec!["empty-origin".to_owned()]);
}

#[test]
fn alerts_and_actions_are_added_once_and_leak_reports_become_exposures() {
    use stormwall_types::{Alert, AlertSubject, DetectorId, KeyId, Severity, Stage};
    let mut g = fixture_graph();
    let alert = Alert {
        id: "rep-E1-acmekey00001".into(),
        detector: DetectorId::E1,
        stage: Stage::Exposure,
        severity: Severity::Critical,
        at: time::OffsetDateTime::from_unix_timestamp(1_741_000_000).unwrap(),
        key_id: Some(KeyId::new("acmekey00001").unwrap()),
        tenant: Some("acme".into()),
        source_ip: None,
        features: Vec::new(),
        subjects: vec![AlertSubject {
            kind: "url".into(),
            value: "https://example.invalid/acme/app/blob/main/.env".into(),
        }],
        explanation: "reported".into(),
        evidence: Vec::new(),
        score: 100.0,
    };
    g.add_alert(&alert);
    g.add_alert(&alert);
    let k = g.find("key:acmekey00001").unwrap();
    assert_eq!(g.nodes()[k].alerts.get("E1"), Some(&1));
    assert_eq!(g.nodes()[k].count, 80);
    let x = g
        .find("exposure:https://example.invalid/acme/app/blob/main/.env")
        .unwrap();
    assert!(g.edge(k, x).is_some());
}

fn stored_incident(
    id: &str,
    key: &str,
    tenant: &str,
    opened: time::OffsetDateTime,
    updated: time::OffsetDateTime,
    status: stormwall_types::IncidentStatus,
) -> stormwall_store::StoredIncident {
    stormwall_store::StoredIncident {
        incident: stormwall_types::Incident {
            id: id.to_owned(),
            subject: stormwall_types::IncidentSubject::Key(key.to_owned()),
            tenant: Some(tenant.to_owned()),
            opened_at: opened,
            updated_at: updated,
            severity: stormwall_types::Severity::High,
            stages: Vec::new(),
            risk_score: 7.5,
            reasons: Vec::new(),
            timeline: Vec::new(),
            evidence: Vec::new(),
            action: None,
            status,
            revision: 1,
        },
        alert_ids: vec!["a1".into(), "a2".into()],
        note: None,
        created_at: opened,
        changed_at: updated,
    }
}

#[test]
fn stored_incidents_are_nodes_that_count_their_subjects_harm_in_their_window() {
    use stormwall_types::IncidentStatus;
    let events = fixture();
    let (t0, mid, end) = (
        events[0].timestamp,
        events[events.len() / 2].timestamp,
        events[events.len() - 1].timestamp,
    );
    let open = stored_incident(
        "inc-acme",
        "acmekey00001",
        "acme",
        mid,
        mid,
        IncidentStatus::Open,
    );
    let closed = stored_incident(
        "inc-globex",
        "globexkey001",
        "globex",
        t0,
        mid,
        IncidentStatus::Closed,
    );
    let on = |key: &str, from, to| {
        events
            .iter()
            .filter(|e| e.key_id.as_ref().is_some_and(|k| k.as_str() == key))
            .filter(|e| e.timestamp >= from && e.timestamp <= to)
            .count() as u64
    };
    // In one pass, and in two through a saved state: the same harm.
    let mut whole = Graph::new(Default::default());
    whole.add_incident(&open);
    whole.add_incident(&closed);
    let mut parts = whole.clone();
    for e in &events {
        whole.add_event(e, &[]);
    }
    let (a, b) = events.split_at(events.len() / 3);
    for e in a {
        parts.add_event(e, &[]);
    }
    let state: GraphState =
        serde_json::from_str(&serde_json::to_string(parts.state()).unwrap()).unwrap();
    let mut parts = Graph::from_state(state, Default::default()).unwrap();
    // Re-adding a stored incident (a later revision) neither duplicates it nor its edges.
    parts.add_incident(&open);
    for e in b {
        parts.add_event(e, &[]);
    }
    assert_eq!(whole.state(), parts.state());
    let harm = whole.incident_harm();
    // Open: every event on its key from its opening on; closed: only within its window.
    assert_eq!(harm["inc-acme"].requests, on("acmekey00001", mid, end));
    assert!(harm["inc-acme"].requests > 0);
    assert_eq!(harm["inc-globex"].requests, on("globexkey001", t0, mid));
    assert!(harm["inc-globex"].requests < on("globexkey001", t0, end));
    // The node, linked to its key and tenant, with its facts.
    let i = whole.find("incident:inc-acme").unwrap();
    let n = &whole.nodes()[i];
    assert_eq!(n.kind, NodeKind::Incident);
    assert_eq!(n.count, 2);
    assert_eq!(n.attrs.get("severity").map(String::as_str), Some("high"));
    let key = whole.find("key:acmekey00001").unwrap();
    let tenant = whole.find("tenant:acme").unwrap();
    assert!(whole.edge(i, key).is_some() && whole.edge(i, tenant).is_some());
    // The assessment carries the harm per incident.
    let a = stormwall_investigate::assess(&whole, &Default::default(), &Default::default());
    assert_eq!(a.incident_harm, harm);
}

#[test]
fn a_tls_fingerprint_is_a_node_linked_to_the_network_the_key_and_the_client() {
    let mut events = fixture();
    let mut g = Graph::new(Default::default());
    for e in &mut events {
        if e.source_ip.to_string().starts_with("203.0.113.") {
            e.tls_fingerprint = Some("t13d0302h2_0123456789ab_ba9876543210".into());
        }
    }
    for e in &events {
        g.add_event(e, &[]);
    }
    let tls = g
        .find("tls:t13d0302h2_0123456789ab_ba9876543210")
        .expect("no tls node");
    assert_eq!(g.nodes()[tls].kind, NodeKind::Tls);
    let relay = g.find("network:203.0.113.0/24").unwrap();
    let key = g.find("key:acmekey00001").unwrap();
    assert_eq!(
        g.edge(tls, relay).unwrap().count,
        g.nodes()[tls].count,
        "every event with it came from the relay"
    );
    assert!(g.edge(tls, key).is_some());
    assert!(
        g.neighbours(tls)
            .any(|(i, _)| g.nodes()[i].kind == NodeKind::Fingerprint)
    );
    // Events without one (every other network) add no tls node.
    assert_eq!(
        g.nodes().iter().filter(|n| n.kind == NodeKind::Tls).count(),
        1
    );
}

/// A management call: `who` (an AWS access key) does `action` from `ip`.
fn control(
    id: &str,
    who: &str,
    action: stormwall_types::ControlAction,
    ip: Option<&str>,
    at: time::OffsetDateTime,
) -> stormwall_types::ControlEvent {
    use stormwall_types::{CloudContext, CloudProvider, CredentialKind, Principal};
    stormwall_types::ControlEvent {
        timestamp: at,
        id: id.into(),
        dataset: "aws.cloudtrail".into(),
        action,
        success: id != "c3",
        source_ip: ip.map(|i| i.parse().unwrap()),
        user_agent: Some("aws-cli/2.15.0 Python/3.11.6 Linux/6.1".into()),
        cloud: CloudContext {
            principal: Principal {
                provider: CloudProvider::Aws,
                kind: CredentialKind::AwsLongTermKey,
                id: who.into(),
                account: Some("111122223333".into()),
                name: Some("ci-deployer".into()),
            },
            operation: "GetModelInvocationLoggingConfiguration".into(),
            region: Some("us-east-1".into()),
            resource: None,
            ip_masked: false,
            ip_missing: ip.is_none(),
            error: None,
            bearer: false,
        },
        service: Some("bedrock.amazonaws.com".into()),
        target: None,
        scopes: Vec::new(),
        loosens: id == "c2",
        count: 1,
        response_bytes: None,
    }
}

#[test]
fn control_events_are_nodes_linked_to_the_principals_key_and_network_once() {
    use stormwall_investigate::{Overrides, RoleConfig, assess};
    use stormwall_types::ControlAction;
    let t0 = time::OffsetDateTime::from_unix_timestamp(1_741_000_000).unwrap();
    let minute = time::Duration::minutes(1);
    let calls = [
        control(
            "c1",
            "AKIAEXAMPLE7Q2R4T6Y8",
            ControlAction::GetLoggingConfig,
            Some("203.0.113.9"),
            t0,
        ),
        control(
            "c2",
            "AKIAEXAMPLE7Q2R4T6Y8",
            ControlAction::DeleteLogging,
            Some("203.0.113.9"),
            t0 + minute,
        ),
        control(
            "c3",
            "AKIAEXAMPLE7Q2R4T6Y8",
            ControlAction::DeleteLogging,
            Some("203.0.113.10"),
            t0 + 2 * minute,
        ),
        control(
            "c4",
            "AKIAEXAMPLE7Q2R4T6Y8",
            ControlAction::GetLoggingConfig,
            None,
            t0 + 3 * minute,
        ),
    ];
    let before = fixture_graph();
    let roles_before = assess(&before, &RoleConfig::default(), &Overrides::default());
    let mut g = fixture_graph();
    for c in &calls[..2] {
        g.add_control_event(c, &["hosting"]);
    }
    // Through a saved state: the first two again (counted once) and the rest.
    let mut g = Graph::from_state(g.state().clone(), Default::default()).unwrap();
    for c in &calls {
        g.add_control_event(c, &["hosting"]);
    }
    let key_id = calls[0].cloud.principal.key_id();
    let key = g
        .find(&format!("key:{key_id}"))
        .expect("the principal's key");
    let k = &g.nodes()[key];
    assert_eq!(k.controls.get("get_logging_config"), Some(&2));
    assert_eq!(k.controls.get("delete_logging"), Some(&2));
    assert_eq!(k.count, 0, "a management call is not a use of the key");
    assert_eq!(
        k.attrs.get("tenant").map(String::as_str),
        Some("111122223333")
    );
    assert!(g.find("tenant:111122223333").is_some());
    // One node per action and network (the call without an address has none).
    let del = g
        .find("control:delete_logging@203.0.113.0/24")
        .expect("control node");
    let d = &g.nodes()[del];
    assert_eq!(d.kind, NodeKind::Control);
    assert_eq!(d.count, 2);
    assert_eq!(d.attrs.get("failed").map(String::as_str), Some("1"));
    assert_eq!(d.attrs.get("loosens").map(String::as_str), Some("1"));
    assert_eq!(
        d.attrs.get("ua_family").map(String::as_str),
        Some("aws-cli Python Linux")
    );
    assert_eq!(g.edge(del, key).unwrap().count, 2);
    let net = g.find("network:203.0.113.0/24").unwrap();
    let e = g.edge(del, net).unwrap();
    assert_eq!(
        (e.count, e.first, e.last),
        (2, t0 + minute, t0 + 2 * minute)
    );
    assert!(g.edge(key, net).is_none(), "no key–network use edge");
    assert_eq!(
        g.nodes()
            .iter()
            .filter(|n| n.kind == NodeKind::Control)
            .count(),
        2
    );
    // The usage graph's counts and the roles inferred from use are unchanged.
    assert_eq!(g.nodes()[net].count, before.nodes()[net].count);
    let roles = assess(&g, &RoleConfig::default(), &Overrides::default());
    let names = |a: &stormwall_investigate::Assessment| -> Vec<(String, String)> {
        a.roles
            .iter()
            .map(|r| (r.entity.clone(), r.role.as_str().to_owned()))
            .collect()
    };
    assert_eq!(names(&roles), names(&roles_before));
}
