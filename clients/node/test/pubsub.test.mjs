import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { connect, unique } from './support.mjs';

const client = connect();
after(() => client.close());

test('a subscriber gets what is published to its topics and patterns', async () => {
  const room = unique('room');
  const subscription = await client.pubsub.subscribe({ topics: [`${room}:a`], patterns: [`${room}:p*`] });
  assert.equal(await client.pubsub.publish(`${room}:a`, 'héllo'), 1n);
  assert.equal(await client.pubsub.publish(`${room}:pq`, Buffer.from([1, 2])), 1n);
  assert.equal(await client.pubsub.publish(unique('nobody'), 'x'), 0n);
  const received = [];
  for await (const event of subscription) {
    received.push(event);
    if (received.length === 2) break; // leaving the loop cancels the stream
  }
  assert.deepEqual(received, [
    { type: 'message', topic: `${room}:a`, payload: Buffer.from('héllo'), pattern: '', sequence: 1n },
    { type: 'message', topic: `${room}:pq`, payload: Buffer.from([1, 2]), pattern: `${room}:p*`, sequence: 2n },
  ]);
});

test('an abort signal ends a subscription quietly', async () => {
  const controller = new AbortController();
  const subscription = await client.pubsub.subscribe({ topics: [unique('quiet')], signal: controller.signal });
  const events = [];
  const reading = (async () => {
    for await (const event of subscription) events.push(event);
  })();
  setTimeout(() => controller.abort(), 100);
  await reading;
  assert.deepEqual(events, []);
});
