//! The `[store]` and `[events]` sections of `stormwall.toml`.

use std::path::PathBuf;

/// `[store]`: which backend holds keys and events.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(tag = "backend", rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreConfig {
    /// Embedded SQLite file (the default).
    Sqlite {
        /// Database file; created if missing. Relative paths resolve from the working directory.
        path: PathBuf,
    },
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig::Sqlite {
            path: PathBuf::from("stormwall.db"),
        }
    }
}

/// `[events]`: the off-request-path event pipeline.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    /// Capacity of the bounded channel between the request path and the writer (0 counts as 1).
    pub channel_capacity: usize,
    /// Largest batch written in one transaction (0 counts as 1).
    pub batch_max: usize,
    /// Longest an event waits in a partial batch, in milliseconds.
    pub flush_interval_ms: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            channel_capacity: 65_536,
            batch_max: 1_024,
            flush_interval_ms: 100,
        }
    }
}
