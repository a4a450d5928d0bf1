-- PostgreSQL twin of ../012_gateway_identity.sql.
CREATE TABLE gateway_credentials (
  gateway     TEXT PRIMARY KEY,
  thing_name  TEXT NOT NULL,
  step        TEXT NOT NULL CHECK (step IN ('key', 'csr_sent', 'certificate', 'ready')),
  key_alg     TEXT NOT NULL,
  key_enc     BYTEA NOT NULL,
  csr_pem     TEXT NOT NULL,
  cert_id     TEXT,
  cert_arn    TEXT,
  cert_pem    TEXT,
  policy_name TEXT,
  created_at  BIGINT NOT NULL,
  updated_at  BIGINT NOT NULL
);
