//! The analyst's decisions on an assessment — confirm, reject, merge, split, annotate —
//! kept as an append-only list (a JSON file the CLI owns; each change is also written to the
//! audit log) and re-applied after every rebuild, so none is lost.

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
