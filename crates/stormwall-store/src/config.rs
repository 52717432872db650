//! The `[store]`, `[events]` and `[counters]` sections of `stormwall.toml`.
//!
//! Connection URLs of PostgreSQL and Redis usually carry a password, so the file names the
//! environment variable that holds the URL (`url_env`) instead of the URL itself; when
//! neither `url_env` nor `url` is given, the conventional variable (`STORMWALL_POSTGRES_URL`,
//! `STORMWALL_REDIS_URL`) is read. A URL written in the file is accepted for password-less
//! set-ups, is redacted from `Debug` output and is never serialized back out.

use std::fmt;
use std::path::PathBuf;

/// Variable read for the PostgreSQL URL when `[store]` names none.
pub const DEFAULT_POSTGRES_URL_ENV: &str = "STORMWALL_POSTGRES_URL";
/// Variable read for the Redis URL when `[counters]` names none.
pub const DEFAULT_REDIS_URL_ENV: &str = "STORMWALL_REDIS_URL";

/// `[store]`: which backend holds keys and events.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(tag = "backend", rename_all = "snake_case", deny_unknown_fields)]
pub enum StoreConfig {
    /// Embedded SQLite file (the default).
    Sqlite {
        /// Database file; created if missing. Relative paths resolve from the working directory.
        path: PathBuf,
    },
    /// A PostgreSQL server shared by every replica.
    Postgres(PostgresConfig),
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig::Sqlite {
            path: PathBuf::from("stormwall.db"),
        }
    }
}

/// `[store] backend = "postgres"`: keys and events in PostgreSQL.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Environment variable holding the connection URL
    /// (`postgres://user:password@host:5432/db`). Default: `STORMWALL_POSTGRES_URL`.
    #[serde(default)]
    pub url_env: Option<String>,
    /// The connection URL itself, for set-ups without a password; prefer `url_env`.
    #[serde(default, skip_serializing)]
    pub url: Option<ConnectionUrl>,
    /// Schema holding Stormwall's tables, created by the migrations if missing (default: the
    /// server's search path, usually `public`). Lower-case letters, digits and `_`.
    #[serde(default)]
    pub schema: Option<String>,
    /// Connections kept by each replica (0 counts as 1).
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Longest wait to connect, or for a free pooled connection, in seconds (0 counts as 1).
    #[serde(default = "default_connect_timeout_secs")]
    pub connect_timeout_secs: u64,
    /// Longest a single statement may run, in seconds; 0 leaves the server's setting.
    #[serde(default = "default_statement_timeout_secs")]
    pub statement_timeout_secs: u64,
    /// Apply pending migrations when the store is opened (`stormwall serve`). When false,
    /// opening a database whose schema is not current is an error: run `stormwall migrate`.
    #[serde(default = "default_true")]
    pub migrate_on_start: bool,
}

impl PostgresConfig {
    /// A config reading its URL from `url_env`, with every other field at its default.
    pub fn from_env_var(url_env: &str) -> Self {
        Self {
            url_env: Some(url_env.to_owned()),
            url: None,
            schema: None,
            pool_size: default_pool_size(),
            connect_timeout_secs: default_connect_timeout_secs(),
            statement_timeout_secs: default_statement_timeout_secs(),
            migrate_on_start: true,
        }
    }

    /// A config with the URL given directly, with every other field at its default.
    pub fn from_url(url: &str) -> Self {
        Self {
            url_env: None,
            url: Some(ConnectionUrl::new(url)),
            ..Self::from_env_var(DEFAULT_POSTGRES_URL_ENV)
        }
    }
}

fn default_pool_size() -> usize {
    16
}

fn default_connect_timeout_secs() -> u64 {
    5
}

fn default_statement_timeout_secs() -> u64 {
    30
}

fn default_true() -> bool {
    true
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
    /// How long a failing batch is retried (the store is down) before it is abandoned and
    /// counted as lost. Meanwhile new events queue in the channel, and past its capacity
    /// they are counted as dropped: an outage costs bounded memory and is always counted.
    pub retry_for_secs: u64,
    /// Days usage events are kept; older ones are deleted hourly (`stormwall serve`). 0
    /// keeps them forever; otherwise at least 32 (monthly budgets read this month's events).
    pub retention_days: u32,
    /// Days control events (cloud management calls read by `[[logs]]`) are kept; 0 keeps
    /// them forever.
    pub control_retention_days: u32,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            channel_capacity: 65_536,
            batch_max: 1_024,
            flush_interval_ms: 100,
            retry_for_secs: 300,
            retention_days: 0,
            control_retention_days: 0,
        }
    }
}

/// `[counters]`: where rate windows, concurrency slots, budgets, distinct counts and key
/// change broadcasts live.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(tag = "backend", rename_all = "snake_case", deny_unknown_fields)]
pub enum CountersConfig {
    /// In this process only (one node; the default).
    #[default]
    Local,
    /// In a Redis server shared by every replica.
    Redis(RedisConfig),
}

/// `[counters] backend = "redis"`.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// Environment variable holding the URL (`redis://:password@host:6379/0`).
    /// Default: `STORMWALL_REDIS_URL`.
    #[serde(default)]
    pub url_env: Option<String>,
    /// The URL itself, for set-ups without a password; prefer `url_env`.
    #[serde(default, skip_serializing)]
    pub url: Option<ConnectionUrl>,
    /// Prefix of every Redis key and channel, so deployments can share a server.
    /// Printable ASCII without spaces or braces, at most 64 bytes.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Longest wait to connect, in milliseconds (0 counts as 1).
    #[serde(default = "default_redis_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Longest wait for one reply, in milliseconds (0 counts as 1). A slower reply counts
    /// as Redis being unavailable, so the caller falls back instead of queueing behind it.
    #[serde(default = "default_op_timeout_ms")]
    pub op_timeout_ms: u64,
    /// After a failure, calls fail at once (without touching the network) for this long
    /// before one call probes Redis again, in milliseconds.
    #[serde(default = "default_retry_interval_ms")]
    pub retry_interval_ms: u64,
}

impl RedisConfig {
    /// A config reading its URL from `url_env`, with every other field at its default.
    pub fn from_env_var(url_env: &str) -> Self {
        Self {
            url_env: Some(url_env.to_owned()),
            url: None,
            prefix: default_prefix(),
            connect_timeout_ms: default_redis_connect_timeout_ms(),
            op_timeout_ms: default_op_timeout_ms(),
            retry_interval_ms: default_retry_interval_ms(),
        }
    }

    /// A config with the URL given directly, with every other field at its default.
    pub fn from_url(url: &str) -> Self {
        Self {
            url_env: None,
            url: Some(ConnectionUrl::new(url)),
            ..Self::from_env_var(DEFAULT_REDIS_URL_ENV)
        }
    }
}

fn default_prefix() -> String {
    "stormwall:".to_owned()
}

fn default_redis_connect_timeout_ms() -> u64 {
    1_000
}

fn default_op_timeout_ms() -> u64 {
    250
}

fn default_retry_interval_ms() -> u64 {
    1_000
}

/// A connection URL written in the config file. It may carry a password, so `Debug`
/// prints it redacted and it is never serialized.
#[derive(Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(transparent)]
pub struct ConnectionUrl(String);

impl ConnectionUrl {
    /// Wraps a URL.
    pub fn new(url: &str) -> Self {
        Self(url.to_owned())
    }

    /// The URL, for the connecting code only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ConnectionUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ConnectionUrl(<redacted>)")
    }
}

/// Resolves a URL from the file or the environment. Messages name the variable (never its
/// value), so they are safe to print.
pub(crate) fn resolve_url(
    url: Option<&ConnectionUrl>,
    url_env: Option<&str>,
    default_env: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<String, String> {
    match (url, url_env) {
        (Some(_), Some(_)) => Err("set either url or url_env, not both".to_owned()),
        (Some(u), None) => Ok(u.expose().to_owned()),
        (None, name) => {
            let name = name.unwrap_or(default_env);
            match env(name) {
                Some(v) if !v.trim().is_empty() => Ok(v.trim().to_owned()),
                _ => Err(format!("the environment variable {name} is not set")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct File {
        #[serde(default)]
        store: StoreConfig,
        #[serde(default)]
        counters: CountersConfig,
    }

    fn parse(s: &str) -> Result<File, toml::de::Error> {
        toml::from_str(s)
    }

    #[test]
    fn postgres_section_parses_with_defaults() {
        let f = parse("[store]\nbackend = \"postgres\"\nurl_env = \"PG\"\n").unwrap();
        let StoreConfig::Postgres(pg) = f.store else {
            panic!("not postgres: {:?}", f.store);
        };
        assert_eq!(pg.url_env.as_deref(), Some("PG"));
        assert_eq!(pg.pool_size, 16);
        assert!(pg.migrate_on_start);
        assert!(matches!(f.counters, CountersConfig::Local));
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(parse("[store]\nbackend = \"postgres\"\npool = 3\n").is_err());
        assert!(parse("[counters]\nbackend = \"redis\"\nurlenv = \"X\"\n").is_err());
        assert!(parse("[counters]\nbackend = \"memcached\"\n").is_err());
    }

    #[test]
    fn redis_section_parses() {
        let f = parse("[counters]\nbackend = \"redis\"\nprefix = \"sw:\"\n").unwrap();
        let CountersConfig::Redis(r) = f.counters else {
            panic!("not redis");
        };
        assert_eq!(r.prefix, "sw:");
        assert_eq!(r.url_env, None);
        assert_eq!(r.op_timeout_ms, 250);
    }

    #[test]
    fn url_resolution() {
        let env = |name: &str| (name == "SET").then(|| "postgres://u:pw@h/db".to_owned());
        let file = ConnectionUrl::new("postgres://h/db");
        assert_eq!(
            resolve_url(None, Some("SET"), "D", &env).unwrap(),
            "postgres://u:pw@h/db"
        );
        assert_eq!(
            resolve_url(Some(&file), None, "D", &env).unwrap(),
            "postgres://h/db"
        );
        let e = resolve_url(None, None, "UNSET", &env).unwrap_err();
        assert!(e.contains("UNSET"), "{e}");
        assert!(resolve_url(Some(&file), Some("SET"), "D", &env).is_err());
    }

    #[test]
    fn file_urls_are_redacted() {
        let pg = PostgresConfig::from_url("postgres://u:hunter2@h/db");
        let shown = format!("{pg:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        let json = serde_json::to_string(&pg).unwrap();
        assert!(!json.contains("hunter2"), "{json}");
    }
}
