//! Investigation: the network behind the abuse, from what Stormwall already stores.
//!
//! [`graph`] turns events, alerts, actions, leaked-key reports and `stormwall scan`
//! [`findings`] into an entity graph, incrementally; [`roles`] finds communities ([`louvain`]) and infers providers, creators,
//! users and victims with reasons, then applies the analyst's [`overrides`]; [`harm`]
//! counts what the abuse cost; [`export`] writes STIX 2.1, MISP and CSV; [`evidence`]
//! builds and checks signed evidence manifests; [`report`] renders one self-contained
//! HTML page; [`evaluate`] scores role assignment against a labelled scenario.
//!
//! Pure logic: no I/O. The `stormwall` binary reads the store and files and passes them in.

pub mod evaluate;
pub mod evidence;
pub mod export;
pub mod findings;
pub mod graph;
pub mod harm;
pub mod louvain;
pub mod overrides;
pub mod report;
pub mod roles;

pub use graph::{Graph, GraphState, Node, NodeKind};
pub use harm::Harm;
pub use overrides::{Override, OverrideOp, Overrides};
pub use roles::{Assessment, Assignment, Cluster, Role, RoleConfig, assess};

/// An investigation failure.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A saved graph or overrides file does not hold together.
    #[error("invalid state: {0}")]
    State(String),
    /// A signing key is not usable.
    #[error("signing key: {0}")]
    Key(String),
    /// An evidence bundle does not verify.
    #[error("evidence: {0}")]
    Evidence(String),
    /// A scan findings file is not what `stormwall scan --format jsonl` writes.
    #[error("scan findings: {0}")]
    Findings(String),
}
