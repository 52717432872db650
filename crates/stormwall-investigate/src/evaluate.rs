//! Scores role assignment against a labelled scenario: precision and recall per role and
//! overall, and any role given to an entity of a legitimate tenant.

use std::collections::{BTreeMap, BTreeSet};

use crate::graph::{Graph, NodeKind};
use crate::roles::{Assessment, Role};

/// What the scenario's entities really are (node ids).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Truth {
    /// Node ids per role.
    pub roles: BTreeMap<Role, BTreeSet<String>>,
    /// Tenants that were never attacked.
    pub legit_tenants: BTreeSet<String>,
}

/// Figures for one role (or all).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Score {
    /// Assigned and true.
    pub true_positives: usize,
    /// Assigned, not true.
    pub false_positives: usize,
    /// True, not assigned.
    pub false_negatives: usize,
    /// tp / (tp + fp); 1 when nothing was assigned.
    pub precision: f64,
    /// tp / (tp + fn); 1 when nothing was true.
    pub recall: f64,
}

impl Score {
    fn finish(mut self) -> Self {
        let (tp, fp, fnn) = (
            self.true_positives as f64,
            self.false_positives as f64,
            self.false_negatives as f64,
        );
        self.precision = if tp + fp == 0.0 { 1.0 } else { tp / (tp + fp) };
        self.recall = if tp + fnn == 0.0 {
            1.0
        } else {
            tp / (tp + fnn)
        };
        self
    }
}

/// The evaluation.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Evaluation {
    /// Per role.
    pub per_role: BTreeMap<Role, Score>,
    /// Over all roles (micro-averaged).
    pub overall: Score,
    /// Roles on legitimate tenants, or on entities only legitimate tenants' keys used.
    pub legit_with_role: Vec<String>,
    /// Wrong assignments, for tuning.
    pub false_positives: Vec<String>,
    /// Missed entities.
    pub false_negatives: Vec<String>,
}

/// Scores an assessment.
pub fn evaluate(g: &Graph, a: &Assessment, truth: &Truth) -> Evaluation {
    let mut out = Evaluation::default();
    let mut overall = Score::default();
    for role in [Role::Provider, Role::Creator, Role::User, Role::Victim] {
        let given: BTreeSet<&str> = a
            .roles
            .iter()
            .filter(|r| r.role == role)
            .map(|r| r.entity.as_str())
            .collect();
        let empty = BTreeSet::new();
        let real: BTreeSet<&str> = truth
            .roles
            .get(&role)
            .unwrap_or(&empty)
            .iter()
            .map(String::as_str)
            .collect();
        let mut s = Score::default();
        for e in &given {
            if real.contains(e) {
                s.true_positives += 1;
            } else {
                s.false_positives += 1;
                out.false_positives.push(format!("{} {e}", role.as_str()));
            }
        }
        for e in &real {
            if !given.contains(e) {
                s.false_negatives += 1;
                out.false_negatives.push(format!("{} {e}", role.as_str()));
            }
        }
        overall.true_positives += s.true_positives;
        overall.false_positives += s.false_positives;
        overall.false_negatives += s.false_negatives;
        out.per_role.insert(role, s.finish());
    }
    out.overall = overall.finish();
    for r in &a.roles {
        let Some(i) = g.find(&r.entity) else { continue };
        let tenants: BTreeSet<String> = if r.kind == NodeKind::Tenant {
            [r.label.clone()].into()
        } else {
            g.neighbours_of_kind(i, NodeKind::Key)
                .filter_map(|(k, _)| g.tenant_of_key(k).map(str::to_owned))
                .collect()
        };
        if !tenants.is_empty() && tenants.iter().all(|t| truth.legit_tenants.contains(t)) {
            out.legit_with_role
                .push(format!("{} {}", r.role.as_str(), r.entity));
        }
    }
    out
}
