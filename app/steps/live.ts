import type { Config, GroupConfig } from '../../config/schema.ts';

/**
 * The configuration in force. A reload replaces `config`; every closure the steps hand out reads it
 * when called, so what a reload changes applies to what comes next.
 */
export interface Live {
  config: Config;
}

/** A SIM's group; a SIM whose group was removed from the config falls back to the default group. */
export const groupOf =
  (live: Live) =>
  (name: string): GroupConfig =>
    live.config.groups[name] ?? live.config.groups[live.config.sims.defaultGroup]!;
