-- 0001_init: key records and usage events.
--
-- Applied once, inside a transaction, by `SqliteStore::open`; `PRAGMA user_version` records
-- how many migration files have run. Never edit a released migration: add the next file.

-- One row per issued key. Only the SHA-256 of a key is stored, never the key itself.
-- Timestamps are RFC 3339 text in UTC with nine fractional digits, so text order is time
-- order. Kind and status are plain text (no CHECK) so a new variant needs no table rebuild.
CREATE TABLE keys (
    id            TEXT PRIMARY KEY NOT NULL,
    tenant        TEXT NOT NULL,
    kind          TEXT NOT NULL,
    status        TEXT NOT NULL,
    hash_hex      TEXT NOT NULL,
    last4         TEXT NOT NULL,
    label         TEXT,
    scope_json    TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    status_reason TEXT,
    -- Rotation links are informational, not foreign keys: a rotation may record either
    -- side first.
    rotated_from  TEXT,
    rotated_to    TEXT
) STRICT;

CREATE INDEX keys_tenant ON keys (tenant);

-- One row per usage event. `body_json` is the event's full serde form (the JSON-lines
-- export); the other columns are copies of the fields queries filter and sum on.
-- `key_id` is not a foreign key: refused requests record ids of keys that do not exist.
CREATE TABLE events (
    id            TEXT PRIMARY KEY NOT NULL,
    ts_unix_ms    INTEGER NOT NULL,
    key_id        TEXT,
    tenant        TEXT,
    decision      TEXT NOT NULL,
    reject_reason TEXT,
    status        INTEGER NOT NULL,
    cost_usd      REAL NOT NULL,
    body_json     TEXT NOT NULL
) STRICT;

CREATE INDEX events_ts ON events (ts_unix_ms, id);
CREATE INDEX events_key_ts ON events (key_id, ts_unix_ms);
CREATE INDEX events_tenant_ts ON events (tenant, ts_unix_ms);
