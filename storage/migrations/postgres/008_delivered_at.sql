-- PostgreSQL twin of ../008_delivered_at.sql: a new IMEI binding clears delivered_at.
ALTER TABLE sims ADD COLUMN delivered_at BIGINT;

CREATE FUNCTION sims_rebound_clears_delivered() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  NEW.delivered_at := NULL;
  RETURN NEW;
END
$$;

CREATE TRIGGER sims_rebound_clears_delivered BEFORE UPDATE OF bound_imei ON sims
FOR EACH ROW WHEN (NEW.bound_imei IS DISTINCT FROM OLD.bound_imei)
EXECUTE FUNCTION sims_rebound_clears_delivered();
