-- 0003_audit: the audit log — who changed what — as one hash chain
-- (PostgreSQL twin of migrations/sqlite/0003_audit.sql).
--
-- Same conventions as 0001/0002: `body_json` is the `AuditEntry`'s serde form (TEXT, not
-- JSONB: the hash covers these exact bytes, which JSONB would re-format) and the other columns
-- copy the fields queries filter on; `at_unix_ms` is the entry's time in unix milliseconds.
-- Compared text uses the "C" collation.
--
-- `seq` counts from 1 without gaps; `prev_hash` is the previous row's `hash` (all zeros for
-- the first), and `hash` is SHA-256 over `prev_hash`, `seq` and `body_json`, so a changed,
-- removed or reordered row breaks the chain. Replicas append under one transaction-scoped
-- advisory lock (read the last row, insert the next), so they append to one chain; the
-- primary key refuses a second row with the same `seq` should that ever fail.
CREATE TABLE audit (
    seq         BIGINT PRIMARY KEY,
    at_unix_ms  BIGINT NOT NULL,
    actor       TEXT COLLATE "C" NOT NULL,
    action      TEXT COLLATE "C" NOT NULL,
    target      TEXT COLLATE "C",
    tenant      TEXT COLLATE "C",
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL,
    body_json   TEXT NOT NULL
);

CREATE INDEX audit_target ON audit (target, seq);
