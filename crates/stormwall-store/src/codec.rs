//! How records become columns and back, shared by the SQL backends so that SQLite and
//! PostgreSQL store byte-for-byte the same values and refuse the same corrupt rows.

use stormwall_types::{
    Decision, KeyHash, KeyId, KeyKind, KeyRecord, KeyScope, KeyStatus, UsageEvent,
};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

use crate::StoreError;

/// Key timestamps as fixed-width UTC RFC 3339 with nine fractional digits, so text order
/// is time order and nanoseconds survive the round trip (PostgreSQL's `timestamptz` keeps
/// only microseconds).
const KEY_TIME_FORMAT: &[time::format_description::FormatItem<'static>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:9]Z");

/// The key columns in the order both backends select them.
pub(crate) const KEY_COLUMNS: &str = "id, tenant, kind, status, hash_hex, last4, label, \
     scope_json, created_at, updated_at, status_reason, rotated_from, rotated_to";

pub(crate) fn format_key_time(t: OffsetDateTime) -> Result<String, StoreError> {
    t.to_offset(UtcOffset::UTC)
        .format(KEY_TIME_FORMAT)
        .map_err(|_| StoreError::Corrupt("key timestamp out of range".to_owned()))
}

pub(crate) fn parse_key_time(s: &str, id: &str) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::parse(s, &Rfc3339)
        .map_err(|_| StoreError::Corrupt(format!("key {id}: bad timestamp")))
}

/// Unix milliseconds, rounded toward the past so `since`/`until` bounds stay consistent.
pub(crate) fn unix_ms(t: OffsetDateTime) -> Result<i64, StoreError> {
    i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000))
        .map_err(|_| StoreError::Corrupt("event timestamp out of range".to_owned()))
}

pub(crate) fn kind_from_str(s: &str) -> Option<KeyKind> {
    [KeyKind::Normal, KeyKind::Canary]
        .into_iter()
        .find(|k| k.as_str() == s)
}

pub(crate) fn status_from_str(s: &str) -> Option<KeyStatus> {
    [KeyStatus::Active, KeyStatus::Suspended, KeyStatus::Revoked]
        .into_iter()
        .find(|k| k.as_str() == s)
}

pub(crate) fn decision_str(d: Decision) -> &'static str {
    match d {
        Decision::Allow => "allow",
        Decision::Deny => "deny",
    }
}

/// The value of the summed `cost_usd` column: a non-finite cost is stored as 0 so one bad
/// price cannot poison `spend_since` or fail a batch on the NOT NULL constraint. The body
/// keeps the event as it was.
pub(crate) fn summable_cost(e: &UsageEvent) -> f64 {
    if e.cost_usd.is_finite() {
        e.cost_usd
    } else {
        0.0
    }
}

/// The event's full serde form, stored as the row body (the JSON-lines export format).
pub(crate) fn encode_event(e: &UsageEvent) -> Result<String, StoreError> {
    serde_json::to_string(e)
        .map_err(|_| StoreError::Corrupt(format!("event {} does not encode", e.id)))
}

/// Decodes a stored body. serde_json's message can quote the body, so only the (public)
/// id is kept in the error.
pub(crate) fn decode_event(id: &str, body: &str) -> Result<UsageEvent, StoreError> {
    serde_json::from_str(body)
        .map_err(|_| StoreError::Corrupt(format!("event {id}: body does not decode")))
}

/// A key's columns ready to bind.
pub(crate) struct KeyColumns {
    pub(crate) id: String,
    pub(crate) tenant: String,
    pub(crate) kind: &'static str,
    pub(crate) status: &'static str,
    pub(crate) hash_hex: String,
    pub(crate) last4: String,
    pub(crate) label: Option<String>,
    pub(crate) scope_json: String,
    pub(crate) created_at: String,
    pub(crate) updated_at: String,
    pub(crate) status_reason: Option<String>,
    pub(crate) rotated_from: Option<String>,
    pub(crate) rotated_to: Option<String>,
}

impl KeyColumns {
    pub(crate) fn from_record(r: &KeyRecord) -> Result<Self, StoreError> {
        let scope_json = serde_json::to_string(&r.scope)
            .map_err(|_| StoreError::Corrupt(format!("key {}: scope does not encode", r.id)))?;
        Ok(Self {
            id: r.id.as_str().to_owned(),
            tenant: r.tenant.clone(),
            kind: r.kind.as_str(),
            status: r.status.as_str(),
            hash_hex: r.hash.to_hex(),
            last4: r.last4.clone(),
            label: r.label.clone(),
            scope_json,
            created_at: format_key_time(r.created_at)?,
            updated_at: format_key_time(r.updated_at)?,
            status_reason: r.status_reason.clone(),
            rotated_from: r.rotated_from.as_ref().map(|k| k.as_str().to_owned()),
            rotated_to: r.rotated_to.as_ref().map(|k| k.as_str().to_owned()),
        })
    }
}

/// A key row as read, before validation (in [`KEY_COLUMNS`] order).
pub(crate) struct KeyRow {
    pub(crate) id: String,
    pub(crate) tenant: String,
    pub(crate) kind: String,
    pub(crate) status: String,
    pub(crate) hash_hex: String,
    pub(crate) last4: String,
    pub(crate) label: Option<String>,
    pub(crate) scope_json: String,
    pub(crate) created_at: String,
    pub(crate) updated_at: String,
    pub(crate) status_reason: Option<String>,
    pub(crate) rotated_from: Option<String>,
    pub(crate) rotated_to: Option<String>,
}

impl KeyRow {
    /// Validates a row into a record. Errors name the key id (public) and never the hash.
    pub(crate) fn into_record(self) -> Result<KeyRecord, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("key {}: {what}", self.id));
        let id =
            KeyId::new(&self.id).map_err(|_| StoreError::Corrupt("malformed key id".to_owned()))?;
        let kind = kind_from_str(&self.kind).ok_or_else(|| corrupt("unknown kind"))?;
        let status = status_from_str(&self.status).ok_or_else(|| corrupt("unknown status"))?;
        let hash = KeyHash::from_hex(&self.hash_hex).ok_or_else(|| corrupt("malformed hash"))?;
        let scope: KeyScope =
            serde_json::from_str(&self.scope_json).map_err(|_| corrupt("scope does not decode"))?;
        let link = |s: Option<String>| -> Result<Option<KeyId>, StoreError> {
            s.map(|s| KeyId::new(&s).map_err(|_| corrupt("malformed rotation link")))
                .transpose()
        };
        Ok(KeyRecord {
            created_at: parse_key_time(&self.created_at, &self.id)?,
            updated_at: parse_key_time(&self.updated_at, &self.id)?,
            rotated_from: link(self.rotated_from)?,
            rotated_to: link(self.rotated_to)?,
            id,
            tenant: self.tenant,
            kind,
            status,
            hash,
            last4: self.last4,
            label: self.label,
            scope,
            status_reason: self.status_reason,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_time_format_sorts_as_time() {
        let a = OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
        let b = a + time::Duration::milliseconds(500);
        let (fa, fb) = (format_key_time(a).unwrap(), format_key_time(b).unwrap());
        assert!(fa < fb, "{fa} !< {fb}");
        assert_eq!(parse_key_time(&fb, "x").unwrap(), b);
    }

    #[test]
    fn key_time_is_stored_in_utc() {
        let t = OffsetDateTime::from_unix_timestamp(1_700_000_000)
            .unwrap()
            .to_offset(UtcOffset::from_hms(5, 30, 0).unwrap());
        let s = format_key_time(t).unwrap();
        assert!(s.ends_with('Z'));
        assert_eq!(parse_key_time(&s, "x").unwrap(), t);
    }

    #[test]
    fn unix_ms_rounds_toward_the_past() {
        let t = OffsetDateTime::UNIX_EPOCH - time::Duration::microseconds(1);
        assert_eq!(unix_ms(t).unwrap(), -1);
        let t = OffsetDateTime::UNIX_EPOCH + time::Duration::microseconds(1_999);
        assert_eq!(unix_ms(t).unwrap(), 1);
    }

    #[test]
    fn enum_names_round_trip() {
        for k in [KeyKind::Normal, KeyKind::Canary] {
            assert_eq!(kind_from_str(k.as_str()), Some(k));
        }
        for s in [KeyStatus::Active, KeyStatus::Suspended, KeyStatus::Revoked] {
            assert_eq!(status_from_str(s.as_str()), Some(s));
        }
        for d in [Decision::Allow, Decision::Deny] {
            let json = serde_json::to_string(&d).unwrap();
            assert_eq!(json, format!("\"{}\"", decision_str(d)));
        }
    }
}
