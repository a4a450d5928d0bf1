-- PostgreSQL twin of ../005_admin.sql.
CREATE TABLE admin_tokens (
  id           TEXT PRIMARY KEY,
  token_hash   TEXT NOT NULL UNIQUE,
  role         TEXT NOT NULL CHECK (role IN ('installer', 'operator')),
  name         TEXT NOT NULL,
  created_at   BIGINT NOT NULL,
  last_used_at BIGINT,
  revoked_at   BIGINT
);

CREATE INDEX sims_by_group ON sims (group_name, imsi);
CREATE INDEX sims_by_status ON sims (status, imsi);

CREATE INDEX audit_by_at ON audit (at);
CREATE INDEX dead_letters_by_failed ON dead_letters (failed_at);
