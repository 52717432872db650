//! The audit log: every change an operator, a leaked-key reporter or the detectors make to
//! keys and alerts is appended to the store's hash-chained log, so who did what, when and
//! why can be checked later — and so can whether the log itself was tampered with.
//! Appends happen after the change, off the proxy path; a failed append is logged and
//! counted, and never undoes the change it records.

use serde_json::Value;
use stormwall_store::AuditEntry;
use time::OffsetDateTime;

use super::ControlPlane;

/// Actor name for changes made through the admin API.
pub const ADMIN: &str = "admin";
/// Actor name for changes the detection response makes.
pub const DETECTION: &str = "detection";

/// Appends one entry; a failure is logged (never with a secret) and counted.
pub async fn record(
    state: &ControlPlane,
    actor: &str,
    action: &str,
    target: Option<&str>,
    tenant: Option<&str>,
    detail: Value,
) {
    let entry = AuditEntry {
        at: OffsetDateTime::now_utc(),
        actor: actor.to_owned(),
        action: action.to_owned(),
        target: target.map(str::to_owned),
        tenant: tenant.map(str::to_owned),
        detail,
    };
    if let Err(e) = state.store.append_audit(&entry).await {
        state.metrics.audit_failures.inc();
        tracing::error!(action, target = target.unwrap_or(""), error = %e, "cannot append to the audit log");
    }
}
