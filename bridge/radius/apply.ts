// One accounting record → one change of the session table, reported as the sessions it began and ended.

import type { EndedSession, IgnoredReason, NetworkSession, NetworkSessions } from '../../storage/network-sessions.ts';
import type { AccountingRecord } from './accounting.ts';

export type SessionStartCause = 'start' | 'interim';

export interface Applied {
  started?: { session: NetworkSession; cause: SessionStartCause };
  ended: EndedSession[];
  /** Authentic but not applied (answered all the same, so the NAS stops retransmitting). */
  ignored?: IgnoredReason;
}

export function applyRecord(sessions: NetworkSessions, record: AccountingRecord): Applied {
  switch (record.kind) {
    case 'start':
    case 'interim': {
      const r = record.kind === 'start' ? sessions.start(record.report) : sessions.interim(record.report);
      if (r.ignored) return { ended: [], ignored: r.ignored };
      return { ended: r.ended, ...(r.created ? { started: { session: r.session, cause: record.kind } } : {}) };
    }
    case 'stop':
      return { ended: sessions.stop(record.ip, record.acctSessionId, record.nasIp) };
    case 'nas_on':
    case 'nas_off':
      return { ended: sessions.clearNas(record.nasIp, record.nasIdentifier, record.kind) };
  }
}
