-- 0005_leases: named leases — which replica does a job only one may do at a time (follow
-- one `[[logs]]` source), until when, and what it hands over to the next holder.
--
-- `holder` names the replica; it holds the lease while `expires_unix_ms` (wall clock, unix
-- milliseconds) is in the future, renewing it as it works. Another replica takes the lease
-- only once it expired (or was released: `expires_unix_ms` set to 0), with one conditional
-- upsert, so two cannot both take it. `term` counts holder changes: a holder that sees a
-- term other than its own lost the lease in between. `state` is what the holder leaves for
-- its successor (the follower's file cursors); only the current holder may write it.
CREATE TABLE leases (
    name             TEXT PRIMARY KEY NOT NULL,
    holder           TEXT NOT NULL,
    term             INTEGER NOT NULL,
    since_unix_ms    INTEGER NOT NULL,
    expires_unix_ms  INTEGER NOT NULL,
    state            TEXT
) STRICT;
