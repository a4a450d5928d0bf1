-- PostgreSQL twin of ../006_outbox_system.sql (0/1 as in SQLite, so queries read the same in both).
ALTER TABLE outbox ADD COLUMN system INTEGER NOT NULL DEFAULT 0 CHECK (system IN (0, 1));

UPDATE outbox SET system = 1 WHERE device_topic LIKE '$%';
