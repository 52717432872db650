//! Stormwall's storage, split by concern: [`KeyStore`] for key records, [`EventStore`] for
//! usage events, [`ControlEventStore`] for the management calls cloud logs record, [`Counters`] for the admission state replicas share. The gateway holds them
//! as trait objects so the backend is a config choice: `[store]` in `stormwall.toml` picks
//! SQLite (embedded, the default) or PostgreSQL (several replicas); `[counters]` picks
//! in-process counters (the default) or Redis.
//!
//! The request path never awaits a database write: events go through the bounded channel
//! of an [`EventSink`] to a [`batch`] writer task; a full channel is counted, never silent.

/// The part of the lease upsert both SQL backends share (they differ only in how the new
/// row's values and the clock are written): the lease semantics, in one place. Taken when
/// free, expired or released, or renewed by its holder; the row changes only when the
/// `WHERE` holds, and the `RETURNING` row says it did. The term and start stay while the
/// same holder renews an unexpired lease, and move on otherwise.
macro_rules! lease_upsert_sql {
    () => {
        " ON CONFLICT (name) DO UPDATE SET \
         term = CASE WHEN leases.holder = excluded.holder AND leases.expires_unix_ms > \
         excluded.since_unix_ms THEN leases.term ELSE leases.term + 1 END, \
         since_unix_ms = CASE WHEN leases.holder = excluded.holder AND leases.expires_unix_ms > \
         excluded.since_unix_ms THEN leases.since_unix_ms ELSE excluded.since_unix_ms END, \
         holder = excluded.holder, expires_unix_ms = excluded.expires_unix_ms \
         WHERE leases.holder = excluded.holder OR leases.expires_unix_ms <= excluded.since_unix_ms \
         RETURNING holder, term, since_unix_ms, expires_unix_ms"
    };
}

pub mod admission;
pub mod batch;
mod codec;
pub mod config;
pub mod counters;
mod fallback;
mod hll;
pub mod journal;
mod local;
pub mod postgres;
pub mod redis;
pub mod sqlite;
pub mod summary;

use std::sync::Arc;

use async_trait::async_trait;
use stormwall_types::{
    Action, Alert, ControlAction, ControlEvent, DetectorId, Incident, IncidentStatus, KeyId,
    KeyRecord, Severity, UsageEvent,
};
use time::OffsetDateTime;

pub use admission::{AdmissionEngine, KeyAdmission, RateWindows};
pub use batch::{BatchWriter, EventSink, EventSinkSnapshot, EventSinkStats, ShutdownError};
pub use config::{CountersConfig, EventsConfig, PostgresConfig, RedisConfig, StoreConfig};
pub use counters::{
    BudgetDecision, BudgetPeriod, BudgetRequest, BudgetReservation, BudgetUsage, CounterError,
    Counters, CountersHealth, KeyChange, KeyChanges, RateCharge, RateDecision, RateLimited,
    RateRequest, SlotDecision, SlotLease, Tally, WindowState, open_counters,
    open_counters_with_env,
};
pub use fallback::FallbackCounters;
pub use journal::{Durable, Journal, JournalConfig, JournalPolicy, JournalService};
pub use local::LocalCounters;
pub use postgres::PostgresStore;
pub use redis::RedisCounters;
pub use sqlite::SqliteStore;
pub use summary::{EventSummary, SummaryParts, SummaryQuery};

/// A storage failure. Messages never contain key secrets or prompt text.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("database error: {0}")]
    Database(String),
    /// A record could not be encoded or decoded.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// A key with this id already exists.
    #[error("key id already exists")]
    Duplicate,
    /// No such record.
    #[error("not found")]
    NotFound,
    /// The store could not be opened or migrated.
    #[error("cannot open store: {0}")]
    Open(String),
}

/// Filters for listing keys.
#[derive(Debug, Clone, Default)]
pub struct KeyFilter {
    /// Only keys of this tenant.
    pub tenant: Option<String>,
}

/// Filters for reading events, oldest first. Time bounds compare at millisecond precision.
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    /// Only events of this key.
    pub key_id: Option<KeyId>,
    /// Only events of this tenant.
    pub tenant: Option<String>,
    /// Events at or after this instant.
    pub since: Option<OffsetDateTime>,
    /// Events before this instant.
    pub until: Option<OffsetDateTime>,
    /// Cursor for paging: only events after this event in (timestamp, id) order; an id the
    /// store does not hold means "events whose id sorts after it" (the same for UUIDv7 ids).
    pub after_id: Option<String>,
    /// At most this many events (`None`: no limit).
    pub limit: Option<usize>,
}

/// Key records.
#[async_trait]
pub trait KeyStore: Send + Sync {
    /// Inserts a new key; `StoreError::Duplicate` if its id exists.
    async fn insert_key(&self, record: &KeyRecord) -> Result<(), StoreError>;
    /// Reads one key.
    async fn get_key(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError>;
    /// Lists keys, oldest first.
    async fn list_keys(&self, filter: &KeyFilter) -> Result<Vec<KeyRecord>, StoreError>;
    /// Replaces a key's mutable fields (status, reason, scope, label, rotation links,
    /// updated_at); `StoreError::NotFound` if absent.
    async fn update_key(&self, record: &KeyRecord) -> Result<(), StoreError>;
    /// Inserts new keys all or none (one transaction in the backends); `StoreError::Duplicate`
    /// if any id exists. For bulk creation: the default inserts one by one.
    async fn insert_keys(&self, records: &[KeyRecord]) -> Result<(), StoreError> {
        for r in records {
            self.insert_key(r).await?;
        }
        Ok(())
    }
    /// Up to `limit` keys in id order, after the id `after` (from the first key when
    /// `None`): a full listing in pages, so a reader never holds every record at once. The
    /// default pages over [`KeyStore::list_keys`]; the backends read only the page.
    async fn list_keys_page(
        &self,
        after: Option<&KeyId>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let mut page = self.list_keys(&KeyFilter::default()).await?;
        page.retain(|k| after.is_none_or(|a| k.id > *a));
        page.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        page.truncate(limit);
        Ok(page)
    }
}

/// A usage event with its serde JSON already made: the journal encodes each event once, for
/// its segment, and the SQL stores keep that text as the row body instead of encoding the
/// event a second time.
#[derive(Debug, Clone)]
pub struct EncodedEvent {
    /// The event.
    pub event: UsageEvent,
    /// `serde_json` of `event` (UTF-8; the stores refuse a body that is not, as
    /// [`StoreError::Corrupt`]). Shared bytes, so the journal hands the store a slice of the
    /// group it wrote to its segment rather than a copy.
    pub body: bytes::Bytes,
}

impl EncodedEvent {
    /// The body as text, or [`StoreError::Corrupt`] when it is not UTF-8.
    pub fn body_str(&self) -> Result<&str, StoreError> {
        std::str::from_utf8(&self.body)
            .map_err(|_| StoreError::Corrupt(format!("event {}: body is not UTF-8", self.event.id)))
    }
}

/// Usage events.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Appends a batch atomically (one transaction).
    async fn insert_events(&self, events: &[UsageEvent]) -> Result<(), StoreError>;
    /// Appends a batch of events whose JSON is already made, atomically. The default
    /// ignores the bodies and encodes again.
    async fn insert_encoded_events(&self, events: &[EncodedEvent]) -> Result<(), StoreError> {
        let plain: Vec<UsageEvent> = events.iter().map(|e| e.event.clone()).collect();
        self.insert_events(&plain).await
    }
    /// Reads events matching a query, ordered by timestamp then id.
    async fn query_events(&self, query: &EventQuery) -> Result<Vec<UsageEvent>, StoreError>;
    /// Sum of `cost.usd` for a key since an instant (restores budgets after a restart).
    async fn spend_since(&self, key_id: &KeyId, since: OffsetDateTime) -> Result<f64, StoreError>;
    /// Number of events stored.
    async fn count_events(&self) -> Result<u64, StoreError>;
    /// The figures of a span of events, added up by the store (SQL `GROUP BY` in the
    /// backends). The default reads the events and adds them up in memory.
    async fn summarize_events(&self, query: &SummaryQuery) -> Result<EventSummary, StoreError> {
        let events = self
            .query_events(&EventQuery {
                key_id: query.key_id.clone(),
                since: Some(query.since),
                until: Some(query.until),
                ..Default::default()
            })
            .await?;
        EventSummary::from_events(query, &events)
    }
    /// The stored events among `ids`, ordered by timestamp then id. The default reads every
    /// event; the backends look the ids up.
    async fn events_by_id(&self, ids: &[String]) -> Result<Vec<UsageEvent>, StoreError> {
        let mut events = self.query_events(&EventQuery::default()).await?;
        events.retain(|e| ids.contains(&e.id));
        Ok(events)
    }
    /// Deletes at most `limit` of the oldest events older than `before` (retention);
    /// returns how many went. Bounded so one call holds the writer briefly: call again
    /// until it deletes fewer than `limit`. The default (a store with nothing to expire)
    /// deletes nothing.
    async fn delete_events_before(
        &self,
        before: OffsetDateTime,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let _ = (before, limit);
        Ok(0)
    }
}

/// Filters for reading control events, oldest first. Time bounds compare at millisecond
/// precision.
#[derive(Debug, Clone, Default)]
pub struct ControlEventQuery {
    /// Events at or after this instant.
    pub since: Option<OffsetDateTime>,
    /// Events before this instant.
    pub until: Option<OffsetDateTime>,
    /// Only events of this log source (`azure.activity`, `aws.cloudtrail`, …).
    pub dataset: Option<String>,
    /// Only events of this normalised operation.
    pub action: Option<ControlAction>,
    /// Only calls made by this principal (its provider id: an access key id, an Azure
    /// resource id + key slot or object id, an OpenAI key id).
    pub principal: Option<String>,
    /// Only calls made by the principal the detectors and alerts name by this key id.
    pub key_id: Option<KeyId>,
    /// Only calls of this account, subscription or organisation (the principal's).
    pub account: Option<String>,
    /// Cursor for paging: only events after this event in (timestamp, id) order; an id the
    /// store does not hold means "events whose id sorts after it".
    pub after_id: Option<String>,
    /// At most this many events (`None`: no limit).
    pub limit: Option<usize>,
    /// With a `limit`, keep the newest matches rather than the oldest (a page that shows
    /// "the latest calls"); the result is still in time order.
    pub newest: bool,
}

/// Management-plane calls read from cloud logs ([`ControlEvent`]), kept beside usage events
/// so who listed, created or regenerated keys, or changed logging or guardrails, can be
/// read back after the fact.
#[async_trait]
pub trait ControlEventStore: Send + Sync {
    /// Appends a batch atomically (one transaction). An event whose id is already stored is
    /// skipped (its first copy kept), so reading a log again stores nothing twice. Returns how
    /// many were new.
    async fn insert_control_events(&self, events: &[ControlEvent]) -> Result<u64, StoreError>;
    /// Reads control events matching a query, ordered by timestamp then id.
    async fn query_control_events(
        &self,
        query: &ControlEventQuery,
    ) -> Result<Vec<ControlEvent>, StoreError>;
    /// Deletes at most `limit` of the oldest control events older than `before`
    /// (retention); returns how many went, as [`EventStore::delete_events_before`].
    async fn delete_control_events_before(
        &self,
        before: OffsetDateTime,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let _ = (before, limit);
        Ok(0)
    }
}

/// Where an alert stands with the operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    /// Not yet looked at.
    Open,
    /// Looked at; the alert stands.
    Acknowledged,
    /// Looked at; the alert was wrong (the key's baseline learns from it).
    FalsePositive,
}

impl AlertStatus {
    /// Stable snake_case name, as stored and as the API and CLI print it.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Open => "open",
            AlertStatus::Acknowledged => "acknowledged",
            AlertStatus::FalsePositive => "false_positive",
        }
    }

    /// Parses [`AlertStatus::as_str`]'s names.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "open" => Some(AlertStatus::Open),
            "acknowledged" => Some(AlertStatus::Acknowledged),
            "false_positive" => Some(AlertStatus::FalsePositive),
            _ => None,
        }
    }
}

/// An alert as stored: the detector's output plus what operators did with it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredAlert {
    /// The alert itself.
    #[serde(flatten)]
    pub alert: Alert,
    /// Operator status.
    pub status: AlertStatus,
    /// Free-text note left with the last status change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Wall-clock time the alert was stored.
    #[serde(with = "stormwall_types::timefmt::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Wall-clock time of the last status change (`created_at` if none).
    #[serde(with = "stormwall_types::timefmt::rfc3339")]
    pub updated_at: OffsetDateTime,
}

/// Filters for listing alerts, newest first.
#[derive(Debug, Clone, Default)]
pub struct AlertQuery {
    /// Only alerts about this key.
    pub key_id: Option<KeyId>,
    /// Only alerts of this tenant.
    pub tenant: Option<String>,
    /// Only alerts of this detector.
    pub detector: Option<DetectorId>,
    /// Only alerts with this status.
    pub status: Option<AlertStatus>,
    /// Alerts whose event time is at or after this instant.
    pub since: Option<OffsetDateTime>,
    /// Alerts whose event time is before this instant.
    pub until: Option<OffsetDateTime>,
    /// At most this many alerts (`None`: no limit).
    pub limit: Option<usize>,
}

/// What became of an action when the gateway applied it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionOutcome {
    /// The key's record was changed (or the notification sent).
    Applied,
    /// Nothing to do: the key was already in that state or stricter (e.g. another replica
    /// acted first).
    AlreadyInEffect,
    /// The action could not be applied (the message says why).
    Failed,
}

impl ActionOutcome {
    /// Stable snake_case name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionOutcome::Applied => "applied",
            ActionOutcome::AlreadyInEffect => "already_in_effect",
            ActionOutcome::Failed => "failed",
        }
    }
}

/// One response action, recorded with the alert that caused it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ActionRecord {
    /// Record id (UUIDv7 text).
    pub id: String,
    /// The action as the response policy decided it.
    pub action: Action,
    /// What happened when it was applied.
    pub outcome: ActionOutcome,
    /// Error text for `Failed` (never a secret).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Wall-clock time it was applied.
    #[serde(with = "stormwall_types::timefmt::rfc3339")]
    pub applied_at: OffsetDateTime,
}

/// Filters for listing actions, newest first.
#[derive(Debug, Clone, Default)]
pub struct ActionQuery {
    /// Only actions on this key.
    pub key_id: Option<KeyId>,
    /// Only actions caused by this alert (as `alert_id` or among `contributing_alerts`).
    pub alert_id: Option<String>,
    /// At most this many (`None`: no limit).
    pub limit: Option<usize>,
}

/// Alerts and the actions taken because of them.
#[async_trait]
pub trait AlertStore: Send + Sync {
    /// Stores a new alert with status `open`. `incident` names the incident the alert
    /// belongs to (e.g. detector, key and hour), without its severity; an alert whose id is
    /// already stored, or whose incident is stored at the same or a higher severity, is not
    /// stored and `Ok(false)` is returned, so replicas that see the same incident raise it
    /// once, an escalation is stored and a lower raise by a replica that saw less is not.
    async fn insert_alert(&self, alert: &Alert, incident: &str) -> Result<bool, StoreError>;
    /// Reads one alert.
    async fn get_alert(&self, id: &str) -> Result<Option<StoredAlert>, StoreError>;
    /// Lists alerts matching a query, newest event time first (ties by id descending).
    async fn list_alerts(&self, query: &AlertQuery) -> Result<Vec<StoredAlert>, StoreError>;
    /// Sets an alert's status and note; `StoreError::NotFound` if absent.
    async fn set_alert_status(
        &self,
        id: &str,
        status: AlertStatus,
        note: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<StoredAlert, StoreError>;
    /// Appends an action record.
    async fn record_action(&self, record: &ActionRecord) -> Result<(), StoreError>;
    /// Lists action records matching a query, newest first.
    async fn list_actions(&self, query: &ActionQuery) -> Result<Vec<ActionRecord>, StoreError>;
}

/// An incident as stored: the grouper's [`Incident`] (its `status` the operators' current
/// one), every alert that joined it, and what operators did with it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredIncident {
    /// The incident (timeline, stages, evidence, risk score, reasons, status).
    #[serde(flatten)]
    pub incident: Incident,
    /// Ids of every alert that joined it (the timeline keeps at most a capped number).
    pub alert_ids: Vec<String>,
    /// Free-text note left with the last status change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Wall-clock time the incident was first stored.
    #[serde(with = "stormwall_types::timefmt::rfc3339")]
    pub created_at: OffsetDateTime,
    /// Wall-clock time of the last change (a joining alert or a status change).
    #[serde(with = "stormwall_types::timefmt::rfc3339")]
    pub changed_at: OffsetDateTime,
}

/// Filters for listing incidents, latest alert first.
#[derive(Debug, Clone, Default)]
pub struct IncidentQuery {
    /// Only incidents with this status.
    pub status: Option<IncidentStatus>,
    /// Only incidents of at least this severity.
    pub min_severity: Option<Severity>,
    /// Only incidents about this key.
    pub key_id: Option<KeyId>,
    /// Only incidents of this tenant.
    pub tenant: Option<String>,
    /// Only the incident this alert joined.
    pub alert_id: Option<String>,
    /// Only incidents about this subject, as `IncidentSubject::label` writes it
    /// (`key:…`, `network:…`): how a source network's incident is found again.
    pub subject: Option<String>,
    /// Incidents whose latest alert is at or after this instant (event time).
    pub since: Option<OffsetDateTime>,
    /// At most this many (`None`: no limit).
    pub limit: Option<usize>,
}

/// What [`IncidentStore::open_incident`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum Opened {
    /// The incident was stored and now holds its subject's running episode.
    New(StoredIncident),
    /// Another writer's incident already holds the subject's running episode: that one,
    /// unchanged (nothing was written); the caller joins it instead.
    Running(StoredIncident),
}

/// Incidents: the alerts about one subject within an episode, as one record (see
/// `stormwall_detect::incident`).
#[async_trait]
pub trait IncidentStore: Send + Sync {
    /// Opens a new incident as its subject's running episode, atomically across writers
    /// (gateway replicas): at most one stored incident per subject holds the episode. A
    /// holder whose latest alert is more than `gap_secs` before this incident's first (or
    /// that is closed) gives it up; otherwise the holder is returned as
    /// [`Opened::Running`] and nothing is written. A new one is stored with `alert_ids`
    /// linked, as [`IncidentStore::upsert_incident`] would.
    async fn open_incident(
        &self,
        incident: &Incident,
        alert_ids: &[String],
        gap_secs: u32,
    ) -> Result<Opened, StoreError>;
    /// Stores a new incident (status as given) or replaces a stored one's content, and links
    /// `alert_ids` to it. An update keeps the operators' status and note, except that
    /// `reopen` (the incident escalated) sets an `acknowledged`, `resolved` or `closed`
    /// incident back to `open`; a `false_positive` one stays so. Returns the stored incident.
    async fn upsert_incident(
        &self,
        incident: &Incident,
        alert_ids: &[String],
        reopen: bool,
    ) -> Result<StoredIncident, StoreError>;
    /// Reads one incident.
    async fn get_incident(&self, id: &str) -> Result<Option<StoredIncident>, StoreError>;
    /// Lists incidents matching a query, latest alert first (ties by id descending).
    async fn list_incidents(
        &self,
        query: &IncidentQuery,
    ) -> Result<Vec<StoredIncident>, StoreError>;
    /// Sets an incident's status and note; `StoreError::NotFound` if absent. Its alerts are
    /// the caller's to update.
    async fn set_incident_status(
        &self,
        id: &str,
        status: IncidentStatus,
        note: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<StoredIncident, StoreError>;
    /// Marks `closed` every `open` incident whose latest alert is older than `quiet_since`
    /// (event time): its episode ended. Operator states (acknowledged, resolved, false
    /// positive) are kept. Returns how many were closed.
    async fn close_quiet_incidents(
        &self,
        quiet_since: OffsetDateTime,
        at: OffsetDateTime,
    ) -> Result<u64, StoreError>;
}

/// One change to record in the audit log: who did what to which object.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AuditEntry {
    /// Wall-clock time of the change.
    #[serde(with = "stormwall_types::timefmt::rfc3339")]
    pub at: OffsetDateTime,
    /// Who: `admin` (the admin API's token holder), `detection`, `leak-report:<reporter>`.
    pub actor: String,
    /// What, e.g. `key.create`, `key.suspend`, `alert.false_positive`, `events.import`.
    pub action: String,
    /// The object changed (a key id, an alert id), when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The tenant concerned, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// Details (a reason, the alert that caused an action, counts); never a secret.
    #[serde(default)]
    pub detail: serde_json::Value,
}

/// An audit entry as stored: its place in the log and the hash chain that makes any later
/// change, removal or reordering of entries detectable.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AuditRecord {
    /// Position in the log, from 1, without gaps.
    pub seq: u64,
    /// The entry.
    #[serde(flatten)]
    pub entry: AuditEntry,
    /// Hash of the previous record (`AUDIT_GENESIS` for the first).
    pub prev_hash: String,
    /// [`audit_hash`] of this record.
    pub hash: String,
}

/// `prev_hash` of the first audit record.
pub const AUDIT_GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// SHA-256 (hex) over the previous hash, the sequence number and the entry's canonical JSON
/// (fields in declaration order, object keys sorted).
pub fn audit_hash(prev_hash: &str, seq: u64, entry: &AuditEntry) -> String {
    use sha2::Digest as _;
    let mut h = sha2::Sha256::new();
    h.update(prev_hash.as_bytes());
    h.update(b"\n");
    h.update(seq.to_string().as_bytes());
    h.update(b"\n");
    // Serialising a struct of strings and a JSON value cannot fail.
    h.update(serde_json::to_vec(entry).unwrap_or_default());
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Where an audit log stops being consistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("audit log broken at record {seq}: {reason}")]
pub struct AuditBreak {
    /// The first record that does not check.
    pub seq: u64,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Checks records (in order, starting right after `prev_seq` whose hash is `prev_hash`):
/// sequence without gaps, each `prev_hash` the hash before, each `hash` recomputed.
pub fn verify_audit(
    records: &[AuditRecord],
    prev_seq: u64,
    prev_hash: &str,
) -> Result<(), AuditBreak> {
    let (mut seq, mut prev) = (prev_seq, prev_hash.to_owned());
    for r in records {
        if r.seq != seq + 1 {
            return Err(AuditBreak {
                seq: r.seq,
                reason: "a record is missing or out of order",
            });
        }
        if r.prev_hash != prev {
            return Err(AuditBreak {
                seq: r.seq,
                reason: "it does not follow the record before",
            });
        }
        if audit_hash(&r.prev_hash, r.seq, &r.entry) != r.hash {
            return Err(AuditBreak {
                seq: r.seq,
                reason: "its content was changed",
            });
        }
        seq = r.seq;
        prev = r.hash.clone();
    }
    Ok(())
}

/// Filters for reading the audit log, in sequence order.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Only records after this sequence number.
    pub after_seq: Option<u64>,
    /// Only records about this object.
    pub target: Option<String>,
    /// At most this many (`None`: no limit).
    pub limit: Option<usize>,
}

/// The audit log: append-only, hash-chained, one chain per store however many replicas
/// write to it.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends an entry at the end of the chain — writers are serialised, so concurrent
    /// appends from several replicas still form one chain — and returns the stored record.
    async fn append_audit(&self, entry: &AuditEntry) -> Result<AuditRecord, StoreError>;
    /// Reads records in sequence order.
    async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError>;
}

/// A named lease as it stands: who holds it, since when and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The lease's name (e.g. `cloud-logs:aws`).
    pub name: String,
    /// The replica holding it (or that held it last, once expired).
    pub holder: String,
    /// Holder changes so far, from 1: a holder seeing another term lost the lease meanwhile.
    pub term: u64,
    /// When this holder took it (unix milliseconds, the store's clock).
    pub since_unix_ms: i64,
    /// Until when it holds it unless renewed (unix milliseconds; 0 once released).
    pub expires_unix_ms: i64,
}

impl Lease {
    /// Whether `holder` holds the lease (as of the moment it was read).
    pub fn held_by(&self, holder: &str) -> bool {
        self.holder == holder && self.expires_unix_ms > 0
    }
}

/// Named leases, so that of several replicas sharing a store exactly one does a given job
/// (follows one `[[logs]]` source) at a time, and another takes over when the holder dies.
/// Expiry is judged by the store's clock (PostgreSQL's), so replicas' clocks need not agree.
///
/// The defaults are for a store only one process uses: the caller always holds the lease,
/// and nothing is handed over. The SQLite and PostgreSQL backends implement real leases.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Takes the lease for `holder` for `ttl` if it is free, expired or released, or renews
    /// it if `holder` holds it; returns the lease as it then stands — held by `holder`, or by
    /// the replica that holds it now. Two callers never both get it.
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: std::time::Duration,
    ) -> Result<Lease, StoreError> {
        let _ = ttl;
        Ok(Lease {
            name: name.to_owned(),
            holder: holder.to_owned(),
            term: 1,
            since_unix_ms: 0,
            expires_unix_ms: i64::MAX,
        })
    }
    /// Gives the lease up at once if `holder` holds it, so another replica can take it at
    /// its next try (the hand-over state is kept).
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let _ = (name, holder);
        Ok(())
    }
    /// Saves the state the next holder continues from; only while `holder` holds the lease
    /// (`Ok(false)`, nothing written, otherwise).
    async fn save_lease_state(
        &self,
        name: &str,
        holder: &str,
        state: &str,
    ) -> Result<bool, StoreError> {
        let _ = (name, holder, state);
        Ok(true)
    }
    /// The state the last holder saved (`None`: none saved yet, or no such lease).
    async fn lease_state(&self, name: &str) -> Result<Option<String>, StoreError> {
        let _ = name;
        Ok(None)
    }
}

/// Everything the gateway needs from a backend.
pub trait Store:
    KeyStore + EventStore + ControlEventStore + AlertStore + IncidentStore + AuditStore + LeaseStore
{
}
impl<
    T: KeyStore
        + EventStore
        + ControlEventStore
        + AlertStore
        + IncidentStore
        + AuditStore
        + LeaseStore,
> Store for T
{
}

/// What a migration run did (`stormwall migrate`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// `sqlite` or `postgres`.
    pub backend: &'static str,
    /// Names of the migrations applied by this run, in order (empty: already current).
    pub applied: Vec<String>,
    /// The schema version now.
    pub version: u32,
}

/// Opens the backend a config names, applying migrations (PostgreSQL: when
/// `migrate_on_start` is set). Connection URLs named by `url_env` are read from the process
/// environment.
pub async fn open(config: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    open_with_env(config, &|name| std::env::var(name).ok()).await
}

/// [`open`] with the environment passed in.
pub async fn open_with_env(
    config: &StoreConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Arc<dyn Store>, StoreError> {
    match config {
        StoreConfig::Sqlite { path } => Ok(Arc::new(sqlite::SqliteStore::open(path).await?)),
        StoreConfig::Postgres(pg) => Ok(Arc::new(
            postgres::PostgresStore::open_with_env(pg, env).await?,
        )),
    }
}

/// Applies pending migrations to the backend a config names, reading URL variables
/// through `env`. Idempotent; safe to run from several processes at once.
pub async fn migrate(
    config: &StoreConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<MigrationReport, StoreError> {
    match config {
        StoreConfig::Sqlite { path } => sqlite::SqliteStore::migrate_file(path).await,
        StoreConfig::Postgres(pg) => postgres::migrate(pg, env).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: u32) -> AuditEntry {
        AuditEntry {
            at: OffsetDateTime::from_unix_timestamp(1_700_000_000 + i64::from(n)).unwrap(),
            actor: "admin".to_owned(),
            action: "key.suspend".to_owned(),
            target: Some(format!("k{n:011}")),
            tenant: Some("acme".to_owned()),
            detail: serde_json::json!({"reason": "test", "n": n}),
        }
    }

    /// A valid chain of `n` records from genesis.
    fn chain(n: u32) -> Vec<AuditRecord> {
        let mut prev = AUDIT_GENESIS.to_owned();
        (1..=n)
            .map(|i| {
                let seq = u64::from(i);
                let e = entry(i);
                let hash = audit_hash(&prev, seq, &e);
                AuditRecord {
                    seq,
                    entry: e,
                    prev_hash: std::mem::replace(&mut prev, hash.clone()),
                    hash,
                }
            })
            .collect()
    }

    #[test]
    fn a_valid_chain_verifies_whole_and_from_the_middle() {
        let c = chain(5);
        assert_eq!(verify_audit(&c, 0, AUDIT_GENESIS), Ok(()));
        assert_eq!(verify_audit(&c[2..], 2, &c[1].hash), Ok(()));
        assert_eq!(verify_audit(&[], 0, AUDIT_GENESIS), Ok(()));
    }

    #[test]
    fn audit_hash_depends_on_every_input() {
        let e = entry(1);
        let h = audit_hash(AUDIT_GENESIS, 1, &e);
        assert_eq!(h.len(), 64);
        assert_ne!(h, audit_hash(AUDIT_GENESIS, 2, &e));
        assert_ne!(h, audit_hash(&"1".repeat(64), 1, &e));
        let mut other = e.clone();
        other.detail = serde_json::json!({"reason": "test", "n": 2});
        assert_ne!(h, audit_hash(AUDIT_GENESIS, 1, &other));
    }

    #[test]
    fn a_gap_is_detected_at_the_record_after_it() {
        let mut c = chain(5);
        c.remove(2);
        let err = verify_audit(&c, 0, AUDIT_GENESIS).unwrap_err();
        assert_eq!(err.seq, 4);
        assert!(err.reason.contains("missing"), "{err}");
        // A chain that does not start right after the given point also has a gap.
        assert_eq!(
            verify_audit(&chain(3), 1, AUDIT_GENESIS).unwrap_err().seq,
            1
        );
    }

    #[test]
    fn reordered_records_are_detected() {
        let mut c = chain(5);
        c.swap(1, 2);
        assert_eq!(verify_audit(&c, 0, AUDIT_GENESIS).unwrap_err().seq, 3);
        // Renumbering the swapped records to hide it breaks the links instead.
        c[1].seq = 2;
        c[2].seq = 3;
        let err = verify_audit(&c, 0, AUDIT_GENESIS).unwrap_err();
        assert_eq!(err.seq, 2);
        assert!(err.reason.contains("follow"), "{err}");
    }

    #[test]
    fn changed_content_is_detected() {
        let edits: [fn(&mut AuditRecord); 5] = [
            |r| r.entry.actor = "mallory".to_owned(),
            |r| r.entry.target = None,
            |r| r.entry.detail = serde_json::json!({}),
            |r| r.entry.at += time::Duration::milliseconds(1),
            |r| r.hash = "f".repeat(64),
        ];
        for edit in edits {
            let mut c = chain(4);
            edit(&mut c[3]);
            let err = verify_audit(&c, 0, AUDIT_GENESIS).unwrap_err();
            assert_eq!(err.seq, 4);
            assert!(err.reason.contains("changed"), "{err}");
        }
        // Rewriting a record's hash too (a forger without the rest) breaks the next link.
        let mut c = chain(4);
        c[1].entry.actor = "mallory".to_owned();
        c[1].hash = audit_hash(&c[1].prev_hash, 2, &c[1].entry);
        let err = verify_audit(&c, 0, AUDIT_GENESIS).unwrap_err();
        assert_eq!(err.seq, 3);
        assert!(err.reason.contains("follow"), "{err}");
    }

    #[test]
    fn a_wrong_prev_hash_is_detected() {
        let mut c = chain(3);
        c[0].prev_hash = "1".repeat(64);
        assert_eq!(verify_audit(&c, 0, AUDIT_GENESIS).unwrap_err().seq, 1);
        let c = chain(3);
        let err = verify_audit(&c[1..], 1, AUDIT_GENESIS).unwrap_err();
        assert_eq!(err.seq, 2);
        assert!(err.reason.contains("follow"), "{err}");
    }
}
