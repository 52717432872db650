-- 0004_incidents: incidents — the alerts about one key (or one source network) within an
-- episode, as one record a person reads and acknowledges (PostgreSQL twin of
-- migrations/sqlite/0004_incidents.sql).
--
-- Same conventions as 0001–0003: `body_json` is the `Incident`'s serde form (TEXT, not
-- JSONB) and the other columns copy the fields queries filter and sort on; event times are
-- unix milliseconds, wall-clock times fixed-width RFC 3339 text; sorted and compared text
-- uses the "C" collation. `status` and `note` are operator state: the column, not the
-- body's copy, is the incident's status. `severity_rank` (0 info … 4 critical) serves "at
-- least this severity" filters.
CREATE TABLE incidents (
    id               TEXT COLLATE "C" PRIMARY KEY,
    subject          TEXT COLLATE "C" NOT NULL,
    key_id           TEXT COLLATE "C",
    tenant           TEXT COLLATE "C",
    severity         TEXT NOT NULL,
    severity_rank    BIGINT NOT NULL,
    status           TEXT NOT NULL,
    opened_unix_ms   BIGINT NOT NULL,
    updated_unix_ms  BIGINT NOT NULL,
    note             TEXT,
    created_at       TEXT COLLATE "C" NOT NULL,
    changed_at       TEXT COLLATE "C" NOT NULL,
    body_json        TEXT NOT NULL
);

CREATE INDEX incidents_updated ON incidents (updated_unix_ms, id);
CREATE INDEX incidents_key_updated ON incidents (key_id, updated_unix_ms);
CREATE INDEX incidents_status_updated ON incidents (status, updated_unix_ms);

-- Every alert that joined an incident (the body's timeline is capped; this is not). Alert
-- ids are not foreign keys, as in `action_alerts`.
CREATE TABLE incident_alerts (
    incident_id  TEXT COLLATE "C" NOT NULL REFERENCES incidents (id) ON DELETE CASCADE,
    alert_id     TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (incident_id, alert_id)
);

CREATE INDEX incident_alerts_alert ON incident_alerts (alert_id);
