-- 0005_leases: named leases — which replica does a job only one may do at a time (follow
-- one `[[logs]]` source), until when, and what it hands over to the next holder
-- (PostgreSQL twin of migrations/sqlite/0005_leases.sql).
--
-- `holder` names the replica; it holds the lease while `expires_unix_ms` (the database
-- server's clock, unix milliseconds, so replicas' clocks need not agree) is in the future,
-- renewing it as it works. Another replica takes the lease only once it expired (or was
-- released: `expires_unix_ms` set to 0), with one conditional upsert, whose row lock makes
-- two takers impossible. `term` counts holder changes: a holder that sees a term other than
-- its own lost the lease in between. `state` is what the holder leaves for its successor
-- (the follower's file cursors); only the current holder may write it.
CREATE TABLE leases (
    name             TEXT COLLATE "C" PRIMARY KEY,
    holder           TEXT NOT NULL,
    term             BIGINT NOT NULL,
    since_unix_ms    BIGINT NOT NULL,
    expires_unix_ms  BIGINT NOT NULL,
    state            TEXT
);
