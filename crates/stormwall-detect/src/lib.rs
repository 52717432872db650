//! Stormwall detection: pure, synchronous detectors over a stream of
//! [`UsageEvent`](stormwall_types::UsageEvent)s, judged on event time so that replaying a
//! file gives the same alerts as the live gateway did.
//!
//! The [`Engine`] keeps bounded state per key, per tenant and per client address (capped
//! sets, HyperLogLog and count-min sketches), learns an hour-of-week baseline per key from
//! the key's quiet hours (a young key is judged against its tenant's prior), and runs the
//! detectors of the catalogue (H1, H2, D1, D2, V1, V2, V4, P1–P6, R1–R6, A1, A4). Each
//! alert carries its features and thresholds, a plain explanation and evidence event ids.
//! [`Engine::decide`] turns alerts into [`Action`](stormwall_types::Action)s — data, not
//! effects: the caller applies them through the store.
//!
//! ```
//! use stormwall_detect::{Engine, EngineConfig};
//! use stormwall_types::{KeyId, UsageEvent, KeyKind, RejectReason};
//!
//! let mut engine = Engine::new(EngineConfig::default());
//! let mut e = UsageEvent::new("ev1".into(), time::macros::datetime!(2025-03-03 10:00 UTC),
//!     "203.0.113.9".parse().unwrap(), "POST", "/v1/chat/completions");
//! e.key_id = Some(KeyId::new("AbCdEfGhIjKl").unwrap());
//! e.key_kind = Some(KeyKind::Canary);
//! e.deny(RejectReason::CanaryKey);
//! let alerts = engine.observe(&e);
//! assert_eq!(alerts[0].detector.as_str(), "H1");
//! let action = engine.decide(&alerts[0]).unwrap();
//! assert_eq!(action.kind.as_str(), "alert"); // a canary is never served: notify only
//! ```
//!
//! The simulator that evaluates the engine on labelled traffic is its own crate,
//! `stormwall-sim`, so nothing that runs the detectors live depends on it.

pub mod cloud;
pub mod config;
pub mod detectors;
pub mod egress;
pub mod engine;
pub mod features;
pub mod incident;
pub mod markers;
pub mod profile;
pub mod sketch;
pub mod state;

pub use config::{ConfigError, DetectConfig, EngineConfig, PolicyRule, ResponseConfig, Thresholds};
pub use egress::{EgressFlag, EgressList, ExternalEgress};
pub use engine::{Engine, EngineStats, GlobalView};
pub use incident::{Grouper, IncidentConfig};
