use stormwall_investigate::export::{ExportOptions, csv, misp, stix};
use stormwall_investigate::{Overrides, RoleConfig, assess};

use crate::fixture_graph;

fn bundle(opts: &ExportOptions) -> serde_json::Value {
    let g = fixture_graph();
    let a = assess(&g, &RoleConfig::default(), &Overrides::default());
    stix::bundle(&g, &a, opts).unwrap()
}

#[test]
fn stix_bundle_has_every_object_kind_and_is_deterministic() {
    let b = bundle(&ExportOptions::default());
    assert_eq!(b, bundle(&ExportOptions::default()));
    let types: std::collections::BTreeSet<&str> = b["objects"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["type"].as_str().unwrap())
        .collect();
    for t in [
        "identity",
        "intrusion-set",
        "threat-actor",
        "tool",
        "infrastructure",
        "indicator",
        "observed-data",
        "sighting",
        "attack-pattern",
        "relationship",
        "marking-definition",
        "ipv4-addr",
    ] {
        assert!(types.contains(t), "{t} missing: {types:?}");
    }
    let text = b.to_string();
    for t in [
        "AML.T0040",
        "AML.T0034",
        "AML.T0054",
        "AML.T0055",
        "AML.T0008.005",
    ] {
        assert!(text.contains(t), "{t}");
    }
    // Personal data is redacted by default.
    for name in ["acme", "globex", "initech", "buyer-", "acmekey00001"] {
        assert!(!text.contains(name), "{name} leaked into the bundle");
    }
    insta::assert_json_snapshot!("stix_fixture", b);
}

#[test]
fn personal_data_only_when_asked() {
    let b = bundle(&ExportOptions {
        include_personal_data: true,
        ..ExportOptions::default()
    });
    assert!(b.to_string().contains("globex"));
    let g = fixture_graph();
    let a = assess(&g, &RoleConfig::default(), &Overrides::default());
    let c = csv::csv(&g, &a, &ExportOptions::default());
    assert!(c.starts_with(csv::HEADER));
    assert!(!c.contains("globex"));
    assert_eq!(c.lines().count(), 1 + a.roles.len());
}

#[test]
fn misp_event_has_attributes_objects_and_atlas_tags() {
    let g = fixture_graph();
    let a = assess(&g, &RoleConfig::default(), &Overrides::default());
    let e = misp::event(&g, &a, &ExportOptions::default());
    let ev = &e["Event"];
    assert!(ev["Attribute"].as_array().unwrap().len() >= 3);
    assert!(ev["Object"].as_array().unwrap().len() >= 3);
    assert!(ev["Tag"].to_string().contains("mitre-atlas-attack-pattern"));
    assert!(!e.to_string().contains("globex"));
    insta::assert_json_snapshot!("misp_fixture", e);
}

#[test]
fn an_unknown_tlp_level_is_an_error() {
    let g = fixture_graph();
    let a = assess(&g, &RoleConfig::default(), &Overrides::default());
    let opts = ExportOptions {
        tlp: "purple".into(),
        ..ExportOptions::default()
    };
    assert!(stix::bundle(&g, &a, &opts).is_err());
}

#[test]
fn the_report_is_one_self_contained_file() {
    let g = fixture_graph();
    let a = assess(&g, &RoleConfig::default(), &Overrides::default());
    let html = stormwall_investigate::report::html(&g, &a, &ExportOptions::default(), "t <x>");
    assert!(html.starts_with("<!doctype html>"));
    assert!(html.contains("<svg") && html.contains("provider") && html.contains("Harm per victim"));
    assert!(html.contains("t &lt;x&gt;"));
    // Nothing fetched when it is opened.
    for needle in ["<script", "src=\"http", "href=\"http", "@import", "url("] {
        assert!(!html.contains(needle), "{needle}");
    }
    assert!(!html.contains("globex"));
}

#[test]
fn a_redacted_assessment_keeps_its_shape_and_drops_personal_data() {
    use stormwall_investigate::export::redact;
    use stormwall_investigate::{Override, OverrideOp, Role};
    let g = fixture_graph();
    let overrides = Overrides {
        entries: vec![
            Override {
                at: time::OffsetDateTime::UNIX_EPOCH,
                analyst: "dana.analyst".into(),
                op: OverrideOp::Annotate {
                    entity: "tenant:acme".into(),
                    note: "notified".into(),
                },
            },
            Override {
                at: time::OffsetDateTime::UNIX_EPOCH,
                analyst: "dana.analyst".into(),
                op: OverrideOp::Reject {
                    entity: "tenant:globex".into(),
                    role: Role::Victim,
                },
            },
        ],
    };
    let a = assess(&g, &RoleConfig::default(), &overrides);
    let r = redact(&g, &a, &ExportOptions::default());
    assert_eq!(r.roles.len(), a.roles.len());
    assert_eq!(r.clusters.len(), a.clusters.len());
    assert_eq!(r.victim_harm.len(), a.victim_harm.len());
    let text = serde_json::to_string(&r).unwrap();
    // (The fixture's made-up system-prompt digests spell tenant names: not personal data.)
    for name in [
        "tenant:acme",
        "tenant:globex",
        "tenant:initech",
        "acmekey",
        "globexkey",
        "initechkey",
        "buyer-",
        "dana",
    ] {
        assert!(!text.contains(name), "{name} in {text}");
    }
    assert!(text.contains("notified (an analyst at "), "{text}");
    assert!(r.rejected[0].entity.starts_with("tenant:tenant-"));
    // Not personal: networks keep their ids.
    assert!(text.contains("network:203.0.113.0/24"));
    // Asked for: unchanged.
    let all = redact(
        &g,
        &a,
        &ExportOptions {
            include_personal_data: true,
            ..ExportOptions::default()
        },
    );
    assert_eq!(all, a);
}

#[test]
fn a_relays_tls_fingerprint_is_an_indicator_of_its_infrastructure() {
    let mut g = stormwall_investigate::Graph::new(Default::default());
    for mut e in crate::fixture() {
        if e.source_ip.to_string().starts_with("203.0.113.") {
            e.tls_fingerprint = Some("t13d0903h1_0123456789ab_ba9876543210".into());
        }
        g.add_event(&e, &[]);
    }
    let a = assess(&g, &RoleConfig::default(), &Overrides::default());
    let b = stix::bundle(&g, &a, &ExportOptions::default()).unwrap();
    let objects = b["objects"].as_array().unwrap();
    let ind = objects
        .iter()
        .find(|o| {
            o["pattern"]
                == "[x-stormwall-tls-client:fingerprint = 't13d0903h1_0123456789ab_ba9876543210']"
        })
        .expect("no TLS indicator");
    let infra = objects
        .iter()
        .find(|o| o["type"] == "infrastructure" && o["name"] == "Relay network 203.0.113.0/24")
        .unwrap();
    assert!(objects.iter().any(|o| o["type"] == "relationship"
        && o["source_ref"] == ind["id"]
        && o["relationship_type"] == "indicates"
        && o["target_ref"] == infra["id"]));
}
