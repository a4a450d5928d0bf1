-- Several gateway nodes on one database (storage.url). On SQLite there is one node and these tables stay
-- empty; they exist so both dialects keep one schema.
-- A node's heartbeat: times in ms by the database's clock, never a node's.
CREATE TABLE cluster_nodes (
  node_id       TEXT PRIMARY KEY,
  started_at    INTEGER NOT NULL,
  heartbeat_at  INTEGER NOT NULL,
  info          TEXT NOT NULL DEFAULT '{}'     -- JSON: ports, pid
);
-- Which node delivers a SIM's outbox and holds its thing's upstream session. The lease lives while its
-- owner's heartbeat does; every change of owner raises the epoch, and a node deletes delivered rows only
-- while the epoch it was granted is still the SIM's (the fence).
CREATE TABLE sim_leases (
  imsi         TEXT PRIMARY KEY,
  owner        TEXT NOT NULL,
  epoch        INTEGER NOT NULL,
  acquired_at  INTEGER NOT NULL,
  wanted_by    TEXT                           -- a node asking the owner to hand the SIM over
);
CREATE INDEX sim_leases_by_owner ON sim_leases (owner);
