//! The analyst's decisions on an assessment — confirm, reject, merge, split, annotate —
//! kept as an append-only list and re-applied after every rebuild, so none is lost. Every
//! decision is written to the store's audit log (actor `analyst:<handle>`, the decision as
//! the detail), which is where the admin API keeps them; the CLI also keeps its own in a
//! JSON file, and with `--config` adds the audit log's ([`Overrides::merge_audit`]).

use time::OffsetDateTime;

use crate::roles::Role;

/// One decision.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OverrideOp {
    /// The entity has this role (added if the inference did not give it).
    Confirm {
        /// Node id.
        entity: String,
        /// Role.
        role: Role,
    },
    /// The entity does not have this role.
    Reject {
        /// Node id.
        entity: String,
        /// Role.
        role: Role,
    },
    /// The entities' clusters are one.
    Merge {
        /// Node id whose cluster absorbs the other's.
        entity: String,
        /// Node id of the other cluster.
        with: String,
    },
    /// The entity stands in a cluster of its own.
    Split {
        /// Node id.
        entity: String,
    },
    /// A note on the entity.
    Annotate {
        /// Node id.
        entity: String,
        /// The note (free text; never a secret).
        note: String,
    },
}

impl OverrideOp {
    /// The audit action name: `investigate.confirm`, ….
    pub fn audit_action(&self) -> &'static str {
        match self {
            OverrideOp::Confirm { .. } => "investigate.confirm",
            OverrideOp::Reject { .. } => "investigate.reject",
            OverrideOp::Merge { .. } => "investigate.merge",
            OverrideOp::Split { .. } => "investigate.split",
            OverrideOp::Annotate { .. } => "investigate.annotate",
        }
    }

    /// The entity it is about.
    pub fn entity(&self) -> &str {
        match self {
            OverrideOp::Confirm { entity, .. }
            | OverrideOp::Reject { entity, .. }
            | OverrideOp::Merge { entity, .. }
            | OverrideOp::Split { entity }
            | OverrideOp::Annotate { entity, .. } => entity,
        }
    }
}

/// One decision with who made it and when.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Override {
    /// When.
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    /// Who (an analyst's handle).
    pub analyst: String,
    /// What.
    #[serde(flatten)]
    pub op: OverrideOp,
}

/// Every decision, in the order made.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Overrides {
    /// Decisions, oldest first.
    pub entries: Vec<Override>,
}

impl Overrides {
    /// Parses the JSON file's text.
    pub fn from_json(text: &str) -> Result<Overrides, crate::Error> {
        serde_json::from_str(text).map_err(|e| crate::Error::State(format!("overrides: {e}")))
    }
}

/// Audit actor prefix of an analyst's decision.
pub const ANALYST_ACTOR: &str = "analyst:";

/// The decision an audit entry records, if it records one: its action is an override's
/// (`investigate.confirm`, …), its actor `analyst:<handle>`, and its detail reads as the
/// decision (extra detail fields, such as `via`, are ignored).
pub fn from_audit(entry: &stormwall_store::AuditEntry) -> Option<Override> {
    if !entry.action.starts_with("investigate.") {
        return None;
    }
    let analyst = entry.actor.strip_prefix(ANALYST_ACTOR)?;
    let op = serde_json::from_value::<OverrideOp>(entry.detail.clone()).ok()?;
    (op.audit_action() == entry.action).then(|| Override {
        at: entry.at,
        analyst: analyst.to_owned(),
        op,
    })
}

impl Overrides {
    /// Adds the decisions found in audit entries that are not already listed (the same
    /// analyst and decision: the CLI writes each of its decisions to both places), then
    /// keeps the list in the order the decisions were made.
    pub fn merge_audit<'a>(
        &mut self,
        entries: impl IntoIterator<Item = &'a stormwall_store::AuditEntry>,
    ) {
        let before = self.entries.len();
        for o in entries.into_iter().filter_map(from_audit) {
            let listed = self.entries[..before]
                .iter()
                .any(|x| x.analyst == o.analyst && x.op == o.op);
            if !listed {
                self.entries.push(o);
            }
        }
        // Stable: decisions made at the same instant keep their order.
        self.entries.sort_by_key(|o| o.at);
    }
}
