//! Simulator tests: deterministic evaluation at small scale, and a replay of the simulated
//! events through a fresh engine giving the alerts the live run gave.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use stormwall_detect::{Engine, EngineConfig};
use stormwall_sim::{SimConfig, Simulation};
use stormwall_types::{DetectorId, Severity};

#[test]
fn replaying_the_same_events_gives_the_same_alerts() {
    let sim = Simulation::new(SimConfig {
        legit_keys: 12,
        days: 4,
        warmup_days: 2,
        attacks_per_scenario: 1,
        ..SimConfig::default()
    })
    .unwrap();
    let mut events = Vec::new();
    let egress = sim.egress();
    let cfg = EngineConfig {
        egress: egress.clone(),
        ..EngineConfig::default()
    };
    let mut live = Engine::new(cfg);
    let mut live_alerts = Vec::new();
    sim.run(&mut live, Severity::Medium, |e, _, alerts, _| {
        events.push(e.clone());
        // H2 depends on exposure reports, which are not events: a replay of the file alone
        // cannot know them.
        live_alerts.extend(
            alerts
                .iter()
                .filter(|a| a.detector != DetectorId::H2)
                .map(|a| a.id.clone()),
        );
    });
    for _ in 0..2 {
        let cfg = EngineConfig {
            egress: egress.clone(),
            ..EngineConfig::default()
        };
        let mut replay = Engine::new(cfg);
        let mut ids = Vec::new();
        for e in &events {
            for a in replay.observe(e) {
                replay.decide(&a);
                ids.push(a.id);
            }
        }
        assert_eq!(ids, live_alerts);
    }
}

#[test]
fn simulator_evaluates_deterministically_at_small_scale() {
    let cfg = SimConfig {
        legit_keys: 30,
        days: 4,
        warmup_days: 2,
        attacks_per_scenario: 1,
        ..SimConfig::default()
    };
    let run = || {
        let sim = Simulation::new(cfg.clone()).unwrap();
        let ec = EngineConfig {
            egress: sim.egress(),
            ..EngineConfig::default()
        };
        let mut engine = Engine::new(ec);
        sim.run(&mut engine, Severity::Medium, |_, _, _, _| {})
    };
    let a = run();
    let b = run();
    assert_eq!(a, b);
    assert_eq!(a.legit_keys, 30);
    assert!(a.attack_keys >= 12, "{}", a.attack_keys);
    assert!(a.events > 1_000);
    assert!(a.recall > 0.5, "{a:#?}");
    assert_eq!(a.false_suspensions, 0, "{a:#?}");
    let json = serde_json::to_value(&a).unwrap();
    for field in [
        "attack_keys",
        "legit_keys",
        "recall",
        "precision",
        "false_suspensions",
        "median_attacker_requests_served",
        "per_detector",
    ] {
        assert!(json.get(field).is_some(), "missing {field}");
    }
}
