-- PostgreSQL twin of ../010_cluster.sql, and the change notices nodes keep their caches fresh by.
CREATE TABLE cluster_nodes (
  node_id       TEXT PRIMARY KEY,
  started_at    BIGINT NOT NULL,
  heartbeat_at  BIGINT NOT NULL,
  info          TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE sim_leases (
  imsi         TEXT PRIMARY KEY,
  owner        TEXT NOT NULL,
  epoch        BIGINT NOT NULL,
  acquired_at  BIGINT NOT NULL,
  wanted_by    TEXT
);
CREATE INDEX sim_leases_by_owner ON sim_leases (owner);

-- NOTIFY <channel>, <the row's key column> after a change: sent at commit, to every listening node.
CREATE FUNCTION simbridge_notify_key() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'DELETE' THEN
    PERFORM pg_notify(TG_ARGV[0], to_jsonb(OLD) ->> TG_ARGV[1]);
  ELSE
    PERFORM pg_notify(TG_ARGV[0], to_jsonb(NEW) ->> TG_ARGV[1]);
  END IF;
  RETURN NULL;
END
$$;

CREATE TRIGGER sims_notify_insert_delete AFTER INSERT OR DELETE ON sims
FOR EACH ROW EXECUTE FUNCTION simbridge_notify_key('simbridge_sims', 'imsi');
-- Every change but the last-seen time, which each outbox commit writes and no cache reads.
CREATE TRIGGER sims_notify_update AFTER UPDATE ON sims
FOR EACH ROW WHEN ((OLD.iccid, OLD.msisdn, OLD.group_name, OLD.status, OLD.bound_imei, OLD.lock_mode, OLD.thing_name, OLD.tags, OLD.secret_hash, OLD.delivered_at)
  IS DISTINCT FROM (NEW.iccid, NEW.msisdn, NEW.group_name, NEW.status, NEW.bound_imei, NEW.lock_mode, NEW.thing_name, NEW.tags, NEW.secret_hash, NEW.delivered_at))
EXECUTE FUNCTION simbridge_notify_key('simbridge_sims', 'imsi');

CREATE TRIGGER network_sessions_notify AFTER INSERT OR UPDATE OR DELETE ON network_sessions
FOR EACH ROW EXECUTE FUNCTION simbridge_notify_key('simbridge_sessions', 'ip');

CREATE TRIGGER downlink_notify AFTER INSERT OR DELETE ON downlink
FOR EACH ROW EXECUTE FUNCTION simbridge_notify_key('simbridge_downlink', 'imsi');
