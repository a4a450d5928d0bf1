-- Who holds which IP, as the mobile network reports it over RADIUS accounting (RFC 2866).
-- One row per IP: a new session on an IP replaces the old one.
CREATE TABLE network_sessions (
  ip              TEXT PRIMARY KEY,   -- Framed-IP-Address, dotted quad
  imsi            TEXT NOT NULL,      -- 3GPP-IMSI
  imei            TEXT,               -- 15-digit IMEI normalised from 3GPP-IMEISV; NULL if absent or invalid
  msisdn          TEXT,               -- Calling-Station-Id
  rat_type        INTEGER,            -- 3GPP-RAT-Type (TS 29.274 §8.17 values)
  nas_ip          TEXT NOT NULL,      -- NAS-IP-Address, else the datagram's source address
  nas_identifier  TEXT,               -- NAS-Identifier
  acct_session_id TEXT NOT NULL,      -- Acct-Session-Id
  charging_id     INTEGER,            -- 3GPP-Charging-ID
  started_at      INTEGER NOT NULL,   -- ms since epoch
  updated_at      INTEGER NOT NULL,   -- last Start/Interim-Update applied, ms since epoch
  updates         INTEGER NOT NULL DEFAULT 1  -- accounting records applied to this session
) WITHOUT ROWID;
CREATE INDEX network_sessions_by_imsi ON network_sessions (imsi);
CREATE INDEX network_sessions_by_nas ON network_sessions (nas_ip);
-- No index on updated_at: every Interim-Update would rewrite it (measured: a third fewer records per second
-- under group commit). Expiry, once a minute at most, scans the table instead.
