//! The PostgreSQL backend, for several gateway replicas sharing one database: a pool of
//! connections per replica, the same tables and row encoding as SQLite, and the schema in
//! plain `.sql` files under `migrations/postgres/`.
//!
//! Migrations are tracked in the `stormwall_migrations` table and applied by [`migrate`]
//! under a PostgreSQL advisory lock, on a connection of their own: when several replicas
//! start at once, one applies the pending files (each in its own transaction, together with
//! its row in the tracking table) while the others wait, then find nothing left to do. The
//! lock belongs to the session, so a migrator that dies releases it with its connection.
//!
//! Writes are durable when they return: every session runs with `synchronous_commit = on`,
//! whatever the server's default, because the batch writer counts a batch as written (and
//! the gateway may be killed) as soon as `insert_events` returns.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, PoolError, RecyclingMethod, Runtime,
};
use stormwall_types::{
    Alert, ControlEvent, Incident, IncidentStatus, KeyId, KeyRecord, UsageEvent,
};
use time::OffsetDateTime;
use tokio_postgres::IsolationLevel;
use tokio_postgres::NoTls;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;

use crate::codec::{
    ALERT_COLUMNS, AUDIT_COLUMNS, ActionColumns, AlertColumns, AlertRow, AuditColumns, AuditRow,
    ControlColumns, IncidentColumns, IncidentRow, KEY_COLUMNS, KeyColumns, KeyRow, Window,
    audit_seq, decision_str, decode_action, decode_control, decode_event, encode_event,
    format_key_time, operator_note, summable_cost, unix_ms,
};
use crate::config::{DEFAULT_POSTGRES_URL_ENV, PostgresConfig, resolve_url};
use crate::{
    ActionQuery, ActionRecord, AlertQuery, AlertStatus, AlertStore, AuditEntry, AuditQuery,
    AuditRecord, AuditStore, ControlEventQuery, ControlEventStore, EncodedEvent, EventQuery,
    EventStore, IncidentQuery, IncidentStore, KeyFilter, KeyStore, Lease, LeaseStore,
    MigrationReport, Opened, StoreError, StoredAlert, StoredIncident,
};

/// Migration files in the order they apply; the position (1-based) is the schema version.
const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_init",
        include_str!("../migrations/postgres/0001_init.sql"),
    ),
    (
        "0002_alerts",
        include_str!("../migrations/postgres/0002_alerts.sql"),
    ),
    (
        "0003_audit",
        include_str!("../migrations/postgres/0003_audit.sql"),
    ),
    (
        "0004_incidents",
        include_str!("../migrations/postgres/0004_incidents.sql"),
    ),
    (
        "0005_leases",
        include_str!("../migrations/postgres/0005_leases.sql"),
    ),
    (
        "0006_control_events",
        include_str!("../migrations/postgres/0006_control_events.sql"),
    ),
    (
        "0007_incident_episodes",
        include_str!("../migrations/postgres/0007_incident_episodes.sql"),
    ),
];

/// Schema version a database has once every embedded migration has run.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Table recording applied migrations (created by [`migrate`] itself, not by a file).
const TRACKING_TABLE: &str = "CREATE TABLE IF NOT EXISTS stormwall_migrations (
    version    INTEGER PRIMARY KEY,
    name       TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
)";

/// Longest a migrator waits for another one to finish before giving up.
const MIGRATION_LOCK_WAIT: Duration = Duration::from_secs(120);
/// How often a waiting migrator retries the lock.
const MIGRATION_LOCK_POLL: Duration = Duration::from_millis(100);
/// Longest schema name PostgreSQL keeps whole.
const MAX_SCHEMA_LEN: usize = 63;

const INSERT_KEY: &str = "INSERT INTO keys (id, tenant, kind, status, hash_hex, last4, label, \
     scope_json, created_at, updated_at, status_reason, rotated_from, rotated_to) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";

const UPDATE_KEY: &str = "UPDATE keys SET status = $2, status_reason = $3, scope_json = $4, \
     label = $5, rotated_from = $6, rotated_to = $7, updated_at = $8 WHERE id = $1";

/// One statement per batch: arrays of column values unnested into rows. A re-delivered
/// event keeps its first copy, as in SQLite's `INSERT OR IGNORE`.
const INSERT_EVENTS: &str = "INSERT INTO events (id, ts_unix_ms, key_id, tenant, decision, \
     reject_reason, status, cost_usd, body_json) \
     SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], \
     $6::text[], $7::int4[], $8::float8[], $9::text[]) \
     ON CONFLICT (id) DO NOTHING";

/// One statement per batch, as for events; a control event read again (its id stored)
/// inserts nothing, and the row count says how many were new.
const INSERT_CONTROL_EVENTS: &str = "INSERT INTO control_events (id, ts_unix_ms, dataset, \
     action, principal, key_id, account, success, body_json) \
     SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], \
     $6::text[], $7::text[], $8::bool[], $9::text[]) \
     ON CONFLICT (id) DO NOTHING";

/// A conflict on the id or on the incident inserts nothing: replicas that raise the same
/// incident at once store it once, and the losers learn it from the row count.
/// Stores nothing when the alert's id or its incident at this or a higher severity
/// (`$11`, [`AlertColumns::at_or_above`]) is stored. Run after [`ALERT_INCIDENT_LOCK`] in
/// one READ COMMITTED transaction, so two replicas inserting different severities of one
/// incident at the same instant take turns and the second sees the first's row.
const INSERT_ALERT: &str = "INSERT INTO alerts (id, incident, detector, severity, key_id, \
     tenant, at_unix_ms, status, note, created_at, updated_at, body_json) \
     SELECT $1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::bigint, $8::text, \
     NULL, $9::text, $9::text, $10::text \
     WHERE NOT EXISTS (SELECT 1 FROM alerts WHERE incident = ANY($11::text[])) \
     ON CONFLICT DO NOTHING";

/// The action and its alert links in one statement, so one implicit transaction: a
/// re-recorded id inserts nothing, links included.
const INSERT_ACTION: &str = "WITH inserted AS (\
     INSERT INTO actions (id, key_id, alert_id, kind, outcome, applied_at, body_json) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING RETURNING id) \
     INSERT INTO action_alerts (alert_id, action_id) \
     SELECT linked.alert_id, inserted.id FROM inserted, UNNEST($8::text[]) AS linked(alert_id) \
     ON CONFLICT DO NOTHING";

/// Transaction-scoped advisory lock on one alert incident (its name without the severity,
/// `$1`), taken before [`INSERT_ALERT`]: without it a lower severity inserted while a higher
/// one is uncommitted checks a snapshot without that row and is stored too. The two-key
/// form (class "SWAL", then the name's hash) has a key space of its own, apart from the
/// one-key audit and migration locks; a hash clash between two names only makes them wait.
pub(crate) const ALERT_INCIDENT_LOCK: &str =
    "SELECT pg_advisory_xact_lock(1398227276, hashtext($1::text))";

/// Transaction-scoped advisory lock that serialises audit appends ("SWAUDIT" in ASCII, then 1).
/// One constant for every schema of a database: stores in different schemas then also
/// take turns, which costs a little waiting and nothing else. Migration locks are FNV-1a
/// hashes of their schema name, so they cannot be expected to meet this value.
const AUDIT_LOCK_ID: i64 = 0x5357_4155_4449_5401;

const INSERT_AUDIT: &str = "INSERT INTO audit (seq, at_unix_ms, actor, action, target, tenant, \
     prev_hash, hash, body_json) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// A new incident, or a stored one's new content: operator status and note are kept, except
/// that an escalation (`$12`) reopens an acknowledged, resolved or closed incident.
const UPSERT_INCIDENT: &str = "INSERT INTO incidents (id, subject, key_id, tenant, severity, \
     severity_rank, status, opened_unix_ms, updated_unix_ms, note, created_at, changed_at, \
     body_json) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, $10, $10, $11) \
     ON CONFLICT (id) DO UPDATE SET tenant = COALESCE(excluded.tenant, incidents.tenant), \
     severity = excluded.severity, severity_rank = excluded.severity_rank, \
     updated_unix_ms = excluded.updated_unix_ms, changed_at = excluded.changed_at, \
     body_json = excluded.body_json, status = CASE WHEN $12::bool AND incidents.status IN \
     ('acknowledged', 'resolved', 'closed') THEN 'open' ELSE incidents.status END";

const INSERT_INCIDENT_ALERTS: &str = "INSERT INTO incident_alerts (incident_id, alert_id) \
     SELECT $1, linked.alert_id FROM UNNEST($2::text[]) AS linked(alert_id) \
     ON CONFLICT DO NOTHING";

/// A subject's episode held by a closed incident, or one quiet since before `$2` (the new
/// incident's first alert less the gap), is over: its holder gives it up.
const RELEASE_EPISODE: &str = "UPDATE incidents SET episode_subject = NULL \
     WHERE episode_subject = $1 AND (status = 'closed' OR updated_unix_ms < $2)";

/// A new incident holding its subject's episode. A conflict (the episode held by another
/// writer's incident, or the id taken) inserts nothing; a concurrent opener's uncommitted
/// row is waited for first, so two openers never both insert.
const OPEN_INCIDENT: &str = "INSERT INTO incidents (id, subject, key_id, tenant, severity, \
     severity_rank, status, opened_unix_ms, updated_unix_ms, note, created_at, changed_at, \
     body_json, episode_subject) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, $10, $10, \
     $11, $2) ON CONFLICT DO NOTHING";

/// The incident columns [`IncidentRow`] reads, its alert ids aggregated as a JSON array.
const INCIDENT_SELECT: &str = "SELECT id, body_json, status, note, created_at, changed_at, \
     (SELECT json_agg(alert_id)::text FROM incident_alerts WHERE incident_id = incidents.id) \
     FROM incidents";

/// Takes or renews a lease (`lease_upsert_sql!`). Time is the server's clock, so replicas'
/// clocks need not agree.
const ACQUIRE_LEASE: &str = concat!(
    "INSERT INTO leases (name, holder, term, since_unix_ms, expires_unix_ms) \
     SELECT $1, $2, 1, now_ms, now_ms + $3 FROM (SELECT \
     (extract(epoch FROM clock_timestamp()) * 1000)::int8 AS now_ms) AS clock",
    lease_upsert_sql!()
);

const READ_LEASE: &str =
    "SELECT holder, term, since_unix_ms, expires_unix_ms FROM leases WHERE name = $1";

/// Only the holder of an unexpired lease writes its hand-over state.
const SAVE_LEASE_STATE: &str = "UPDATE leases SET state = $3 WHERE name = $1 AND holder = $2 \
     AND expires_unix_ms > (extract(epoch FROM clock_timestamp()) * 1000)::int8";

/// Keys, events, alerts, incidents, actions and the audit log in PostgreSQL. Cheap to clone: clones
/// share the pool.
#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let status = self.pool.status();
        f.debug_struct("PostgresStore")
            .field("pool_size", &status.size)
            .field("pool_max", &status.max_size)
            .finish_non_exhaustive()
    }
}

impl PostgresStore {
    /// Connects as `config` says, reading the URL's variable from the process environment;
    /// applies pending migrations when `migrate_on_start` is set, and otherwise refuses a
    /// database whose schema is not current.
    pub async fn open(config: &PostgresConfig) -> Result<Self, StoreError> {
        Self::open_with_env(config, &process_env).await
    }

    /// [`PostgresStore::open`] with the environment passed in (tests, embedding programs).
    pub async fn open_with_env(
        config: &PostgresConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, StoreError> {
        let target = Target::from_config(config, env)?;
        if config.migrate_on_start {
            migrate_target(&target).await?;
        }
        let store = Self {
            pool: target.pool()?,
        };
        let version = store.schema_version().await.map_err(|e| match e {
            StoreError::Database(m) => StoreError::Open(m),
            other => other,
        })?;
        if version != SCHEMA_VERSION {
            return Err(StoreError::Open(format!(
                "database schema version {version}, this build needs {SCHEMA_VERSION}: \
                 run `stormwall migrate` with this build"
            )));
        }
        Ok(store)
    }

    /// The highest migration applied (0 for an empty database).
    pub async fn schema_version(&self) -> Result<u32, StoreError> {
        let client = self.client().await?;
        schema_version(&client).await
    }

    async fn client(&self) -> Result<Object, StoreError> {
        self.pool.get().await.map_err(pool_err)
    }
}

/// Applies pending migrations to the database `config` names (`stormwall migrate`), reading
/// the URL's variable through `env`. Safe to run from several processes at once.
pub async fn migrate(
    config: &PostgresConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<MigrationReport, StoreError> {
    migrate_target(&Target::from_config(config, env)?).await
}

fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// Connection settings resolved from a config.
struct Target {
    pg: tokio_postgres::Config,
    schema: Option<String>,
    pool_size: usize,
    timeout: Duration,
    statement_timeout: Option<Duration>,
}

impl Target {
    fn from_config(
        config: &PostgresConfig,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, StoreError> {
        let url = resolve_url(
            config.url.as_ref(),
            config.url_env.as_deref(),
            DEFAULT_POSTGRES_URL_ENV,
            env,
        )
        .map_err(|m| StoreError::Open(format!("PostgreSQL: {m}")))?;
        // The parser's messages can quote the string, which may hold a password.
        let pg: tokio_postgres::Config = url.parse().map_err(|_| {
            StoreError::Open("PostgreSQL: the connection URL is not valid".to_owned())
        })?;
        if let Some(schema) = &config.schema {
            validate_schema(schema)?;
        }
        Ok(Self {
            pg,
            schema: config.schema.clone(),
            pool_size: config.pool_size.max(1),
            timeout: Duration::from_secs(config.connect_timeout_secs.max(1)),
            statement_timeout: (config.statement_timeout_secs > 0)
                .then(|| Duration::from_secs(config.statement_timeout_secs)),
        })
    }

    /// Session settings: the schema, durable commits, and (for pooled connections) the
    /// statement timeout. Options already in the URL are kept.
    fn session(&self, statement_timeout: Option<Duration>) -> tokio_postgres::Config {
        let mut pg = self.pg.clone();
        let mut options = pg.get_options().unwrap_or_default().to_owned();
        let mut set = |setting: String| {
            if !options.is_empty() {
                options.push(' ');
            }
            options.push_str("-c ");
            options.push_str(&setting);
        };
        if let Some(schema) = &self.schema {
            set(format!("search_path={schema}"));
        }
        set("synchronous_commit=on".to_owned());
        if let Some(t) = statement_timeout {
            set(format!("statement_timeout={}", t.as_millis()));
        }
        pg.options(options);
        pg.connect_timeout(self.timeout);
        if pg.get_application_name().is_none() {
            pg.application_name("stormwall");
        }
        pg
    }

    fn pool(&self) -> Result<Pool, StoreError> {
        let manager = Manager::from_config(
            self.session(self.statement_timeout),
            NoTls,
            ManagerConfig {
                // A broken connection is noticed by `is_closed`; a test query per checkout
                // would add a round trip to every call.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Pool::builder(manager)
            .max_size(self.pool_size)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(self.timeout))
            .create_timeout(Some(self.timeout))
            .recycle_timeout(Some(self.timeout))
            .build()
            .map_err(|e| StoreError::Open(format!("PostgreSQL pool: {e}")))
    }

    /// The advisory-lock id that serializes migrators of one schema.
    fn lock_id(&self) -> i64 {
        let name = format!("stormwall-migrate:{}", self.schema.as_deref().unwrap_or(""));
        // FNV-1a: stable across builds and platforms, unlike std's hasher.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in name.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        i64::from_ne_bytes(h.to_ne_bytes())
    }
}

fn validate_schema(s: &str) -> Result<(), StoreError> {
    let ok = !s.is_empty()
        && s.len() <= MAX_SCHEMA_LEN
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && !s.starts_with("pg_");
    if ok {
        Ok(())
    } else {
        Err(StoreError::Open(format!(
            "PostgreSQL schema must be 1-{MAX_SCHEMA_LEN} characters of a-z 0-9 _, \
             not starting with a digit or pg_"
        )))
    }
}

/// Connects one session outside the pool, runs `work` on it, and closes it. Closing ends
/// the session, which releases any advisory lock it still holds.
async fn with_session<T, F>(target: &Target, work: F) -> Result<T, StoreError>
where
    F: AsyncFnOnce(&mut tokio_postgres::Client) -> Result<T, StoreError>,
{
    // No statement timeout: a migration may rebuild an index on a large table.
    let (mut client, connection) = target.session(None).connect(NoTls).await.map_err(|e| {
        StoreError::Open(format!("cannot connect to PostgreSQL: {}", pg_message(&e)))
    })?;
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = work(&mut client) => result,
        ended = &mut connection => Err(StoreError::Open(match ended {
            Ok(()) => "PostgreSQL closed the connection".to_owned(),
            Err(e) => format!("PostgreSQL connection failed: {}", pg_message(&e)),
        })),
    }
}

async fn migrate_target(target: &Target) -> Result<MigrationReport, StoreError> {
    let lock_id = target.lock_id();
    let schema = target.schema.clone();
    with_session(target, async move |client| {
        let open = |e: tokio_postgres::Error| StoreError::Open(pg_message(&e));
        let deadline = tokio::time::Instant::now() + MIGRATION_LOCK_WAIT;
        loop {
            let row = client
                .query_one("SELECT pg_try_advisory_lock($1)", &[&lock_id])
                .await
                .map_err(open)?;
            if row.try_get::<_, bool>(0).map_err(open)? {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(StoreError::Open(format!(
                    "another process held the migration lock for {} s",
                    MIGRATION_LOCK_WAIT.as_secs()
                )));
            }
            tokio::time::sleep(MIGRATION_LOCK_POLL).await;
        }
        let result = apply_pending(client, schema.as_deref()).await;
        // Closing the session would release the lock too; unlocking keeps it short when the
        // connection is slow to close.
        let _ = client
            .query_one("SELECT pg_advisory_unlock($1)", &[&lock_id])
            .await;
        result
    })
    .await
}

/// Applies pending migrations; the caller holds the migration lock.
async fn apply_pending(
    client: &mut tokio_postgres::Client,
    schema: Option<&str>,
) -> Result<MigrationReport, StoreError> {
    let open = |e: tokio_postgres::Error| StoreError::Open(pg_message(&e));
    if let Some(schema) = schema {
        // Validated as a plain lower-case identifier, so it needs no quoting.
        client
            .batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {schema}"))
            .await
            .map_err(open)?;
    }
    client.batch_execute(TRACKING_TABLE).await.map_err(open)?;
    let rows = client
        .query(
            "SELECT version, name FROM stormwall_migrations ORDER BY version",
            &[],
        )
        .await
        .map_err(open)?;
    let mut current = 0u32;
    for row in rows {
        let version: i32 = row.try_get(0).map_err(open)?;
        let name: String = row.try_get(1).map_err(open)?;
        let version = u32::try_from(version)
            .map_err(|_| StoreError::Open(format!("bad migration version {version}")))?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::Open(format!(
                "database schema version {version} is newer than this build's {SCHEMA_VERSION}"
            )));
        }
        let expected = usize::try_from(version)
            .ok()
            .and_then(|v| v.checked_sub(1))
            .and_then(|i| MIGRATIONS.get(i))
            .map(|(n, _)| *n);
        if expected != Some(name.as_str()) {
            return Err(StoreError::Open(format!(
                "migration {version} is recorded as {name:?}, which this build does not know"
            )));
        }
        current = current.max(version);
    }
    let mut applied = Vec::new();
    for (index, (name, sql)) in MIGRATIONS.iter().enumerate() {
        let version = i32::try_from(index + 1)
            .map_err(|_| StoreError::Open("too many migrations".to_owned()))?;
        if u32::try_from(version).unwrap_or(u32::MAX) <= current {
            continue;
        }
        let tx = client.transaction().await.map_err(open)?;
        tx.batch_execute(sql)
            .await
            .map_err(|e| StoreError::Open(format!("migration {name}: {}", pg_message(&e))))?;
        tx.execute(
            "INSERT INTO stormwall_migrations (version, name) VALUES ($1, $2)",
            &[&version, name],
        )
        .await
        .map_err(open)?;
        tx.commit().await.map_err(open)?;
        tracing::info!(migration = name, "applied PostgreSQL migration");
        applied.push((*name).to_owned());
    }
    Ok(MigrationReport {
        backend: "postgres",
        applied,
        version: SCHEMA_VERSION,
    })
}

async fn schema_version(client: &tokio_postgres::Client) -> Result<u32, StoreError> {
    let row = client
        .query_one(
            "SELECT to_regclass('stormwall_migrations') IS NOT NULL",
            &[],
        )
        .await
        .map_err(db)?;
    if !row.try_get::<_, bool>(0).map_err(db)? {
        return Ok(0);
    }
    let row = client
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM stormwall_migrations",
            &[],
        )
        .await
        .map_err(db)?;
    let v: i32 = row.try_get(0).map_err(db)?;
    u32::try_from(v).map_err(|_| StoreError::Corrupt(format!("bad schema version {v}")))
}

/// A driver error as text: the SQLSTATE and the server's primary message, without the
/// DETAIL line, which can quote row values.
fn pg_message(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(d) => format!("{} ({})", d.message(), d.code().code()),
        None => {
            // The driver's own messages name the failure kind and the I/O cause only.
            match std::error::Error::source(e) {
                Some(cause) => format!("{e}: {cause}"),
                None => e.to_string(),
            }
        }
    }
}

fn db(e: tokio_postgres::Error) -> StoreError {
    StoreError::Database(pg_message(&e))
}

/// Events from rows of `(id, body_json)`.
fn decode_event_rows(rows: &[tokio_postgres::Row]) -> Result<Vec<UsageEvent>, StoreError> {
    rows.iter()
        .map(|row| {
            let id: String = row.try_get(0).map_err(db)?;
            let body: String = row.try_get(1).map_err(db)?;
            decode_event(&id, &body)
        })
        .collect()
}

fn pool_err(e: PoolError) -> StoreError {
    match e {
        PoolError::Backend(e) => db(e),
        PoolError::Timeout(_) => {
            StoreError::Database("timed out waiting for a PostgreSQL connection".to_owned())
        }
        other => StoreError::Database(format!("PostgreSQL pool: {other}")),
    }
}

/// Text columns cannot hold NUL; an event that would put one there is refused as corrupt
/// so the batch writer isolates it instead of losing its whole batch.
fn no_nul(s: Option<&str>, id: &str) -> Result<(), StoreError> {
    if s.is_some_and(|s| s.contains('\0')) {
        return Err(StoreError::Corrupt(format!(
            "event {id}: indexed column contains NUL"
        )));
    }
    Ok(())
}

fn key_row(row: &tokio_postgres::Row) -> Result<KeyRow, StoreError> {
    Ok(KeyRow {
        id: row.try_get(0).map_err(db)?,
        tenant: row.try_get(1).map_err(db)?,
        kind: row.try_get(2).map_err(db)?,
        status: row.try_get(3).map_err(db)?,
        hash_hex: row.try_get(4).map_err(db)?,
        last4: row.try_get(5).map_err(db)?,
        label: row.try_get(6).map_err(db)?,
        scope_json: row.try_get(7).map_err(db)?,
        created_at: row.try_get(8).map_err(db)?,
        updated_at: row.try_get(9).map_err(db)?,
        status_reason: row.try_get(10).map_err(db)?,
        rotated_from: row.try_get(11).map_err(db)?,
        rotated_to: row.try_get(12).map_err(db)?,
    })
}

/// Query parameters of mixed types, in placeholder order.
/// The parameters of [`INSERT_KEY`], in its column order.
fn key_params(c: &KeyColumns) -> [&(dyn ToSql + Sync); 13] {
    [
        &c.id,
        &c.tenant,
        &c.kind,
        &c.status,
        &c.hash_hex,
        &c.last4,
        &c.label,
        &c.scope_json,
        &c.created_at,
        &c.updated_at,
        &c.status_reason,
        &c.rotated_from,
        &c.rotated_to,
    ]
}

/// A key insert's result, a taken id being [`StoreError::Duplicate`].
fn key_inserted(result: Result<u64, tokio_postgres::Error>) -> Result<(), StoreError> {
    match result {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Err(StoreError::Duplicate),
        Err(e) => Err(db(e)),
    }
}

type Params = Vec<Box<dyn ToSql + Sync + Send>>;

fn as_refs(params: &Params) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

fn alert_row(row: &tokio_postgres::Row) -> Result<AlertRow, StoreError> {
    Ok(AlertRow {
        id: row.try_get(0).map_err(db)?,
        body_json: row.try_get(1).map_err(db)?,
        status: row.try_get(2).map_err(db)?,
        note: row.try_get(3).map_err(db)?,
        created_at: row.try_get(4).map_err(db)?,
        updated_at: row.try_get(5).map_err(db)?,
    })
}

fn incident_row(row: &tokio_postgres::Row) -> Result<IncidentRow, StoreError> {
    Ok(IncidentRow {
        id: row.try_get(0).map_err(db)?,
        body_json: row.try_get(1).map_err(db)?,
        status: row.try_get(2).map_err(db)?,
        note: row.try_get(3).map_err(db)?,
        created_at: row.try_get(4).map_err(db)?,
        changed_at: row.try_get(5).map_err(db)?,
        alert_ids_json: row.try_get(6).map_err(db)?,
    })
}

fn audit_row(row: &tokio_postgres::Row) -> Result<AuditRow, StoreError> {
    Ok(AuditRow {
        seq: row.try_get(0).map_err(db)?,
        prev_hash: row.try_get(1).map_err(db)?,
        hash: row.try_get(2).map_err(db)?,
        body_json: row.try_get(3).map_err(db)?,
    })
}

/// Builds a query from optional clauses: each `?` in a clause becomes the next `$n`.
struct QueryBuilder {
    sql: String,
    params: Params,
}

impl QueryBuilder {
    fn new(sql: &str) -> Self {
        Self {
            sql: sql.to_owned(),
            params: Vec::new(),
        }
    }

    fn push(&mut self, clause: &str, p: Box<dyn ToSql + Sync + Send>) {
        self.params.push(p);
        self.sql
            .push_str(&clause.replace('?', &format!("${}", self.params.len())));
    }

    /// Appends a query's [`Window`]: a keyset cursor over (time, id), as in SQLite, whose
    /// row time is read from `w.table`.
    async fn window(&mut self, client: &Object, w: Window<'_>) -> Result<(), StoreError> {
        if let Some(since) = w.since {
            self.push(" AND ts_unix_ms >= ?", Box::new(unix_ms(since)?));
        }
        if let Some(until) = w.until {
            self.push(" AND ts_unix_ms < ?", Box::new(unix_ms(until)?));
        }
        if let Some(after) = w.after_id {
            let stmt = client
                .prepare_cached(&format!("SELECT ts_unix_ms FROM {} WHERE id = $1", w.table))
                .await
                .map_err(db)?;
            match client.query_opt(&stmt, &[&after]).await.map_err(db)? {
                Some(row) => {
                    let ts: i64 = row.try_get(0).map_err(db)?;
                    self.push(" AND (ts_unix_ms, id) > (?", Box::new(ts));
                    self.push(", ?)", Box::new(after.to_owned()));
                }
                None => self.push(" AND id > ?", Box::new(after.to_owned())),
            }
        }
        self.sql.push_str(w.order());
        self.limit(w.limit);
        Ok(())
    }

    fn limit(&mut self, limit: Option<usize>) {
        if let Some(limit) = limit {
            self.push(
                " LIMIT ?",
                Box::new(i64::try_from(limit).unwrap_or(i64::MAX)),
            );
        }
    }
}

/// An incident's columns in the order `OPEN_INCIDENT` and `UPSERT_INCIDENT` bind them.
fn incident_params(c: &IncidentColumns) -> [&(dyn ToSql + Sync); 11] {
    [
        &c.id,
        &c.subject,
        &c.key_id,
        &c.tenant,
        &c.severity,
        &c.severity_rank,
        &c.status,
        &c.opened_unix_ms,
        &c.updated_unix_ms,
        &c.now,
        &c.body_json,
    ]
}

/// Starts a READ COMMITTED transaction whatever the server's default: each statement then
/// sees what was committed before it began, so a check made after taking an advisory lock
/// sees the previous holder's rows (under REPEATABLE READ the snapshot would date from the
/// lock statement, before those rows committed).
async fn begin_read_committed(
    client: &mut Object,
) -> Result<deadpool_postgres::Transaction<'_>, StoreError> {
    client
        .build_transaction()
        .isolation_level(IsolationLevel::ReadCommitted)
        .start()
        .await
        .map_err(db)
}

/// Writes an incident's row (inserted, or its content updated; `reopen` lets a closed one
/// run again) and links its alerts, inside the caller's transaction.
async fn write_incident(
    tx: &deadpool_postgres::Transaction<'_>,
    c: &IncidentColumns,
    reopen: bool,
) -> Result<(), StoreError> {
    let stmt = tx.prepare_cached(UPSERT_INCIDENT).await.map_err(db)?;
    let mut params: [&(dyn ToSql + Sync); 12] = [&reopen; 12];
    params[..11].copy_from_slice(&incident_params(c));
    tx.execute(&stmt, &params).await.map_err(db)?;
    link_incident_alerts(tx, c).await
}

/// Links an incident's alerts (a link already there is kept).
async fn link_incident_alerts(
    tx: &deadpool_postgres::Transaction<'_>,
    c: &IncidentColumns,
) -> Result<(), StoreError> {
    let stmt = tx
        .prepare_cached(INSERT_INCIDENT_ALERTS)
        .await
        .map_err(db)?;
    tx.execute(&stmt, &[&c.id, &c.alert_ids])
        .await
        .map_err(db)?;
    Ok(())
}

#[async_trait]
impl KeyStore for PostgresStore {
    async fn insert_key(&self, record: &KeyRecord) -> Result<(), StoreError> {
        let c = KeyColumns::from_record(record)?;
        let client = self.client().await?;
        let stmt = client.prepare_cached(INSERT_KEY).await.map_err(db)?;
        let result = client.execute(&stmt, &key_params(&c)).await;
        key_inserted(result)
    }

    async fn get_key(&self, id: &KeyId) -> Result<Option<KeyRecord>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM keys WHERE id = $1"))
            .await
            .map_err(db)?;
        let row = client.query_opt(&stmt, &[&id.as_str()]).await.map_err(db)?;
        row.map(|r| key_row(&r)?.into_record()).transpose()
    }

    async fn list_keys(&self, filter: &KeyFilter) -> Result<Vec<KeyRecord>, StoreError> {
        let client = self.client().await?;
        let rows = match &filter.tenant {
            Some(t) => {
                let stmt = client
                    .prepare_cached(&format!(
                        "SELECT {KEY_COLUMNS} FROM keys WHERE tenant = $1 ORDER BY created_at, id"
                    ))
                    .await
                    .map_err(db)?;
                client.query(&stmt, &[t]).await.map_err(db)?
            }
            None => {
                let stmt = client
                    .prepare_cached(&format!(
                        "SELECT {KEY_COLUMNS} FROM keys ORDER BY created_at, id"
                    ))
                    .await
                    .map_err(db)?;
                client.query(&stmt, &[]).await.map_err(db)?
            }
        };
        rows.iter()
            .map(|r| key_row(r)?.into_record())
            .collect::<Result<Vec<_>, _>>()
    }

    async fn insert_keys(&self, records: &[KeyRecord]) -> Result<(), StoreError> {
        let rows = records
            .iter()
            .map(KeyColumns::from_record)
            .collect::<Result<Vec<_>, _>>()?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let stmt = tx.prepare_cached(INSERT_KEY).await.map_err(db)?;
        for c in &rows {
            key_inserted(tx.execute(&stmt, &key_params(c)).await)?;
        }
        tx.commit().await.map_err(db)
    }

    async fn list_keys_page(
        &self,
        after: Option<&KeyId>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, StoreError> {
        let client = self.client().await?;
        // Byte order, as `KeyId` sorts, whatever the database's default collation.
        let stmt = client
            .prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM keys WHERE id COLLATE \"C\" > $1 \
                 ORDER BY id COLLATE \"C\" LIMIT $2"
            ))
            .await
            .map_err(db)?;
        let after = after.map_or("", KeyId::as_str);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = client.query(&stmt, &[&after, &limit]).await.map_err(db)?;
        rows.iter()
            .map(|r| key_row(r)?.into_record())
            .collect::<Result<Vec<_>, _>>()
    }

    async fn update_key(&self, record: &KeyRecord) -> Result<(), StoreError> {
        let c = KeyColumns::from_record(record)?;
        let client = self.client().await?;
        let stmt = client.prepare_cached(UPDATE_KEY).await.map_err(db)?;
        let changed = client
            .execute(
                &stmt,
                &[
                    &c.id,
                    &c.status,
                    &c.status_reason,
                    &c.scope_json,
                    &c.label,
                    &c.rotated_from,
                    &c.rotated_to,
                    &c.updated_at,
                ],
            )
            .await
            .map_err(db)?;
        if changed == 0 {
            Err(StoreError::NotFound)
        } else {
            Ok(())
        }
    }
}

impl PostgresStore {
    /// Inserts events with their bodies in one statement; ids already stored are ignored.
    async fn insert_event_rows(&self, rows: &[(&UsageEvent, &str)]) -> Result<(), StoreError> {
        if rows.is_empty() {
            return Ok(());
        }
        let n = rows.len();
        let mut ids = Vec::with_capacity(n);
        let mut ts = Vec::with_capacity(n);
        let mut key_ids = Vec::with_capacity(n);
        let mut tenants = Vec::with_capacity(n);
        let mut decisions = Vec::with_capacity(n);
        let mut reasons = Vec::with_capacity(n);
        let mut statuses = Vec::with_capacity(n);
        let mut costs = Vec::with_capacity(n);
        let mut bodies = Vec::with_capacity(n);
        for &(e, body) in rows {
            no_nul(Some(&e.id), &e.id)?;
            no_nul(e.tenant.as_deref(), &e.id)?;
            bodies.push(body);
            ids.push(e.id.as_str());
            ts.push(unix_ms(e.timestamp)?);
            key_ids.push(e.key_id.as_ref().map(KeyId::as_str));
            tenants.push(e.tenant.as_deref());
            decisions.push(decision_str(e.decision));
            reasons.push(e.reject_reason.map(|r| r.as_str()));
            statuses.push(i32::from(e.status));
            costs.push(summable_cost(e));
        }
        let client = self.client().await?;
        let stmt = client.prepare_cached(INSERT_EVENTS).await.map_err(db)?;
        // One statement is one implicit transaction: the batch is committed whole, durably
        // (synchronous_commit is on for every session), before this returns.
        client
            .execute(
                &stmt,
                &[
                    &ids, &ts, &key_ids, &tenants, &decisions, &reasons, &statuses, &costs, &bodies,
                ],
            )
            .await
            .map_err(db)?;
        Ok(())
    }
}

#[async_trait]
impl EventStore for PostgresStore {
    async fn insert_events(&self, events: &[UsageEvent]) -> Result<(), StoreError> {
        let bodies = events
            .iter()
            .map(encode_event)
            .collect::<Result<Vec<_>, _>>()?;
        let rows: Vec<(&UsageEvent, &str)> = events
            .iter()
            .zip(bodies.iter().map(String::as_str))
            .collect();
        self.insert_event_rows(&rows).await
    }

    async fn insert_encoded_events(&self, events: &[EncodedEvent]) -> Result<(), StoreError> {
        let rows = events
            .iter()
            .map(|e| Ok((&e.event, e.body_str()?)))
            .collect::<Result<Vec<(&UsageEvent, &str)>, StoreError>>()?;
        self.insert_event_rows(&rows).await
    }

    async fn query_events(&self, q: &EventQuery) -> Result<Vec<UsageEvent>, StoreError> {
        let client = self.client().await?;
        let mut b = QueryBuilder::new("SELECT id, body_json FROM events WHERE TRUE");
        if let Some(key_id) = &q.key_id {
            b.push(" AND key_id = ?", Box::new(key_id.as_str().to_owned()));
        }
        if let Some(tenant) = &q.tenant {
            b.push(" AND tenant = ?", Box::new(tenant.clone()));
        }
        b.window(&client, Window::events(q)).await?;
        let (sql, params) = (b.sql, b.params);
        let stmt = client.prepare_cached(&sql).await.map_err(db)?;
        let rows = client.query(&stmt, &as_refs(&params)).await.map_err(db)?;
        decode_event_rows(&rows)
    }

    async fn spend_since(&self, key_id: &KeyId, since: OffsetDateTime) -> Result<f64, StoreError> {
        let since = unix_ms(since)?;
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT COALESCE(SUM(cost_usd), 0)::float8 FROM events \
                 WHERE key_id = $1 AND ts_unix_ms >= $2",
            )
            .await
            .map_err(db)?;
        let row = client
            .query_one(&stmt, &[&key_id.as_str(), &since])
            .await
            .map_err(db)?;
        row.try_get(0).map_err(db)
    }

    async fn count_events(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT COUNT(*) FROM events")
            .await
            .map_err(db)?;
        let row = client.query_one(&stmt, &[]).await.map_err(db)?;
        let n: i64 = row.try_get(0).map_err(db)?;
        u64::try_from(n).map_err(|_| StoreError::Corrupt("negative event count".to_owned()))
    }

    async fn summarize_events(
        &self,
        query: &crate::SummaryQuery,
    ) -> Result<crate::EventSummary, StoreError> {
        let client = self.client().await?;
        crate::summary::postgres(&client, query).await
    }

    async fn events_by_id(&self, ids: &[String]) -> Result<Vec<UsageEvent>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT id, body_json FROM events WHERE id = ANY($1) ORDER BY ts_unix_ms, id",
            )
            .await
            .map_err(db)?;
        let rows = client.query(&stmt, &[&ids]).await.map_err(db)?;
        decode_event_rows(&rows)
    }

    async fn delete_events_before(
        &self,
        before: OffsetDateTime,
        limit: usize,
    ) -> Result<u64, StoreError> {
        self.delete_before("events", before, limit).await
    }
}

impl PostgresStore {
    /// Deletes at most `limit` of the oldest rows of `table` (`events` or `control_events`)
    /// older than `before`, through the `(ts_unix_ms, id)` index.
    async fn delete_before(
        &self,
        table: &'static str,
        before: OffsetDateTime,
        limit: usize,
    ) -> Result<u64, StoreError> {
        let before = unix_ms(before)?;
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let sql = format!(
            "DELETE FROM {table} WHERE id IN \
             (SELECT id FROM {table} WHERE ts_unix_ms < $1 ORDER BY ts_unix_ms LIMIT $2)"
        );
        let stmt = client.prepare_cached(&sql).await.map_err(db)?;
        client.execute(&stmt, &[&before, &limit]).await.map_err(db)
    }
}

#[async_trait]
impl ControlEventStore for PostgresStore {
    async fn insert_control_events(&self, events: &[ControlEvent]) -> Result<u64, StoreError> {
        if events.is_empty() {
            return Ok(0);
        }
        let rows = events
            .iter()
            .map(ControlColumns::new)
            .collect::<Result<Vec<_>, _>>()?;
        let ids: Vec<&str> = rows.iter().map(|c| c.id.as_str()).collect();
        let ts: Vec<i64> = rows.iter().map(|c| c.ts_unix_ms).collect();
        let datasets: Vec<&str> = rows.iter().map(|c| c.dataset.as_str()).collect();
        let actions: Vec<&str> = rows.iter().map(|c| c.action).collect();
        let principals: Vec<&str> = rows.iter().map(|c| c.principal.as_str()).collect();
        let key_ids: Vec<&str> = rows.iter().map(|c| c.key_id.as_str()).collect();
        let accounts: Vec<Option<&str>> = rows.iter().map(|c| c.account.as_deref()).collect();
        let successes: Vec<bool> = rows.iter().map(|c| c.success).collect();
        let bodies: Vec<&str> = rows.iter().map(|c| c.body_json.as_str()).collect();
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(INSERT_CONTROL_EVENTS)
            .await
            .map_err(db)?;
        client
            .execute(
                &stmt,
                &[
                    &ids,
                    &ts,
                    &datasets,
                    &actions,
                    &principals,
                    &key_ids,
                    &accounts,
                    &successes,
                    &bodies,
                ],
            )
            .await
            .map_err(db)
    }

    async fn query_control_events(
        &self,
        q: &ControlEventQuery,
    ) -> Result<Vec<ControlEvent>, StoreError> {
        let client = self.client().await?;
        let mut b = QueryBuilder::new("SELECT id, body_json FROM control_events WHERE TRUE");
        if let Some(v) = &q.dataset {
            b.push(" AND dataset = ?", Box::new(v.clone()));
        }
        if let Some(v) = q.action {
            b.push(" AND action = ?", Box::new(v.as_str().to_owned()));
        }
        if let Some(v) = &q.principal {
            b.push(" AND principal = ?", Box::new(v.clone()));
        }
        if let Some(v) = &q.key_id {
            b.push(" AND key_id = ?", Box::new(v.as_str().to_owned()));
        }
        if let Some(v) = &q.account {
            b.push(" AND account = ?", Box::new(v.clone()));
        }
        b.window(&client, Window::control_events(q)).await?;
        let stmt = client.prepare_cached(&b.sql).await.map_err(db)?;
        let rows = client.query(&stmt, &as_refs(&b.params)).await.map_err(db)?;
        rows.iter()
            .map(|row| {
                let id: String = row.try_get(0).map_err(db)?;
                let body: String = row.try_get(1).map_err(db)?;
                decode_control(&id, &body)
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|mut events| {
                if q.newest {
                    events.reverse();
                }
                events
            })
    }

    async fn delete_control_events_before(
        &self,
        before: OffsetDateTime,
        limit: usize,
    ) -> Result<u64, StoreError> {
        self.delete_before("control_events", before, limit).await
    }
}

#[async_trait]
impl AlertStore for PostgresStore {
    async fn insert_alert(&self, alert: &Alert, incident: &str) -> Result<bool, StoreError> {
        let c = AlertColumns::new(alert, incident, OffsetDateTime::now_utc())?;
        let mut client = self.client().await?;
        // The insert's check, made once the lock is ours, sees what the previous holder
        // committed.
        let tx = begin_read_committed(&mut client).await?;
        tx.execute(ALERT_INCIDENT_LOCK, &[&c.base()])
            .await
            .map_err(db)?;
        let stmt = tx.prepare_cached(INSERT_ALERT).await.map_err(db)?;
        let inserted = tx
            .execute(
                &stmt,
                &[
                    &c.id,
                    &c.incident,
                    &c.detector,
                    &c.severity,
                    &c.key_id,
                    &c.tenant,
                    &c.at_unix_ms,
                    &c.status,
                    &c.created_at,
                    &c.body_json,
                    &c.at_or_above(),
                ],
            )
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(inserted == 1)
    }

    async fn get_alert(&self, id: &str) -> Result<Option<StoredAlert>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE id = $1"))
            .await
            .map_err(db)?;
        let row = client.query_opt(&stmt, &[&id]).await.map_err(db)?;
        row.map(|r| alert_row(&r)?.into_stored()).transpose()
    }

    async fn list_alerts(&self, q: &AlertQuery) -> Result<Vec<StoredAlert>, StoreError> {
        let mut b = QueryBuilder::new(&format!("SELECT {ALERT_COLUMNS} FROM alerts WHERE TRUE"));
        if let Some(key_id) = &q.key_id {
            b.push(" AND key_id = ?", Box::new(key_id.as_str().to_owned()));
        }
        if let Some(tenant) = &q.tenant {
            b.push(" AND tenant = ?", Box::new(tenant.clone()));
        }
        if let Some(detector) = q.detector {
            b.push(" AND detector = ?", Box::new(detector.as_str()));
        }
        if let Some(status) = q.status {
            b.push(" AND status = ?", Box::new(status.as_str()));
        }
        if let Some(since) = q.since {
            b.push(" AND at_unix_ms >= ?", Box::new(unix_ms(since)?));
        }
        if let Some(until) = q.until {
            b.push(" AND at_unix_ms < ?", Box::new(unix_ms(until)?));
        }
        b.sql.push_str(" ORDER BY at_unix_ms DESC, id DESC");
        b.limit(q.limit);
        let client = self.client().await?;
        let stmt = client.prepare_cached(&b.sql).await.map_err(db)?;
        let rows = client.query(&stmt, &as_refs(&b.params)).await.map_err(db)?;
        rows.iter()
            .map(|r| alert_row(r)?.into_stored())
            .collect::<Result<Vec<_>, _>>()
    }

    async fn set_alert_status(
        &self,
        id: &str,
        status: AlertStatus,
        note: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<StoredAlert, StoreError> {
        let note = operator_note("alert", id, note)?;
        let at = format_key_time(at)?;
        let client = self.client().await?;
        // RETURNING reads the row as this statement left it, whatever runs beside it.
        let stmt = client
            .prepare_cached(&format!(
                "UPDATE alerts SET status = $2, note = $3, updated_at = $4 WHERE id = $1 \
                 RETURNING {ALERT_COLUMNS}"
            ))
            .await
            .map_err(db)?;
        let row = client
            .query_opt(&stmt, &[&id, &status.as_str(), &note, &at])
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound)?;
        alert_row(&row)?.into_stored()
    }

    async fn record_action(&self, record: &ActionRecord) -> Result<(), StoreError> {
        let c = ActionColumns::from_record(record)?;
        let client = self.client().await?;
        let stmt = client.prepare_cached(INSERT_ACTION).await.map_err(db)?;
        client
            .execute(
                &stmt,
                &[
                    &c.id,
                    &c.key_id,
                    &c.alert_id,
                    &c.kind,
                    &c.outcome,
                    &c.applied_at,
                    &c.body_json,
                    &c.alert_ids,
                ],
            )
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn list_actions(&self, q: &ActionQuery) -> Result<Vec<ActionRecord>, StoreError> {
        let mut b = QueryBuilder::new("SELECT id, body_json FROM actions WHERE TRUE");
        if let Some(key_id) = &q.key_id {
            b.push(" AND key_id = ?", Box::new(key_id.as_str().to_owned()));
        }
        if let Some(alert_id) = &q.alert_id {
            // action_alerts holds the action's own alert and every contributing one.
            b.push(
                " AND id IN (SELECT action_id FROM action_alerts WHERE alert_id = ?)",
                Box::new(alert_id.clone()),
            );
        }
        b.sql.push_str(" ORDER BY applied_at DESC, id DESC");
        b.limit(q.limit);
        let client = self.client().await?;
        let stmt = client.prepare_cached(&b.sql).await.map_err(db)?;
        let rows = client.query(&stmt, &as_refs(&b.params)).await.map_err(db)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get(0).map_err(db)?;
            let body: String = row.try_get(1).map_err(db)?;
            out.push(decode_action(&id, &body)?);
        }
        Ok(out)
    }
}

#[async_trait]
impl IncidentStore for PostgresStore {
    async fn open_incident(
        &self,
        incident: &Incident,
        alert_ids: &[String],
        gap_secs: u32,
    ) -> Result<Opened, StoreError> {
        let c = IncidentColumns::new(incident, alert_ids, OffsetDateTime::now_utc())?;
        let stale_before = c.opened_unix_ms.saturating_sub(i64::from(gap_secs) * 1000);
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let stmt = tx.prepare_cached(RELEASE_EPISODE).await.map_err(db)?;
        tx.execute(&stmt, &[&c.subject, &stale_before])
            .await
            .map_err(db)?;
        let stmt = tx.prepare_cached(OPEN_INCIDENT).await.map_err(db)?;
        let inserted = tx.execute(&stmt, &incident_params(&c)).await.map_err(db)?;
        let select = tx
            .prepare_cached(&format!("{INCIDENT_SELECT} WHERE id = $1"))
            .await
            .map_err(db)?;
        if inserted == 0 {
            // Read committed: this statement sees the row the conflicting opener committed.
            let stmt = tx
                .prepare_cached(&format!("{INCIDENT_SELECT} WHERE episode_subject = $1"))
                .await
                .map_err(db)?;
            if let Some(row) = tx.query_opt(&stmt, &[&c.subject]).await.map_err(db)? {
                let stored = incident_row(&row)?.into_stored()?;
                tx.commit().await.map_err(db)?;
                return Ok(Opened::Running(stored));
            }
            // The id was taken by an incident that no longer holds the episode (written
            // before it was opened here): store the content as any update would.
            write_incident(&tx, &c, false).await?;
        } else {
            link_incident_alerts(&tx, &c).await?;
        }
        let row = tx
            .query_opt(&select, &[&c.id])
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound)?;
        let stored = incident_row(&row)?.into_stored()?;
        tx.commit().await.map_err(db)?;
        Ok(Opened::New(stored))
    }

    async fn upsert_incident(
        &self,
        incident: &Incident,
        alert_ids: &[String],
        reopen: bool,
    ) -> Result<StoredIncident, StoreError> {
        let c = IncidentColumns::new(incident, alert_ids, OffsetDateTime::now_utc())?;
        let mut client = self.client().await?;
        // Row, links and the read-back in one transaction: the answer is what this call left.
        let tx = client.transaction().await.map_err(db)?;
        write_incident(&tx, &c, reopen).await?;
        let stmt = tx
            .prepare_cached(&format!("{INCIDENT_SELECT} WHERE id = $1"))
            .await
            .map_err(db)?;
        let row = tx
            .query_opt(&stmt, &[&c.id])
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound)?;
        let stored = incident_row(&row)?.into_stored()?;
        tx.commit().await.map_err(db)?;
        Ok(stored)
    }

    async fn get_incident(&self, id: &str) -> Result<Option<StoredIncident>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached(&format!("{INCIDENT_SELECT} WHERE id = $1"))
            .await
            .map_err(db)?;
        let row = client.query_opt(&stmt, &[&id]).await.map_err(db)?;
        row.map(|r| incident_row(&r)?.into_stored()).transpose()
    }

    async fn list_incidents(&self, q: &IncidentQuery) -> Result<Vec<StoredIncident>, StoreError> {
        let mut b = QueryBuilder::new(&format!("{INCIDENT_SELECT} WHERE TRUE"));
        if let Some(status) = q.status {
            b.push(" AND status = ?", Box::new(status.as_str()));
        }
        if let Some(sev) = q.min_severity {
            b.push(" AND severity_rank >= ?", Box::new(sev.rank()));
        }
        if let Some(key_id) = &q.key_id {
            b.push(" AND key_id = ?", Box::new(key_id.as_str().to_owned()));
        }
        if let Some(tenant) = &q.tenant {
            b.push(" AND tenant = ?", Box::new(tenant.clone()));
        }
        if let Some(alert_id) = &q.alert_id {
            b.push(
                " AND id IN (SELECT incident_id FROM incident_alerts WHERE alert_id = ?)",
                Box::new(alert_id.clone()),
            );
        }
        if let Some(subject) = &q.subject {
            b.push(" AND subject = ?", Box::new(subject.clone()));
        }
        if let Some(since) = q.since {
            b.push(" AND updated_unix_ms >= ?", Box::new(unix_ms(since)?));
        }
        b.sql.push_str(" ORDER BY updated_unix_ms DESC, id DESC");
        b.limit(q.limit);
        let client = self.client().await?;
        let stmt = client.prepare_cached(&b.sql).await.map_err(db)?;
        let rows = client.query(&stmt, &as_refs(&b.params)).await.map_err(db)?;
        rows.iter()
            .map(|r| incident_row(r)?.into_stored())
            .collect::<Result<Vec<_>, _>>()
    }

    async fn set_incident_status(
        &self,
        id: &str,
        status: IncidentStatus,
        note: Option<&str>,
        at: OffsetDateTime,
    ) -> Result<StoredIncident, StoreError> {
        let note = operator_note("incident", id, note)?;
        let at = format_key_time(at)?;
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(db)?;
        let stmt = tx
            .prepare_cached(
                "UPDATE incidents SET status = $2, note = $3, changed_at = $4 WHERE id = $1",
            )
            .await
            .map_err(db)?;
        let changed = tx
            .execute(&stmt, &[&id, &status.as_str(), &note, &at])
            .await
            .map_err(db)?;
        if changed == 0 {
            return Err(StoreError::NotFound);
        }
        let stmt = tx
            .prepare_cached(&format!("{INCIDENT_SELECT} WHERE id = $1"))
            .await
            .map_err(db)?;
        let row = tx
            .query_opt(&stmt, &[&id])
            .await
            .map_err(db)?
            .ok_or(StoreError::NotFound)?;
        let stored = incident_row(&row)?.into_stored()?;
        tx.commit().await.map_err(db)?;
        Ok(stored)
    }

    async fn close_quiet_incidents(
        &self,
        quiet_since: OffsetDateTime,
        at: OffsetDateTime,
    ) -> Result<u64, StoreError> {
        let quiet_since = unix_ms(quiet_since)?;
        let at = format_key_time(at)?;
        let client = self.client().await?;
        // Served by `incidents_status_updated`.
        let stmt = client
            .prepare_cached(
                "UPDATE incidents SET status = 'closed', changed_at = $2, \
                 episode_subject = NULL WHERE status = 'open' AND updated_unix_ms < $1",
            )
            .await
            .map_err(db)?;
        client
            .execute(&stmt, &[&quiet_since, &at])
            .await
            .map_err(db)
    }
}

#[async_trait]
impl AuditStore for PostgresStore {
    async fn append_audit(&self, entry: &AuditEntry) -> Result<AuditRecord, StoreError> {
        let c = AuditColumns::new(entry)?;
        let mut client = self.client().await?;
        // The read below, made once the lock is ours, sees the previous holder's row.
        let tx = begin_read_committed(&mut client).await?;
        // Held until commit or rollback (a dropped transaction rolls back), so replicas
        // append one at a time and extend one chain.
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&AUDIT_LOCK_ID])
            .await
            .map_err(db)?;
        let stmt = tx
            .prepare_cached("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1")
            .await
            .map_err(db)?;
        let last = match tx.query_opt(&stmt, &[]).await.map_err(db)? {
            Some(row) => Some((
                row.try_get::<_, i64>(0).map_err(db)?,
                row.try_get::<_, String>(1).map_err(db)?,
            )),
            None => None,
        };
        let record = c.next_record(last)?;
        let stmt = tx.prepare_cached(INSERT_AUDIT).await.map_err(db)?;
        tx.execute(
            &stmt,
            &[
                &audit_seq(record.seq),
                &c.at_unix_ms,
                &c.actor,
                &c.action,
                &c.target,
                &c.tenant,
                &record.prev_hash,
                &record.hash,
                &c.body_json,
            ],
        )
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(record)
    }

    async fn list_audit(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let mut b = QueryBuilder::new(&format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE TRUE"));
        if let Some(after) = q.after_seq {
            b.push(" AND seq > ?", Box::new(audit_seq(after)));
        }
        if let Some(target) = &q.target {
            b.push(" AND target = ?", Box::new(target.clone()));
        }
        b.sql.push_str(" ORDER BY seq");
        b.limit(q.limit);
        let client = self.client().await?;
        let stmt = client.prepare_cached(&b.sql).await.map_err(db)?;
        let rows = client.query(&stmt, &as_refs(&b.params)).await.map_err(db)?;
        rows.iter()
            .map(|r| audit_row(r)?.into_record())
            .collect::<Result<Vec<_>, _>>()
    }
}

#[async_trait]
impl LeaseStore for PostgresStore {
    async fn acquire_lease(
        &self,
        name: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        let client = self.client().await?;
        let stmt = client.prepare_cached(ACQUIRE_LEASE).await.map_err(db)?;
        let row = match client
            .query_opt(&stmt, &[&name, &holder, &ttl_ms])
            .await
            .map_err(db)?
        {
            Some(row) => row,
            None => {
                let stmt = client.prepare_cached(READ_LEASE).await.map_err(db)?;
                client.query_one(&stmt, &[&name]).await.map_err(db)?
            }
        };
        Ok(Lease {
            name: name.to_owned(),
            holder: row.try_get(0).map_err(db)?,
            term: u64::try_from(row.try_get::<_, i64>(1).map_err(db)?).unwrap_or(0),
            since_unix_ms: row.try_get(2).map_err(db)?,
            expires_unix_ms: row.try_get(3).map_err(db)?,
        })
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("UPDATE leases SET expires_unix_ms = 0 WHERE name = $1 AND holder = $2")
            .await
            .map_err(db)?;
        client.execute(&stmt, &[&name, &holder]).await.map_err(db)?;
        Ok(())
    }

    async fn save_lease_state(
        &self,
        name: &str,
        holder: &str,
        state: &str,
    ) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let stmt = client.prepare_cached(SAVE_LEASE_STATE).await.map_err(db)?;
        let n = client
            .execute(&stmt, &[&name, &holder, &state])
            .await
            .map_err(db)?;
        Ok(n == 1)
    }

    async fn lease_state(&self, name: &str) -> Result<Option<String>, StoreError> {
        let client = self.client().await?;
        let stmt = client
            .prepare_cached("SELECT state FROM leases WHERE name = $1")
            .await
            .map_err(db)?;
        let row = client.query_opt(&stmt, &[&name]).await.map_err(db)?;
        row.map(|r| r.try_get::<_, Option<String>>(0))
            .transpose()
            .map(Option::flatten)
            .map_err(db)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_plain_identifiers() {
        for ok in ["stormwall", "sw_test_12", "_x"] {
            assert!(validate_schema(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Stormwall",
            "a-b",
            "a;drop",
            "1abc",
            "pg_catalog",
            &"x".repeat(64),
        ] {
            assert!(validate_schema(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_urls_do_not_echo_the_url() {
        let cfg = PostgresConfig::from_url("postgres://u:hunter2@h:notaport/db");
        let err = Target::from_config(&cfg, &|_| None).err().unwrap();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn session_options_keep_url_options() {
        let mut cfg = PostgresConfig::from_url("postgres://h/db?options=-c%20work_mem%3D8MB");
        cfg.schema = Some("sw".to_owned());
        let t = Target::from_config(&cfg, &|_| None).unwrap();
        let options = t
            .session(Some(Duration::from_secs(2)))
            .get_options()
            .unwrap()
            .to_owned();
        assert_eq!(
            options,
            "-c work_mem=8MB -c search_path=sw -c synchronous_commit=on -c statement_timeout=2000"
        );
    }

    #[test]
    fn lock_ids_differ_by_schema() {
        let a =
            Target::from_config(&PostgresConfig::from_url("postgres://h/db"), &|_| None).unwrap();
        let mut cfg = PostgresConfig::from_url("postgres://h/db");
        cfg.schema = Some("other".to_owned());
        let b = Target::from_config(&cfg, &|_| None).unwrap();
        assert_ne!(a.lock_id(), b.lock_id());
        assert_eq!(a.lock_id(), a.lock_id());
    }
}
