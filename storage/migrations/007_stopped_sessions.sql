-- Accounting sessions the network has stopped (RADIUS Acct-Status-Type Stop). A captured Start or
-- Interim-Update of one, replayed later, must not re-open it: each is remembered for the replay window
-- (the session timeout) and then forgotten.
CREATE TABLE stopped_sessions (
  nas_ip          TEXT NOT NULL,      -- NAS-IP-Address, else the datagram's source address
  acct_session_id TEXT NOT NULL,      -- Acct-Session-Id (unique per NAS, RFC 2866 §5.5)
  stopped_at      INTEGER NOT NULL,   -- ms since epoch
  PRIMARY KEY (nas_ip, acct_session_id)
) WITHOUT ROWID;
CREATE INDEX stopped_sessions_by_time ON stopped_sessions (stopped_at);
-- The Event-Timestamp of the record that opened a session (NAS clock), when it carried one: a record
-- stamped earlier, for another session, is older news and does not evict it.
ALTER TABLE network_sessions ADD COLUMN opened_event_at INTEGER;
