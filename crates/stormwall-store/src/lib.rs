//! Stormwall's storage, split by concern: [`KeyStore`] for key records, [`EventStore`] for
//! usage events, [`Counters`] for the admission state replicas share. The gateway holds them
//! as trait objects so the backend is a config choice: `[store]` in `stormwall.toml` picks
//! SQLite (embedded, the default) or PostgreSQL (several replicas); `[counters]` picks
//! in-process counters (the default) or Redis.
//!
//! The request path never awaits a database write: events go through the bounded channel
//! of an [`EventSink`] to a [`batch`] writer task; a full channel is counted, never silent.

pub mod batch;
mod codec;
pub mod config;
pub mod counters;
mod fallback;
mod hll;
mod local;
pub mod postgres;
pub mod redis;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use stormwall_types::{Action, Alert, DetectorId, KeyId, KeyRecord, UsageEvent};
use time::OffsetDateTime;

pub use batch::{BatchWriter, EventSink, EventSinkSnapshot, EventSinkStats, ShutdownError};
pub use config::{CountersConfig, EventsConfig, PostgresConfig, RedisConfig, StoreConfig};
pub use counters::{
    BudgetDecision, BudgetPeriod, BudgetRequest, BudgetReservation, BudgetUsage, CounterError,
    Counters, CountersHealth, KeyChange, KeyChanges, RateCharge, RateDecision, RateLimited,
    RateRequest, SlotDecision, SlotLease, Tally, WindowState, open_counters,
    open_counters_with_env,
};
pub use fallback::FallbackCounters;
pub use local::LocalCounters;
pub use postgres::PostgresStore;
pub use redis::RedisCounters;
pub use sqlite::SqliteStore;

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
}

/// Usage events.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Appends a batch atomically (one transaction).
    async fn insert_events(&self, events: &[UsageEvent]) -> Result<(), StoreError>;
    /// Reads events matching a query, ordered by timestamp then id.
    async fn query_events(&self, query: &EventQuery) -> Result<Vec<UsageEvent>, StoreError>;
    /// Sum of `cost.usd` for a key since an instant (restores budgets after a restart).
    async fn spend_since(&self, key_id: &KeyId, since: OffsetDateTime) -> Result<f64, StoreError>;
    /// Number of events stored.
    async fn count_events(&self) -> Result<u64, StoreError>;
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
    /// belongs to (e.g. detector, key and hour); an alert whose id or incident is already
    /// stored is not stored again and `Ok(false)` is returned, so replicas that see the same
    /// incident raise it once.
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

/// Everything the gateway needs from a backend.
pub trait Store: KeyStore + EventStore + AlertStore {}
impl<T: KeyStore + EventStore + AlertStore> Store for T {}

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
