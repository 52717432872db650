-- 0007_incident_episodes: at most one running episode per incident subject, held by the
-- store (PostgreSQL twin of migrations/sqlite/0007_incident_episodes.sql), so two gateway
-- replicas whose first alerts on one key (or source network) arrive together open one
-- incident, not two.
--
-- `episode_subject` is the subject's label while the incident's episode runs and NULL
-- after (closed, or superseded by the subject's next episode); the unique index lets one
-- row at a time hold it (NULLs never clash). Opening an incident inserts with it and ON
-- CONFLICT DO NOTHING: a concurrent opener waits for the first to commit, inserts nothing,
-- reads the holder and joins it. The latest incident of each subject not yet closed takes
-- the episode here.
ALTER TABLE incidents ADD COLUMN episode_subject TEXT COLLATE "C";

UPDATE incidents SET episode_subject = subject
WHERE status <> 'closed'
  AND id = (SELECT i.id FROM incidents AS i WHERE i.subject = incidents.subject
            ORDER BY i.updated_unix_ms DESC, i.id DESC LIMIT 1);

CREATE UNIQUE INDEX incidents_episode ON incidents (episode_subject);
