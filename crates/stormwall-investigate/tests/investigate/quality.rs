//! Role assignment on the simulator's network scenario, on held-out seeds (the thresholds
//! were tuned on seeds 1–3; `stormwall investigate evaluate --scenario harder|base --seed
//! 101 102 103` prints the same figures). The harder scenario adds a relay fronting a
//! single victim's key, buyers switching relays, a creator's tool changing version and an
//! honest integrator serving shared templates to its clients' end users.

use std::collections::BTreeSet;

use stormwall_investigate::evaluate::{Truth, evaluate};
use stormwall_investigate::graph::{Graph, fingerprint};
use stormwall_investigate::{Overrides, Role, RoleConfig, assess};
use stormwall_sim::network::{NetworkConfig, NetworkTruth, network_scenario};

fn truth_of(t: &NetworkTruth) -> Truth {
    let mut truth = Truth::default();
    let set = |v: Vec<String>| v.into_iter().collect::<BTreeSet<_>>();
    truth.roles.insert(
        Role::Provider,
        set(t.providers.iter().map(|p| format!("network:{p}")).collect()),
    );
    truth.roles.insert(
        Role::Creator,
        set(t
            .creators
            .iter()
            .map(|c| {
                let f = fingerprint(
                    Some(&c.user_agent),
                    &c.header_names,
                    c.empty_origin,
                    c.forwarded,
                );
                format!("fingerprint:{}", f.id)
            })
            // A tool's own TLS stack is its signature too.
            .chain(t.creator_tls.iter().map(|fp| format!("tls:{fp}")))
            .collect()),
    );
    truth.roles.insert(
        Role::User,
        set(t
            .users
            .iter()
            .map(|u| format!("style:sys:{}", &u[..16]))
            .collect()),
    );
    truth.roles.insert(
        Role::Victim,
        set(t.victims.iter().map(|v| format!("tenant:{v}")).collect()),
    );
    truth.legit_tenants = t.legit_tenants.iter().cloned().collect();
    truth
}

fn held_out(seed: u64, harder: bool) {
    {
        let sc = network_scenario(&NetworkConfig {
            seed,
            harder,
            ..NetworkConfig::default()
        })
        .unwrap();
        let mut g = Graph::new(Default::default());
        for e in &sc.events {
            g.add_event(e, &[]);
        }
        let a = assess(&g, &RoleConfig::default(), &Overrides::default());
        let ev = evaluate(&g, &a, &truth_of(&sc.truth));
        assert!(
            ev.overall.precision >= 0.9 && ev.overall.recall >= 0.9,
            "seed {seed}: {:?}\nfalse positives {:?}\nfalse negatives {:?}",
            ev.overall,
            ev.false_positives,
            ev.false_negatives
        );
        for (role, s) in &ev.per_role {
            assert!(
                s.precision >= 0.9 && s.recall >= 0.9,
                "seed {seed} {role:?}: {s:?}"
            );
        }
        assert!(
            ev.legit_with_role.is_empty(),
            "seed {seed}: {:?}",
            ev.legit_with_role
        );
        // The integrators' networks use several clients' keys and get no role.
        for n in &sc.truth.integrators {
            assert!(
                a.role_of(&format!("network:{n}")).is_empty(),
                "integrator {n}"
            );
        }
        // A relay fronting one victim's key is a provider.
        assert_eq!(sc.truth.single_key_providers.len(), usize::from(harder));
        for n in &sc.truth.single_key_providers {
            let r = a.role_of(&format!("network:{n}"));
            assert!(
                r.iter().any(|r| r.role == Role::Provider),
                "single-key relay {n}: {:?}",
                ev.false_negatives
            );
        }
    }
}

#[test]
fn held_out_seed_101_roles_recovered_and_no_legitimate_tenant_gets_one() {
    held_out(101, false);
}

#[test]
fn held_out_seed_102_roles_recovered_and_no_legitimate_tenant_gets_one() {
    held_out(102, false);
}

#[test]
fn held_out_seed_103_roles_recovered_and_no_legitimate_tenant_gets_one() {
    held_out(103, false);
}

#[test]
fn harder_held_out_seed_101_single_key_relay_found_and_template_integrator_spared() {
    held_out(101, true);
}

#[test]
fn harder_held_out_seed_102_single_key_relay_found_and_template_integrator_spared() {
    held_out(102, true);
}

#[test]
fn harder_held_out_seed_103_single_key_relay_found_and_template_integrator_spared() {
    held_out(103, true);
}

/// Seed 112 (harder) was held out until it failed: its single-key relay shares a hosting
/// /24 with a legitimate tenant's own servers, whose keys and traffic there diluted the
/// relay's tool share (recall 0.788). Kept as a regression test; the fix was then measured
/// on seeds 121–130, never looked at before.
#[test]
fn harder_seed_112_a_single_key_relay_sharing_its_24_with_a_legitimate_tenant_is_found() {
    held_out(112, true);
}
