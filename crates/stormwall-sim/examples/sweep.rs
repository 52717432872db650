//! Runs the default-scale evaluation over several seeds and prints one line per seed, so a
//! calibration change is judged on many seeds at once; `--explain` also lists why each
//! legitimate key got a medium-or-worse incident or was stopped. Use `--explain` on the
//! tuning seeds only: reading the held-out seeds' noise is tuning on them.
//!
//! ```sh
//! cargo run --release -p stormwall-sim --example sweep -- 1 2 3 4 5 --explain
//! cargo run --release -p stormwall-sim --example sweep -- --holdout 11 12 13 14 15
//! ```
#![allow(clippy::print_stdout, clippy::print_stderr)] // A command-line tool: its report is its output.

use std::collections::HashMap;

use stormwall_detect::{Engine, EngineConfig, Grouper};
use stormwall_sim::{SimConfig, Simulation};
use stormwall_types::{ActionKind, Incident, IncidentSubject, Severity};

fn main() {
    let mut seeds = Vec::new();
    let mut holdout = false;
    let mut explain = false;
    let mut legit_keys = 200;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--holdout" => holdout = true,
            "--explain" => explain = true,
            "--legit-keys" => {
                legit_keys = args.next().and_then(|v| v.parse().ok()).unwrap_or(200);
            }
            s => match s.parse::<u64>() {
                Ok(n) => seeds.push(n),
                Err(_) => {
                    eprintln!("usage: sweep [--holdout] [--explain] [--legit-keys N] SEED…");
                    std::process::exit(2);
                }
            },
        }
    }
    if seeds.is_empty() {
        seeds = vec![1, 2, 3, 4, 5];
    }
    println!("seed recall precision legit_medium false_susp throttled median p90 max young_served");
    for seed in seeds {
        run(seed, holdout, explain, legit_keys);
    }
}

fn run(seed: u64, holdout: bool, explain: bool, legit_keys: usize) {
    let sim = match Simulation::new(SimConfig {
        seed,
        holdout,
        legit_keys,
        ..SimConfig::default()
    }) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("seed {seed}: {e}");
            return;
        }
    };
    let keys = sim.keys().to_vec();
    let legit: HashMap<String, usize> = keys
        .iter()
        .enumerate()
        .filter(|(_, k)| k.scenario.is_none())
        .map(|(i, k)| (k.id.as_str().to_owned(), i))
        .collect();
    let cfg = EngineConfig {
        egress: sim.egress(),
        ..EngineConfig::default()
    };
    let mut engine = Engine::new(cfg);
    let mut grouper = Grouper::default();
    // Latest revision of every incident about a legitimate key.
    let mut incidents: HashMap<String, Incident> = HashMap::new();
    let mut stops: Vec<String> = Vec::new();
    // `SWEEP_TRACE=KEY_ID` prints every event of one key, `SWEEP_TRACE=SCENARIO` of every
    // key of one scenario (tuning seeds only).
    let traced: HashMap<String, &str> = keys
        .iter()
        .filter_map(|k| {
            let s = stormwall_sim::SCENARIOS.get(k.scenario?)?;
            Some((k.id.as_str().to_owned(), *s))
        })
        .collect();
    let trace = std::env::var("SWEEP_TRACE").ok();
    let report = sim.run(
        &mut engine,
        Severity::Medium,
        |e, label, alerts, actions| {
            if let (Some(t), Some(k)) = (&trace, &e.key_id)
                && (t == k.as_str() || traced.get(k.as_str()).is_some_and(|s| s == t))
            {
                print!("  {}", k.as_str());
                println!(
                    "  trace {} {:?} AS{} {} {} sys={} user={} {:?} max_tokens={:?} alerts=[{}]",
                    e.timestamp,
                    label,
                    e.source_asn.unwrap_or(0),
                    e.source_country.as_deref().unwrap_or("-"),
                    e.user_agent.as_deref().unwrap_or("-"),
                    e.system_prompt_hash
                        .as_deref()
                        .map_or("-", |h| &h[..h.len().min(8)]),
                    e.end_user.is_some(),
                    e.endpoint,
                    e.max_tokens,
                    alerts
                        .iter()
                        .map(|a| format!("{}:{:?}", a.detector, a.severity))
                        .collect::<Vec<_>>()
                        .join(" "),
                );
            }
            for a in alerts {
                let action = actions.iter().find(|x| x.alert_id == a.id);
                let Some(u) = grouper.add(a, action) else {
                    continue;
                };
                if let IncidentSubject::Key(k) = &u.incident.subject
                    && legit.contains_key(k)
                {
                    incidents.insert(u.incident.id.clone(), u.incident);
                }
            }
            for x in actions {
                if matches!(x.kind, ActionKind::Suspend | ActionKind::Revoke)
                    && legit.contains_key(x.key_id.as_str())
                {
                    let why =
                        alerts
                            .iter()
                            .find(|a| a.id == x.alert_id)
                            .map_or_else(String::new, |a| {
                                let f: Vec<String> = a
                                    .features
                                    .iter()
                                    .map(|f| match f.threshold {
                                        Some(t) => format!("{}={:.1}/{t:.1}", f.name, f.value),
                                        None => format!("{}={:.1}", f.name, f.value),
                                    })
                                    .collect();
                                format!("\n      {}\n      [{}]", a.explanation, f.join(" "))
                            });
                    stops.push(format!(
                        "{} {:?}: {}{why}",
                        x.key_id.as_str(),
                        x.kind,
                        x.reason
                    ));
                }
            }
        },
    );
    let young: Vec<String> = ["young_takeover", "young_resale"]
        .iter()
        .filter_map(|s| report.per_scenario.get(*s))
        .map(|f| format!("{:?}", f.served))
        .collect();
    println!(
        "{seed} {:.3} {:.3} {} {} {} {} {} {} {}",
        report.recall,
        report.precision,
        report.legit_keys_with_medium_incident,
        report.false_suspensions,
        report.false_throttles,
        report.median_attacker_requests_served,
        report.p90_attacker_requests_served,
        report.max_attacker_requests_served,
        young.join(" "),
    );
    // `SWEEP_SHOW=SCENARIO` prints that scenario's served counts on every seed (`all`:
    // every scenario's).
    let show = std::env::var("SWEEP_SHOW").ok();
    for (name, f) in &report.per_scenario {
        if f.detected < f.keys
            || f.max_served.unwrap_or(0) > 5
            || show.as_deref().is_some_and(|s| s == name || s == "all")
        {
            println!(
                "  scenario {name}: detected {}/{} stopped {} served {:?}",
                f.detected, f.keys, f.stopped, f.served
            );
        }
    }
    if !explain {
        return;
    }
    let mut list: Vec<&Incident> = incidents
        .values()
        .filter(|i| i.severity >= Severity::Medium)
        .collect();
    list.sort_by_key(|i| i.opened_at);
    for i in list {
        let profile = match &i.subject {
            IncidentSubject::Key(k) => legit
                .get(k)
                .and_then(|&x| keys.get(x))
                .map_or("?", |k| k.profile),
            IncidentSubject::Network(_) => "net",
        };
        let line: Vec<String> = i
            .timeline
            .iter()
            .map(|e| format!("{}:{:?}", e.detector, e.severity))
            .collect();
        println!(
            "  legit {} {} {:?} [{}]",
            i.subject.label(),
            profile,
            i.severity,
            line.join(" ")
        );
        // Every medium-or-worse entry, and the first of each detector's weaker ones: weak
        // signals combining are what most legitimate incidents are made of.
        let mut seen = Vec::new();
        for e in &i.timeline {
            if e.severity >= Severity::Medium || !seen.contains(&e.detector) {
                seen.push(e.detector);
                println!("      {} {:?}: {}", e.detector, e.severity, e.summary);
            }
        }
    }
    for s in &stops {
        println!("  STOP {s}");
    }
}
