//! Stormwall's storage, split by concern: [`KeyStore`] for key records, [`EventStore`] for
//! usage events. The gateway holds them as trait objects so the backend is a config choice
//! (`[store]` in `stormwall.toml`): SQLite embedded by default.
//!
//! The request path never awaits a database write: events go through the bounded channel
//! of an [`EventSink`] to a [`batch`] writer task; a full channel is counted, never silent.

pub mod batch;
pub mod config;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use stormwall_types::{KeyId, KeyRecord, UsageEvent};
use time::OffsetDateTime;

pub use batch::{BatchWriter, EventSink, EventSinkSnapshot, EventSinkStats, ShutdownError};
pub use config::{EventsConfig, StoreConfig};
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

/// Everything the gateway needs from a backend.
pub trait Store: KeyStore + EventStore {}
impl<T: KeyStore + EventStore> Store for T {}

/// Opens the backend a config names, applying migrations.
pub async fn open(config: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    match config {
        StoreConfig::Sqlite { path } => Ok(Arc::new(sqlite::SqliteStore::open(path).await?)),
    }
}
