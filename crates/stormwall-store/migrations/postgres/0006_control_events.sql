-- 0006_control_events: management-plane calls read from cloud logs (`ControlEvent`: keys
-- listed or regenerated, logging and guardrail changes, model enablement), kept like usage
-- events so "who called listKeys on this account last week" can be answered afterwards
-- (PostgreSQL twin of migrations/sqlite/0006_control_events.sql).
--
-- Same conventions as 0001: `body_json` is the event's full serde form (TEXT, not JSONB, for
-- the reason given there) and the other columns copy the fields queries filter on;
-- `ts_unix_ms` is the call's time in unix milliseconds, as in `events`. The id comes from
-- the source and its record, so reading a log again inserts nothing: writers insert with
-- `ON CONFLICT (id) DO NOTHING`. `principal` is the credential's provider id, `key_id` the
-- 12-character id the detectors and alerts name it by, `account` its account, subscription
-- or organisation. Sorted and compared text uses the "C" collation.
CREATE TABLE control_events (
    id          TEXT COLLATE "C" PRIMARY KEY,
    ts_unix_ms  BIGINT NOT NULL,
    dataset     TEXT COLLATE "C" NOT NULL,
    action      TEXT COLLATE "C" NOT NULL,
    principal   TEXT COLLATE "C" NOT NULL,
    key_id      TEXT COLLATE "C" NOT NULL,
    account     TEXT COLLATE "C",
    success     BOOLEAN NOT NULL,
    body_json   TEXT NOT NULL
);

CREATE INDEX control_events_ts ON control_events (ts_unix_ms, id);
CREATE INDEX control_events_principal_ts ON control_events (principal, ts_unix_ms);
CREATE INDEX control_events_key_ts ON control_events (key_id, ts_unix_ms);
CREATE INDEX control_events_account_ts ON control_events (account, ts_unix_ms);
