-- One row per certificate a SIM has had (a "generation"), so a rotation can vend the next one while the
-- current one stays in use, and revoked certificates keep their history. Steps:
--   key → csr_sent → certificate → thing → policy   vending (at most one such row per SIM)
--   ready                                           in use (at most one per SIM)
--   retiring → retired                              being / done being deactivated in IoT Core
CREATE TABLE credentials_v3 (
  id              INTEGER PRIMARY KEY AUTOINCREMENT,
  imsi            TEXT NOT NULL REFERENCES sims(imsi),
  thing_name      TEXT NOT NULL,
  purpose         TEXT NOT NULL DEFAULT 'first',  -- first | rotation
  step            TEXT NOT NULL,
  key_alg         TEXT NOT NULL,
  key_enc         BLOB NOT NULL,     -- private key, AES-256-GCM under the master key; emptied once retired
  csr_pem         TEXT NOT NULL,
  pubkey_sha256   TEXT,              -- fingerprint of the public key: recognises our certificates in IoT Core
  csr_sent_at     INTEGER,           -- first time CreateCertificateFromCsr was sent for this key
  orphan_check_at INTEGER,           -- set when a certificate may exist in IoT Core that we did not record
  cert_id         TEXT,
  cert_arn        TEXT,
  cert_pem        TEXT,
  not_after       INTEGER,           -- certificate expiry, ms since epoch
  policy_name     TEXT,
  retire_reason   TEXT,
  retire_after    INTEGER,
  last_error      TEXT,
  attempts        INTEGER NOT NULL DEFAULT 0,
  lease_owner     TEXT,              -- process currently working on this row
  lease_until     INTEGER,
  created_at      INTEGER NOT NULL,
  updated_at      INTEGER NOT NULL
);

-- The old machine sent the CSR straight from step 'key' and recorded nothing before: such a row may
-- have a certificate in IoT Core, so it resumes as csr_sent (since the SIM was registered) with a check.
INSERT INTO credentials_v3 (imsi, thing_name, step, key_alg, key_enc, csr_pem, csr_sent_at, orphan_check_at,
                            cert_id, cert_arn, cert_pem, last_error, attempts, created_at, updated_at)
SELECT c.imsi, c.thing_name,
       CASE c.step WHEN 'key' THEN 'csr_sent' ELSE c.step END,
       c.key_alg, c.key_enc, c.csr_pem,
       s.created_at,
       CASE c.step WHEN 'key' THEN c.updated_at ELSE NULL END,
       c.cert_id, c.cert_arn, c.cert_pem, c.last_error, c.attempts, s.created_at, c.updated_at
FROM credentials c JOIN sims s ON s.imsi = c.imsi;

DROP TABLE credentials;
ALTER TABLE credentials_v3 RENAME TO credentials;

CREATE UNIQUE INDEX credentials_one_vending ON credentials (imsi) WHERE step IN ('key', 'csr_sent', 'certificate', 'thing', 'policy');
CREATE UNIQUE INDEX credentials_one_ready ON credentials (imsi) WHERE step = 'ready';
CREATE INDEX credentials_by_imsi ON credentials (imsi, id);
CREATE INDEX credentials_by_step ON credentials (step, not_after);
CREATE INDEX credentials_by_cert ON credentials (cert_id) WHERE cert_id IS NOT NULL;
CREATE INDEX credentials_orphan_checks ON credentials (orphan_check_at) WHERE orphan_check_at IS NOT NULL;
