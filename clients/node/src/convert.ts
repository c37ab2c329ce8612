// Conversions between the library's values and proto-loader's message objects.
//
// proto-loader is configured (proto.ts) with `longs: String`: 64-bit integers travel as
// decimal strings, read here into bigints so that fencing tokens, counters and versions
// stay exact. Durations are milliseconds on this side, google.protobuf.Duration on the other.

/** A value for a bytes field: bytes as they are, or text stored as its UTF-8 bytes. */
export type Value = Buffer | Uint8Array | string;

/** A google.protobuf.Duration as proto-loader reads and writes it. */
export interface Duration {
  seconds: string;
  nanos: number;
}

/** A google.protobuf.Timestamp as proto-loader reads it. */
export interface Timestamp {
  seconds: string;
  nanos: number;
}

/**
 * The bytes of a value. A string is UTF-8 text: converted here, because protobufjs
 * would read a string given for a bytes field as base64, without a word.
 */
export function toBytes(value: Value): Buffer {
  if (typeof value === 'string') return Buffer.from(value, 'utf8');
  if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength);
  throw new TypeError(`a value must be a Buffer, a Uint8Array or a string, not ${typeof value}`);
}

/** A Duration of `ms` milliseconds; undefined (the field unset) when `ms` is. */
export function duration(ms: number | undefined, name: string): Duration | undefined {
  if (ms === undefined) return undefined;
  if (typeof ms !== 'number' || !Number.isFinite(ms) || ms < 0) {
    throw new RangeError(`${name} must be a number of milliseconds, at least 0 (got ${String(ms)})`);
  }
  const whole = Math.floor(ms);
  return { seconds: String(Math.floor(whole / 1000)), nanos: (whole % 1000) * 1e6 + Math.round((ms - whole) * 1e6) };
}

/** The milliseconds of a Duration; null when the field is unset. */
export function millis(value: Duration | null | undefined): number | null {
  if (value === null || value === undefined) return null;
  return Number(value.seconds) * 1000 + Math.round(value.nanos / 1e6);
}

/** The Date of a Timestamp; null when the field is unset. */
export function date(value: Timestamp | null | undefined): Date | null {
  if (value === null || value === undefined) return null;
  return new Date(Number(value.seconds) * 1000 + Math.floor(value.nanos / 1e6));
}

const INT64 = { min: -(2n ** 63n), max: 2n ** 63n - 1n };
const UINT64 = { min: 0n, max: 2n ** 64n - 1n };

/** A 64-bit integer field's decimal string, checked to be an integer in range. */
export function int64(value: bigint | number, name: string, unsigned = false): string {
  const range = unsigned ? UINT64 : INT64;
  if (typeof value === 'number' && !Number.isSafeInteger(value)) {
    throw new RangeError(`${name} must be an integer (a bigint beyond 2^53), got ${value}`);
  }
  if (typeof value !== 'number' && typeof value !== 'bigint') {
    throw new TypeError(`${name} must be a bigint or a number, not ${typeof value}`);
  }
  const exact = BigInt(value);
  if (exact < range.min || exact > range.max) {
    throw new RangeError(`${name} is out of the range of a${unsigned ? 'n unsigned' : ''} 64-bit integer: ${exact}`);
  }
  return exact.toString();
}

/**
 * The protocol's enum value for one of the library's names, such as 'ifAbsent' for
 * SET_CONDITION_IF_ABSENT. Any other name is a TypeError before the call: protobufjs
 * would silently send 0 (UNSPECIFIED, "the default") for a name it does not know.
 */
export function enumValue<Name extends string>(
  values: Readonly<Record<Name, string>>,
  name: Name | undefined,
  what: string,
): string | undefined {
  if (name === undefined) return undefined;
  if (typeof name !== 'string' || !Object.prototype.hasOwnProperty.call(values, name)) {
    const known = Object.keys(values).map((known) => `'${known}'`).join(', ');
    throw new TypeError(`${what} must be one of ${known}, not ${JSON.stringify(name)}`);
  }
  return values[name];
}
