//! Stormwall's shared vocabulary: the API-key format, key records and scopes, the
//! `UsageEvent` every request (and every parsed cloud-log record) becomes, and the
//! content-safety names its verdicts use ([`safety`]).
//!
//! This crate does no I/O and depends on no other workspace crate, so every other crate
//! can speak it, and detectors can run over events regardless of where they came from.
//!
//! ```
//! use stormwall_types::key::ApiKey;
//! let key = ApiKey::generate();
//! let parsed = ApiKey::parse(key.expose()).unwrap();
//! assert_eq!(parsed.id(), key.id());
//! ```

pub mod alert;
pub mod cloud;
pub mod endpoint;
pub mod event;
pub mod incident;
pub mod key;
pub mod model;
pub mod pricing;
pub mod record;
pub mod safety;
pub mod timefmt;

pub use alert::{
    Action, ActionKind, Alert, AlertFeature, AlertSubject, DetectorId, KeyEffect, Severity, Stage,
};
pub use cloud::{
    CloudContext, CloudProvider, ControlAction, ControlEvent, CredentialKind, Principal,
};
pub use endpoint::{ApiFlavor, Endpoint};
pub use event::{
    ByteRange, Decision, OpenAiError, RejectReason, SafetyVerdict, StreamOutcome, UsageEvent,
};
pub use incident::{Incident, IncidentStatus, IncidentSubject, TimelineEntry};
pub use key::{ApiKey, KeyFormatError, KeyHash, KeyId};
pub use record::{KeyKind, KeyRecord, KeyScope, KeyStatus};
pub use safety::{SafetyStage, VerdictCategory};
