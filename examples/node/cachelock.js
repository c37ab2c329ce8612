// Loading cachelock's protos in Node, and reading its structured errors.
//
// @grpc/proto-loader options that keep values exact:
//   longs: String  - 64-bit integers (fencing tokens, versions, counters) arrive as
//                    decimal strings; compare them as BigInt, never as strings or Numbers.
//   enums: String  - enums arrive as names. Send names too, but only through enumValue()
//                    below: protobufjs turns a name it does not know into 0 (UNSPECIFIED,
//                    the documented default), so a typo would silently mean "default".
//   defaults: true - unset fields arrive as their defaults (found: false, not missing).
// bytes fields take a Buffer. A string given for a bytes field is base64-decoded by
// protobufjs without a word, so always pass Buffer.from(text).
'use strict';

const path = require('path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');
const protobuf = require('protobufjs');
const googleProtos = require('google-proto-files');

const PROTO_ROOT = process.env.CACHELOCK_PROTO || path.join(__dirname, '..', '..', 'proto');
const FILES = ['cache', 'lock', 'ratelimit', 'session'].map((name) => `cachelock/${name}/v1/${name}.proto`);

const definition = protoLoader.loadSync(FILES, {
  includeDirs: [PROTO_ROOT],
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const api = grpc.loadPackageDefinition(definition).cachelock;

/** Clients for the four services at `address`, sharing one channel. */
function clients(address) {
  const credentials = grpc.credentials.createInsecure();
  const cache = new api.cache.v1.CacheService(address, credentials);
  const channelOverride = cache.getChannel();
  const options = { channelOverride };
  return {
    cache,
    locks: new api.lock.v1.LockService(address, credentials, options),
    limits: new api.ratelimit.v1.RateLimitService(address, credentials, options),
    sessions: new api.session.v1.SessionService(address, credentials, options),
  };
}

/** The enum value named `name` of enum type `type`; throws on a name the proto does not define. */
function enumValue(type, name) {
  const known = definition[type].type.value.map((value) => value.name);
  if (!known.includes(name)) {
    throw new Error(`${name} is not a ${type} (known: ${known.join(', ')})`);
  }
  return name;
}

/** A google.protobuf.Duration of `seconds` (fractions allowed). */
function seconds(value) {
  const whole = Math.floor(value);
  return { seconds: String(whole), nanos: Math.round((value - whole) * 1e9) };
}

/** Promise form of a unary call, with a deadline `timeoutMs` from now. */
function call(client, method, request, timeoutMs = 2000) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: new Date(Date.now() + timeoutMs) }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

const statusRoot = new protobuf.Root();
statusRoot.resolvePath = (_origin, target) => googleProtos.getProtoPath('..', target);
statusRoot.loadSync(['google/rpc/status.proto', 'google/rpc/error_details.proto']);
const Status = statusRoot.lookupType('google.rpc.Status');
const DETAIL_TYPES = ['ErrorInfo', 'BadRequest', 'RetryInfo'];

/**
 * What a cachelock error says beyond its code and message: the ErrorInfo reason and
 * metadata, the BadRequest field violations, and the RetryInfo delay in milliseconds.
 */
function details(error) {
  const found = { code: error.code, message: error.details, reason: '', metadata: {}, violations: {}, retryAfterMs: null };
  const encoded = error.metadata && error.metadata.get('grpc-status-details-bin')[0];
  if (!encoded) {
    return found; // not an answer from cachelock (a proxy, a transport failure)
  }
  for (const any of Status.decode(encoded).details) {
    const name = any.type_url.split('/').pop();
    const short = name.replace('google.rpc.', '');
    if (!DETAIL_TYPES.includes(short)) continue;
    const detail = statusRoot.lookupType(name).decode(any.value);
    if (short === 'ErrorInfo' && detail.domain === 'cachelock.dev') {
      found.reason = detail.reason;
      found.metadata = detail.metadata;
    } else if (short === 'BadRequest') {
      for (const violation of detail.fieldViolations) found.violations[violation.field] = violation.description;
    } else if (short === 'RetryInfo') {
      const delay = detail.retryDelay || {};
      found.retryAfterMs = Number(delay.seconds || 0) * 1000 + Math.round((delay.nanos || 0) / 1e6);
    }
  }
  return found;
}

/** Runs `promise`, which must fail with status `code` and ErrorInfo `reason`; returns the details. */
async function expectError(promise, code, reason) {
  try {
    await promise;
  } catch (error) {
    const found = details(error);
    if (found.code !== grpc.status[code] || found.reason !== reason) {
      throw new Error(`expected ${code} ${reason}, got ${JSON.stringify(found)}`);
    }
    console.log(`  ${code} ${reason}: ${found.message}`);
    return found;
  }
  throw new Error(`expected ${code} ${reason}, the call succeeded`);
}

module.exports = { clients, enumValue, seconds, call, details, expectError, grpc };
