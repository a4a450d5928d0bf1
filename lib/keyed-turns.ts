/**
 * Work per key run one after another, in the order it was asked for; a key with nothing running or
 * waiting runs its work at once. A failure ends only that work's turn: the next one runs all the same.
 */
export class KeyedTurns {
  /** Per key, the end of the last turn asked for. */
  private readonly last = new Map<string, Promise<void>>();

  /** The end of the key's last turn, while one is running or waiting. */
  ahead(key: string): Promise<void> | undefined {
    return this.last.get(key);
  }

  /** Runs work once every turn asked for before it for the key has ended. */
  run<T>(key: string, work: () => Promise<T>): Promise<T> {
    const before = this.last.get(key);
    const result = before ? before.then(work) : work();
    const ended = result.then(
      () => undefined,
      () => undefined,
    );
    this.last.set(key, ended);
    void ended.then(() => {
      if (this.last.get(key) === ended) this.last.delete(key);
    });
    return result;
  }
}
