-- Bearer tokens of the admin API. Only a SHA-256 of each token is kept: tokens are 256-bit random
-- strings, so a fast hash is enough (nothing to brute-force), and a stolen database yields no token.
CREATE TABLE admin_tokens (
  id           TEXT PRIMARY KEY,               -- public handle, shown in lists and audit rows
  token_hash   TEXT NOT NULL UNIQUE,           -- hex SHA-256 of the token
  role         TEXT NOT NULL CHECK (role IN ('installer', 'operator')),
  name         TEXT NOT NULL,                  -- who or what holds it, for the audit log
  created_at   INTEGER NOT NULL,
  last_used_at INTEGER,
  revoked_at   INTEGER
);

-- Fleet listing filters and keyset paging (ORDER BY imsi).
CREATE INDEX sims_by_group ON sims (group_name, imsi);
CREATE INDEX sims_by_status ON sims (status, imsi);

-- Audit queries by time range and retention sweeps by age.
CREATE INDEX audit_by_at ON audit (at);
CREATE INDEX dead_letters_by_failed ON dead_letters (failed_at);
