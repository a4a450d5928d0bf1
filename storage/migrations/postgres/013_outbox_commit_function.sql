-- PostgreSQL twin of ../013_outbox_commit_function.sql: the outbox's group commit as one function, so a
-- commit is one round trip (storage/postgres/outbox.ts). Each statement a commit sent on its own waited
-- for the gateway's event loop to read the answer and send the next, while the transaction stayed open.
--
-- In order: per-SIM locks (sim_locks not null: several nodes), the inserts (their ids, in input order,
-- sorted: identity values are drawn in the order the rows are produced), the SIMs' last message time
-- (system messages aside), then the deletes of delivered rows. With a node named (fence_node), a row
-- goes only while that node holds its SIM at the lease epoch it was delivered under.
--
-- Under the per-SIM locks it also answers each SIM's newest row before its inserts (prior_imsis,
-- prior_newest): a node holding a SIM reads what it just committed from memory (storage/postgres/outbox.ts),
-- and rows another node committed for the SIM a moment earlier are not there; a read from memory would
-- pass them before that node's notice arrives. Read under the lock, the answer is exact.
CREATE FUNCTION simbridge_outbox_commit(
  imsis text[], topics text[], payloads bytea[], qos_levels int[], received bigint[], systems int[], properties text[],
  sim_locks int, delete_ids bigint[], delete_imsis text[], delete_epochs bigint[], fence_node text,
  OUT ids bigint[], OUT deleted bigint[], OUT prior_imsis text[], OUT prior_newest bigint[]
) LANGUAGE plpgsql AS $$
BEGIN
  prior_imsis := '{}';
  prior_newest := '{}';
  IF sim_locks IS NOT NULL THEN
    -- Per SIM, one commit at a time across nodes: row ids follow commit order per SIM, and the owner's
    -- cursor never passes a row still to commit. Taken in one order (of the keys) by every node.
    PERFORM pg_advisory_xact_lock(sim_locks, s.h) FROM (SELECT DISTINCT hashtext(i) AS h FROM unnest(imsis) AS i ORDER BY 1) AS s;
    -- Each SIM's newest row before the inserts, through the outbox's (imsi, id) index; only while another
    -- node is known at all (alive or not yet forgotten, as a stalled one still commits): a node alone
    -- pays one look at the small node table per commit, not one index probe per SIM.
    IF EXISTS (SELECT 1 FROM cluster_nodes n WHERE n.node_id <> fence_node) THEN
      SELECT coalesce(array_agg(p.imsi), '{}'), coalesce(array_agg(p.newest), '{}') INTO prior_imsis, prior_newest
      FROM (SELECT s.imsi, (SELECT max(o.id) FROM outbox o WHERE o.imsi = s.imsi) AS newest
            FROM (SELECT DISTINCT i AS imsi FROM unnest(imsis) AS i) AS s) AS p
      WHERE p.newest IS NOT NULL;
    END IF;
  END IF;

  WITH added AS (
    INSERT INTO outbox (imsi, device_topic, payload, qos, received_at, system, user_properties)
    SELECT m.imsi, m.device_topic, m.payload, m.qos, m.received_at, m.system, m.user_properties
    FROM unnest(imsis, topics, payloads, qos_levels, received, systems, properties)
      WITH ORDINALITY AS m(imsi, device_topic, payload, qos, received_at, system, user_properties, n)
    ORDER BY m.n RETURNING outbox.id)
  SELECT coalesce(array_agg(added.id ORDER BY added.id), '{}') INTO ids FROM added;

  UPDATE sims SET last_seen_at = greatest(coalesce(sims.last_seen_at, 0), v.at)
  FROM (SELECT m.imsi, max(m.at) AS at FROM unnest(imsis, received, systems) AS m(imsi, at, system)
        WHERE m.system = 0 GROUP BY m.imsi) AS v
  WHERE sims.imsi = v.imsi;

  IF fence_node IS NULL THEN
    WITH gone AS (DELETE FROM outbox WHERE outbox.id = ANY(delete_ids) RETURNING outbox.id)
    SELECT coalesce(array_agg(gone.id), '{}') INTO deleted FROM gone;
  ELSE
    -- Each delete names its SIM, so its lease is found by the SIM's key. Joined only through the row,
    -- the planner may pair every delete with every lease of the same epoch first.
    WITH gone AS (
      DELETE FROM outbox o USING unnest(delete_ids, delete_imsis, delete_epochs) AS d(id, imsi, epoch)
        JOIN sim_leases l ON l.imsi = d.imsi AND l.epoch = d.epoch AND l.owner = fence_node
      WHERE o.id = d.id AND o.imsi = d.imsi RETURNING o.id)
    SELECT coalesce(array_agg(gone.id), '{}') INTO deleted FROM gone;
  END IF;
END
$$;
