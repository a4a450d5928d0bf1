import { describe, expect, it } from 'vitest';
import { KeyedTurns } from '../lib/keyed-turns.ts';

const later = <T>(ms: number, value: T) => new Promise<T>((r) => setTimeout(() => r(value), ms));

describe('KeyedTurns', () => {
  it('runs one key\'s work in call order, other keys beside it, and goes on after a failure', async () => {
    const turns = new KeyedTurns();
    const ended: string[] = [];
    const a1 = turns.run('a', () => later(30, 'a1')).then((v) => ended.push(v));
    const a2 = turns.run('a', () => Promise.reject(new Error('a2 failed'))).catch((e: Error) => ended.push(e.message));
    const a3 = turns.run('a', () => later(1, 'a3')).then((v) => ended.push(v));
    const b1 = turns.run('b', () => later(5, 'b1')).then((v) => ended.push(v));
    expect(turns.ahead('a')).toBeDefined();
    await Promise.all([a1, a2, a3, b1]);
    expect(ended).toEqual(['b1', 'a1', 'a2 failed', 'a3']);
    await later(0, undefined);
    expect(turns.ahead('a')).toBeUndefined();
    expect(turns.ahead('b')).toBeUndefined();
  });
});
