// What counts as a device's own activity, in one place for every query that asks (fleet listing,
// counts, the device view).

/** An outbox row the device itself sent; rows on $-topics are the gateway's own (shadow updates). */
export const deviceSent = (outbox: string) => `${outbox}.device_topic NOT LIKE '$%'`;
