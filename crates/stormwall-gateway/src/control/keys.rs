//! Key lifecycle: create, suspend, resume, rotate, revoke, update scope. Every change is
//! written to the store first and then to the key cache, so the very next request sees it.

use std::time::Duration;

use stormwall_store::{KeyFilter, StoreError};
use stormwall_types::{ApiKey, KeyId, KeyKind, KeyRecord, KeyScope, KeyStatus};
use time::OffsetDateTime;

use super::ControlPlane;

/// Default grace period during which a rotated key still works.
pub const DEFAULT_ROTATION_GRACE: Duration = Duration::from_secs(3600);
/// Longest grace period a rotation may give the old key (30 days).
pub const MAX_ROTATION_GRACE: Duration = Duration::from_secs(30 * 24 * 3600);
/// Longest tenant name.
const MAX_TENANT_LEN: usize = 128;
/// Longest label or reason.
const MAX_TEXT_LEN: usize = 512;

/// A lifecycle request that cannot be carried out.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No such key.
    #[error("no key with that id")]
    NotFound,
    /// The request is malformed.
    #[error("{0}")]
    Invalid(String),
    /// The key's state forbids the change.
    #[error("{0}")]
    Conflict(&'static str),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Parameters of a new key.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateKey {
    /// Owning tenant.
    pub tenant: String,
    /// `normal` (default) or `canary`.
    #[serde(default = "default_kind")]
    pub kind: KeyKind,
    /// Free-form label.
    #[serde(default)]
    pub label: Option<String>,
    /// Scope; omitted: every configured model, no limits.
    #[serde(default)]
    pub scope: KeyScope,
}

fn default_kind() -> KeyKind {
    KeyKind::Normal
}

/// A key may only name a content-policy profile the gateway has: a typo would otherwise
/// quietly screen the key with its tenant's profile.
fn validate_profile(state: &ControlPlane, s: &KeyScope) -> Result<(), KeyError> {
    let (Some(name), Some(safety)) = (&s.policy_profile, &state.safety) else {
        return Ok(());
    };
    if safety.knows_profile(name) {
        return Ok(());
    }
    Err(KeyError::Invalid(format!(
        "policy_profile {name:?} is not a configured profile (known: {})",
        safety.profile_names().join(", ")
    )))
}

/// A newly minted key: its record plus the secret, shown this once.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CreatedKey {
    /// The secret key. Shown once; only its hash is stored.
    pub key: String,
    /// The record.
    #[serde(flatten)]
    pub record: KeyRecord,
}

/// Changes to a key's label or scope.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateKey {
    /// New label.
    #[serde(default)]
    pub label: Option<String>,
    /// New scope (replaces the old one whole).
    #[serde(default)]
    pub scope: Option<KeyScope>,
}

fn validate_tenant(t: &str) -> Result<(), KeyError> {
    let ok = !t.is_empty()
        && t.len() <= MAX_TENANT_LEN
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(KeyError::Invalid(format!(
            "tenant must be 1-{MAX_TENANT_LEN} characters of A-Z a-z 0-9 - _ . : @"
        )))
    }
}

fn validate_text(what: &str, t: Option<&str>) -> Result<(), KeyError> {
    match t {
        Some(t) if t.len() > MAX_TEXT_LEN || t.chars().any(char::is_control) => {
            Err(KeyError::Invalid(format!(
                "{what} must be at most {MAX_TEXT_LEN} bytes without control characters"
            )))
        }
        _ => Ok(()),
    }
}

fn validate_scope(s: &KeyScope) -> Result<(), KeyError> {
    if let (Some(a), Some(b)) = (s.not_before, s.expires_at)
        && b <= a
    {
        return Err(KeyError::Invalid(
            "expires_at must be after not_before".into(),
        ));
    }
    for (name, v) in [
        ("budget_daily_usd", s.budget_daily_usd),
        ("budget_monthly_usd", s.budget_monthly_usd),
    ] {
        if v.is_some_and(|v| !v.is_finite() || v < 0.0) {
            return Err(KeyError::Invalid(format!(
                "{name} must be a non-negative number"
            )));
        }
    }
    if s.max_concurrency == Some(0) || s.rpm == Some(0) || s.tpm == Some(0) {
        return Err(KeyError::Invalid(
            "limits must be at least 1 (omit a limit for none)".into(),
        ));
    }
    Ok(())
}

/// Creates a key.
pub async fn create(state: &ControlPlane, req: CreateKey) -> Result<CreatedKey, KeyError> {
    validate_new(&req)?;
    validate_profile(state, &req.scope)?;
    mint(state, req.tenant, req.kind, req.label, req.scope, None).await
}

/// Checks a new key's tenant, label and scope as [`create`] does — all but the policy
/// profile's name, which needs the gateway's safety configuration. For bulk creation
/// straight into the store (`stormwall keys create-bulk`).
pub fn validate_new(req: &CreateKey) -> Result<(), KeyError> {
    validate_tenant(&req.tenant)?;
    validate_text("label", req.label.as_deref())?;
    validate_scope(&req.scope)
}

/// A new active key for `req` (validated with [`validate_new`]) created at `now`: the record
/// to store and the secret key, to be shown once.
pub fn new_key(req: &CreateKey, now: OffsetDateTime) -> (ApiKey, KeyRecord) {
    let key = ApiKey::generate();
    let record = KeyRecord {
        id: key.id(),
        tenant: req.tenant.clone(),
        kind: req.kind,
        status: KeyStatus::Active,
        hash: key.hash(),
        last4: key.last4().to_owned(),
        label: req.label.clone(),
        scope: req.scope.clone(),
        created_at: now,
        updated_at: now,
        status_reason: None,
        rotated_from: None,
        rotated_to: None,
    };
    (key, record)
}

async fn mint(
    state: &ControlPlane,
    tenant: String,
    kind: KeyKind,
    label: Option<String>,
    scope: KeyScope,
    rotated_from: Option<KeyId>,
) -> Result<CreatedKey, KeyError> {
    let now = OffsetDateTime::now_utc();
    // A public-id collision (1 in 62^12) is retried rather than reported.
    for _ in 0..3 {
        let key = ApiKey::generate();
        let record = KeyRecord {
            id: key.id(),
            tenant: tenant.clone(),
            kind,
            status: KeyStatus::Active,
            hash: key.hash(),
            last4: key.last4().to_owned(),
            label: label.clone(),
            scope: scope.clone(),
            created_at: now,
            updated_at: now,
            status_reason: None,
            rotated_from: rotated_from.clone(),
            rotated_to: None,
        };
        match state.store.insert_key(&record).await {
            Ok(()) => {
                state.keys.upsert(record.clone());
                announce(state, &record.id).await;
                return Ok(CreatedKey {
                    key: key.expose().to_owned(),
                    record,
                });
            }
            Err(StoreError::Duplicate) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(KeyError::Conflict("could not allocate a unique key id"))
}

/// Reads a key (from the store, the source of truth).
pub async fn get(state: &ControlPlane, id: &str) -> Result<KeyRecord, KeyError> {
    let id = KeyId::new(id).map_err(|_| KeyError::NotFound)?;
    state.store.get_key(&id).await?.ok_or(KeyError::NotFound)
}

/// Lists keys, optionally of one tenant.
pub async fn list(
    state: &ControlPlane,
    tenant: Option<String>,
) -> Result<Vec<KeyRecord>, KeyError> {
    Ok(state.store.list_keys(&KeyFilter { tenant }).await?)
}

async fn save(state: &ControlPlane, mut record: KeyRecord) -> Result<KeyRecord, KeyError> {
    record.updated_at = OffsetDateTime::now_utc();
    state.store.update_key(&record).await?;
    let before = state.keys.upsert(record.clone());
    announce(state, &record.id).await;
    // Only a change of status concerns the detectors: a label or scope change (a throttle
    // among them) must not read as "resumed" and wipe the key's risk.
    if let Some(d) = &state.detection
        && before != Some(record.status)
    {
        d.key_status(&record.id, record.status);
    }
    Ok(record)
}

/// Tells the other replicas a key changed (they re-read it from the shared store). A failure
/// is logged: their periodic refresh still picks the change up.
pub(crate) async fn announce(state: &ControlPlane, id: &KeyId) {
    if let Some(counters) = &state.counters
        && let Err(e) = counters.publish_key_change(id).await
    {
        tracing::warn!(key_id = %id, error = %e, "cannot announce a key change to other replicas");
    }
}

/// Suspends an active key (reversible).
pub async fn suspend(
    state: &ControlPlane,
    id: &str,
    reason: Option<String>,
) -> Result<KeyRecord, KeyError> {
    validate_text("reason", reason.as_deref())?;
    let mut r = get(state, id).await?;
    match r.status {
        KeyStatus::Revoked => return Err(KeyError::Conflict("key is revoked")),
        KeyStatus::Suspended | KeyStatus::Active => {}
    }
    r.status = KeyStatus::Suspended;
    r.status_reason = reason;
    save(state, r).await
}

/// Resumes a suspended key.
pub async fn resume(state: &ControlPlane, id: &str) -> Result<KeyRecord, KeyError> {
    let mut r = get(state, id).await?;
    match r.status {
        KeyStatus::Revoked => return Err(KeyError::Conflict("a revoked key cannot be resumed")),
        KeyStatus::Active | KeyStatus::Suspended => {}
    }
    r.status = KeyStatus::Active;
    r.status_reason = None;
    save(state, r).await
}

/// Revokes a key for good; it stays in the store as a tripwire.
pub async fn revoke(
    state: &ControlPlane,
    id: &str,
    reason: Option<String>,
) -> Result<KeyRecord, KeyError> {
    validate_text("reason", reason.as_deref())?;
    let mut r = get(state, id).await?;
    r.status = KeyStatus::Revoked;
    r.status_reason = reason.or(r.status_reason);
    save(state, r).await
}

/// Replaces a key with a new one of the same tenant and scope; the old key keeps working
/// for `grace`, then expires.
pub async fn rotate(
    state: &ControlPlane,
    id: &str,
    grace: Duration,
) -> Result<CreatedKey, KeyError> {
    if grace > MAX_ROTATION_GRACE {
        return Err(KeyError::Invalid(format!(
            "grace period must be at most {} seconds",
            MAX_ROTATION_GRACE.as_secs()
        )));
    }
    // Checked before anything is written, so a bad request leaves no half-rotated key.
    let grace_end = time::Duration::try_from(grace)
        .ok()
        .and_then(|g| OffsetDateTime::now_utc().checked_add(g))
        .ok_or_else(|| KeyError::Invalid("grace period out of range".into()))?;
    let mut old = get(state, id).await?;
    if old.status != KeyStatus::Active {
        return Err(KeyError::Conflict("only an active key can be rotated"));
    }
    if old.kind == KeyKind::Canary {
        return Err(KeyError::Conflict("canary keys are not rotated"));
    }
    if old.rotated_to.is_some() {
        return Err(KeyError::Conflict("key was already rotated"));
    }
    let mut scope = old.scope.clone();
    // The new key must not inherit the old key's grace-period expiry.
    if old.rotated_from.is_some() {
        scope.expires_at = None;
    }
    let created = mint(
        state,
        old.tenant.clone(),
        old.kind,
        old.label.clone(),
        scope,
        Some(old.id.clone()),
    )
    .await?;
    old.scope.expires_at = Some(old.scope.expires_at.map_or(grace_end, |e| e.min(grace_end)));
    old.rotated_to = Some(created.record.id.clone());
    save(state, old).await?;
    Ok(created)
}

/// Changes a key's label or scope.
pub async fn update(
    state: &ControlPlane,
    id: &str,
    patch: UpdateKey,
) -> Result<KeyRecord, KeyError> {
    validate_text("label", patch.label.as_deref())?;
    if let Some(s) = &patch.scope {
        validate_scope(s)?;
        validate_profile(state, s)?;
    }
    let mut r = get(state, id).await?;
    if patch.label.is_some() {
        r.label = patch.label;
    }
    if let Some(s) = patch.scope {
        r.scope = s;
    }
    save(state, r).await
}
