// Numbers the accounting listener understands: RFC 2865 / RFC 2866 codes and attribute types, and the
// 3GPP vendor-specific sub-attributes of TS 29.061 §16.4.7.

/** Packet codes (RFC 2865 §3, RFC 2866 §4). */
export const Code = {
  AccountingRequest: 4,
  AccountingResponse: 5,
} as const;

/** Top-level attribute types. */
export const Attr = {
  NasIpAddress: 4, // RFC 2865 §5.4
  FramedIpAddress: 8, // RFC 2865 §5.8
  VendorSpecific: 26, // RFC 2865 §5.26
  CallingStationId: 31, // RFC 2865 §5.31 (the MSISDN on a GGSN/PGW, TS 29.061 §16.4.7.1)
  NasIdentifier: 32, // RFC 2865 §5.32
  ProxyState: 33, // RFC 2865 §5.33: copied unmodified into the reply
  AcctStatusType: 40, // RFC 2866 §5.1
  AcctSessionId: 44, // RFC 2866 §5.5
  EventTimestamp: 55, // RFC 2869 §5.3
} as const;

/** Acct-Status-Type values (RFC 2866 §5.1). */
export const StatusType = {
  Start: 1,
  Stop: 2,
  InterimUpdate: 3,
  AccountingOn: 7,
  AccountingOff: 8,
} as const;
export type StatusTypeName = keyof typeof StatusType;

/** IANA enterprise number of 3GPP. */
export const VENDOR_3GPP = 10415;

/** 3GPP vendor-specific sub-attribute types (TS 29.061 §16.4.7.2). */
export const Attr3gpp = {
  Imsi: 1,
  ChargingId: 2,
  Imeisv: 20,
  RatType: 21,
} as const;

/**
 * 3GPP-RAT-Type values. TS 29.061 §16.4.7.2 defers to TS 29.274 §8.17 (RAT Type IE) for these.
 * FreeRADIUS 3.2's dictionary.3gpp stops at 7 (Virtual), so 8-10 come from TS 29.274 Rel-13+ directly.
 */
export const RatType: Readonly<Record<number, string>> = {
  1: 'UTRAN',
  2: 'GERAN',
  3: 'WLAN',
  4: 'GAN',
  5: 'HSPA-Evolution',
  6: 'EUTRAN',
  7: 'Virtual',
  8: 'EUTRAN-NB-IoT',
  9: 'LTE-M',
  10: 'NR',
  101: 'IEEE-802.16e',
  102: '3GPP2-eHRPD',
  103: '3GPP2-HRPD',
  104: '3GPP2-1xRTT',
  105: '3GPP2-UMB',
};
