-- SIM registry: one row per SIM, keyed by IMSI.
CREATE TABLE sims (
  imsi         TEXT PRIMARY KEY,
  iccid        TEXT UNIQUE,
  msisdn       TEXT,
  group_name   TEXT NOT NULL,
  status       TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'terminated')),
  bound_imei   TEXT,            -- 15-digit IMEI the SIM is locked to (compared on its first 14 digits)
  lock_mode    TEXT,            -- per-SIM override of the group's lock mode; NULL = the group's
  thing_name   TEXT NOT NULL UNIQUE,
  secret_hash  TEXT,            -- scrypt hash of the SIM's secret, for claimed identity in groups that require one
  tags         TEXT NOT NULL DEFAULT '{}',
  created_at   INTEGER NOT NULL,
  last_seen_at INTEGER
);

-- Device credentials and the vending state machine (one row per SIM).
CREATE TABLE credentials (
  imsi        TEXT PRIMARY KEY REFERENCES sims(imsi),
  thing_name  TEXT NOT NULL,
  step        TEXT NOT NULL,     -- last completed vending step
  key_alg     TEXT NOT NULL,
  key_enc     BLOB NOT NULL,     -- private key, AES-256-GCM under the master key
  csr_pem     TEXT NOT NULL,
  cert_id     TEXT,
  cert_arn    TEXT,
  cert_pem    TEXT,
  last_error  TEXT,
  attempts    INTEGER NOT NULL DEFAULT 0,
  lease_owner TEXT,              -- process currently vending this SIM
  lease_until INTEGER,
  updated_at  INTEGER NOT NULL
);

-- Durable uplink queue: rows leave only when the upstream acknowledged them.
CREATE TABLE outbox (
  id           INTEGER PRIMARY KEY AUTOINCREMENT,
  imsi         TEXT NOT NULL,
  device_topic TEXT NOT NULL,
  payload      BLOB NOT NULL,
  qos          INTEGER NOT NULL,
  received_at  INTEGER NOT NULL
);
CREATE INDEX outbox_by_sim ON outbox (imsi, id);

-- Messages upstream refused for good, kept with the reason.
CREATE TABLE dead_letters (
  id           INTEGER PRIMARY KEY AUTOINCREMENT,
  imsi         TEXT NOT NULL,
  device_topic TEXT NOT NULL,
  payload      BLOB NOT NULL,
  received_at  INTEGER NOT NULL,
  reason       TEXT NOT NULL,
  failed_at    INTEGER NOT NULL
);

-- Audit log of events concerning a SIM.
CREATE TABLE audit (
  id     INTEGER PRIMARY KEY AUTOINCREMENT,
  at     INTEGER NOT NULL,
  imsi   TEXT,
  kind   TEXT NOT NULL,
  detail TEXT NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_by_sim ON audit (imsi, at);
CREATE INDEX audit_by_kind ON audit (kind, at);

-- Small facts about this database, such as the master-key check value.
CREATE TABLE meta (
  key   TEXT PRIMARY KEY,
  value BLOB NOT NULL
);
