-- 0002_alerts: alerts raised by the detectors, and the response actions taken because of them.
--
-- Same conventions as 0001: `body_json` is the record's full serde form and the other
-- columns copy the fields queries filter and sort on; wall-clock times are fixed-width
-- RFC 3339 text (text order is time order); event times are unix milliseconds, as in
-- `events`, so alert and event time bounds compare alike.

-- One row per alert. `incident` names what the alert is about (e.g. detector, key and hour):
-- replicas that see the same incident race to insert it and all but one insert nothing.
-- `body_json` is the `Alert`; status, note and the wall-clock times are operator state.
CREATE TABLE alerts (
    id          TEXT PRIMARY KEY NOT NULL,
    incident    TEXT NOT NULL UNIQUE,
    detector    TEXT NOT NULL,
    severity    TEXT NOT NULL,
    key_id      TEXT,
    tenant      TEXT,
    at_unix_ms  INTEGER NOT NULL,
    status      TEXT NOT NULL,
    note        TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    body_json   TEXT NOT NULL
) STRICT;

CREATE INDEX alerts_at ON alerts (at_unix_ms, id);
CREATE INDEX alerts_key_at ON alerts (key_id, at_unix_ms);
CREATE INDEX alerts_tenant_at ON alerts (tenant, at_unix_ms);
CREATE INDEX alerts_detector_at ON alerts (detector, at_unix_ms);

-- One row per applied action. `body_json` is the `ActionRecord`. Alert ids are not foreign
-- keys: an action may be recorded before (or without) its alert row, e.g. when another
-- replica stored the alert of the same incident.
CREATE TABLE actions (
    id          TEXT PRIMARY KEY NOT NULL,
    key_id      TEXT NOT NULL,
    alert_id    TEXT NOT NULL,
    kind        TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    applied_at  TEXT NOT NULL,
    body_json   TEXT NOT NULL
) STRICT;

CREATE INDEX actions_key ON actions (key_id, applied_at);
CREATE INDEX actions_alert ON actions (alert_id);

-- Every alert that caused an action: its `alert_id` and each of its `contributing_alerts`,
-- so "the actions this alert caused" is one indexed lookup.
CREATE TABLE action_alerts (
    alert_id    TEXT NOT NULL,
    action_id   TEXT NOT NULL REFERENCES actions (id) ON DELETE CASCADE,
    PRIMARY KEY (alert_id, action_id)
) STRICT, WITHOUT ROWID;
