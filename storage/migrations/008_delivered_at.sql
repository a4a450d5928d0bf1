-- When a message the device sent was first delivered to IoT Core (PUBACK) since its IMEI was last bound:
-- the installer page's "Done". A new binding starts the wait again.
ALTER TABLE sims ADD COLUMN delivered_at INTEGER;

CREATE TRIGGER sims_rebound_clears_delivered AFTER UPDATE OF bound_imei ON sims
WHEN NEW.bound_imei IS NOT OLD.bound_imei
BEGIN
  UPDATE sims SET delivered_at = NULL WHERE imsi = NEW.imsi;
END;
