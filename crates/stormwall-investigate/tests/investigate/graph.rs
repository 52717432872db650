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
