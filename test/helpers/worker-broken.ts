// A worker module for test/worker-calls.test.ts that fails while loading, before it takes calls.
throw new Error('cannot load');
