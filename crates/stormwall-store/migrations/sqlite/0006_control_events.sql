-- 0006_control_events: management-plane calls read from cloud logs (`ControlEvent`: keys
-- listed or regenerated, logging and guardrail changes, model enablement), kept like usage
-- events so "who called listKeys on this account last week" can be answered afterwards.
--
-- Same conventions as 0001: `body_json` is the event's full serde form and the other
-- columns copy the fields queries filter on; `ts_unix_ms` is the call's time in unix
-- milliseconds, as in `events`. The id comes from the source and its record (the provider's
-- event id where it has one), so reading a log again inserts nothing: writers insert with
-- `INSERT OR IGNORE`. `principal` is the credential's provider id (an access key id, an
-- Azure resource + key slot or object id), `key_id` the 12-character id the detectors and
-- alerts name it by, `account` its account, subscription or organisation.
CREATE TABLE control_events (
    id          TEXT PRIMARY KEY NOT NULL,
    ts_unix_ms  INTEGER NOT NULL,
    dataset     TEXT NOT NULL,
    action      TEXT NOT NULL,
    principal   TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    account     TEXT,
    success     INTEGER NOT NULL,
    body_json   TEXT NOT NULL
) STRICT;

CREATE INDEX control_events_ts ON control_events (ts_unix_ms, id);
CREATE INDEX control_events_principal_ts ON control_events (principal, ts_unix_ms);
CREATE INDEX control_events_key_ts ON control_events (key_id, ts_unix_ms);
CREATE INDEX control_events_account_ts ON control_events (account, ts_unix_ms);
