-- PostgreSQL twin of ../002_network_sessions.sql.
CREATE TABLE network_sessions (
  ip              TEXT PRIMARY KEY,
  imsi            TEXT NOT NULL,
  imei            TEXT,
  msisdn          TEXT,
  rat_type        INTEGER,
  nas_ip          TEXT NOT NULL,
  nas_identifier  TEXT,
  acct_session_id TEXT NOT NULL,
  charging_id     BIGINT,             -- 3GPP-Charging-ID is an unsigned 32-bit value
  started_at      BIGINT NOT NULL,
  updated_at      BIGINT NOT NULL,
  updates         INTEGER NOT NULL DEFAULT 1
);
CREATE INDEX network_sessions_by_imsi ON network_sessions (imsi);
CREATE INDEX network_sessions_by_nas ON network_sessions (nas_ip);
