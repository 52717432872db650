//! The authenticate stage: the key a client presents (`Authorization: Bearer`, then Azure's
//! `api-key`), checked offline for shape and checksum, then against the key cache in
//! constant time, then for kind, status and validity. Revoked and canary keys are
//! tripwires: their use is recorded as intelligence and refused like an unknown key.

use std::sync::Arc;

use http::header;
use hyper::body::Incoming;
use stormwall_types::key;
use stormwall_types::record::KeyRefusal;
use stormwall_types::{Endpoint, KeyHash, RejectReason};

use super::DataPlane;
use crate::data::keycache::CachedKey;
use crate::data::recorder::Recorder;
use crate::data::request;
use crate::data::route::Route;

/// Why authentication failed, and whether the key is a tripwire worth capturing.
pub struct AuthFailure {
    /// Why, as recorded on the event.
    pub reason: RejectReason,
    /// A revoked or canary key: what it asked is worth capturing.
    pub tripwire: bool,
}

impl AuthFailure {
    fn plain(reason: RejectReason) -> Self {
        Self {
            reason,
            tripwire: false,
        }
    }
}

/// The keys a client presented: the one that authenticates (`Authorization: Bearer` first,
/// then Azure's `api-key`), and the `api-key` too when both headers carry one.
fn presented_keys(headers: &http::HeaderMap) -> (Option<&str>, Option<&str>) {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer "))
        .map(|v| v[7..].trim());
    let api_key = headers
        .get("api-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    match bearer {
        Some(b) => (Some(b), api_key.filter(|a| *a != b)),
        None => (api_key, None),
    }
}

/// Finds and checks the caller's key, and the second key when both headers carry one.
pub fn authenticate(
    state: &DataPlane,
    headers: &http::HeaderMap,
    rec: &mut Recorder,
) -> Result<Arc<CachedKey>, AuthFailure> {
    let (presented, other) = presented_keys(headers);
    let Some(presented) = presented else {
        return Err(AuthFailure::plain(RejectReason::MissingKey));
    };
    let first = authenticate_key(state, presented, rec);
    match other {
        // Not a Stormwall key (or none): nothing more to look at.
        Some(other) if key::validate(other).is_ok() => {
            check_other_key(state, rec, first, presented, other)
        }
        _ => first,
    }
}

/// The cached key a presented string is, secret checked; `None` for a malformed key.
fn verified(state: &DataPlane, presented: &str) -> Option<Arc<CachedKey>> {
    key::validate(presented).ok()?;
    let cached = state.keys.get(key::id_of(presented)?)?;
    KeyHash::of(presented)
        .ct_eq(&cached.record.hash)
        .then_some(cached)
}

/// Why a key is a tripwire (canary or revoked), if it is one.
fn tripwire_reason(cached: &CachedKey) -> Option<RejectReason> {
    match cached.record.usable_at(time::OffsetDateTime::now_utc()) {
        Err(KeyRefusal::Canary) => Some(RejectReason::CanaryKey),
        Err(KeyRefusal::Revoked) => Some(RejectReason::RevokedKey),
        _ => None,
    }
}

/// A request carrying a Stormwall key in both `Authorization` and `api-key`. Only the first
/// authenticates, but a tripwire in the other header must not go unseen: a client holding a
/// canary or a revoked key is using harvested keys, whatever else it sends. Such a request
/// is recorded as the tripwire's use (its key id, kind and tenant, so detection raises H1 or
/// D1 on it) with the genuine key noted in `key.other_id`, and refused with the same 401 as
/// an unknown key. Refusing is the safer choice: serving it would let a harvester test a
/// batch of stolen keys at once and learn which works, and the 401 is the answer it would
/// get with the tripwire alone — it learns nothing about either key.
fn check_other_key(
    state: &DataPlane,
    rec: &mut Recorder,
    first: Result<Arc<CachedKey>, AuthFailure>,
    presented: &str,
    other: &str,
) -> Result<Arc<CachedKey>, AuthFailure> {
    if matches!(
        first,
        Err(AuthFailure {
            reason: RejectReason::KeysUnverified,
            ..
        })
    ) {
        return first;
    }
    let Some(second) = verified(state, other) else {
        return first;
    };
    let second_trips = tripwire_reason(&second);
    if let Some(reason) = second_trips {
        tracing::warn!(
            key_id = second.record.id.as_str(),
            reason = reason.as_str(),
            source_ip = %rec.event().source_ip,
            "tripwire key used"
        );
    }
    if matches!(first, Err(AuthFailure { tripwire: true, .. })) {
        // Already the use of a tripwire: note the other key it came with.
        rec.event().other_key_id = Some(second.record.id.clone());
        return first;
    }
    let Some(reason) = second_trips else {
        return first;
    };
    let first_id = match &first {
        Ok(k) => Some(k.record.id.clone()),
        Err(_) => verified(state, presented).map(|k| k.record.id.clone()),
    };
    let e = rec.event();
    e.key_id = Some(second.record.id.clone());
    e.key_last4 = other.get(other.len() - 4..).map(str::to_owned);
    e.tenant = Some(second.record.tenant.to_string());
    e.key_kind = Some(second.record.kind);
    e.other_key_id = first_id;
    Err(AuthFailure {
        reason,
        tripwire: true,
    })
}

/// Checks one presented key. A malformed key never reaches the cache or store.
fn authenticate_key(
    state: &DataPlane,
    presented: &str,
    rec: &mut Recorder,
) -> Result<Arc<CachedKey>, AuthFailure> {
    if key::validate(presented).is_err() {
        return Err(AuthFailure::plain(RejectReason::MalformedKey));
    }
    let id = key::id_of(presented).unwrap_or_default();
    let event = rec.event();
    event.key_last4 = presented.get(presented.len() - 4..).map(str::to_owned);
    event.key_id = stormwall_types::KeyId::new(id).ok();
    // Past the bound, a key revoked meanwhile on another replica might still be cached.
    if state.keys.is_stale(state.key_max_stale_secs) {
        return Err(AuthFailure::plain(RejectReason::KeysUnverified));
    }
    let Some(cached) = state.keys.get(id) else {
        return Err(AuthFailure::plain(RejectReason::UnknownKey));
    };
    // Constant-time: the timing of a wrong secret must not say how much of it was right.
    if !KeyHash::of(presented).ct_eq(&cached.record.hash) {
        return Err(AuthFailure::plain(RejectReason::UnknownKey));
    }
    event.tenant = Some(cached.record.tenant.to_string());
    event.key_kind = Some(cached.record.kind);
    match cached.record.usable_at(time::OffsetDateTime::now_utc()) {
        Ok(()) => Ok(cached),
        Err(refusal) => {
            let (reason, tripwire) = match refusal {
                KeyRefusal::Canary => (RejectReason::CanaryKey, true),
                KeyRefusal::Revoked => (RejectReason::RevokedKey, true),
                KeyRefusal::Suspended => (RejectReason::SuspendedKey, false),
                KeyRefusal::Expired => (RejectReason::ExpiredKey, false),
                KeyRefusal::NotYetValid => (RejectReason::NotYetValidKey, false),
            };
            if tripwire {
                tracing::warn!(
                    key_id = %id,
                    reason = reason.as_str(),
                    source_ip = %event.source_ip,
                    "tripwire key used"
                );
            }
            Err(AuthFailure { reason, tripwire })
        }
    }
}

/// Captures what a tripwire key's holder asked (digests only, never the text), so the
/// refusal still tells an investigator what the stolen key was wanted for.
pub async fn capture_tripwire(
    state: &DataPlane,
    rec: &mut Recorder,
    route: &Route,
    body: Incoming,
) {
    if route.endpoint == Endpoint::Models {
        return;
    }
    if let Ok(bytes) = crate::http::read_request_body(body, &state.limits).await
        && let Ok(parsed) = request::parse(&bytes, route.endpoint, &state.digester)
    {
        rec.event().model = route.deployment.clone().or_else(|| parsed.model.clone());
        parsed.note_into(rec.event());
    }
}
