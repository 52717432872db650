-- 0001_init: key records and usage events (PostgreSQL twin of migrations/sqlite/0001_init.sql).
--
-- Applied once, inside a transaction, by `stormwall_store::postgres::migrate`, which records
-- it in `stormwall_migrations` under an advisory lock. Never edit a released migration: add
-- the next file.
--
-- Values are encoded exactly as in SQLite (crate::codec), so the two backends hold the same
-- rows. Columns that are sorted or compared as text use the "C" collation: byte order, the
-- same as SQLite's, whatever the database's default collation.

-- One row per issued key. Only the SHA-256 of a key is stored, never the key itself.
-- Timestamps are RFC 3339 text in UTC with nine fractional digits: text order is time order,
-- and nanoseconds survive (timestamptz keeps microseconds). Kind and status are plain text
-- (no CHECK) so a new variant needs no table rewrite.
CREATE TABLE keys (
    id            TEXT COLLATE "C" PRIMARY KEY,
    tenant        TEXT COLLATE "C" NOT NULL,
    kind          TEXT NOT NULL,
    status        TEXT NOT NULL,
    hash_hex      TEXT NOT NULL,
    last4         TEXT NOT NULL,
    label         TEXT,
    scope_json    TEXT NOT NULL,
    created_at    TEXT COLLATE "C" NOT NULL,
    updated_at    TEXT COLLATE "C" NOT NULL,
    status_reason TEXT,
    -- Rotation links are informational, not foreign keys: a rotation may record either
    -- side first.
    rotated_from  TEXT,
    rotated_to    TEXT
);

CREATE INDEX keys_tenant ON keys (tenant);
CREATE INDEX keys_created ON keys (created_at, id);

-- One row per usage event. `body_json` is the event's full serde form (the JSON-lines
-- export); the other columns are copies of the fields queries filter and sum on.
-- `body_json` is TEXT, not JSONB: JSONB refuses the escaped NUL (\u0000) that a client can
-- put in a header or `user` field, and one such event would fail its whole batch.
-- `key_id` is not a foreign key: refused requests record ids of keys that do not exist.
CREATE TABLE events (
    id            TEXT COLLATE "C" PRIMARY KEY,
    ts_unix_ms    BIGINT NOT NULL,
    key_id        TEXT COLLATE "C",
    tenant        TEXT COLLATE "C",
    decision      TEXT NOT NULL,
    reject_reason TEXT,
    status        INTEGER NOT NULL,
    cost_usd      DOUBLE PRECISION NOT NULL,
    body_json     TEXT NOT NULL
);

CREATE INDEX events_ts ON events (ts_unix_ms, id);
CREATE INDEX events_key_ts ON events (key_id, ts_unix_ms);
CREATE INDEX events_tenant_ts ON events (tenant, ts_unix_ms);
