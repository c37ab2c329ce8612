// Symbol.asyncDispose, for runtimes that lack it (Node before 18.18 and 20.4): the
// symbol TypeScript's `await using` falls back to, so that the two agree.
if (typeof Symbol.asyncDispose !== 'symbol') {
  Object.defineProperty(Symbol, 'asyncDispose', { value: Symbol.for('Symbol.asyncDispose') });
}
export {};
