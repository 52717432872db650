//! Cost of `Engine::observe` per event, on simulated traffic: the request-path budget is
//! 50 µs per event.
//!
//! * `replay`: every event of a simulated population (legitimate tenants and attacks), in
//!   order, through a fresh engine — key creation, learning, hour roll-overs, alerts.
//! * `steady`: events of mature keys through an engine that has already learned them (the
//!   common case on a running gateway).

use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;
use std::time::{Duration, Instant};

use stormwall_detect::{Engine, EngineConfig};
use stormwall_sim::{SimConfig, Simulation};
use stormwall_types::{Severity, UsageEvent};

fn events() -> (Vec<UsageEvent>, stormwall_detect::EgressList) {
    let sim = Simulation::new(SimConfig {
        legit_keys: 60,
        days: 4,
        warmup_days: 2,
        attacks_per_scenario: 1,
        ..SimConfig::default()
    })
    .unwrap_or_else(|e| panic!("simulation: {e}"));
    let egress = sim.egress();
    let mut engine = Engine::new(config(&egress));
    let mut out = Vec::new();
    sim.run(&mut engine, Severity::Medium, |e, _, _, _| {
        out.push(e.clone())
    });
    (out, egress)
}

fn config(egress: &stormwall_detect::EgressList) -> EngineConfig {
    EngineConfig {
        egress: egress.clone(),
        ..EngineConfig::default()
    }
}

fn bench(c: &mut Criterion) {
    let (events, egress) = events();
    let mut group = c.benchmark_group("observe");
    group.measurement_time(Duration::from_secs(8));

    group.bench_function("replay", |b| {
        b.iter_custom(|iters| {
            let mut engine = Engine::new(config(&egress));
            let mut alerts = Vec::new();
            let mut total = Duration::ZERO;
            let mut i = 0usize;
            for _ in 0..iters {
                if i == events.len() {
                    engine = Engine::new(config(&egress));
                    i = 0;
                }
                let e = &events[i];
                i += 1;
                let start = Instant::now();
                engine.observe_into(black_box(e), &mut alerts);
                for a in alerts.drain(..) {
                    black_box(engine.decide(&a));
                }
                total += start.elapsed();
            }
            total
        });
    });

    // Learn on the first two thirds, then measure the rest (repeatedly).
    let split = events.len() * 2 / 3;
    let mut engine = Engine::new(config(&egress));
    for e in &events[..split] {
        for a in engine.observe(e) {
            engine.decide(&a);
        }
    }
    let tail = &events[split..];
    let mut i = 0usize;
    let mut alerts = Vec::new();
    group.bench_function("steady", |b| {
        b.iter(|| {
            let e = &tail[i % tail.len()];
            i += 1;
            engine.observe_into(black_box(e), &mut alerts);
            alerts.clear();
        });
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
