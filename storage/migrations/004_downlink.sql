-- Downlink held for devices that sleep between HTTP requests; returned on their next request.
CREATE TABLE downlink (
  id          INTEGER PRIMARY KEY AUTOINCREMENT,
  imsi        TEXT NOT NULL,
  topic       TEXT NOT NULL,     -- device topic
  payload     BLOB NOT NULL,
  qos         INTEGER NOT NULL,
  received_at INTEGER NOT NULL,
  expires_at  INTEGER NOT NULL
);
CREATE INDEX downlink_by_sim ON downlink (imsi, id);
