-- PostgreSQL twin of ../007_stopped_sessions.sql.
CREATE TABLE stopped_sessions (
  nas_ip          TEXT NOT NULL,
  acct_session_id TEXT NOT NULL,
  stopped_at      BIGINT NOT NULL,
  PRIMARY KEY (nas_ip, acct_session_id)
);
CREATE INDEX stopped_sessions_by_time ON stopped_sessions (stopped_at);
ALTER TABLE network_sessions ADD COLUMN opened_event_at BIGINT;
