//! Detector tests over small hand-built event sequences: for each detector a positive case
//! and a negative one (including the noisy-but-legitimate shapes), plus the risk score,
//! the response policy, feedback, replay determinism and robustness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use stormwall_detect::{
    DetectConfig, EgressFlag, Engine, EngineConfig, PolicyRule, ResponseConfig,
};
use stormwall_types::safety::{Action as SafetyAction, Category};
use stormwall_types::{
    ActionKind, Alert, DetectorId, Endpoint, KeyId, KeyKind, KeyStatus, RejectReason, SafetyStage,
    SafetyVerdict, Severity, UsageEvent, VerdictCategory,
};
use time::{Duration, OffsetDateTime, macros::datetime};

const T0: OffsetDateTime = datetime!(2025-03-03 00:00 UTC);

const SDK_HEADERS: &[&str] = &[
    "host",
    "accept-encoding",
    "connection",
    "accept",
    "content-type",
    "user-agent",
    "x-stainless-lang",
    "x-stainless-package-version",
    "x-stainless-os",
    "x-stainless-arch",
    "x-stainless-runtime",
    "x-stainless-runtime-version",
    "authorization",
    "x-stainless-retry-count",
    "content-length",
];

/// A client: where requests come from and what they look like.
#[derive(Clone)]
struct Client {
    ip: &'static str,
    asn: u32,
    cc: &'static str,
    ua: &'static str,
    headers: Vec<String>,
    empty_origin: bool,
}

fn corp() -> Client {
    Client {
        ip: "198.51.100.10",
        asn: 64500,
        cc: "US",
        ua: "OpenAI/Python 1.51.0",
        headers: SDK_HEADERS.iter().map(|s| (*s).to_owned()).collect(),
        empty_origin: false,
    }
}

fn client(
    ip: &'static str,
    asn: u32,
    cc: &'static str,
    ua: &'static str,
    headers: &[&str],
) -> Client {
    Client {
        ip,
        asn,
        cc,
        ua,
        headers: headers.iter().map(|s| (*s).to_owned()).collect(),
        empty_origin: false,
    }
}

fn relay() -> Client {
    Client {
        empty_origin: true,
        ..client(
            "203.0.113.50",
            64502,
            "NL",
            "axios/1.6.8",
            &[
                "accept",
                "content-type",
                "authorization",
                "user-agent",
                "host",
                "origin",
                "referer",
            ],
        )
    }
}

fn key(s: &str) -> KeyId {
    KeyId::new(s).unwrap()
}

/// Builds events with increasing ids.
struct Gen {
    n: u64,
}

impl Gen {
    fn new() -> Self {
        Gen { n: 0 }
    }

    fn chat(&mut self, k: &str, tenant: &str, at: OffsetDateTime, c: &Client) -> UsageEvent {
        self.n += 1;
        let ip: IpAddr = c.ip.parse().unwrap();
        let mut e = UsageEvent::new(
            format!("ev{:08}", self.n),
            at,
            ip,
            "POST",
            "/v1/chat/completions",
        );
        e.tenant = Some(tenant.to_owned());
        e.key_id = Some(key(k));
        e.key_kind = Some(KeyKind::Normal);
        e.source_asn = Some(c.asn);
        e.source_country = Some(c.cc.to_owned());
        e.user_agent = Some(c.ua.to_owned());
        e.header_names = c.headers.clone();
        if c.empty_origin {
            e.origin = Some(String::new());
            e.referer = Some(String::new());
        }
        e.endpoint = Some(Endpoint::ChatCompletions);
        e.model = Some("gpt-4o-mini".into());
        e.max_tokens = Some(512);
        e.prompt_chars = 800;
        e.system_prompt_hash = Some("00112233445566778899aabbccddeeff".into());
        e.prompt_minhash = vec![(self.n % 7) as u32, 1, 2, 3];
        e.input_tokens = Some(200);
        e.output_tokens = Some(300);
        e.cost_usd = 0.0003;
        e.status = 200;
        e.inflight = 1;
        e
    }
}

fn engine() -> Engine {
    let mut cfg = EngineConfig::new(DetectConfig::default(), ResponseConfig::default()).unwrap();
    cfg.egress.add_asn(64502, EgressFlag::Hosting);
    cfg.egress.add_asn(64496, EgressFlag::Hosting);
    cfg.egress.add_asn(64503, EgressFlag::Vpn);
    cfg.egress.add_asn(64505, EgressFlag::Tor);
    Engine::new(cfg)
}

/// Feeds events; returns all alerts.
fn feed(engine: &mut Engine, events: &[UsageEvent]) -> Vec<Alert> {
    let mut all = Vec::new();
    for e in events {
        all.extend(engine.observe(e));
    }
    all
}

/// Two days of steady business traffic: one request every 10 minutes from `c`.
fn warm(g: &mut Gen, k: &str, tenant: &str, c: &Client, days: i64) -> Vec<UsageEvent> {
    let mut v = Vec::new();
    let mut t = T0;
    while t < T0 + Duration::days(days) {
        v.push(g.chat(k, tenant, t, c));
        t += Duration::minutes(10);
    }
    v
}

fn end(days: i64) -> OffsetDateTime {
    T0 + Duration::days(days) + Duration::minutes(5)
}

fn fired(alerts: &[Alert], d: DetectorId) -> bool {
    alerts.iter().any(|a| a.detector == d)
}

fn warmed(k: &str, c: &Client) -> (Engine, Gen) {
    let mut e = engine();
    let mut g = Gen::new();
    let w = warm(&mut g, k, "acme", c, 2);
    let alerts = feed(&mut e, &w);
    assert!(alerts.is_empty(), "steady traffic raised {alerts:?}");
    (e, g)
}

// ---------------------------------------------------------------- tripwires

#[test]
fn h1_canary_use_is_critical_and_only_notified() {
    let mut e = engine();
    let mut g = Gen::new();
    let mut ev = g.chat("CanaryKey001", "acme", T0, &relay());
    ev.key_kind = Some(KeyKind::Canary);
    ev.deny(RejectReason::CanaryKey);
    let alerts = e.observe(&ev);
    assert_eq!(alerts.len(), 1);
    let a = &alerts[0];
    assert_eq!(
        (a.detector, a.severity),
        (DetectorId::H1, Severity::Critical)
    );
    assert_eq!(a.evidence, vec![ev.id.clone()]);
    assert!(a.explanation.contains("Canary key CanaryKey001"));
    let action = e.decide(a).unwrap();
    assert_eq!(
        action.kind,
        ActionKind::Alert,
        "a canary is never served; nothing to stop"
    );
}

#[test]
fn h1_does_not_fire_on_normal_keys() {
    let (mut e, mut g) = warmed("NormalKey001", &corp());
    let ev = g.chat("NormalKey001", "acme", end(2), &corp());
    assert!(!fired(&e.observe(&ev), DetectorId::H1));
}

#[test]
fn d1_revoked_retries_and_d2_reappearance_on_another_key() {
    let mut e = engine();
    let mut g = Gen::new();
    // Tenant B's key has its own steady history.
    let w = warm(&mut g, "OtherKey0001", "beta", &corp(), 2);
    feed(&mut e, &w);
    let mut retry = g.chat("BurntKey0001", "acme", end(2), &relay());
    retry.system_prompt_hash = Some("feedfacefeedfacefeedfacefeedface".into());
    retry.deny(RejectReason::RevokedKey);
    let alerts = e.observe(&retry);
    assert!(fired(&alerts, DetectorId::D1));
    assert_eq!(e.decide(&alerts[0]).unwrap().kind, ActionKind::Alert);
    // The same relay now uses tenant B's key: same UA, shape, /24 and a system prompt.
    let mut again = g.chat(
        "OtherKey0001",
        "beta",
        end(2) + Duration::minutes(5),
        &relay(),
    );
    again.ip_octet(51);
    again.system_prompt_hash = Some("feedfacefeedfacefeedfacefeedface".into());
    let alerts = e.observe(&again);
    let d2 = alerts
        .iter()
        .find(|a| a.detector == DetectorId::D2)
        .expect("D2");
    assert!(d2.features[0].value >= 0.8, "{d2:?}");
    assert!(
        d2.subjects
            .iter()
            .any(|s| s.kind == "burned_on_key" && s.value == "BurntKey0001")
    );
}

#[test]
fn d2_ignores_unrelated_clients() {
    let mut e = engine();
    let mut g = Gen::new();
    let mut retry = g.chat("BurntKey0001", "acme", T0, &relay());
    retry.deny(RejectReason::RevokedKey);
    e.observe(&retry);
    let other = client(
        "192.0.2.7",
        64504,
        "BR",
        "curl/8.5.0",
        &["host", "user-agent", "accept"],
    );
    let ev = g.chat("OtherKey0001", "beta", T0 + Duration::minutes(1), &other);
    assert!(!fired(&e.observe(&ev), DetectorId::D2));
}

trait IpOctet {
    fn ip_octet(&mut self, last: u8);
}
impl IpOctet for UsageEvent {
    fn ip_octet(&mut self, last: u8) {
        if let IpAddr::V4(v4) = self.source_ip {
            let o = v4.octets();
            self.source_ip = IpAddr::from([o[0], o[1], o[2], last]);
        }
    }
}

#[test]
fn h2_and_the_kill_chain_suspend_an_exposed_key() {
    let (mut e, mut g) = warmed("LeakedKey001", &corp());
    let exposure = e.note_exposure(&key("LeakedKey001"), Some("acme"), end(2), "public repo");
    assert_eq!(exposure.detector, DetectorId::E1);
    let a = e.decide(&exposure).unwrap();
    assert!(
        a.kind < ActionKind::Suspend,
        "a report alone does not stop a key"
    );
    let ev = g.chat(
        "LeakedKey001",
        "acme",
        end(2) + Duration::minutes(30),
        &relay(),
    );
    let alerts = e.observe(&ev);
    assert!(fired(&alerts, DetectorId::H2));
    assert!(fired(&alerts, DetectorId::P3));
    let actions: Vec<_> = alerts.iter().filter_map(|a| e.decide(a)).collect();
    let strongest = actions.iter().max_by_key(|a| a.kind).unwrap();
    assert_eq!(strongest.kind, ActionKind::Suspend);
    assert!(strongest.kill_chain);
    assert!(strongest.contributing_alerts.contains(&exposure.id));
}

// ---------------------------------------------------------------- validation

fn probe(g: &mut Gen, k: &str, at: OffsetDateTime, c: &Client) -> UsageEvent {
    let mut ev = g.chat(k, "acme", at, c);
    ev.max_tokens = Some(1);
    ev.prompt_chars = 2;
    ev.system_prompt_hash = None;
    ev.input_tokens = Some(8);
    ev.output_tokens = Some(1);
    ev
}

fn listing(g: &mut Gen, k: &str, at: OffsetDateTime, c: &Client) -> UsageEvent {
    let mut ev = g.chat(k, "acme", at, c);
    ev.endpoint = Some(Endpoint::Models);
    ev.path = "/v1/models".into();
    ev.method = "GET".into();
    ev.model = None;
    ev.max_tokens = None;
    ev.prompt_chars = 0;
    ev.system_prompt_hash = None;
    ev.prompt_minhash.clear();
    ev.input_tokens = None;
    ev.output_tokens = None;
    ev
}

#[test]
fn v1_probe_from_a_new_far_network_is_high() {
    let (mut e, mut g) = warmed("ProbedKey001", &corp());
    let checker = client(
        "203.0.113.9",
        64502,
        "NL",
        "python-requests/2.32.3",
        &["host", "user-agent"],
    );
    let alerts = e.observe(&probe(&mut g, "ProbedKey001", end(2), &checker));
    let v1 = alerts
        .iter()
        .find(|a| a.detector == DetectorId::V1)
        .expect("V1");
    assert_eq!(v1.severity, Severity::High);
}

#[test]
fn v1_is_quiet_for_ci_smoke_tests_from_their_usual_network() {
    let ci = client(
        "100.67.0.9",
        64496,
        "US",
        "python-requests/2.32.3",
        &["host", "user-agent", "accept"],
    );
    let mut e = engine();
    let mut g = Gen::new();
    let mut events = Vec::new();
    let mut t = T0;
    while t < T0 + Duration::days(2) {
        events.push(if events.len() % 3 == 0 {
            probe(&mut g, "CiKey0000001", t, &ci)
        } else {
            g.chat("CiKey0000001", "ci", t, &ci)
        });
        t += Duration::minutes(10);
    }
    feed(&mut e, &events);
    let burst: Vec<_> = (0..5)
        .map(|i| {
            probe(
                &mut g,
                "CiKey0000001",
                end(2) + Duration::seconds(i * 5),
                &ci,
            )
        })
        .collect();
    let alerts = feed(&mut e, &burst);
    assert!(!fired(&alerts, DetectorId::V1), "{alerts:?}");
}

#[test]
fn v2_enumerate_then_invoke_from_a_new_source() {
    let (mut e, mut g) = warmed("EnumKey00001", &corp());
    let checker = client(
        "203.0.113.9",
        64502,
        "NL",
        "python-requests/2.32.3",
        &["host", "user-agent"],
    );
    let l = listing(&mut g, "EnumKey00001", end(2), &checker);
    let p = probe(
        &mut g,
        "EnumKey00001",
        end(2) + Duration::seconds(40),
        &checker,
    );
    let alerts = feed(&mut e, &[l.clone(), p]);
    let v2 = alerts
        .iter()
        .find(|a| a.detector == DetectorId::V2)
        .expect("V2");
    assert!(v2.evidence.contains(&l.id), "the listing is evidence");
}

#[test]
fn v2_quiet_for_sdks_that_list_models_at_start_up() {
    let mut e = engine();
    let mut g = Gen::new();
    let mut events = Vec::new();
    let mut t = T0;
    while t < T0 + Duration::days(2) {
        events.push(listing(&mut g, "ListKey00001", t, &corp()));
        events.push(g.chat("ListKey00001", "acme", t + Duration::seconds(2), &corp()));
        t += Duration::minutes(20);
    }
    let alerts = feed(&mut e, &events);
    assert!(!fired(&alerts, DetectorId::V2), "{alerts:?}");
}

#[test]
fn v4_periodic_checker_from_a_new_network() {
    let (mut e, mut g) = warmed("CheckKey0001", &corp());
    let vpn = client(
        "203.0.113.77",
        64503,
        "SG",
        "Python/3.11 aiohttp/3.9.1",
        &["host", "user-agent"],
    );
    let events: Vec<_> = (0..8)
        .map(|i| {
            let mut p = probe(
                &mut g,
                "CheckKey0001",
                end(2) + Duration::seconds(180 * i + (i % 2)),
                &vpn,
            );
            p.max_tokens = Some(5);
            p
        })
        .collect();
    let alerts = feed(&mut e, &events);
    let v4 = alerts
        .iter()
        .find(|a| a.detector == DetectorId::V4)
        .expect("V4");
    assert!(v4.evidence.len() >= 7);
}

#[test]
fn v4_quiet_for_irregular_micro_requests() {
    let (mut e, mut g) = warmed("CheckKey0002", &corp());
    let vpn = client(
        "203.0.113.77",
        64503,
        "SG",
        "Python/3.11 aiohttp/3.9.1",
        &["host", "user-agent"],
    );
    let gaps = [60, 400, 95, 700, 130, 300, 1000, 75];
    let mut t = end(2);
    let mut events = Vec::new();
    for gap in gaps {
        t += Duration::seconds(gap);
        events.push(probe(&mut g, "CheckKey0002", t, &vpn));
    }
    assert!(!fired(&feed(&mut e, &events), DetectorId::V4));
}

// ---------------------------------------------------------------- proxy

#[test]
fn p1_many_networks_in_one_hour() {
    let (mut e, mut g) = warmed("SpreadKey001", &corp());
    let nets = [
        client(
            "203.0.113.1",
            64504,
            "BR",
            "OpenAI/Python 1.51.0",
            SDK_HEADERS,
        ),
        client(
            "192.0.2.1",
            64508,
            "IN",
            "OpenAI/Python 1.51.0",
            SDK_HEADERS,
        ),
        client(
            "198.18.0.1",
            64511,
            "VN",
            "OpenAI/Python 1.51.0",
            SDK_HEADERS,
        ),
    ];
    let mut events = vec![g.chat("SpreadKey001", "acme", end(2), &corp())];
    for (i, c) in nets.iter().enumerate() {
        events.push(g.chat(
            "SpreadKey001",
            "acme",
            end(2) + Duration::minutes(i as i64 + 1),
            c,
        ));
    }
    let alerts = feed(&mut e, &events);
    let p1 = alerts
        .iter()
        .find(|a| a.detector == DetectorId::P1)
        .expect("P1");
    assert!(!p1.evidence.is_empty());
}

#[test]
fn p1_quiet_for_a_mobile_app_with_dispersed_clients() {
    let mut e = engine();
    let mut g = Gen::new();
    let carriers = [
        client(
            "100.82.1.1",
            64501,
            "DE",
            "okhttp/4.12.0",
            &["authorization", "host", "user-agent"],
        ),
        client(
            "100.83.1.1",
            65540,
            "AT",
            "okhttp/4.12.0",
            &["authorization", "host", "user-agent"],
        ),
        client(
            "100.84.1.1",
            65541,
            "CH",
            "okhttp/4.12.0",
            &["authorization", "host", "user-agent"],
        ),
        client(
            "100.79.1.1",
            64507,
            "DE",
            "okhttp/4.12.0",
            &["authorization", "host", "user-agent"],
        ),
    ];
    let mut events = Vec::new();
    let mut t = T0;
    let mut i = 0;
    while t < T0 + Duration::days(3) {
        events.push(g.chat("MobileKey001", "mobile", t, &carriers[i % 4]));
        i += 1;
        t += Duration::minutes(4);
    }
    let alerts = feed(&mut e, &events);
    assert!(!fired(&alerts, DetectorId::P1), "{alerts:?}");
    assert!(!fired(&alerts, DetectorId::P2), "{alerts:?}");
}

#[test]
fn p2_impossible_travel() {
    let (mut e, mut g) = warmed("TravelKey001", &corp());
    let ro = client(
        "203.0.113.5",
        64499,
        "RO",
        "OpenAI/Python 1.51.0",
        SDK_HEADERS,
    );
    let a = g.chat("TravelKey001", "acme", end(2), &corp());
    let b = g.chat("TravelKey001", "acme", end(2) + Duration::seconds(90), &ro);
    let alerts = feed(&mut e, &[a, b]);
    let p2 = alerts
        .iter()
        .find(|a| a.detector == DetectorId::P2)
        .expect("P2");
    assert!(p2.features[0].value > 900.0);
}

#[test]
fn p2_quiet_for_a_vpn_switching_exits_of_one_provider() {
    let mut e = engine();
    let mut g = Gen::new();
    let exits = [
        client(
            "100.72.0.10",
            64503,
            "SG",
            "OpenAI/Python 1.51.0",
            SDK_HEADERS,
        ),
        client(
            "100.73.0.10",
            64503,
            "US",
            "OpenAI/Python 1.51.0",
            SDK_HEADERS,
        ),
        client(
            "100.74.0.10",
            64503,
            "DE",
            "OpenAI/Python 1.51.0",
            SDK_HEADERS,
        ),
    ];
    let mut events = Vec::new();
    let mut t = T0;
    let mut i = 0;
    while t < T0 + Duration::days(3) {
        events.push(g.chat("VpnKey000001", "vpnco", t, &exits[i % 3]));
        i += 1;
        t += Duration::minutes(7);
    }
    let alerts = feed(&mut e, &events);
    assert!(!fired(&alerts, DetectorId::P2), "{alerts:?}");
    assert!(!fired(&alerts, DetectorId::P3), "{alerts:?}");
}

#[test]
fn p3_hosting_egress_new_to_a_corporate_key() {
    let (mut e, mut g) = warmed("CorpKey00001", &corp());
    let hosted = Client {
        ip: "203.0.113.60",
        asn: 64502,
        cc: "US",
        ..corp()
    };
    let alerts = e.observe(&g.chat("CorpKey00001", "acme", end(2), &hosted));
    let p3 = alerts
        .iter()
        .find(|a| a.detector == DetectorId::P3)
        .expect("P3");
    assert_eq!(p3.severity, Severity::High);
    assert!(
        p3.subjects
            .iter()
            .any(|s| s.kind == "egress_flag" && s.value == "hosting")
    );
}

#[test]
fn p3_quiet_for_a_cloud_app_on_its_provider() {
    let cloud = client(
        "100.64.3.3",
        64496,
        "US",
        "OpenAI/Python 1.51.0",
        SDK_HEADERS,
    );
    let (mut e, mut g) = warmed("CloudKey0001", &cloud);
    let other_host = Client {
        ip: "100.64.9.9",
        ..cloud
    };
    assert!(!fired(
        &e.observe(&g.chat("CloudKey0001", "acme", end(2), &other_host)),
        DetectorId::P3
    ));
}

#[test]
fn p4_relay_artefacts() {
    let (mut e, mut g) = warmed("RelayKey0001", &corp());
    let alerts = e.observe(&g.chat("RelayKey0001", "acme", end(2), &relay()));
    let p4 = alerts
        .iter()
        .find(|a| a.detector == DetectorId::P4)
        .expect("P4");
    assert!(p4.features[0].value >= 3.0, "{p4:?}");
    // A forged SDK user agent without the SDK's headers is an artefact even from home.
    let forged = client(
        "198.51.100.10",
        64500,
        "US",
        "OpenAI/Python 1.51.0",
        &["host", "user-agent"],
    );
    let alerts = e.observe(&g.chat("RelayKey0001", "acme", end(2) + Duration::hours(2), &forged));
    assert!(fired(&alerts, DetectorId::P4), "{alerts:?}");
}

#[test]
fn p4_quiet_for_the_keys_own_client() {
    let (mut e, mut g) = warmed("OwnKey000001", &corp());
    assert!(
        e.observe(&g.chat("OwnKey000001", "acme", end(2), &corp()))
            .is_empty()
    );
}

#[test]
fn p5_new_user_agent_family() {
    let (mut e, mut g) = warmed("UaKey0000001", &corp());
    let node = client(
        "198.51.100.10",
        64500,
        "US",
        "OpenAI/JS 4.67.1",
        &["accept", "x-stainless-lang"],
    );
    let alerts = e.observe(&g.chat("UaKey0000001", "acme", end(2), &node));
    let p5 = alerts
        .iter()
        .find(|a| a.detector == DetectorId::P5)
        .expect("P5");
    assert_eq!(p5.severity, Severity::Low, "near source: low");
}

#[test]
fn p6_one_address_across_three_tenants() {
    let mut e = engine();
    let mut g = Gen::new();
    let r = relay();
    let a = g.chat("PoolKey00001", "t1", T0, &r);
    let b = g.chat("PoolKey00002", "t2", T0 + Duration::minutes(1), &r);
    assert!(
        !fired(&feed(&mut e, &[a, b]), DetectorId::P6),
        "two tenants are not a pool"
    );
    let c = g.chat("PoolKey00003", "t3", T0 + Duration::minutes(2), &r);
    assert!(fired(&e.observe(&c), DetectorId::P6));
}

// ---------------------------------------------------------------- resale

#[test]
fn r1_many_new_system_prompts() {
    let (mut e, mut g) = warmed("ResoldKey001", &corp());
    let events: Vec<_> = (0..8)
        .map(|i| {
            let mut ev = g.chat(
                "ResoldKey001",
                "acme",
                end(2) + Duration::minutes(i),
                &corp(),
            );
            ev.system_prompt_hash = Some(format!("{i:032x}"));
            ev
        })
        .collect();
    let alerts = feed(&mut e, &events);
    assert!(fired(&alerts, DetectorId::R1), "{alerts:?}");
}

/// A reseller with the owner's own SDK on a residential line, whose first call lands a
/// minute before an hour boundary: the quiet hour is learned with its network, and before
/// the probation on newly learned networks only the day's count of new prompts (ten for
/// high) stopped it (tuning seed 41: 12 served). Now its new prompts still come from a new
/// network: suspended within five calls. The owner's app on that network, with its own
/// prompt, raises no R1.
#[test]
fn r1_new_prompts_from_a_network_learned_over_an_hour_boundary_suspend() {
    let k = "ResoldKey002";
    let line = client(
        "192.0.2.50",
        64506,
        "US",
        "OpenAI/Python 1.51.0",
        SDK_HEADERS,
    );
    let first = T0 + Duration::days(2) + Duration::minutes(59);
    let at = |i: i64| first + Duration::minutes(2 * i);
    let (mut e, mut g) = warmed(k, &corp());
    let mut stopped_after = None;
    for i in 0..12 {
        let mut ev = g.chat(k, "acme", at(i), &line);
        ev.system_prompt_hash = Some(format!("{:032x}", 7_000 + i));
        for a in e.observe(&ev) {
            if e.decide(&a).is_some_and(|x| x.kind == ActionKind::Suspend) {
                stopped_after.get_or_insert(i + 1);
            }
        }
    }
    let n = stopped_after.expect("the resold key was not suspended");
    assert!(n <= 5, "suspended after {n} reseller calls");

    let (mut e, mut g) = warmed(k, &corp());
    let evs: Vec<UsageEvent> = (0..12).map(|i| g.chat(k, "acme", at(i), &line)).collect();
    let alerts = feed(&mut e, &evs);
    assert!(!fired(&alerts, DetectorId::R1), "{alerts:?}");
}

#[test]
fn r1_quiet_for_per_user_system_prompts_once_learned() {
    let mut e = engine();
    let mut g = Gen::new();
    let mut events = Vec::new();
    let mut t = T0;
    let mut i = 0u64;
    while t < T0 + Duration::days(3) {
        let mut ev = g.chat("DynKey000001", "bot", t, &corp());
        ev.system_prompt_hash = Some(format!("{i:032x}"));
        events.push(ev);
        i += 1;
        t += Duration::minutes(5);
    }
    let alerts = feed(&mut e, &events);
    assert!(!fired(&alerts, DetectorId::R1), "{alerts:?}");
}

fn with_verdict(
    mut ev: UsageEvent,
    category: impl Into<VerdictCategory>,
    action: SafetyAction,
) -> UsageEvent {
    ev.safety.push(SafetyVerdict {
        category: category.into(),
        action,
        score: 0.9,
        stage: SafetyStage::Input,
        ..Default::default()
    });
    ev
}

#[test]
fn r2_roleplay_markers_on_a_business_key() {
    let (mut e, mut g) = warmed("BizKey000001", &corp());
    let ev = with_verdict(
        g.chat("BizKey000001", "acme", end(2), &corp()),
        VerdictCategory::RoleplayMarkers,
        SafetyAction::Log,
    );
    assert!(fired(&e.observe(&ev), DetectorId::R2));
}

#[test]
fn r2_counts_a_jailbreak_verdict_only_when_the_policy_acted() {
    let (mut e, mut g) = warmed("BizKey000002", &corp());
    let logged = with_verdict(
        g.chat("BizKey000002", "acme", end(2), &corp()),
        Category::Jailbreak,
        SafetyAction::Log,
    );
    assert!(!fired(&e.observe(&logged), DetectorId::R2));
    let flagged = with_verdict(
        g.chat(
            "BizKey000002",
            "acme",
            end(2) + Duration::minutes(1),
            &corp(),
        ),
        Category::Jailbreak,
        SafetyAction::Flag,
    );
    assert!(fired(&e.observe(&flagged), DetectorId::R2));
}

#[test]
fn r2_quiet_for_a_roleplay_app() {
    let mut e = engine();
    let mut g = Gen::new();
    let mut events = warm(&mut g, "RpKey0000001", "rp", &corp(), 2);
    for (i, ev) in events.iter_mut().enumerate() {
        if i % 3 == 0 {
            *ev = with_verdict(
                ev.clone(),
                VerdictCategory::RoleplayMarkers,
                SafetyAction::Log,
            );
        }
    }
    feed(&mut e, &events);
    let ev = with_verdict(
        g.chat("RpKey0000001", "rp", end(2), &corp()),
        VerdictCategory::RoleplayMarkers,
        SafetyAction::Log,
    );
    assert!(!fired(&e.observe(&ev), DetectorId::R2));
}

#[test]
fn r3_concurrency_spike() {
    let (mut e, mut g) = warmed("BusyKey00001", &corp());
    let mut ev = g.chat("BusyKey00001", "acme", end(2), &corp());
    ev.inflight = 25;
    assert!(fired(&e.observe(&ev), DetectorId::R3));
    let mut calm = g.chat("BusyKey00001", "acme", end(2) + Duration::hours(1), &corp());
    calm.inflight = 2;
    assert!(!fired(&e.observe(&calm), DetectorId::R3));
}

/// Business-hours traffic for `days` (09:00–17:00 UTC, every 5 minutes).
fn business(g: &mut Gen, k: &str, days: i64, night_batch: bool) -> Vec<UsageEvent> {
    let mut v = Vec::new();
    for d in 0..days {
        if night_batch {
            for m in 0..100 {
                let mut ev = g.chat(
                    k,
                    "acme",
                    T0 + Duration::days(d) + Duration::hours(2) + Duration::seconds(m * 30),
                    &corp(),
                );
                ev.input_tokens = Some(2_000);
                v.push(ev);
            }
        }
        for m in (9 * 60..17 * 60).step_by(5) {
            v.push(g.chat(
                k,
                "acme",
                T0 + Duration::days(d) + Duration::minutes(m),
                &corp(),
            ));
        }
    }
    v
}

#[test]
fn r4_off_hours_burst() {
    let mut e = engine();
    let mut g = Gen::new();
    feed(&mut e, &business(&mut g, "DayKey000001", 4, false));
    let night = T0 + Duration::days(4) + Duration::hours(3);
    let burst: Vec<_> = (0..60)
        .map(|i| {
            let mut ev = g.chat(
                "DayKey000001",
                "acme",
                night + Duration::seconds(i * 20),
                &corp(),
            );
            ev.input_tokens = Some(3_000);
            ev
        })
        .collect();
    assert!(fired(&feed(&mut e, &burst), DetectorId::R4));
}

#[test]
fn r4_quiet_for_a_nightly_batch_in_the_baseline() {
    let mut e = engine();
    let mut g = Gen::new();
    let all = business(&mut g, "BatchKey0001", 6, true);
    let alerts = feed(&mut e, &all);
    let late: Vec<_> = alerts
        .iter()
        .filter(|a| a.at > T0 + Duration::days(4) && a.detector == DetectorId::R4)
        .collect();
    assert!(late.is_empty(), "{late:?}");
}

#[test]
fn r5_spend_far_above_the_usual() {
    let (mut e, mut g) = warmed("SpendKey0001", &corp());
    let events: Vec<_> = (0..40)
        .map(|i| {
            let mut ev = g.chat(
                "SpendKey0001",
                "acme",
                end(2) + Duration::seconds(i * 30),
                &corp(),
            );
            ev.model = Some("gpt-4o".into());
            ev.cost_usd = 0.25;
            ev
        })
        .collect();
    let alerts = feed(&mut e, &events);
    assert!(fired(&alerts, DetectorId::R5), "{alerts:?}");
}

fn image(mut ev: UsageEvent) -> UsageEvent {
    ev.endpoint = Some(Endpoint::ImagesGenerations);
    ev.model = Some("dall-e-3".into());
    ev.images = Some(1);
    ev
}

#[test]
fn r6_first_image_generation_on_a_chat_key() {
    let (mut e, mut g) = warmed("ChatKey00001", &corp());
    let alerts = e.observe(&image(g.chat("ChatKey00001", "acme", end(2), &corp())));
    assert!(fired(&alerts, DetectorId::R6));
}

#[test]
fn r6_quiet_for_an_image_studio() {
    let mut e = engine();
    let mut g = Gen::new();
    let events: Vec<_> = warm(&mut g, "StudioKey001", "studio", &corp(), 2)
        .into_iter()
        .enumerate()
        .map(|(i, ev)| if i % 2 == 0 { image(ev) } else { ev })
        .collect();
    feed(&mut e, &events);
    let alerts = e.observe(&image(g.chat("StudioKey001", "studio", end(2), &corp())));
    assert!(!fired(&alerts, DetectorId::R6), "{alerts:?}");
}

// ---------------------------------------------------------------- abuse

#[test]
fn a1_repeated_safety_hits() {
    let mut e = engine();
    let mut g = Gen::new();
    let events: Vec<_> = (0..3)
        .map(|i| {
            with_verdict(
                g.chat("AbuseKey0001", "acme", T0 + Duration::minutes(i), &corp()),
                Category::RealPersonSexual,
                SafetyAction::Block,
            )
        })
        .collect();
    let alerts = feed(&mut e, &events);
    let a1 = alerts
        .iter()
        .find(|a| a.detector == DetectorId::A1)
        .expect("A1");
    assert_eq!(a1.severity, Severity::High);
    assert_eq!(a1.evidence.len(), 3);
}

#[test]
fn a1_quiet_for_an_occasional_flag() {
    let (mut e, mut g) = warmed("MedKey000001", &corp());
    let ev = with_verdict(
        g.chat("MedKey000001", "acme", end(2), &corp()),
        Category::Sexual,
        SafetyAction::Flag,
    );
    assert!(!fired(&e.observe(&ev), DetectorId::A1));
}

#[test]
fn a4_obfuscated_prompts() {
    let mut e = engine();
    let mut g = Gen::new();
    let one = with_verdict(
        g.chat("ObfKey000001", "acme", T0, &corp()),
        Category::FilterEvasion,
        SafetyAction::Flag,
    );
    assert!(
        !fired(&e.observe(&one), DetectorId::A4),
        "one is not a pattern"
    );
    let two = with_verdict(
        g.chat("ObfKey000001", "acme", T0 + Duration::minutes(3), &corp()),
        Category::FilterEvasion,
        SafetyAction::Flag,
    );
    assert!(fired(&e.observe(&two), DetectorId::A4));
}

#[test]
fn content_verdicts_that_were_only_logged_feed_no_detector() {
    let mut e = engine();
    let mut g = Gen::new();
    let mut alerts = Vec::new();
    // Scores as high as a logged verdict gets, in every content category, many times.
    for i in 0..8 {
        let mut ev = g.chat("LogKey000001", "acme", T0 + Duration::minutes(i), &corp());
        for c in Category::ALL {
            ev = with_verdict(ev, c, SafetyAction::Log);
        }
        alerts.extend(e.observe(&ev));
    }
    assert!(
        alerts.is_empty(),
        "{:?}",
        alerts.iter().map(|a| a.detector).collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------- policy, feedback, robustness

#[test]
fn a_developer_testing_from_home_is_not_suspended() {
    let (mut e, mut g) = warmed("DevKey000001", &corp());
    let home = client(
        "192.0.2.44",
        64506,
        "US",
        "curl/8.5.0",
        &["host", "user-agent", "accept", "authorization"],
    );
    let t = end(2);
    let events = vec![
        listing(&mut g, "DevKey000001", t, &home),
        probe(&mut g, "DevKey000001", t + Duration::seconds(30), &home),
        g.chat("DevKey000001", "acme", t + Duration::seconds(90), &home),
        g.chat("DevKey000001", "acme", t + Duration::seconds(150), &home),
    ];
    let mut kinds = Vec::new();
    for ev in &events {
        for a in e.observe(ev) {
            if let Some(act) = e.decide(&a) {
                kinds.push(act.kind);
            }
        }
    }
    assert!(kinds.iter().all(|k| *k < ActionKind::Suspend), "{kinds:?}");
}

#[test]
fn a_stolen_key_behind_a_relay_is_suspended_within_a_few_requests() {
    let (mut e, mut g) = warmed("StolenKey001", &corp());
    let checker = client(
        "203.0.113.9",
        64499,
        "RO",
        "python-requests/2.32.3",
        &["host", "user-agent"],
    );
    let t = end(2);
    let mut events = vec![
        listing(&mut g, "StolenKey001", t, &checker),
        probe(&mut g, "StolenKey001", t + Duration::seconds(20), &checker),
    ];
    for i in 0..5 {
        let mut ev = g.chat(
            "StolenKey001",
            "acme",
            t + Duration::hours(1) + Duration::seconds(i * 10),
            &relay(),
        );
        ev.system_prompt_hash = Some(format!("{i:032x}"));
        events.push(ev);
    }
    let mut stopped_at = None;
    for (i, ev) in events.iter().enumerate() {
        for a in e.observe(ev) {
            if e.decide(&a)
                .is_some_and(|act| act.kind >= ActionKind::Suspend)
            {
                stopped_at.get_or_insert(i);
            }
        }
    }
    assert!(
        stopped_at.is_some_and(|i| i <= 3),
        "stopped at {stopped_at:?}"
    );
}

#[test]
fn response_rules_are_configurable() {
    let text = r#"
        [detect]
        disabled = ["P5"]
        [detect.thresholds]
        a1_hits = 2
        [response]
        throttle_rpm = 3
        [[response.rules]]
        min_severity = "high"
        detectors = ["A1"]
        action = "revoke"
    "#;
    #[derive(serde::Deserialize)]
    struct File {
        detect: DetectConfig,
        response: ResponseConfig,
    }
    let f: File = toml::from_str(text).unwrap();
    assert_eq!(
        f.response.rules,
        vec![PolicyRule {
            min_severity: Some(Severity::High),
            detectors: vec![DetectorId::A1],
            ..PolicyRule::new(ActionKind::Revoke)
        }]
    );
    let mut e = Engine::new(EngineConfig::new(f.detect, f.response).unwrap());
    let mut g = Gen::new();
    let events: Vec<_> = (0..2)
        .map(|i| {
            with_verdict(
                g.chat("RuleKey00001", "acme", T0 + Duration::minutes(i), &corp()),
                Category::Sexual,
                SafetyAction::Block,
            )
        })
        .collect();
    let alerts = feed(&mut e, &events);
    let a1 = alerts
        .iter()
        .find(|a| a.detector == DetectorId::A1)
        .unwrap();
    assert_eq!(e.decide(a1).unwrap().kind, ActionKind::Revoke);
    // Unknown keys in a section are errors.
    assert!(toml::from_str::<File>("[detect]\nthreshold = 1\n[response]\n").is_err());
    assert!(
        toml::from_str::<File>("[detect]\n[response]\n[[response.rules]]\naction = \"explode\"\n")
            .is_err()
    );
}

#[test]
fn false_positive_feedback_teaches_the_baseline() {
    let (mut e, mut g) = warmed("FpKey0000001", &corp());
    let office2 = Client {
        ip: "203.0.113.60",
        asn: 64502,
        cc: "US",
        ..corp()
    };
    let alerts = e.observe(&g.chat("FpKey0000001", "acme", end(2), &office2));
    let p3 = alerts
        .iter()
        .find(|a| a.detector == DetectorId::P3)
        .unwrap()
        .clone();
    let before = e.risk(&key("FpKey0000001"));
    assert!(e.false_positive(&p3));
    assert!(e.risk(&key("FpKey0000001")) < before);
    let later = g.chat(
        "FpKey0000001",
        "acme",
        end(2) + Duration::hours(3),
        &office2,
    );
    assert!(
        !fired(&e.observe(&later), DetectorId::P3),
        "the new office network is learned"
    );
}

#[test]
fn resuming_a_key_clears_its_risk() {
    let (mut e, mut g) = warmed("ResumeKey001", &corp());
    for a in e.observe(&g.chat("ResumeKey001", "acme", end(2), &relay())) {
        e.decide(&a);
    }
    assert!(e.risk(&key("ResumeKey001")) > 0.0);
    e.key_status(&key("ResumeKey001"), KeyStatus::Active, end(2));
    assert_eq!(e.risk(&key("ResumeKey001")), 0.0);
}

#[test]
fn odd_events_never_panic() {
    let mut e = engine();
    let mut g = Gen::new();
    let mut ev = g.chat("OddKey000001", "", T0, &corp());
    ev.source_ip = "::1".parse().unwrap();
    ev.source_country = Some("ÄÖ".into());
    ev.user_agent = Some(String::new());
    ev.prompt_minhash = vec![1];
    ev.cost_usd = f64::NAN;
    ev.max_tokens = Some(u64::MAX);
    ev.inflight = u32::MAX;
    ev.endpoint = None;
    e.observe(&ev);
    // Time going backwards, far past, far future.
    for t in [T0 - Duration::days(400), T0 + Duration::days(3650), T0] {
        let mut x = g.chat("OddKey000001", "acme", t, &relay());
        x.input_tokens = Some(u64::MAX / 2);
        x.output_tokens = Some(u64::MAX / 2);
        e.observe(&x);
    }
    let mut keyless = g.chat("OddKey000001", "acme", T0, &corp());
    keyless.key_id = None;
    assert!(e.observe(&keyless).is_empty());
    let mut alert = e.observe(&with_verdict(
        g.chat("OddKey000002", "acme", T0, &corp()),
        Category::FilterEvasion,
        SafetyAction::Flag,
    ));
    alert.extend(e.observe(&with_verdict(
        g.chat("OddKey000002", "acme", T0, &corp()),
        Category::FilterEvasion,
        SafetyAction::Flag,
    )));
    for a in &mut alert {
        a.subjects.push(stormwall_types::AlertSubject {
            kind: "asn".into(),
            value: "not a number".into(),
        });
        e.false_positive(a);
    }
}

#[test]
fn state_stays_bounded() {
    let cfg = DetectConfig {
        max_keys: 10,
        max_networks: 5,
        ..DetectConfig::default()
    };
    let mut e = Engine::new(EngineConfig::new(cfg, ResponseConfig::default()).unwrap());
    let mut g = Gen::new();
    for i in 0..50 {
        let k = format!("Bounded{i:05}");
        e.observe(&g.chat(&k, &format!("t{i}"), T0 + Duration::seconds(i), &corp()));
    }
    let s = e.stats();
    assert_eq!(s.keys, 10);
    assert_eq!(s.untracked_events, 40);
    assert!(s.networks <= 5);
}

// ---------------------------------------------------------------- no IP database

/// Events as a gateway without an IP database records them: address only.
fn bare(mut e: UsageEvent) -> UsageEvent {
    e.source_asn = None;
    e.source_as_org = None;
    e.source_country = None;
    e
}

#[test]
fn without_an_ip_database_networks_are_told_apart_by_slash16() {
    let (k, corp) = ("BareNetKey01", corp());
    let mut e = engine();
    let mut g = Gen::new();
    let w: Vec<UsageEvent> = warm(&mut g, k, "acme", &corp, 2)
        .into_iter()
        .map(bare)
        .collect();
    assert!(feed(&mut e, &w).is_empty(), "steady traffic raised alerts");
    // Neighbours in the key's own /16 are its own network: no spread.
    let home = [
        client("198.51.7.7", 0, "", "OpenAI/Python 1.51.0", SDK_HEADERS),
        client("198.51.200.9", 0, "", "OpenAI/Python 1.51.0", SDK_HEADERS),
        client("198.51.100.77", 0, "", "OpenAI/Python 1.51.0", SDK_HEADERS),
    ];
    let events: Vec<UsageEvent> = home
        .iter()
        .enumerate()
        .map(|(i, c)| bare(g.chat(k, "acme", end(2) + Duration::minutes(i as i64), c)))
        .collect();
    let alerts = feed(&mut e, &events);
    assert!(!fired(&alerts, DetectorId::P1), "{alerts:?}");
    // Three other /16s within the hour: the key is being used from several networks.
    let away = [
        client("203.0.113.1", 0, "", "OpenAI/Python 1.51.0", SDK_HEADERS),
        client("192.0.2.1", 0, "", "OpenAI/Python 1.51.0", SDK_HEADERS),
        client("198.18.0.1", 0, "", "OpenAI/Python 1.51.0", SDK_HEADERS),
    ];
    let events: Vec<UsageEvent> = away
        .iter()
        .enumerate()
        .map(|(i, c)| bare(g.chat(k, "acme", end(2) + Duration::minutes(10 + i as i64), c)))
        .collect();
    let alerts = feed(&mut e, &events);
    let p1 = alerts
        .iter()
        .find(|a| a.detector == DetectorId::P1)
        .expect("P1 from /16 prefixes");
    assert!(!p1.evidence.is_empty());
}

// ---------------------------------------------------------------- young keys (V7)

/// A key with minutes of history, then a client from a new network and family: a probe,
/// a listing and role-play. The key is suspended within three attacker requests.
#[test]
fn v7_a_young_key_taken_over_is_suspended_within_three_requests() {
    let mut e = engine();
    let mut g = Gen::new();
    let k = "YoungKey0001";
    // The owner's first minutes, from its office with the SDK (a brand-new tenant).
    let mut evs = Vec::new();
    for m in 0..3 {
        evs.push(g.chat(k, "newco", T0 + Duration::minutes(m * 3), &corp()));
    }
    assert!(feed(&mut e, &evs).is_empty());
    let taker = client(
        "192.0.2.77",
        64599,
        "RO",
        "python-requests/2.31.0",
        &[
            "host",
            "user-agent",
            "accept-encoding",
            "accept",
            "connection",
            "authorization",
        ],
    );
    let at = T0 + Duration::minutes(12);
    let attack = [
        probe(&mut g, k, at, &taker),
        listing(&mut g, k, at + Duration::seconds(20), &taker),
        with_verdict(
            g.chat(k, "newco", at + Duration::seconds(50), &taker),
            VerdictCategory::RoleplayMarkers,
            SafetyAction::Log,
        ),
    ];
    let mut stopped_after = None;
    for (i, ev) in attack.iter().enumerate() {
        for a in e.observe(ev) {
            if let Some(act) = e.decide(&a)
                && act.kind == ActionKind::Suspend
                && stopped_after.is_none()
            {
                assert_eq!(a.detector, DetectorId::V7);
                assert_eq!(a.severity, Severity::High);
                stopped_after = Some(i + 1);
            }
        }
    }
    let n = stopped_after.expect("the young key was not suspended");
    assert!(n <= 3, "suspended after {n} attacker requests");
}

/// A new key of an existing tenant, used from the tenant's own network and client, probing
/// and listing models as an SDK does at start-up: left alone.
#[test]
fn v7_quiet_for_a_new_key_on_the_tenants_own_network_and_client() {
    let mut e = engine();
    let mut g = Gen::new();
    let w = warm(&mut g, "OldKey000001", "acme", &corp(), 2);
    feed(&mut e, &w);
    let k = "NewKey000001";
    let at = end(2);
    let evs = vec![
        listing(&mut g, k, at, &corp()),
        probe(&mut g, k, at + Duration::seconds(5), &corp()),
        g.chat(k, "acme", at + Duration::seconds(30), &corp()),
        g.chat(k, "acme", at + Duration::seconds(60), &corp()),
    ];
    let alerts = feed(&mut e, &evs);
    assert!(!fired(&alerts, DetectorId::V7), "{alerts:?}");
}

/// A developer's first curl from home on a young key (a new network in the tenant's own
/// country, a model listing and a probe) scores below the bar: no V7.
#[test]
fn v7_quiet_for_a_developer_trying_a_young_key_from_home() {
    let mut e = engine();
    let mut g = Gen::new();
    let w = warm(&mut g, "OldKey000002", "acme", &corp(), 2);
    feed(&mut e, &w);
    let k = "NewKey000002";
    let at = end(2);
    let home = client(
        "192.0.2.200",
        64506,
        "US",
        "curl/8.5.0",
        &["host", "user-agent", "accept", "authorization"],
    );
    let mut evs = vec![g.chat(k, "acme", at, &corp())];
    evs.push(listing(&mut g, k, at + Duration::minutes(5), &home));
    evs.push(probe(&mut g, k, at + Duration::minutes(6), &home));
    evs.push(g.chat(k, "acme", at + Duration::minutes(7), &home));
    let alerts = feed(&mut e, &evs);
    assert!(!fired(&alerts, DetectorId::V7), "{alerts:?}");
}

/// A tenant's new key whose very first requests are its developer's curl from home — a
/// residential line in the country next door to the company's cloud region (GB beside a
/// cloud in DE) — with a listing and a probe: no V7 and no suspension. The same session
/// from a residential line far away (BR) is a takeover.
#[test]
fn v7_a_developer_next_door_may_try_a_new_key_first_but_not_someone_far_away() {
    let cloud = client(
        "198.51.100.20",
        64497,
        "DE",
        "OpenAI/Python 1.51.0",
        SDK_HEADERS,
    );
    let curl = ["host", "user-agent", "accept", "authorization"];
    for (cc, asn, fires) in [("GB", 65543, false), ("BR", 64504, true)] {
        let mut e = engine();
        let mut g = Gen::new();
        let w = warm(&mut g, "OldKey000003", "acme", &cloud, 2);
        feed(&mut e, &w);
        let k = "NewKey000003";
        let at = end(2);
        let home = client("192.0.2.201", asn, cc, "curl/8.5.0", &curl);
        let evs = [
            listing(&mut g, k, at, &home),
            probe(&mut g, k, at + Duration::seconds(40), &home),
            g.chat(k, "acme", at + Duration::seconds(90), &home),
        ];
        let mut stopped = false;
        let mut alerts = Vec::new();
        for ev in &evs {
            for a in e.observe(ev) {
                stopped |= e.decide(&a).is_some_and(|x| x.kind >= ActionKind::Suspend);
                alerts.push(a);
            }
        }
        assert_eq!(fired(&alerts, DetectorId::V7), fires, "{cc}: {alerts:?}");
        assert_eq!(stopped, fires, "{cc}: {alerts:?}");
    }
}

/// A young CI key: its owner's smoke tests probe, and its jobs bring a second tool on the
/// owner's network and the owner's tool on a second runner pool of the same cloud region.
/// None of it is a takeover.
#[test]
fn v7_quiet_for_a_ci_key_with_a_second_tool_and_runner_pool() {
    let mut e = engine();
    let mut g = Gen::new();
    let k = "CiKey0000001";
    let curl = ["host", "user-agent", "accept", "authorization"];
    let req = [
        "host",
        "user-agent",
        "accept-encoding",
        "accept",
        "connection",
        "authorization",
    ];
    let runner_a = client("198.51.100.30", 64497, "US", "curl/8.5.0", &curl);
    let runner_a_py = client("198.51.100.31", 64497, "US", "python-requests/2.32.3", &req);
    let runner_b = client("203.0.113.40", 64496, "US", "curl/8.5.0", &curl);
    let runner_b_py = client("203.0.113.41", 64496, "US", "python-requests/2.32.3", &req);
    let mut evs = vec![g.chat(k, "ci", T0, &runner_a)];
    let at = T0 + Duration::hours(12);
    let mut t = at;
    for round in 0..6 {
        evs.push(g.chat(k, "ci", t, &runner_a_py));
        evs.push(g.chat(k, "ci", t + Duration::seconds(2), &runner_b));
        evs.push(probe(&mut g, k, t + Duration::seconds(4), &runner_a));
        evs.push(g.chat(k, "ci", t + Duration::seconds(5), &runner_b_py));
        evs.push(probe(&mut g, k, t + Duration::seconds(6), &runner_b_py));
        if round == 3 {
            evs.push(listing(&mut g, k, t + Duration::seconds(7), &runner_a_py));
        }
        t += Duration::seconds(9);
    }
    let mut alerts = Vec::new();
    for ev in &evs {
        for a in e.observe(ev) {
            assert!(
                e.decide(&a).is_none_or(|x| x.kind < ActionKind::Suspend),
                "{a:?}"
            );
            alerts.push(a);
        }
    }
    assert!(!fired(&alerts, DetectorId::V7), "{alerts:?}");
}

/// A support bot whose system prompt is templated per end user: every request brings a new
/// prompt. Once the key has a baseline of its own, its new prompts are its habit: no R1.
#[test]
fn r1_quiet_for_a_key_with_one_system_prompt_per_request() {
    let mut e = engine();
    let mut g = Gen::new();
    let k = "BotKey000001";
    let mut evs = Vec::new();
    let mut t = T0;
    let mut n = 0u64;
    while t < T0 + Duration::days(3) {
        let mut ev = g.chat(k, "bots", t, &corp());
        n += 1;
        ev.system_prompt_hash = Some(format!("{n:032x}"));
        ev.end_user = Some(format!("user-{n}"));
        evs.push(ev);
        t += Duration::minutes(4);
    }
    let alerts = feed(&mut e, &evs);
    assert!(!fired(&alerts, DetectorId::R1), "{alerts:?}");
    // A key with a handful of prompts still sees a burst of new ones.
    assert!(stormwall_detect::state::per_request_prompts(300, 400));
    assert!(!stormwall_detect::state::per_request_prompts(3, 400));
}

/// A signup's key still on its developer's home line, taken over from another address of
/// the same residential ISP in the same country: no new ASN or country, yet a new client on
/// another /24 of the owner's one line is a new network. Suspended within three requests;
/// the owner's own client from another /24 of that ISP is left alone.
#[test]
fn v7_a_taker_on_the_owners_own_isp_is_a_new_network() {
    let home = client(
        "100.78.65.20",
        64506,
        "US",
        "OpenAI/Python 1.44.0",
        SDK_HEADERS,
    );
    let req = [
        "host",
        "user-agent",
        "accept-encoding",
        "accept",
        "connection",
        "authorization",
    ];
    let taker = client("100.78.200.9", 64506, "US", "python-requests/2.32.3", &req);
    let mut e = engine();
    let mut g = Gen::new();
    let k = "HomeKey00001";
    let owner: Vec<UsageEvent> = (0..3)
        .map(|m| g.chat(k, "signup", T0 + Duration::minutes(m * 4), &home))
        .collect();
    assert!(feed(&mut e, &owner).is_empty());
    let at = T0 + Duration::minutes(20);
    let attack = [
        probe(&mut g, k, at, &taker),
        listing(&mut g, k, at + Duration::seconds(30), &taker),
        with_verdict(
            g.chat(k, "signup", at + Duration::seconds(60), &taker),
            VerdictCategory::RoleplayMarkers,
            SafetyAction::Log,
        ),
    ];
    let mut stopped_after = None;
    for (i, ev) in attack.iter().enumerate() {
        for a in e.observe(ev) {
            if e.decide(&a).is_some_and(|x| x.kind == ActionKind::Suspend) {
                assert_eq!(a.detector, DetectorId::V7);
                stopped_after.get_or_insert(i + 1);
            }
        }
    }
    let n = stopped_after.expect("the young key was not suspended");
    assert!(n <= 3, "suspended after {n} attacker requests");

    // The owner's own SDK from another address of the same ISP: no V7.
    let mut e = engine();
    let mut g = Gen::new();
    let owner: Vec<UsageEvent> = (0..3)
        .map(|m| g.chat(k, "signup", T0 + Duration::minutes(m * 4), &home))
        .collect();
    feed(&mut e, &owner);
    let moved = client(
        "100.78.201.7",
        64506,
        "US",
        "OpenAI/Python 1.44.0",
        SDK_HEADERS,
    );
    let evs = [
        listing(&mut g, k, at, &moved),
        probe(&mut g, k, at + Duration::seconds(30), &moved),
        g.chat(k, "signup", at + Duration::seconds(60), &moved),
    ];
    let alerts = feed(&mut e, &evs);
    assert!(!fired(&alerts, DetectorId::V7), "{alerts:?}");
}

/// A young key taken over from inside its owner's very /24 (another address behind the
/// office NAT or the household line): no network signal, yet a new client that tests the
/// key and fronts role-play on a tenant without it is someone else — suspended within three
/// requests, also when the taker's ordinary chat comes between its probe and its role-play
/// (it is not learned as the owner's new tool). A developer on that /24 trying the key with
/// curl (a listing, a probe, a chat) is left alone.
#[test]
fn v7_a_taker_inside_the_owners_own_slash24_is_stopped_but_a_developer_there_is_not() {
    let home = client(
        "100.78.65.20",
        64506,
        "US",
        "OpenAI/Python 1.44.0",
        SDK_HEADERS,
    );
    let req = [
        "host",
        "user-agent",
        "accept-encoding",
        "accept",
        "connection",
        "authorization",
    ];
    let taker = client("100.78.65.77", 64506, "US", "python-requests/2.32.3", &req);
    let k = "HomeKey00002";
    let start = |g: &mut Gen, e: &mut Engine| {
        let owner: Vec<UsageEvent> = (0..3)
            .map(|m| g.chat(k, "signup", T0 + Duration::minutes(m * 4), &home))
            .collect();
        assert!(feed(e, &owner).is_empty());
    };
    let at = T0 + Duration::minutes(20);
    for chat_between in [false, true] {
        let mut e = engine();
        let mut g = Gen::new();
        start(&mut g, &mut e);
        let mut attack = vec![probe(&mut g, k, at, &taker)];
        if chat_between {
            attack.push(g.chat(k, "signup", at + Duration::seconds(10), &taker));
        }
        attack.push(listing(&mut g, k, at + Duration::seconds(30), &taker));
        attack.push(with_verdict(
            g.chat(k, "signup", at + Duration::seconds(60), &taker),
            VerdictCategory::RoleplayMarkers,
            SafetyAction::Log,
        ));
        let mut stopped_after = None;
        for (i, ev) in attack.iter().enumerate() {
            for a in e.observe(ev) {
                if e.decide(&a).is_some_and(|x| x.kind == ActionKind::Suspend) {
                    assert_eq!(a.detector, DetectorId::V7);
                    stopped_after.get_or_insert(i + 1);
                }
            }
        }
        let n = stopped_after.expect("the young key was not suspended");
        assert!(n <= attack.len(), "suspended after {n} attacker requests");
    }

    let mut e = engine();
    let mut g = Gen::new();
    start(&mut g, &mut e);
    let dev = client(
        "100.78.65.31",
        64506,
        "US",
        "curl/8.5.0",
        &["host", "user-agent", "accept", "authorization"],
    );
    let evs = [
        listing(&mut g, k, at, &dev),
        probe(&mut g, k, at + Duration::seconds(30), &dev),
        g.chat(k, "signup", at + Duration::seconds(60), &dev),
        probe(&mut g, k, at + Duration::seconds(90), &dev),
    ];
    let mut alerts = Vec::new();
    for ev in &evs {
        for a in e.observe(ev) {
            assert!(
                e.decide(&a).is_none_or(|x| x.kind < ActionKind::Suspend),
                "{a:?}"
            );
            alerts.push(a);
        }
    }
    assert!(!fired(&alerts, DetectorId::V7), "{alerts:?}");
}

/// A taker inside the owner's very /24 that never fronts role-play: a web front end's relay
/// (blank Origin and Referer) that probes or lists the key is suspended within three
/// requests, whichever comes first, its ordinary chat or its test. A developer on that /24
/// trying the key with a new SDK (a start-up listing, chats) or with curl is left alone.
#[test]
fn v7_a_relay_inside_the_owners_slash24_without_roleplay_is_stopped() {
    let home = client(
        "100.78.65.20",
        64506,
        "US",
        "OpenAI/Python 1.44.0",
        SDK_HEADERS,
    );
    let relay = client(
        "100.78.65.77",
        64506,
        "US",
        "axios/1.7.8",
        &[
            "accept",
            "content-type",
            "authorization",
            "user-agent",
            "content-length",
            "origin",
            "referer",
            "host",
        ],
    );
    let blank = |mut ev: UsageEvent| {
        ev.origin = Some(String::new());
        ev.referer = Some(String::new());
        ev
    };
    let k = "HomeKey00005";
    let start = |g: &mut Gen, e: &mut Engine| {
        let owner: Vec<UsageEvent> = (0..3)
            .map(|m| g.chat(k, "signup", T0 + Duration::minutes(m * 4), &home))
            .collect();
        assert!(feed(e, &owner).is_empty());
    };
    let at = T0 + Duration::minutes(20);
    for chat_first in [false, true] {
        let mut e = engine();
        let mut g = Gen::new();
        start(&mut g, &mut e);
        let mut attack = Vec::new();
        if chat_first {
            attack.push(blank(g.chat(k, "signup", at, &relay)));
        }
        attack.push(blank(probe(&mut g, k, at + Duration::seconds(10), &relay)));
        attack.push(blank(g.chat(
            k,
            "signup",
            at + Duration::seconds(20),
            &relay,
        )));
        let mut stopped_after = None;
        for (i, ev) in attack.iter().enumerate() {
            for a in e.observe(ev) {
                if e.decide(&a).is_some_and(|x| x.kind == ActionKind::Suspend) {
                    stopped_after.get_or_insert(i + 1);
                }
            }
        }
        let n = stopped_after.expect("the young key was not suspended");
        assert!(n <= 3, "suspended after {n} attacker requests");
    }

    // Developers on the owner's /24: a new SDK listing at start-up, then chatting; curl.
    let node = client("100.78.65.31", 64506, "US", "OpenAI/JS 4.69.1", SDK_HEADERS);
    let curl = client(
        "100.78.65.32",
        64506,
        "US",
        "curl/8.5.0",
        &["host", "user-agent", "accept", "authorization"],
    );
    for dev in [node, curl] {
        let mut e = engine();
        let mut g = Gen::new();
        start(&mut g, &mut e);
        let evs = [
            listing(&mut g, k, at, &dev),
            probe(&mut g, k, at + Duration::seconds(30), &dev),
            g.chat(k, "signup", at + Duration::seconds(60), &dev),
            g.chat(k, "signup", at + Duration::seconds(90), &dev),
        ];
        let alerts = feed(&mut e, &evs);
        assert!(!fired(&alerts, DetectorId::V7), "{alerts:?}");
    }
}

/// A young key resold from its first minutes: a new client on rented servers of two
/// providers (three /24s), each request an ordinary chat with its customer's own system
/// prompt — no probe, no listing, no role-play yet (held-out seed 223, now tuning: ten such
/// requests were served before the first role-play). Suspended within three requests. The
/// owner's app deployed on one provider's hosts with a prompt per end user, on two
/// providers with its handful of prompts, or on two providers with the prompts its
/// developer tried first, is left alone.
#[test]
fn v7_a_young_key_resold_with_its_customers_prompts_is_stopped() {
    let owner = client(
        "198.51.100.20",
        64497,
        "DE",
        "OpenAI/Python 1.52.0",
        SDK_HEADERS,
    );
    let aio = [
        "host",
        "user-agent",
        "accept",
        "accept-encoding",
        "content-type",
        "authorization",
    ];
    let ua = "Python/3.11 aiohttp/3.9.4";
    let two_providers = [
        client("203.0.113.5", 64496, "DE", ua, &aio),
        client("192.0.2.9", 64502, "DE", ua, &aio),
        client("198.18.5.9", 64496, "DE", ua, &aio),
    ];
    let one_provider = [
        client("203.0.113.5", 64496, "DE", ua, &aio),
        client("198.18.0.9", 64496, "DE", ua, &aio),
        client("198.18.1.9", 64496, "DE", ua, &aio),
    ];
    let k = "YoungKey0223";
    // (clients, distinct prompts, prompts the owner sent first, whether it is a takeover)
    let cases = [
        (&two_providers, 12, 0, true),
        (&one_provider, 12, 0, false),
        (&two_providers, 2, 0, false),
        // The developer tried the app's prompts first (tuning seed 74): the app on two
        // providers brings one prompt of its own.
        (&two_providers, 3, 2, false),
    ];
    for (clients, prompts, known, takeover) in cases {
        let mut e = engine();
        let mut g = Gen::new();
        let mut first = vec![g.chat(k, "resaleco", T0, &owner)];
        for p in 1..=known {
            let mut ev = g.chat(k, "resaleco", T0 + Duration::minutes(p as i64), &owner);
            ev.system_prompt_hash = Some(format!("{p:032x}"));
            first.push(ev);
        }
        assert!(feed(&mut e, &first).is_empty());
        let at = T0 + Duration::minutes(13);
        let mut stopped_after = None;
        let mut alerts = Vec::new();
        for i in 0..12usize {
            let mut ev = g.chat(
                k,
                "resaleco",
                at + Duration::seconds(10 * i as i64),
                &clients[i % 3],
            );
            ev.system_prompt_hash = Some(format!("{:032x}", 1 + i % prompts));
            for a in e.observe(&ev) {
                if e.decide(&a).is_some_and(|x| x.kind >= ActionKind::Suspend) {
                    stopped_after.get_or_insert(i + 1);
                }
                alerts.push(a);
            }
        }
        if takeover {
            let n = stopped_after.unwrap_or_else(|| panic!("not suspended: {alerts:?}"));
            assert!(n <= 3, "suspended after {n} attacker requests");
        } else {
            assert_eq!(stopped_after, None, "{prompts} prompts: {alerts:?}");
            assert!(!fired(&alerts, DetectorId::V7), "{alerts:?}");
        }
    }
}

/// Takers inside the owner's very /24 that V7 once learned as the owner: one claiming the
/// owner's own SDK without the SDK's headers (a forgery, known by its exact shape only); one
/// whose first request is ordinary chat (bridged in as the owner's new tool, foreign again
/// once it tests the key); one whose only test is a listing the owner also sends at start-up
/// (a new client's test all the same on that /24). Each is suspended within three requests.
#[test]
fn v7_takers_inside_the_owners_slash24_that_look_like_the_owner_are_stopped() {
    let home = client(
        "100.78.65.20",
        64506,
        "US",
        "OpenAI/Python 1.55.0",
        SDK_HEADERS,
    );
    let req = [
        "host",
        "user-agent",
        "accept-encoding",
        "accept",
        "connection",
        "authorization",
    ];
    let forged = client(
        "100.78.65.77",
        64506,
        "US",
        "OpenAI/Python 1.50.0",
        &[
            "host",
            "user-agent",
            "accept",
            "content-type",
            "authorization",
        ],
    );
    let aio = client(
        "100.78.65.91",
        64506,
        "US",
        "Python/3.11 aiohttp/3.9.4",
        &req,
    );
    let k = "HomeKey00003";
    let at = T0 + Duration::minutes(20);
    let roleplay = |g: &mut Gen, t: OffsetDateTime, c: &Client| {
        with_verdict(
            g.chat(k, "signup", t, c),
            VerdictCategory::RoleplayMarkers,
            SafetyAction::Log,
        )
    };
    let mut late = Vec::new();
    for case in ["forged", "chat_first", "owner_lists"] {
        let mut e = engine();
        let mut g = Gen::new();
        let mut owner: Vec<UsageEvent> = (0..3)
            .map(|m| g.chat(k, "signup", T0 + Duration::minutes(m * 4), &home))
            .collect();
        if case == "owner_lists" {
            owner.insert(0, listing(&mut g, k, T0 - Duration::seconds(5), &home));
        }
        assert!(
            feed(&mut e, &owner).is_empty(),
            "{case}: the owner raised alerts"
        );
        let attack = match case {
            "forged" => vec![
                listing(&mut g, k, at, &forged),
                probe(&mut g, k, at + Duration::seconds(10), &forged),
                roleplay(&mut g, at + Duration::seconds(30), &forged),
                roleplay(&mut g, at + Duration::seconds(50), &forged),
            ],
            "chat_first" => vec![
                g.chat(k, "signup", at, &aio),
                listing(&mut g, k, at + Duration::seconds(20), &aio),
                roleplay(&mut g, at + Duration::seconds(40), &aio),
                roleplay(&mut g, at + Duration::seconds(60), &aio),
            ],
            _ => vec![
                roleplay(&mut g, at, &aio),
                listing(&mut g, k, at + Duration::seconds(20), &aio),
                roleplay(&mut g, at + Duration::seconds(40), &aio),
            ],
        };
        let mut stopped_after = None;
        for (i, ev) in attack.iter().enumerate() {
            for a in e.observe(ev) {
                if e.decide(&a).is_some_and(|x| x.kind == ActionKind::Suspend) {
                    assert_eq!(a.detector, DetectorId::V7, "{case}");
                    stopped_after.get_or_insert(i + 1);
                }
            }
        }
        if stopped_after.is_none_or(|n| n > 3) {
            late.push(format!(
                "{case}: suspended after {stopped_after:?} requests"
            ));
        }
    }
    assert!(late.is_empty(), "{late:?}");
}

/// Three days of a support bot on `corp()`: a call every 4 minutes, each with its own
/// system prompt, and an end-user id on the `n`th call where `with_id(n)`; R1 stays quiet.
fn learn_bot(e: &mut Engine, g: &mut Gen, k: &str, with_id: impl Fn(u64) -> bool) {
    let mut evs = Vec::new();
    let mut t = T0;
    let mut n = 0u64;
    while t < T0 + Duration::days(3) {
        let mut ev = g.chat(k, "bots", t, &corp());
        n += 1;
        ev.system_prompt_hash = Some(format!("{n:032x}"));
        if with_id(n) {
            ev.end_user = Some(format!("user-{}", n % 400));
        }
        evs.push(ev);
        t += Duration::minutes(4);
    }
    assert!(!fired(&feed(e, &evs), DetectorId::R1));
}

/// A support bot whose every call carries its users' ids, resold by someone who copied the
/// app's own SDK and header shape onto a residential line in the same country (no relay
/// artefact, no new client, per-user prompts so no new-prompt burst): calls without an
/// end-user id from a network the key never used suspend it within five. The owner's own
/// calls from a new network (with ids) and a developer's curl session from home (a listing,
/// a probe and three chats without ids) do not.
#[test]
fn r1_calls_without_the_apps_end_user_ids_from_a_new_network_suspend() {
    let bot = |e: &mut Engine, g: &mut Gen, k: &str| learn_bot(e, g, k, |_| true);
    let at = end(3);
    let k = "BotKey000002";
    let line = client(
        "192.0.2.50",
        64506,
        "US",
        "OpenAI/Python 1.51.0",
        SDK_HEADERS,
    );

    let mut e = engine();
    let mut g = Gen::new();
    bot(&mut e, &mut g, k);
    let mut stopped_after = None;
    for i in 0..12 {
        let mut ev = g.chat(k, "bots", at + Duration::minutes(i * 2), &line);
        ev.system_prompt_hash = Some(format!("{:032x}", 9_000 + i % 3));
        if i % 3 == 2 {
            ev.end_user = Some(format!("buyer-{i}"));
        }
        for a in e.observe(&ev) {
            if e.decide(&a).is_some_and(|x| x.kind == ActionKind::Suspend) {
                stopped_after.get_or_insert(i + 1);
            }
        }
    }
    let n = stopped_after.expect("the resold key was not suspended");
    assert!(n <= 8, "suspended after {n} reseller calls");

    // The owner's app moved to a new network: its calls still carry ids.
    let mut e = engine();
    let mut g = Gen::new();
    bot(&mut e, &mut g, k);
    let mut alerts = Vec::new();
    for i in 0..12 {
        let mut ev = g.chat(k, "bots", at + Duration::minutes(i * 2), &line);
        ev.system_prompt_hash = Some(format!("{:032x}", 9_000 + i));
        ev.end_user = Some(format!("user-{}", i * 7));
        alerts.extend(e.observe(&ev));
    }
    assert!(!fired(&alerts, DetectorId::R1), "{alerts:?}");

    // A developer's hand-written session from home.
    let mut e = engine();
    let mut g = Gen::new();
    bot(&mut e, &mut g, k);
    let home = client(
        "192.0.2.201",
        64506,
        "US",
        "curl/8.5.0",
        &["host", "user-agent", "accept", "authorization"],
    );
    let mut evs = vec![
        listing(&mut g, k, at, &home),
        probe(&mut g, k, at + Duration::seconds(30), &home),
    ];
    for i in 0..3 {
        evs.push(g.chat(k, "bots", at + Duration::minutes(1 + i), &home));
    }
    let alerts = feed(&mut e, &evs);
    assert!(!fired(&alerts, DetectorId::R1), "{alerts:?}");
}

/// The reseller of `r1_calls_without_the_apps_end_user_ids_from_a_new_network_suspend`
/// whose first call lands a minute before an hour boundary: that quiet hour is learned, its
/// network with it, and before the probation on newly learned networks R1 took the reseller
/// for the owner from then on (tuning seed 46: 1,692 requests served, never stopped). Now
/// the network stays new to R1 for a day, and the learned hour's call still counts. A
/// developer's curl session from home across the same boundary is still left alone.
#[test]
fn r1_a_resellers_network_learned_over_an_hour_boundary_stays_new() {
    let bot = |e: &mut Engine, g: &mut Gen, k: &str| learn_bot(e, g, k, |_| true);
    // A minute before the hour ends, then every two minutes into the next.
    let first = T0 + Duration::days(3) + Duration::minutes(59);
    let at = |i: i64| {
        if i == 0 {
            first
        } else {
            first + Duration::minutes(2 * i)
        }
    };
    let k = "BotKey000004";
    let line = client(
        "192.0.2.50",
        64506,
        "US",
        "OpenAI/Python 1.51.0",
        SDK_HEADERS,
    );
    let mut e = engine();
    let mut g = Gen::new();
    bot(&mut e, &mut g, k);
    let mut stopped_after = None;
    for i in 0..30 {
        let mut ev = g.chat(k, "bots", at(i), &line);
        ev.system_prompt_hash = Some(format!("{:032x}", 9_000 + i % 3));
        if i % 3 == 2 {
            ev.end_user = Some(format!("buyer-{i}"));
        }
        for a in e.observe(&ev) {
            if e.decide(&a).is_some_and(|x| x.kind == ActionKind::Suspend) {
                stopped_after.get_or_insert(i + 1);
            }
        }
    }
    let n = stopped_after.expect("the resold key was not suspended");
    assert!(n <= 8, "suspended after {n} reseller calls");

    // A developer's chat from home before the boundary, then a listing, a probe and two
    // chats after it: four calls without ids, under the five that make R1 high.
    let mut e = engine();
    let mut g = Gen::new();
    bot(&mut e, &mut g, k);
    let home = client(
        "192.0.2.201",
        64506,
        "US",
        "curl/8.5.0",
        &["host", "user-agent", "accept", "authorization"],
    );
    let mut evs = vec![
        g.chat(k, "bots", at(0), &home),
        listing(&mut g, k, at(1), &home),
        probe(&mut g, k, at(1) + Duration::seconds(30), &home),
    ];
    for i in 2..4 {
        evs.push(g.chat(k, "bots", at(i), &home));
    }
    let alerts = feed(&mut e, &evs);
    assert!(!fired(&alerts, DetectorId::R1), "{alerts:?}");

    // The owner's app on a new network from the same minute: its calls carry ids.
    let mut e = engine();
    let mut g = Gen::new();
    bot(&mut e, &mut g, k);
    let mut alerts = Vec::new();
    for i in 0..30 {
        let mut ev = g.chat(k, "bots", at(i), &line);
        ev.system_prompt_hash = Some(format!("{:032x}", 9_000 + i));
        ev.end_user = Some(format!("user-{}", i * 7));
        alerts.extend(e.observe(&ev));
    }
    assert!(!fired(&alerts, DetectorId::R1), "{alerts:?}");
}

/// The same resale on a support bot that passes its users' ids on most calls but not all
/// (one in seven without, as the live simulation's history has it): more than 1 % without,
/// so the count alone cannot tell, but a new network whose calls lack ids far more often
/// than the key's own ever did (a binomial bound on the learned share) suspends it. The
/// owner's app moving to a new network, with its usual share without ids, does not.
#[test]
fn r1_a_new_network_missing_ids_far_more_often_than_the_app_suspends() {
    let bot = |e: &mut Engine, g: &mut Gen, k: &str| learn_bot(e, g, k, |n| !n.is_multiple_of(7));
    let at = end(3);
    let k = "BotKey000003";
    let line = client(
        "192.0.2.50",
        64506,
        "US",
        "OpenAI/Python 1.51.0",
        SDK_HEADERS,
    );

    let mut e = engine();
    let mut g = Gen::new();
    bot(&mut e, &mut g, k);
    let mut stopped_after = None;
    for i in 0..30 {
        let mut ev = g.chat(k, "bots", at + Duration::minutes(i), &line);
        ev.system_prompt_hash = Some(format!("{:032x}", 9_000 + i % 3));
        if i % 3 == 2 {
            ev.end_user = Some(format!("buyer-{i}"));
        }
        for a in e.observe(&ev) {
            if e.decide(&a).is_some_and(|x| x.kind == ActionKind::Suspend) {
                stopped_after.get_or_insert(i + 1);
            }
        }
    }
    let n = stopped_after.expect("the resold key was not suspended");
    assert!(n <= 15, "suspended after {n} reseller calls");

    // The owner's app moved to a new network, with its usual share of calls without ids.
    let mut e = engine();
    let mut g = Gen::new();
    bot(&mut e, &mut g, k);
    let mut alerts = Vec::new();
    for i in 0..40 {
        let mut ev = g.chat(k, "bots", at + Duration::minutes(i), &line);
        ev.system_prompt_hash = Some(format!("{:032x}", 9_000 + i));
        if i % 7 != 3 {
            ev.end_user = Some(format!("user-{}", i * 7));
        }
        alerts.extend(e.observe(&ev));
    }
    assert!(!fired(&alerts, DetectorId::R1), "{alerts:?}");
}
