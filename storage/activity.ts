// What counts as a device's own activity, in one place for every query that asks (fleet listing,
// counts, the device view).

/** An outbox row the device itself sent, not one the gateway queued for it (NewMessage.system). */
export const deviceSent = (outbox: string) => `${outbox}.system = 0`;

/**
 * Whether the SIM aliased `s` is online: the network holds a session for it, or it sent something
 * within the window (`since`, the parameter holding the oldest activity that still counts: `@onlineSince`
 * for SQLite, `$n` for PostgreSQL). Messages still in the
 * outbox count too, so a device is online before its last_seen_at is written. The fleet listing, the
 * counts and the device view all ask this, so they cannot disagree about a SIM.
 */
export const onlineSql = (s: string, since = '@onlineSince') => `(EXISTS (SELECT 1 FROM network_sessions n WHERE n.imsi = ${s}.imsi)
  OR coalesce(${s}.last_seen_at, 0) >= ${since}
  OR EXISTS (SELECT 1 FROM outbox o WHERE o.imsi = ${s}.imsi AND o.received_at >= ${since} AND ${deviceSent('o')}))`;
