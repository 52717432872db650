//! The investigation crate end to end: one integration test binary, one module per concern.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod evidence;
mod exports;
mod graph;
mod quality;
mod roles;
mod scan;

use stormwall_types::{KeyId, SafetyVerdict, UsageEvent};
use time::OffsetDateTime;

/// A small synthetic network, fixed: tenants acme, globex, initech (victims) and hooli
/// (legitimate); relays 203.0.113.0/24 (acme + globex keys) and 198.51.100.0/24 (globex +
/// initech keys), both running the tool `relaykit`; four buyer personas.
pub fn fixture() -> Vec<UsageEvent> {
    let t0 = OffsetDateTime::from_unix_timestamp(1_741_000_000).unwrap();
    let keys = [
        ("acme", "acmekey00001", "192.0.2.10"),
        ("globex", "globexkey001", "192.0.2.77"),
        ("initech", "initechkey01", "100.64.3.4"),
        ("hooli", "hoolikey0001", "100.64.9.9"),
    ];
    let sdk: Vec<String> = ["host", "user-agent", "x-stainless-lang", "authorization"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let tool: Vec<String> = ["host", "authorization", "x-relay-session", "user-agent"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut out = Vec::new();
    let mut n = 0u64;
    let mut ev = |t: i64, tenant: &str, key: &str, ip: &str, relay: bool, sys: &str| {
        n += 1;
        let mut e = UsageEvent::new(
            format!("{:013}-{n:08x}", t),
            t0 + time::Duration::seconds(t),
            ip.parse().unwrap(),
            "POST",
            "/v1/chat/completions",
        );
        e.tenant = Some(tenant.into());
        e.key_id = Some(KeyId::new(key).unwrap());
        e.model = Some("gpt-4o-mini".into());
        e.input_tokens = Some(100);
        e.output_tokens = Some(50);
        e.cost_usd = 0.001;
        e.system_prompt_hash = Some(format!("{sys:0<32}"));
        e.status = 200;
        if relay {
            e.user_agent = Some("relaykit/2.3.1".into());
            e.header_names = tool.clone();
            e.end_user = Some(format!("buyer-{}", sys.len()));
            e.source_asn = Some(64500);
            e.source_as_org = Some("EXAMPLE-HOSTING".into());
            e.source_country = Some("NL".into());
            if n.is_multiple_of(3) {
                e.safety.push(SafetyVerdict {
                    category: stormwall_types::VerdictCategory::Content(
                        stormwall_types::safety::Category::RealPersonSexual,
                    ),
                    action: stormwall_types::safety::Action::Block,
                    score: 0.9,
                    ..Default::default()
                });
                e.deny(stormwall_types::RejectReason::ContentPolicy);
            }
        } else {
            e.user_agent = Some("OpenAI/Python 1.50.0".into());
            e.header_names = sdk.clone();
        }
        out.push(e);
    };
    for i in 0..40i64 {
        // Owners' own use.
        for (tenant, key, ip) in keys {
            ev(i * 600, tenant, key, ip, false, &format!("own{tenant}"));
        }
        // Relay one: acme and globex keys, personas a and bb.
        let (k1, t1) = if i % 2 == 0 {
            (keys[0].1, "acme")
        } else {
            (keys[1].1, "globex")
        };
        ev(i * 600 + 60, t1, k1, "203.0.113.5", true, "a");
        let (k1, t1) = if i % 2 == 1 {
            (keys[0].1, "acme")
        } else {
            (keys[1].1, "globex")
        };
        ev(i * 600 + 120, t1, k1, "203.0.113.6", true, "bb");
        // Relay two: globex and initech keys, personas ccc and dddd.
        let (k2, t2) = if i % 2 == 0 {
            (keys[1].1, "globex")
        } else {
            (keys[2].1, "initech")
        };
        ev(i * 600 + 180, t2, k2, "198.51.100.20", true, "ccc");
        let (k2, t2) = if i % 2 == 1 {
            (keys[1].1, "globex")
        } else {
            (keys[2].1, "initech")
        };
        ev(i * 600 + 240, t2, k2, "198.51.100.21", true, "dddd");
    }
    out.sort_by(|a, b| (a.timestamp, &a.id).cmp(&(b.timestamp, &b.id)));
    out
}

/// The fixture's graph.
pub fn fixture_graph() -> stormwall_investigate::Graph {
    let mut g = stormwall_investigate::Graph::new(Default::default());
    for e in fixture() {
        g.add_event(&e, &[]);
    }
    g
}
