-- Persistent MQTT sessions (3.1.1 cleanSession=0, MQTT 5 session expiry): a device's subscriptions, and
-- the QoS 1 commands that arrived for it while it was away, kept until it reconnects or the session expires.
CREATE TABLE mqtt_sessions (
  imsi        TEXT NOT NULL,
  client_id   TEXT NOT NULL,      -- as the device sent it
  filters     TEXT NOT NULL,      -- JSON [[filter, qos], ...]
  expiry_s    INTEGER NOT NULL,   -- how long the session outlives its connection
  expires_at  INTEGER NOT NULL,   -- far future while connected
  PRIMARY KEY (imsi, client_id)
);
CREATE TABLE mqtt_session_messages (
  id          INTEGER PRIMARY KEY AUTOINCREMENT,
  imsi        TEXT NOT NULL,
  client_id   TEXT NOT NULL,
  topic       TEXT NOT NULL,      -- device topic
  payload     BLOB NOT NULL,
  qos         INTEGER NOT NULL,
  received_at INTEGER NOT NULL,
  expires_at  INTEGER NOT NULL
);
CREATE INDEX mqtt_session_messages_by_session ON mqtt_session_messages (imsi, client_id, id);
CREATE INDEX mqtt_session_messages_by_expiry ON mqtt_session_messages (expires_at);

-- MQTT 5 user properties of a device publish (a JSON object), carried into the batch envelope.
ALTER TABLE outbox ADD COLUMN user_properties TEXT;
