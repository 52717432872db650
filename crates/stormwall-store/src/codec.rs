//! How records become columns and back, shared by the SQL backends so that SQLite and
//! PostgreSQL store byte-for-byte the same values and refuse the same corrupt rows.

use stormwall_types::{
    Alert, ControlEvent, Decision, Incident, IncidentStatus, IncidentSubject, KeyHash, KeyId,
    KeyKind, KeyRecord, KeyScope, KeyStatus, Severity, UsageEvent,
};
use time::format_description::well_known::Rfc3339;
use time::macros::format_description;
use time::{OffsetDateTime, UtcOffset};

use crate::{
    AUDIT_GENESIS, ActionRecord, AlertStatus, AuditEntry, AuditRecord, ControlEventQuery,
    EventQuery, StoreError, StoredAlert, StoredIncident, audit_hash,
};

/// The part of an event or control event query after its own filters — time bounds, the
/// keyset cursor, order and limit — which both tables and both SQL backends share.
pub(crate) struct Window<'a> {
    /// `events` or `control_events`.
    pub(crate) table: &'static str,
    pub(crate) since: Option<OffsetDateTime>,
    pub(crate) until: Option<OffsetDateTime>,
    /// Rows after this one in (time, id) order; an id the table does not hold falls back to
    /// plain id order (the same thing for time-ordered ids).
    pub(crate) after_id: Option<&'a str>,
    pub(crate) limit: Option<usize>,
    /// Newest rows first (the caller puts them back in time order), so a limit keeps the
    /// latest matches.
    pub(crate) newest: bool,
}

impl<'a> Window<'a> {
    /// The window of a usage event query.
    pub(crate) fn events(q: &'a EventQuery) -> Self {
        Self {
            table: "events",
            since: q.since,
            until: q.until,
            after_id: q.after_id.as_deref(),
            limit: q.limit,
            newest: false,
        }
    }

    /// The window of a control event query.
    pub(crate) fn control_events(q: &'a ControlEventQuery) -> Self {
        Self {
            table: "control_events",
            since: q.since,
            until: q.until,
            after_id: q.after_id.as_deref(),
            limit: q.limit,
            newest: q.newest,
        }
    }

    /// The `ORDER BY` clause of this window.
    pub(crate) fn order(&self) -> &'static str {
        if self.newest {
            " ORDER BY ts_unix_ms DESC, id DESC"
        } else {
            " ORDER BY ts_unix_ms, id"
        }
    }
}

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

/// A control event's columns ready to bind, the same for both backends.
pub(crate) struct ControlColumns {
    pub(crate) id: String,
    pub(crate) ts_unix_ms: i64,
    pub(crate) dataset: String,
    pub(crate) action: &'static str,
    pub(crate) principal: String,
    pub(crate) key_id: String,
    pub(crate) account: Option<String>,
    pub(crate) success: bool,
    pub(crate) body_json: String,
}

/// Column copies of text read from cloud logs: PostgreSQL text cannot hold NUL, and one
/// such record must not fail its batch (and stall the follower that retries it), so NUL
/// becomes U+FFFD in the copies of both backends alike. The body keeps the text as read.
fn column_text(s: &str) -> String {
    s.replace('\0', "\u{fffd}")
}

impl ControlColumns {
    pub(crate) fn new(e: &ControlEvent) -> Result<Self, StoreError> {
        let body_json = serde_json::to_string(e)
            .map_err(|_| StoreError::Corrupt(format!("control event {} does not encode", e.id)))?;
        let principal = &e.cloud.principal;
        Ok(Self {
            id: column_text(&e.id),
            ts_unix_ms: unix_ms(e.timestamp)?,
            dataset: column_text(&e.dataset),
            action: e.action.as_str(),
            principal: column_text(&principal.id),
            key_id: principal.key_id().as_str().to_owned(),
            account: principal.account.as_deref().map(column_text),
            success: e.success,
            body_json,
        })
    }
}

/// Decodes a stored control event body; only the (public) id is kept in the error.
pub(crate) fn decode_control(id: &str, body: &str) -> Result<ControlEvent, StoreError> {
    serde_json::from_str(body)
        .map_err(|_| StoreError::Corrupt(format!("control event {id}: body does not decode")))
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

/// The alert columns in the order both backends select them (read by [`AlertRow`]).
pub(crate) const ALERT_COLUMNS: &str = "id, body_json, status, note, created_at, updated_at";

/// Refuses text a PostgreSQL TEXT column cannot hold (NUL), in both backends, so that the
/// two accept the same records. JSON bodies escape NUL and need no check.
fn no_nul(what: &str, s: Option<&str>) -> Result<(), StoreError> {
    if s.is_some_and(|s| s.contains('\0')) {
        return Err(StoreError::Corrupt(format!("{what} contains NUL")));
    }
    Ok(())
}

/// Refuses numbers JSON cannot carry: serde_json writes NaN and infinities as `null`, which
/// would then fail to decode and make every listing that reaches the row fail.
fn finite(what: &str, values: impl IntoIterator<Item = f64>) -> Result<(), StoreError> {
    if values.into_iter().all(f64::is_finite) {
        Ok(())
    } else {
        Err(StoreError::Corrupt(format!("{what}: non-finite number")))
    }
}

/// A new alert's columns ready to bind.
pub(crate) struct AlertColumns {
    pub(crate) id: String,
    /// The caller's incident name and the severity's rank ([`incident_key`]).
    pub(crate) incident: String,
    /// The caller's incident name, kept to name its higher severities.
    base: String,
    severity_enum: Severity,
    pub(crate) detector: &'static str,
    pub(crate) severity: &'static str,
    pub(crate) key_id: Option<String>,
    pub(crate) tenant: Option<String>,
    pub(crate) at_unix_ms: i64,
    pub(crate) status: &'static str,
    pub(crate) created_at: String,
    pub(crate) body_json: String,
}

/// The stored incident of an alert: its incident name and severity rank, so that an
/// escalation is a new row and the same or a lower severity is a copy.
fn incident_key(incident: &str, severity: Severity) -> String {
    format!("{incident}#{}", severity.rank())
}

impl AlertColumns {
    /// Stored incidents that make this alert a copy: its incident at its own severity or any
    /// higher one. A replica with a partial view may raise a detector lower than another
    /// replica already did; that lower alert adds nothing.
    pub(crate) fn at_or_above(&self) -> Vec<String> {
        [
            Severity::Info,
            Severity::Low,
            Severity::Medium,
            Severity::High,
            Severity::Critical,
        ]
        .into_iter()
        .filter(|s| s.rank() >= self.severity_enum.rank())
        .map(|s| incident_key(&self.base, s))
        .collect()
    }

    /// The caller's incident name, without the severity: what a PostgreSQL insert locks.
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// [`Self::at_or_above`] as a JSON array, for SQLite's `json_each`.
    pub(crate) fn at_or_above_json(&self) -> String {
        serde_json::Value::from(self.at_or_above()).to_string()
    }

    /// Columns of a new (`open`) alert stored at `now`.
    pub(crate) fn new(a: &Alert, incident: &str, now: OffsetDateTime) -> Result<Self, StoreError> {
        no_nul("alert id", Some(&a.id))?;
        let what = format!("alert {}", a.id);
        no_nul(&format!("{what}: incident"), Some(incident))?;
        no_nul(&format!("{what}: tenant"), a.tenant.as_deref())?;
        finite(
            &what,
            std::iter::once(a.score).chain(
                a.features
                    .iter()
                    .flat_map(|f| std::iter::once(f.value).chain(f.threshold)),
            ),
        )?;
        let body_json = serde_json::to_string(a)
            .map_err(|_| StoreError::Corrupt(format!("{what} does not encode")))?;
        Ok(Self {
            base: incident.to_owned(),
            severity_enum: a.severity,
            id: a.id.clone(),
            incident: incident_key(incident, a.severity),
            detector: a.detector.as_str(),
            severity: a.severity.as_str(),
            key_id: a.key_id.as_ref().map(|k| k.as_str().to_owned()),
            tenant: a.tenant.clone(),
            at_unix_ms: unix_ms(a.at)?,
            status: AlertStatus::Open.as_str(),
            created_at: format_key_time(now)?,
            body_json,
        })
    }
}

/// Checks an operator's note on an alert or incident (`what`) before it is bound.
pub(crate) fn operator_note(
    what: &str,
    id: &str,
    note: Option<&str>,
) -> Result<Option<String>, StoreError> {
    no_nul(&format!("{what} {id}: note"), note)?;
    Ok(note.map(str::to_owned))
}

/// An alert row as read, before validation (in [`ALERT_COLUMNS`] order).
pub(crate) struct AlertRow {
    pub(crate) id: String,
    pub(crate) body_json: String,
    pub(crate) status: String,
    pub(crate) note: Option<String>,
    pub(crate) created_at: String,
    pub(crate) updated_at: String,
}

impl AlertRow {
    /// Validates a row. serde_json's messages can quote the body, so errors keep the id only.
    pub(crate) fn into_stored(self) -> Result<StoredAlert, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("alert {}: {what}", self.id));
        let alert: Alert =
            serde_json::from_str(&self.body_json).map_err(|_| corrupt("body does not decode"))?;
        let status = AlertStatus::parse(&self.status).ok_or_else(|| corrupt("unknown status"))?;
        let time =
            |s: &str| OffsetDateTime::parse(s, &Rfc3339).map_err(|_| corrupt("bad timestamp"));
        Ok(StoredAlert {
            created_at: time(&self.created_at)?,
            updated_at: time(&self.updated_at)?,
            alert,
            status,
            note: self.note,
        })
    }
}

/// An action record's columns ready to bind.
pub(crate) struct ActionColumns {
    pub(crate) id: String,
    pub(crate) key_id: String,
    pub(crate) alert_id: String,
    pub(crate) kind: &'static str,
    pub(crate) outcome: &'static str,
    pub(crate) applied_at: String,
    pub(crate) body_json: String,
    /// The action's `alert_id` and its `contributing_alerts`, without repeats: the rows of
    /// `action_alerts`.
    pub(crate) alert_ids: Vec<String>,
}

impl ActionColumns {
    pub(crate) fn from_record(r: &ActionRecord) -> Result<Self, StoreError> {
        no_nul("action id", Some(&r.id))?;
        let what = format!("action {}", r.id);
        no_nul(&format!("{what}: alert id"), Some(&r.action.alert_id))?;
        for a in &r.action.contributing_alerts {
            no_nul(&format!("{what}: contributing alert id"), Some(a))?;
        }
        finite(&what, [r.action.risk_score])?;
        let body_json = serde_json::to_string(r)
            .map_err(|_| StoreError::Corrupt(format!("{what} does not encode")))?;
        let mut alert_ids = Vec::with_capacity(1 + r.action.contributing_alerts.len());
        for a in std::iter::once(&r.action.alert_id).chain(&r.action.contributing_alerts) {
            if !alert_ids.contains(a) {
                alert_ids.push(a.clone());
            }
        }
        Ok(Self {
            id: r.id.clone(),
            key_id: r.action.key_id.as_str().to_owned(),
            alert_id: r.action.alert_id.clone(),
            kind: r.action.kind.as_str(),
            outcome: r.outcome.as_str(),
            applied_at: format_key_time(r.applied_at)?,
            body_json,
            alert_ids,
        })
    }
}

/// Decodes a stored action body, naming only the (public) id on failure.
pub(crate) fn decode_action(id: &str, body: &str) -> Result<ActionRecord, StoreError> {
    serde_json::from_str(body)
        .map_err(|_| StoreError::Corrupt(format!("action {id}: body does not decode")))
}

/// The audit columns in the order both backends select them (read by [`AuditRow`]).
pub(crate) const AUDIT_COLUMNS: &str = "seq, prev_hash, hash, body_json";

/// A new audit entry, as it will be stored, and its columns ready to bind. The chain
/// (`seq`, `prev_hash`, `hash`) is computed by the backend under its write lock.
pub(crate) struct AuditColumns {
    /// The entry as stored: `at` cut to milliseconds, decoded back from `body_json`.
    pub(crate) entry: AuditEntry,
    pub(crate) at_unix_ms: i64,
    pub(crate) actor: String,
    pub(crate) action: String,
    pub(crate) target: Option<String>,
    pub(crate) tenant: Option<String>,
    pub(crate) body_json: String,
}

impl AuditColumns {
    pub(crate) fn new(entry: &AuditEntry) -> Result<Self, StoreError> {
        no_nul("audit entry: actor", Some(&entry.actor))?;
        no_nul("audit entry: action", Some(&entry.action))?;
        no_nul("audit entry: target", entry.target.as_deref())?;
        no_nul("audit entry: tenant", entry.tenant.as_deref())?;
        let mut entry = entry.clone();
        // Cut before hashing, so the hash covers the time the `at_unix_ms` column holds.
        entry.at = entry
            .at
            .replace_millisecond(entry.at.millisecond())
            .map_err(|_| StoreError::Corrupt("audit entry: bad time".to_owned()))?;
        let body_json = serde_json::to_string(&entry)
            .map_err(|_| StoreError::Corrupt("audit entry does not encode".to_owned()))?;
        // Readers verify by re-encoding the decoded body, so an entry is only storable if
        // that gives back the same bytes (a float serde_json does not read back exactly, a
        // detail nested deeper than it parses, a year RFC 3339 cannot write would not).
        let stored: AuditEntry = serde_json::from_str(&body_json)
            .map_err(|_| StoreError::Corrupt("audit entry does not decode".to_owned()))?;
        if serde_json::to_string(&stored).ok().as_deref() != Some(body_json.as_str()) {
            return Err(StoreError::Corrupt(
                "audit entry does not encode the same after a round trip".to_owned(),
            ));
        }
        Ok(Self {
            at_unix_ms: unix_ms(stored.at)?,
            actor: stored.actor.clone(),
            action: stored.action.clone(),
            target: stored.target.clone(),
            tenant: stored.tenant.clone(),
            entry: stored,
            body_json,
        })
    }

    /// The record that follows `last` (the chain's last `(seq, hash)`, `None` when empty).
    pub(crate) fn next_record(
        &self,
        last: Option<(i64, String)>,
    ) -> Result<AuditRecord, StoreError> {
        let (seq, prev_hash) = match last {
            None => (1, AUDIT_GENESIS.to_owned()),
            Some((seq, hash)) => {
                let next = u64::try_from(seq)
                    .ok()
                    .and_then(|s| s.checked_add(1))
                    .filter(|s| i64::try_from(*s).is_ok())
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!("audit record {seq}: bad sequence number"))
                    })?;
                (next, hash)
            }
        };
        Ok(AuditRecord {
            seq,
            hash: audit_hash(&prev_hash, seq, &self.entry),
            prev_hash,
            entry: self.entry.clone(),
        })
    }
}

/// A sequence number as bound to a BIGINT column; numbers beyond `i64` (which no stored
/// record has) become `i64::MAX`.
pub(crate) fn audit_seq(seq: u64) -> i64 {
    i64::try_from(seq).unwrap_or(i64::MAX)
}

/// An audit row as read, before validation (in [`AUDIT_COLUMNS`] order).
pub(crate) struct AuditRow {
    pub(crate) seq: i64,
    pub(crate) prev_hash: String,
    pub(crate) hash: String,
    pub(crate) body_json: String,
}

impl AuditRow {
    /// Decodes a row. Errors name the sequence number only: serde_json's messages can quote
    /// the body.
    pub(crate) fn into_record(self) -> Result<AuditRecord, StoreError> {
        let seq = u64::try_from(self.seq).map_err(|_| {
            StoreError::Corrupt(format!("audit record {}: bad sequence number", self.seq))
        })?;
        let entry = serde_json::from_str(&self.body_json).map_err(|_| {
            StoreError::Corrupt(format!("audit record {seq}: body does not decode"))
        })?;
        Ok(AuditRecord {
            seq,
            entry,
            prev_hash: self.prev_hash,
            hash: self.hash,
        })
    }
}

/// A new or updated incident's columns ready to bind.
pub(crate) struct IncidentColumns {
    pub(crate) id: String,
    pub(crate) subject: String,
    pub(crate) key_id: Option<String>,
    pub(crate) tenant: Option<String>,
    pub(crate) severity: &'static str,
    pub(crate) severity_rank: i64,
    pub(crate) status: &'static str,
    pub(crate) opened_unix_ms: i64,
    pub(crate) updated_unix_ms: i64,
    /// Wall-clock time of this write.
    pub(crate) now: String,
    pub(crate) body_json: String,
    pub(crate) alert_ids: Vec<String>,
}

impl IncidentColumns {
    /// Columns of an incident written at `now`, with the alerts to link.
    pub(crate) fn new(
        i: &Incident,
        alert_ids: &[String],
        now: OffsetDateTime,
    ) -> Result<Self, StoreError> {
        no_nul("incident id", Some(&i.id))?;
        let what = format!("incident {}", i.id);
        no_nul(&format!("{what}: tenant"), i.tenant.as_deref())?;
        let subject = i.subject.label();
        no_nul(&format!("{what}: subject"), Some(&subject))?;
        for a in alert_ids {
            no_nul(&format!("{what}: alert id"), Some(a))?;
        }
        finite(&what, [i.risk_score])?;
        let body_json = serde_json::to_string(i)
            .map_err(|_| StoreError::Corrupt(format!("{what} does not encode")))?;
        let key_id = match &i.subject {
            IncidentSubject::Key(k) => Some(k.clone()),
            IncidentSubject::Network(_) => None,
        };
        Ok(Self {
            id: i.id.clone(),
            subject,
            key_id,
            tenant: i.tenant.clone(),
            severity: i.severity.as_str(),
            severity_rank: i.severity.rank(),
            status: i.status.as_str(),
            opened_unix_ms: unix_ms(i.opened_at)?,
            updated_unix_ms: unix_ms(i.updated_at)?,
            now: format_key_time(now)?,
            body_json,
            alert_ids: alert_ids.to_vec(),
        })
    }
}

/// An incident row as read, before validation: id, body, status, note, created_at,
/// changed_at and its alert ids as a JSON array (each backend aggregates them its way).
pub(crate) struct IncidentRow {
    pub(crate) id: String,
    pub(crate) body_json: String,
    pub(crate) status: String,
    pub(crate) note: Option<String>,
    pub(crate) created_at: String,
    pub(crate) changed_at: String,
    pub(crate) alert_ids_json: Option<String>,
}

impl IncidentRow {
    /// Validates a row; the status column, not the body's, is the incident's status.
    pub(crate) fn into_stored(self) -> Result<StoredIncident, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("incident {}: {what}", self.id));
        let mut incident: Incident =
            serde_json::from_str(&self.body_json).map_err(|_| corrupt("body does not decode"))?;
        incident.status =
            IncidentStatus::parse(&self.status).ok_or_else(|| corrupt("unknown status"))?;
        let mut alert_ids: Vec<String> = match &self.alert_ids_json {
            Some(j) => serde_json::from_str(j).map_err(|_| corrupt("alert ids do not decode"))?,
            None => Vec::new(),
        };
        alert_ids.sort_unstable();
        let time =
            |s: &str| OffsetDateTime::parse(s, &Rfc3339).map_err(|_| corrupt("bad timestamp"));
        Ok(StoredIncident {
            created_at: time(&self.created_at)?,
            changed_at: time(&self.changed_at)?,
            incident,
            alert_ids,
            note: self.note,
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

    fn audit_entry() -> AuditEntry {
        AuditEntry {
            at: OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_123_456_789).unwrap(),
            actor: "admin".to_owned(),
            action: "key.suspend".to_owned(),
            target: Some("k00000000001".to_owned()),
            tenant: None,
            detail: serde_json::json!({"reason": "leaked", "n": 3, "share": 0.1}),
        }
    }

    #[test]
    fn audit_columns_cut_time_to_milliseconds_before_hashing() {
        let c = AuditColumns::new(&audit_entry()).unwrap();
        assert_eq!(c.entry.at.nanosecond(), 123_000_000);
        assert_eq!(c.at_unix_ms, 1_700_000_000_123);
        assert_eq!(serde_json::to_string(&c.entry).unwrap(), c.body_json);
        let first = c.next_record(None).unwrap();
        assert_eq!((first.seq, first.prev_hash.as_str()), (1, AUDIT_GENESIS));
        assert_eq!(first.hash, audit_hash(AUDIT_GENESIS, 1, &c.entry));
        let second = c.next_record(Some((1, first.hash.clone()))).unwrap();
        assert_eq!((second.seq, &second.prev_hash), (2, &first.hash));
        assert!(c.next_record(Some((-1, first.hash.clone()))).is_err());
        assert!(c.next_record(Some((i64::MAX, first.hash))).is_err());
    }

    #[test]
    fn audit_columns_refuse_nul_and_unencodable_entries() {
        for edit in [
            (|e: &mut AuditEntry| e.actor.push('\0')) as fn(&mut AuditEntry),
            |e| e.action.push('\0'),
            |e| e.target = Some("a\0b".to_owned()),
            |e| e.tenant = Some("\0".to_owned()),
            // RFC 3339 cannot write a year before 0 or an offset with seconds.
            |e| e.at = OffsetDateTime::from_unix_timestamp(-70_000_000_000).unwrap(),
            |e| e.at = e.at.to_offset(UtcOffset::from_hms(1, 0, 30).unwrap()),
        ] {
            let mut e = audit_entry();
            edit(&mut e);
            assert!(
                matches!(AuditColumns::new(&e), Err(StoreError::Corrupt(_))),
                "{e:?}"
            );
        }
        // NUL inside the detail is escaped in JSON and fine.
        let mut e = audit_entry();
        e.detail = serde_json::json!({"note": "a\u{0}b"});
        assert!(AuditColumns::new(&e).is_ok());
    }

    #[test]
    fn audit_rows_decode_or_name_only_the_seq() {
        let c = AuditColumns::new(&audit_entry()).unwrap();
        let row = |seq, body: &str| AuditRow {
            seq,
            prev_hash: AUDIT_GENESIS.to_owned(),
            hash: "h".to_owned(),
            body_json: body.to_owned(),
        };
        assert_eq!(row(1, &c.body_json).into_record().unwrap().entry, c.entry);
        let err = row(2, "{\"secret-ish\": 1}").into_record().unwrap_err();
        assert!(!err.to_string().contains("secret-ish"), "{err}");
        assert!(row(-2, &c.body_json).into_record().is_err());
    }
}
