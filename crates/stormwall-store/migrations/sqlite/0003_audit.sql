-- 0003_audit: the audit log — who changed what — as one hash chain.
--
-- Same conventions as 0001/0002: `body_json` is the `AuditEntry`'s serde form, exactly the
-- bytes its hash covers, and the other columns copy the fields queries filter on; `at_unix_ms`
-- is the entry's time in unix milliseconds (entries are stored at millisecond precision).
--
-- `seq` counts from 1 without gaps; `prev_hash` is the previous row's `hash` (all zeros for
-- the first), and `hash` is SHA-256 over `prev_hash`, `seq` and `body_json`, so a changed,
-- removed or reordered row breaks the chain. Writers append inside one `BEGIN IMMEDIATE`
-- transaction (read the last row, insert the next), so processes sharing the file append to
-- one chain; the primary key refuses a second row with the same `seq` should that ever fail.
CREATE TABLE audit (
    seq         INTEGER PRIMARY KEY NOT NULL,
    at_unix_ms  INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    action      TEXT NOT NULL,
    target      TEXT,
    tenant      TEXT,
    prev_hash   TEXT NOT NULL,
    hash        TEXT NOT NULL,
    body_json   TEXT NOT NULL
) STRICT;

CREATE INDEX audit_target ON audit (target, seq);
