-- The gateway's own identity in IoT Core (lifecycle events, docs/events.md): one row per gateway name,
-- apart from the SIMs' credentials (a gateway is no SIM). Steps: key → csr_sent → certificate → ready.
CREATE TABLE gateway_credentials (
  gateway     TEXT PRIMARY KEY,
  thing_name  TEXT NOT NULL,
  step        TEXT NOT NULL CHECK (step IN ('key', 'csr_sent', 'certificate', 'ready')),
  key_alg     TEXT NOT NULL,
  key_enc     BLOB NOT NULL,     -- private key, AES-256-GCM under the master key, like every device key
  csr_pem     TEXT NOT NULL,
  cert_id     TEXT,
  cert_arn    TEXT,
  cert_pem    TEXT,
  policy_name TEXT,
  created_at  INTEGER NOT NULL,
  updated_at  INTEGER NOT NULL
);
