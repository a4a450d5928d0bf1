-- Whether the gateway queued the row itself (e.g. a connectivity update of the thing's shadow) rather
-- than the device sending it: such rows are delivered like any other, but are no sign of the device.
ALTER TABLE outbox ADD COLUMN system INTEGER NOT NULL DEFAULT 0 CHECK (system IN (0, 1));

-- Rows queued before this column: the gateway's own were told apart by their $-topic.
UPDATE outbox SET system = 1 WHERE device_topic LIKE '$%';
