// The child side of bench/lib/load.ts#Worker: a load process answers each IPC command ({id, cmd, ...})
// with {id, ok, result} or {id, ok: false, error}, and ends when the orchestrator goes away.

export function serveCommands<C>(handle: (cmd: C) => Promise<unknown>): void {
  process.on('message', (raw) => {
    const { id, ...msg } = raw as { id: number };
    handle(msg as C).then(
      (result) => process.send!({ id, ok: true, result }),
      (err: Error) => process.send!({ id, ok: false, error: String(err?.stack ?? err) }),
    );
  });
  process.on('disconnect', () => process.exit(0));
}
